"""From Hugging Face Mistral/Llama to what llama.cpp's ``llama`` architecture reads.

Names come from gguf-py's own table, hyper-parameters from config.json, and the Q/K row
permutation is the one llama.cpp's converter applies (HF stores rotary halves, llama.cpp
interleaves them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gguf
import numpy as np

from ..errors import ExpoError

ARCH = gguf.MODEL_ARCH.LLAMA
ARCH_NAME = gguf.MODEL_ARCH_NAMES[ARCH]
SUPPORTED_ARCHITECTURES = ("MistralForCausalLM", "LlamaForCausalLM")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class HParams:
    """The config.json numbers llama.cpp needs; equal across SFT and RLHF or we refuse."""

    architecture: str
    context_length: int
    embedding_length: int
    block_count: int
    feed_forward_length: int
    head_count: int
    head_count_kv: int
    head_dim: int
    rope_freq_base: float
    rms_eps: float
    vocab_size: int
    tie_word_embeddings: bool
    rope_scaling: tuple[tuple[str, float | str], ...] = ()  # sorted (key, value) of config's rope_scaling

    @property
    def rope(self) -> dict[str, float | str]:
        return dict(self.rope_scaling)

    @property
    def rope_type(self) -> str:
        return str(self.rope.get("rope_type", "default"))


def _rope_scaling(config: dict) -> tuple[tuple[str, float | str], ...]:
    """config.json's rope_scaling (or transformers 5's rope_parameters), in one hashable form;
    ``type`` (older configs) is read as ``rope_type``."""
    raw = config.get("rope_parameters", config.get("rope_scaling")) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"rope_scaling {raw!r} is not an object")
    out: dict[str, float | str] = {}
    for key, value in raw.items():
        key = "rope_type" if key == "type" else key
        if key == "rope_theta":
            continue  # read as the base frequency
        if isinstance(value, str):
            out[key] = value.lower() if key == "rope_type" else value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
        else:
            raise ValueError(f"rope_scaling.{key} = {value!r}")
    if out.get("rope_type") == "default":  # transformers 5 writes this where older configs wrote null
        del out["rope_type"]
    return tuple(sorted(out.items()))


def describe_rope(hp: HParams) -> str:
    """For messages: 'none' or 'llama3 factor=8 ...', not a tuple repr."""
    if not hp.rope_scaling:
        return "none"
    rope = hp.rope
    rest = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in rope.items() if k != "rope_type")
    return f"{hp.rope_type} {rest}".strip()


def hparams_from_config(config: dict, where: str) -> HParams:
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else repr(archs)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ExpoError(f"{where}: architecture {arch}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    try:
        n_head = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return HParams(
            architecture=arch,
            context_length=int(config.get("max_position_embeddings", 4096)),
            embedding_length=hidden,
            block_count=int(config["num_hidden_layers"]),
            feed_forward_length=int(config["intermediate_size"]),
            head_count=n_head,
            head_count_kv=int(config.get("num_key_value_heads") or n_head),
            head_dim=int(config.get("head_dim") or (hidden // n_head if n_head > 0 else 0)),
            rope_freq_base=float(
                config.get("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta", 10000.0))
            ),
            rms_eps=float(config.get("rms_norm_eps", 1e-5)),
            vocab_size=int(config["vocab_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            rope_scaling=_rope_scaling(config),
        )
    except KeyError as e:
        raise ExpoError(f"{where}: config.json lacks {e.args[0]}") from None
    except (TypeError, ValueError) as e:
        raise ExpoError(f"{where}: config.json has a bad value: {e}") from None


def check_hparams(hp: HParams, config: dict, where: str) -> None:
    """Numbers llama.cpp divides by or allocates from must make sense; features we would drop
    silently (and so compute a different model) are refused instead."""
    sizes = {k: v for k, v in vars(hp).items() if isinstance(v, int) and not isinstance(v, bool)}
    bad = [f"{k}={v}" for k, v in sizes.items() if v <= 0]
    if bad:
        raise ExpoError(f"{where}: config.json has non-positive {', '.join(bad)}")
    if hp.head_count % hp.head_count_kv:
        raise ExpoError(f"{where}: {hp.head_count} attention heads do not group into {hp.head_count_kv} KV heads")
    if hp.head_dim % 2:
        raise ExpoError(f"{where}: head_dim {hp.head_dim} is odd; rotary embeddings need it even")
    rope = hp.rope
    if hp.rope_type not in ROPE_TYPES:
        raise ExpoError(
            f"{where}: rope_scaling type {hp.rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}"
        )
    if hp.rope_type != "default" and not (isinstance(rope.get("factor"), float) and rope["factor"] > 0):
        raise ExpoError(f"{where}: rope_scaling {hp.rope_type} needs a positive factor, got {rope.get('factor')!r}")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ExpoError(f"{where}: attention/MLP biases are not supported yet")


def expected_shapes(hp: HParams) -> dict[str, tuple[int, ...]]:
    """Every tensor llama.cpp's llama architecture loads for these numbers, rows first as HF stores them."""
    e, q, kv, f = (
        hp.embedding_length,
        hp.head_count * hp.head_dim,
        hp.head_count_kv * hp.head_dim,
        hp.feed_forward_length,
    )
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (hp.vocab_size, e), "output_norm.weight": (e,)}
    if not hp.tie_word_embeddings:
        shapes["output.weight"] = (hp.vocab_size, e)
    for i in range(hp.block_count):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (e,),
            f"blk.{i}.ffn_norm.weight": (e,),
            f"blk.{i}.attn_q.weight": (q, e),
            f"blk.{i}.attn_k.weight": (kv, e),
            f"blk.{i}.attn_v.weight": (kv, e),
            f"blk.{i}.attn_output.weight": (e, q),
            f"blk.{i}.ffn_gate.weight": (f, e),
            f"blk.{i}.ffn_up.weight": (f, e),
            f"blk.{i}.ffn_down.weight": (e, f),
        }
    return shapes


def tensor_names(names: list[str], hp: HParams) -> dict[str, str]:
    """HF name -> GGUF name for every tensor; an unmapped name is an error, never a skip."""
    tmap = gguf.get_tensor_name_map(ARCH, hp.block_count)
    out, unmapped = {}, []
    for name in names:
        if name.endswith(".rotary_emb.inv_freq"):  # buffers some exporters save; recomputed by llama.cpp
            continue
        if hp.tie_word_embeddings and name == "lm_head.weight":  # a saved copy of the tied embedding
            continue
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            unmapped.append(name)
        else:
            out[name] = new
    if unmapped:
        more = f" and {len(unmapped) - 3} more" if len(unmapped) > 3 else ""
        raise ExpoError(f"tensors with no llama.cpp name: {', '.join(unmapped[:3])}{more}")
    return out


def rope_heads(gguf_name: str, hp: HParams) -> int | None:
    """How many heads to permute a tensor's rows over: Q by n_head, K by n_head_kv (GQA), else None."""
    if gguf_name.endswith("attn_q.weight"):
        return hp.head_count
    if gguf_name.endswith("attn_k.weight"):
        return hp.head_count_kv
    return None


def permute_rows(rows: np.ndarray, n_rows_per_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` for a block of whole heads: interleave each head's halves."""
    n, cols = rows.shape
    heads = n // n_rows_per_head
    return rows.reshape(heads, 2, n_rows_per_head // 2, cols).swapaxes(1, 2).reshape(n, cols)


def rope_freqs(hp: HParams) -> np.ndarray | None:
    """Llama 3.1's frequency factors, which llama.cpp reads from a ``rope_freqs`` tensor: derived
    as llama.cpp's converter does (``LlamaModel.generate_extra_tensors``), in float32 arithmetic
    step for step as its torch code runs, so the bytes match the converter's."""
    if hp.rope_type != "llama3":
        return None
    f32 = np.float32
    rope = hp.rope
    factor = f32(rope.get("factor", 8.0))
    low, high = f32(rope.get("low_freq_factor", 1.0)), f32(rope.get("high_freq_factor", 4.0))
    old_ctx = f32(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = f32(old_ctx / low), f32(old_ctx / high)
    dim = hp.head_dim
    freqs = f32(1) / (f32(hp.rope_freq_base) ** (np.arange(0, dim, 2, dtype=f32) / f32(dim)))
    factors = np.empty(len(freqs), f32)
    for i, freq in enumerate(freqs):
        wavelen = (f32(1) / freq) * f32(2 * math.pi)  # torch evaluates scalar / tensor this way
        if wavelen < high_wavelen:
            factors[i] = 1
        elif wavelen > low_wavelen:
            factors[i] = factor
        else:
            smooth = ((f32(1) / wavelen) * old_ctx - low) / (high - low)
            factors[i] = f32(1) / ((f32(1) - smooth) / factor + smooth)
    return factors


def add_hparams(w: gguf.GGUFWriter, hp: HParams) -> None:
    w.add_context_length(hp.context_length)
    w.add_embedding_length(hp.embedding_length)
    w.add_block_count(hp.block_count)
    w.add_feed_forward_length(hp.feed_forward_length)
    w.add_head_count(hp.head_count)
    w.add_head_count_kv(hp.head_count_kv)
    w.add_rope_freq_base(hp.rope_freq_base)
    w.add_layer_norm_rms_eps(hp.rms_eps)
    w.add_rope_dimension_count(hp.head_dim)
    w.add_vocab_size(hp.vocab_size)
    if hp.head_dim != hp.embedding_length // hp.head_count:
        w.add_key_length(hp.head_dim)
        w.add_value_length(hp.head_dim)
    if hp.rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(hp.rope["factor"]))
