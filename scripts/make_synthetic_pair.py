#!/usr/bin/env python3
"""Write a synthetic Mistral SFT/RLHF checkpoint pair laid out like the real Hugging Face repos.

SFT mimics openchat/openchat-3.5-0106 and RLHF mimics Nexusflow/Starling-LM-7B-beta: same file
names, config, tokenizer files and sharded bf16 safetensors, but random weights, so tests and
benchmarks run offline without the 29 GB download.  RLHF = SFT + a small delta, so ExPO's
extrapolation is non-trivial.  The two are sharded differently on purpose: readers must not
assume that tensor N of both models sits in the same shard.

    python scripts/make_synthetic_pair.py OUT [--shape tiny|1b|3b|7b] [--seed N] [--shard-mb MB]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np

SFT_NAME, RLHF_NAME = "openchat-3.5-0106", "Starling-LM-7B-beta"
VOCAB = 32002  # 32000 SentencePiece pieces + <|end_of_turn|> + <|pad_0|>
# name: (hidden, layers, heads, kv_heads, intermediate, max_position_embeddings); all multiples of 256
SHAPES: dict[str, tuple[int, int, int, int, int, int]] = {
    "tiny": (256, 2, 4, 2, 512, 2048),
    "1b": (2048, 22, 16, 8, 5632, 8192),
    "3b": (3072, 26, 24, 8, 8192, 8192),
    "7b": (4096, 32, 32, 8, 14336, 8192),
}
# SFT shard limit; RLHF uses 1.5x so the layouts differ (tiny: SFT 3 shards, RLHF 2; 7b: 3 vs 2).
# Capped at half the model so that 1b/3b are sharded too.
DEFAULT_SHARD_BYTES = {"tiny": 13_000_000}
BIG_SHARD_BYTES = 5_000_000_000  # HF's max_shard_size="5GB"
CHUNK = 1 << 20  # elements per RNG chunk: fixed, so output does not depend on thread count; cache-sized
STD, DELTA_STD = 0.02, 0.002  # weights like a real init; RLHF moves them by ~10 %
NORM_STD, NORM_DELTA_STD = 0.02, 0.01  # norms near 1.0; delta survives bf16's 2^-8 step at 1.0

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ 'GPT4 Correct ' + message['role'].title() + ': '"
    " + message['content'] + '<|end_of_turn|>'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'GPT4 Correct Assistant:' }}{% endif %}"
)
SPECIAL = {0: "<unk>", 1: "<s>", 2: "</s>", 32000: "<|end_of_turn|>", 32001: "<|pad_0|>"}

Tensor = tuple[str, tuple[int, ...]]


def tensor_list(shape: str) -> list[Tensor]:
    """HF Mistral tensor names and shapes, in state_dict order (the order HF shards them in)."""
    hidden, layers, heads, kv, ffn, _ = SHAPES[shape]
    hd = hidden // heads
    out: list[Tensor] = [("model.embed_tokens.weight", (VOCAB, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (heads * hd, hidden)),
            (p + "self_attn.k_proj.weight", (kv * hd, hidden)),
            (p + "self_attn.v_proj.weight", (kv * hd, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, heads * hd)),
            (p + "mlp.gate_proj.weight", (ffn, hidden)),
            (p + "mlp.up_proj.weight", (ffn, hidden)),
            (p + "mlp.down_proj.weight", (hidden, ffn)),
            (p + "input_layernorm.weight", (hidden,)),
            (p + "post_attention_layernorm.weight", (hidden,)),
        ]
    return out + [("model.norm.weight", (hidden,)), ("lm_head.weight", (VOCAB, hidden))]


def nbytes(shape: tuple[int, ...]) -> int:
    return 2 * int(np.prod(shape))


def plan_shards(tensors: list[Tensor], limit: int) -> list[list[int]]:
    """Greedy split like transformers' save_pretrained: a tensor larger than the limit sits alone."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, shape) in enumerate(tensors):
        if shards[-1] and size + nbytes(shape) > limit:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes(shape)
    return shards


def to_bf16(x: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), round-to-nearest-even, clobbering x; inputs are finite.

    In-place ops on a reused scratch buffer: fresh temporaries cost more (page faults) than the math.
    """
    u = x.view(np.uint32)
    r = np.right_shift(u, 16, out=scratch[: u.size])
    r &= 1
    r += 0x7FFF
    u += r
    out = np.empty(u.size, np.uint16)
    np.right_shift(u, 16, out=out, casting="unsafe")
    return out


def make_chunk(seed: int, idx: int, name: str, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk `start` of tensor `idx` for both models; seeded per chunk so threads stay deterministic."""
    rng = np.random.default_rng([seed, idx, start])
    norm = name.endswith("norm.weight")
    w = rng.standard_normal(n, dtype=np.float32)
    w *= NORM_STD if norm else STD
    if norm:
        w += 1.0
    # Uniform delta (5x cheaper than normal) with the requested std: (U - 0.5) * sqrt(12) * std.
    d = rng.random(n, dtype=np.float32)
    d -= 0.5
    d *= np.float32(12**0.5 * (NORM_DELTA_STD if norm else DELTA_STD))
    d += w
    scratch = np.empty(n, np.uint32)
    return to_bf16(w, scratch), to_bf16(d, scratch)


def st_header(tensors: list[Tensor], ids: list[int]) -> bytes:
    """8-byte LE length + JSON header padded with spaces to a multiple of 8, as safetensors writes."""
    meta: dict[str, object] = {"__metadata__": {"format": "pt"}}
    off = 0
    for i in ids:
        name, shape = tensors[i]
        meta[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nbytes(shape)]}
        off += nbytes(shape)
    h = json.dumps(meta, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h


class ShardWriter:
    """Streams one model's shards: opens shard k when its first tensor comes, closes it after its last."""

    def __init__(self, d: Path, label: str, tensors: list[Tensor], limit: int, verbose: bool) -> None:
        self.d, self.label, self.tensors, self.verbose = d, label, tensors, verbose
        self.t0 = time.perf_counter()
        self.shards = plan_shards(tensors, limit)
        self.names = [f"model-{k + 1:05d}-of-{len(self.shards):05d}.safetensors" for k in range(len(self.shards))]
        self.where = {i: k for k, ids in enumerate(self.shards) for i in ids}
        self.f: BinaryIO | None = None
        self.k = -1

    def begin_tensor(self, i: int) -> None:
        k = self.where[i]
        if k != self.k:
            self.close()
            self.k = k
            self.f = open(self.d / self.names[k], "wb")
            self.f.write(st_header(self.tensors, self.shards[k]))

    def write(self, data: np.ndarray) -> None:
        self.f.write(memoryview(data))

    def close(self) -> None:
        if self.f is None:
            return
        self.f.close()
        self.f = None
        if self.verbose:
            size = sum(nbytes(self.tensors[i][1]) for i in self.shards[self.k]) / 1e6
            print(f"{self.label} {self.names[self.k]} ({size:,.0f} MB) done at "
                  f"{time.perf_counter() - self.t0:.1f} s", file=sys.stderr, flush=True)

    def write_index(self) -> None:
        wm = {self.tensors[i][0]: self.names[k] for k, ids in enumerate(self.shards) for i in ids}
        total = sum(nbytes(s) for _, s in self.tensors)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(wm.items()))}
        (self.d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def tokenizer_model_path() -> Path:
    """Mistral's 32000-piece SentencePiece model, shipped inside mistral-common (no download)."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mistral-common is needed for tokenizer.model: pip install --no-deps mistral-common")
    return Path(spec.submodule_search_locations[0]) / "data" / "tokenizer.model.v1"


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_side_files(d: Path, shape: str, name_or_path: str) -> None:
    """config, generation config and tokenizer files as openchat/Starling ship them."""
    hidden, layers, heads, kv, ffn, max_pos = SHAPES[shape]
    write_json(d / "config.json", {
        "_name_or_path": name_or_path, "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 1, "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": hidden,
        "initializer_range": 0.02, "intermediate_size": ffn, "max_position_embeddings": max_pos,
        "model_type": "mistral", "num_attention_heads": heads, "num_hidden_layers": layers,
        "num_key_value_heads": kv, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.38.2",
        "use_cache": True, "vocab_size": VOCAB,
    })
    write_json(d / "generation_config.json", {
        "_from_model_config": True, "bos_token_id": 1, "eos_token_id": 32000, "transformers_version": "4.38.2"})
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    write_json(d / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(i): {"content": c, **flags, "special": True} for i, c in SPECIAL.items()},
        "additional_special_tokens": [], "bos_token": "<s>", "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False, "eos_token": "<|end_of_turn|>", "legacy": True,
        "model_max_length": 1000000000000000019884624838656, "pad_token": None, "sp_model_kwargs": {},
        "spaces_between_special_tokens": False, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
        "use_default_system_prompt": False,
    })
    write_json(d / "added_tokens.json", {"<|end_of_turn|>": 32000, "<|pad_0|>": 32001})
    write_json(d / "special_tokens_map.json", {
        k: {"content": c, **flags} for k, c in
        (("bos_token", "<s>"), ("eos_token", "<|end_of_turn|>"), ("unk_token", "<unk>"))})
    shutil.copyfile(tokenizer_model_path(), d / "tokenizer.model")


def make_pair(out: Path, shape: str = "tiny", seed: int = 0, shard_bytes: int | None = None) -> tuple[Path, Path]:
    """Write OUT/openchat-3.5-0106 (SFT) and OUT/Starling-LM-7B-beta (RLHF); return (sft_dir, rlhf_dir).

    shard_bytes is the SFT shard limit (capped at half the model, so there are always >= 2 shards);
    RLHF shards at 1.5x it so the two layouts differ.
    Both models are written in one pass (each chunk of random numbers feeds both), two threads
    generate chunks ahead of the writer, and at most a few chunks are in memory at once.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; pick one of {sorted(SHAPES)}")
    tensors = tensor_list(shape)
    limit = shard_bytes or DEFAULT_SHARD_BYTES.get(shape, BIG_SHARD_BYTES)
    limit = min(limit, sum(nbytes(s) for _, s in tensors) // 2)
    out = Path(out)
    sft_dir, rlhf_dir = out / SFT_NAME, out / RLHF_NAME
    verbose = shape != "tiny"
    writers = []
    for d, label, lim, repo in ((sft_dir, "SFT", limit, "openchat/openchat-3.5-0106"),
                                (rlhf_dir, "RLHF", limit * 3 // 2, "Nexusflow/Starling-LM-7B-beta")):
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("model-*.safetensors"):  # a rerun with other sharding must not leave strays
            old.unlink()
        write_side_files(d, shape, repo)
        writers.append(ShardWriter(d, label, tensors, lim, verbose))
    sft_w, rlhf_w = writers

    jobs = iter([(i, s) for i, (_, shp) in enumerate(tensors) for s in range(0, int(np.prod(shp)), CHUNK)])
    pending: deque[tuple[int, int, Future]] = deque()
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def submit() -> None:
            job = next(jobs, None)
            if job is not None:
                i, s = job
                n = min(CHUNK, int(np.prod(tensors[i][1])) - s)
                pending.append((i, s, pool.submit(make_chunk, seed, i, tensors[i][0], s, n)))

        for _ in range(2 * workers):  # bounded lookahead keeps RAM at a few chunks
            submit()
        while pending:
            i, s, fut = pending.popleft()
            sft, rlhf = fut.result()
            submit()
            if s == 0:
                sft_w.begin_tensor(i)
                rlhf_w.begin_tensor(i)
            sft_w.write(sft)
            rlhf_w.write(rlhf)
    for w in writers:
        w.close()
        w.write_index()
    return sft_dir, rlhf_dir


def fake_hf_cache(cache_root: Path, repo_id: str, src_dir: Path,
                  revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Lay src_dir out as huggingface_hub's cache entry for repo_id; return the snapshot dir.

    blobs/<sha256>, snapshots/<revision>/<file> as relative symlinks to ../../blobs/<sha256>,
    refs/main holding the revision without a newline.  Blobs are hard links when possible
    (a 7b shard is not copied twice), copies otherwise.
    """
    repo = Path(cache_root) / ("models--" + repo_id.replace("/", "--"))
    blobs, snap = repo / "blobs", repo / "snapshots" / revision
    blobs.mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for src in sorted(p for p in Path(src_dir).rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with open(src, "rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
        blob = blobs / h.hexdigest()
        if not blob.exists():
            try:
                os.link(src, blob)
            except OSError:
                shutil.copyfile(src, blob)
        link = snap / src.relative_to(src_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snap


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-mb", type=float, help="SFT shard limit in MB (1e6 bytes); RLHF uses 1.5x")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    dirs = make_pair(a.out, a.shape, a.seed, int(a.shard_mb * 1e6) if a.shard_mb else None)
    size = 2 * sum(nbytes(s) for _, s in tensor_list(a.shape)) / 1e6
    dt = time.perf_counter() - t0
    print(f"wrote 2 x {size / 2:,.0f} MB in {dt:.1f} s ({size / dt:,.0f} MB/s)", file=sys.stderr)
    for d in dirs:
        print(d)


if __name__ == "__main__":
    main()
