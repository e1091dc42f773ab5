#!/usr/bin/env python3
"""Write a synthetic SFT/RLHF checkpoint pair laid out like the real Hugging Face repos.

By default SFT mimics openchat/openchat-3.5-0106 and RLHF Nexusflow/Starling-LM-7B-beta (other
families: scripts/fixture_families.py): same file names, config, tokenizer files and sharded bf16
safetensors, but random weights, so tests and benchmarks run offline without the 29 GB download.
RLHF = SFT + a small delta, so ExPO's extrapolation is non-trivial.  The two are sharded
differently on purpose: readers must not assume that tensor N of both models sits in the same shard.

    python scripts/make_synthetic_pair.py OUT [--family starling|zephyr|llama3] [--tied]
        [--shape tiny|1b|3b|7b] [--seed N] [--shard-mb MB]
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
from types import ModuleType
from typing import BinaryIO

import numpy as np


def _sibling(name: str) -> ModuleType:
    """A module beside this script; tests load scripts by path, so scripts/ need not be on sys.path."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before exec: dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


families = _sibling("fixture_families")
models = _sibling("_models")
FAMILIES = families.FAMILIES
SHAPE_NAMES = ("tiny", "1b", "3b", "7b")
# SFT shard limit; RLHF uses 1.5x so the layouts differ (starling tiny: SFT 3 shards, RLHF 2; 7b: 3 vs 2).
# Capped at half the model so that 1b/3b are sharded too. Tiny's limit is the family's.
BIG_SHARD_BYTES = 5_000_000_000  # HF's max_shard_size="5GB"
CHUNK = 1 << 20  # elements per RNG chunk: fixed, so output does not depend on thread count; cache-sized
STD, DELTA_STD = 0.02, 0.002  # weights like a real init; RLHF moves them by ~10 %
NORM_STD, NORM_DELTA_STD = 0.02, 0.01  # norms near 1.0; delta survives bf16's 2^-8 step at 1.0

Tensor = tuple[str, tuple[int, ...]]


def tensor_list(shape: str, family: str = "starling", tied: bool = False) -> list[Tensor]:
    """HF Mistral/Llama tensor names and shapes, in state_dict order (the order HF shards them in).

    tied: no lm_head.weight (tie_word_embeddings: the output layer is the token embedding).
    """
    fam = FAMILIES[family]
    hidden, layers, heads, kv, ffn, _, _ = s = fam.shapes[shape]
    hd, vocab = s.hd, fam.vocab
    out: list[Tensor] = [("model.embed_tokens.weight", (vocab, hidden))]
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
    out.append(("model.norm.weight", (hidden,)))
    return out if tied else out + [("lm_head.weight", (vocab, hidden))]


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
            print(
                f"{self.label} {self.names[self.k]} ({size:,.0f} MB) done at {time.perf_counter() - self.t0:.1f} s",
                file=sys.stderr,
                flush=True,
            )

    def write_index(self) -> None:
        wm = {self.tensors[i][0]: self.names[k] for k, ids in enumerate(self.shards) for i in ids}
        total = sum(nbytes(s) for _, s in self.tensors)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(wm.items()))}
        (self.d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def make_pair(
    out: Path,
    shape: str = "tiny",
    seed: int = 0,
    shard_bytes: int | None = None,
    family: str = "starling",
    tied: bool = False,
) -> tuple[Path, Path]:
    """Write the family's SFT and RLHF dirs under OUT; return (sft_dir, rlhf_dir).

    starling: OUT/openchat-3.5-0106, OUT/Starling-LM-7B-beta; zephyr: OUT/mistral-7b-sft-beta,
    OUT/zephyr-7b-beta; llama3: OUT/Meta-Llama-3-8B-Instruct, OUT/Llama-3-Instruct-8B-SimPO
    (needs llama.cpp's sources, see scripts/_models.py; FixtureError without them).
    tied: tie_word_embeddings true and no lm_head.weight.

    shard_bytes is the SFT shard limit (capped at half the model, so there are always >= 2 shards);
    RLHF shards at 1.5x it so the two layouts differ.
    Both models are written in one pass (each chunk of random numbers feeds both), two threads
    generate chunks ahead of the writer, and at most a few chunks are in memory at once.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; pick one of {sorted(FAMILIES)}")
    fam = FAMILIES[family]
    if shape not in fam.shapes:
        raise ValueError(f"unknown shape {shape!r}; pick one of {sorted(fam.shapes)}")
    src = None
    if fam.needs_llama_cpp and (src := models.llama_cpp_src()) is None:
        raise families.FixtureError(f"family {family!r}: {models.LLAMA_CPP_SRC_HINT}")
    tensors = tensor_list(shape, family, tied)
    limit = shard_bytes or (fam.tiny_shard_bytes if shape == "tiny" else BIG_SHARD_BYTES)
    limit = min(limit, sum(nbytes(s) for _, s in tensors) // 2)
    out = Path(out)
    shp = fam.shapes[shape]
    verbose = shape != "tiny"
    writers = []
    for (name, repo), label, lim in ((fam.sft, "SFT", limit), (fam.rlhf, "RLHF", limit * 3 // 2)):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("model-*.safetensors"):  # a rerun with other sharding must not leave strays
            old.unlink()
        fam.side_files(d, shp, repo, tied, src)
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
    return sft_w.d, rlhf_w.d


def fake_hf_cache(
    cache_root: Path, repo_id: str, src_dir: Path, revision: str = "0123456789abcdef0123456789abcdef01234567"
) -> Path:
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
    ap.add_argument("--family", choices=sorted(FAMILIES), default="starling")
    ap.add_argument("--tied", action="store_true", help="tie_word_embeddings: no lm_head.weight")
    ap.add_argument("--shape", choices=SHAPE_NAMES, default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-mb", type=float, help="SFT shard limit in MB (1e6 bytes); RLHF uses 1.5x")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        dirs = make_pair(a.out, a.shape, a.seed, int(a.shard_mb * 1e6) if a.shard_mb else None, a.family, a.tied)
    except families.FixtureError as e:
        raise SystemExit(f"error: {e}") from None
    size = 2 * sum(nbytes(s) for _, s in tensor_list(a.shape, a.family, a.tied)) / 1e6
    dt = time.perf_counter() - t0
    print(f"wrote 2 x {size / 2:,.0f} MB in {dt:.1f} s ({size / dt:,.0f} MB/s)", file=sys.stderr)
    for d in dirs:
        print(d)


if __name__ == "__main__":
    main()
