"""The checkpoint pairs scripts/make_synthetic_pair.py imitates: names, shapes and the small side files.

Each family is a real SFT/RLHF pair ExPO was applied to, with config.json, generation_config.json and
tokenizer files as those repos ship them; only the weights are made up (by the generator).

    starling: openchat/openchat-3.5-0106 -> Nexusflow/Starling-LM-7B-beta      (Mistral, 32002 SentencePiece)
    zephyr:   HuggingFaceH4/mistral-7b-sft-beta -> HuggingFaceH4/zephyr-7b-beta (Mistral, 32000 SentencePiece)
    llama3:   meta-llama/Meta-Llama-3-8B-Instruct -> princeton-nlp/Llama-3-Instruct-8B-SimPO
              (Llama, GQA, explicit head_dim, llama3 rope scaling, 128256 byte-level BPE built from
              llama.cpp's models/ggml-vocab-llama-bpe.gguf)
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np


class FixtureError(RuntimeError):
    """A file a family is built from cannot be had (tests skip on it)."""


class Shape(NamedTuple):
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    max_pos: int
    head_dim: int | None = None  # None: hidden // heads, and config.json has no head_dim key

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads


SideFiles = Callable[[Path, Shape, str, bool, "Path | None"], None]  # (dir, shape, repo id, tied, llama.cpp src)


@dataclass(frozen=True)
class Family:
    sft: tuple[str, str]  # (directory name, HF repo id)
    rlhf: tuple[str, str]
    vocab: int
    shapes: dict[str, Shape]
    tiny_shard_bytes: int  # SFT shard limit of the tiny shape; chosen so SFT and RLHF shard differently
    side_files: SideFiles
    needs_llama_cpp: bool = False


# All multiples of 256.
MISTRAL_SHAPES = {
    "tiny": Shape(256, 2, 4, 2, 512, 2048),
    "1b": Shape(2048, 22, 16, 8, 5632, 8192),
    "3b": Shape(3072, 26, 24, 8, 8192, 8192),
    "7b": Shape(4096, 32, 32, 8, 14336, 8192),
}
# tiny: head_dim 32 with 4 heads, so q_proj has 128 rows for a hidden size of 64; 1b/3b as Llama 3.2, 7b as Llama 3 8B.
LLAMA3_SHAPES = {
    "tiny": Shape(64, 2, 4, 2, 128, 2048, head_dim=32),
    "1b": Shape(2048, 16, 32, 8, 8192, 8192, head_dim=64),
    "3b": Shape(3072, 28, 24, 8, 8192, 8192, head_dim=128),
    "7b": Shape(4096, 32, 32, 8, 14336, 8192, head_dim=128),
}
FLAGS = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def tokenizer_model_path() -> Path:
    """Mistral's 32000-piece SentencePiece model, shipped inside mistral-common (no download)."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mistral-common is needed for tokenizer.model: pip install --no-deps mistral-common")
    return Path(spec.submodule_search_locations[0]) / "data" / "tokenizer.model.v1"


def mistral_config(shape: Shape, repo_id: str, tied: bool, vocab: int, eos: int, tf_version: str) -> dict:
    return {
        "_name_or_path": repo_id,
        "architectures": ["MistralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": eos,
        "hidden_act": "silu",
        "hidden_size": shape.hidden,
        "initializer_range": 0.02,
        "intermediate_size": shape.ffn,
        "max_position_embeddings": shape.max_pos,
        "model_type": "mistral",
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "num_key_value_heads": shape.kv_heads,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "transformers_version": tf_version,
        "use_cache": True,
        "vocab_size": vocab,
    }


# --- starling ---------------------------------------------------------------------------------------------------
STARLING_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ 'GPT4 Correct ' + message['role'].title() + ': '"
    " + message['content'] + '<|end_of_turn|>'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'GPT4 Correct Assistant:' }}{% endif %}"
)
STARLING_SPECIAL = {0: "<unk>", 1: "<s>", 2: "</s>", 32000: "<|end_of_turn|>", 32001: "<|pad_0|>"}


def starling_side_files(d: Path, shape: Shape, repo_id: str, tied: bool, _src: Path | None) -> None:
    """As openchat-3.5-0106 and Starling-LM-7B-beta ship them: 32000 pieces + 2 added tokens."""
    write_json(d / "config.json", mistral_config(shape, repo_id, tied, 32002, 32000, "4.38.2"))
    write_json(
        d / "generation_config.json",
        {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 32000, "transformers_version": "4.38.2"},
    )
    write_json(
        d / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": {
                str(i): {"content": c, **FLAGS, "special": True} for i, c in STARLING_SPECIAL.items()
            },
            "additional_special_tokens": [],
            "bos_token": "<s>",
            "chat_template": STARLING_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|end_of_turn|>",
            "legacy": True,
            "model_max_length": 1000000000000000019884624838656,
            "pad_token": None,
            "sp_model_kwargs": {},
            "spaces_between_special_tokens": False,
            "tokenizer_class": "LlamaTokenizer",
            "unk_token": "<unk>",
            "use_default_system_prompt": False,
        },
    )
    write_json(d / "added_tokens.json", {"<|end_of_turn|>": 32000, "<|pad_0|>": 32001})
    write_json(
        d / "special_tokens_map.json",
        {
            k: {"content": c, **FLAGS}
            for k, c in (("bos_token", "<s>"), ("eos_token", "<|end_of_turn|>"), ("unk_token", "<unk>"))
        },
    )
    shutil.copyfile(tokenizer_model_path(), d / "tokenizer.model")


# --- zephyr -----------------------------------------------------------------------------------------------------
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)


def zephyr_side_files(d: Path, shape: Shape, repo_id: str, tied: bool, _src: Path | None) -> None:
    """As mistral-7b-sft-beta and zephyr-7b-beta ship them: Mistral's 32000 pieces, nothing added, eos </s>."""
    write_json(d / "config.json", mistral_config(shape, repo_id, tied, 32000, 2, "4.35.0"))
    write_json(
        d / "generation_config.json",
        {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "transformers_version": "4.35.0"},
    )
    special = {0: "<unk>", 1: "<s>", 2: "</s>"}
    write_json(
        d / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": {str(i): {"content": c, **FLAGS, "special": True} for i, c in special.items()},
            "additional_special_tokens": [],
            "bos_token": "<s>",
            "chat_template": ZEPHYR_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "</s>",
            "legacy": True,
            "model_max_length": 1000000000000000019884624838656,
            "pad_token": "</s>",
            "sp_model_kwargs": {},
            "spaces_between_special_tokens": False,
            "tokenizer_class": "LlamaTokenizer",
            "truncation_side": "left",
            "unk_token": "<unk>",
            "use_default_system_prompt": True,
        },
    )
    write_json(
        d / "special_tokens_map.json",
        {
            k: {"content": c, **FLAGS}
            for k, c in (("bos_token", "<s>"), ("eos_token", "</s>"), ("pad_token", "</s>"), ("unk_token", "<unk>"))
        },
    )
    shutil.copyfile(tokenizer_model_path(), d / "tokenizer.model")


# --- llama3 -----------------------------------------------------------------------------------------------------
LLAMA3_VOCAB_GGUF = "models/ggml-vocab-llama-bpe.gguf"
LLAMA3_TEMPLATE = "models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_FIRST_SPECIAL = 128000  # ids from here on are the 256 control tokens
BOS, EOS = "<|begin_of_text|>", "<|eot_id|>"


def llama3_rope_scaling(shape: Shape) -> dict:
    """Llama 3.1's scaling; tiny uses an original context of 64 so that at head_dim 32 the per-dimension
    factors are a mix of 1, 8 and a smoothed value (with 8192, as the real models have, all would be 1 or 8)."""
    return {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 64 if shape.hidden < 1024 else 8192,
        "rope_type": "llama3",
    }


def read_gguf_kv(path: Path) -> dict[str, object]:
    """The key/values of llama.cpp's vocab file, through expo-gguf's own validating header walk
    (gguf.GGUFReader takes 7 s on its 408k strings, this 0.3 s). Arrays come back as lists."""
    from expo_gguf.gguf_file.header import read_gguf_header

    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in read_gguf_header(Path(path)).values.items()}


@functools.cache
def llama3_tokenizer_files(src: Path) -> dict[str, bytes]:
    """tokenizer.json and tokenizer_config.json as Meta-Llama-3-8B-Instruct ships them, from llama.cpp's copy
    of that vocabulary; cached per process (tokenizer.json is 9 MB: built once, then only written)."""
    kv = read_gguf_kv(src / LLAMA3_VOCAB_GGUF)
    tokens, types, merges = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"], kv["tokenizer.ggml.merges"]
    n = LLAMA3_FIRST_SPECIAL
    if (
        len(tokens) != 128256
        or set(types[:n]) != {1}
        or set(types[n:]) != {3}
        or kv["tokenizer.ggml.bos_token_id"] != n
    ):
        raise FixtureError(f"{src / LLAMA3_VOCAB_GGUF}: not the Llama 3 vocabulary")
    bytelevel = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    bos = {"SpecialToken": {"id": BOS, "type_id": 0}}
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": tokens[i],
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i in range(n, len(tokens))
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
                bytelevel,
            ],
        },
        "post_processor": {
            "type": "Sequence",
            "processors": [
                {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
                {
                    "type": "TemplateProcessing",
                    "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [
                        bos,
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": BOS, "type_id": 1}},
                        {"Sequence": {"id": "B", "type_id": 1}},
                    ],
                    "special_tokens": {BOS: {"id": BOS, "ids": [n], "tokens": [BOS]}},
                },
            ],
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {t: i for i, t in enumerate(tokens[:n])},
            "merges": merges,
        },
    }
    specials = {str(i): {"content": tokens[i], **FLAGS, "special": True} for i in range(n, len(tokens))}
    config = {
        "added_tokens_decoder": specials,
        "bos_token": BOS,
        "chat_template": (src / LLAMA3_TEMPLATE).read_bytes().decode("utf-8"),
        "clean_up_tokenization_spaces": True,
        "eos_token": EOS,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return {
        "tokenizer.json": (json.dumps(tok, indent=2, ensure_ascii=False) + "\n").encode(),
        "tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode(),
    }


def llama3_side_files(d: Path, shape: Shape, repo_id: str, tied: bool, src: Path | None) -> None:
    """As the Llama 3 Instruct family ships them: no tokenizer.model, a byte-level BPE tokenizer.json."""
    if src is None:
        raise FixtureError("the llama3 family needs llama.cpp's vocab files (src=None)")
    config = {
        "_name_or_path": repo_id,
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": 128009,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "hidden_size": shape.hidden,
        "initializer_range": 0.02,
        "intermediate_size": shape.ffn,
        "max_position_embeddings": shape.max_pos,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "num_key_value_heads": shape.kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": llama3_rope_scaling(shape),
        "rope_theta": 500000.0,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.0",
        "use_cache": True,
        "vocab_size": 128256,
    }
    write_json(d / "config.json", {k: v for k, v in config.items() if v is not None})
    write_json(
        d / "generation_config.json",
        {
            "bos_token_id": 128000,
            "do_sample": True,
            "eos_token_id": [128001, 128008, 128009],
            "temperature": 0.6,
            "top_p": 0.9,
            "transformers_version": "4.40.0",
        },
    )
    for name, data in llama3_tokenizer_files(src).items():
        (d / name).write_bytes(data)
    write_json(
        d / "special_tokens_map.json", {"bos_token": {"content": BOS, **FLAGS}, "eos_token": {"content": EOS, **FLAGS}}
    )


FAMILIES: dict[str, Family] = {
    "starling": Family(
        ("openchat-3.5-0106", "openchat/openchat-3.5-0106"),
        ("Starling-LM-7B-beta", "Nexusflow/Starling-LM-7B-beta"),
        32002,
        MISTRAL_SHAPES,
        13_000_000,
        starling_side_files,
    ),
    "zephyr": Family(
        ("mistral-7b-sft-beta", "HuggingFaceH4/mistral-7b-sft-beta"),
        ("zephyr-7b-beta", "HuggingFaceH4/zephyr-7b-beta"),
        32000,
        MISTRAL_SHAPES,
        13_000_000,
        zephyr_side_files,
    ),
    "llama3": Family(
        ("Meta-Llama-3-8B-Instruct", "meta-llama/Meta-Llama-3-8B-Instruct"),
        ("Llama-3-Instruct-8B-SimPO", "princeton-nlp/Llama-3-Instruct-8B-SimPO"),
        128256,
        LLAMA3_SHAPES,
        100_000,
        llama3_side_files,
        needs_llama_cpp=True,
    ),
}
