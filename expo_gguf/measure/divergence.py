"""KL divergence between two models' next-token distributions, shared by ``eval`` and ``compare``.

One definition for both commands, llama.cpp's (``tools/perplexity/perplexity.cpp``,
``kl_divergence``): per position KLD = sum_v p_ref (log p_ref - log p), over the whole
vocabulary, summarised by its mean, 99th percentile (linear interpolation) and "same top p", the
share of positions where both models' most likely token agrees. The reference's log-probabilities
are kept as float32 in a temporary memmap, so memory stays bounded whatever the text length.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from ..errors import ExpoError
from ..gguf_file.header import check_header, open_gguf
from ..gguf_file.info import file_type_name

# float32, not float16: float16's step (~1e-3 relative) would be as large as the KLD of Q8_0.
CACHE_DTYPE = np.float32
ROW_BLOCK = 64  # logits rows turned into float64 log-probs at once: bounds memory for any n_ctx


@dataclass(frozen=True)
class VocabInfo:
    """What must match between reference and candidate for their distributions to be comparable."""

    path: Path
    n_vocab: int
    texts: tuple[bytes, ...]  # every token's text, in id order
    bos: int | None  # the id to put first in each chunk, None where the vocab adds no BOS
    file_type: str


@dataclass(frozen=True)
class KldStats:
    n: int
    mean: float
    mean_unc: float
    median: float
    p99: float
    max: float
    same_top_pct: float
    same_top_unc: float


def mean_unc(values: np.ndarray) -> tuple[float, float]:
    """llama.cpp's ``mean_and_uncertainty``: no uncertainty from 10 values or fewer."""
    n = len(values)
    mean = float(values.mean())
    var = float((values * values).mean()) - mean * mean
    return mean, (float(np.sqrt(var / (n - 1))) if var > 0 and n > 10 else 0.0)


def kld_stats(kld: np.ndarray, same_top: np.ndarray) -> KldStats:
    """Summary of per-token KL divergences and top-token agreement, as llama.cpp prints them."""
    kld = np.asarray(kld, dtype=np.float64)
    n = len(kld)
    mean, unc = mean_unc(kld)
    p = float(np.mean(same_top))
    p_unc = float(np.sqrt(p * (1 - p) / (n - 1))) if n > 1 else 0.0
    return KldStats(
        n, mean, unc, float(np.median(kld)), float(np.percentile(kld, 99)), float(kld.max()), 100 * p, 100 * p_unc
    )


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities in float64 (llama.cpp sums its exponentials in double too)."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def kld_rows(ref_logp: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """Per-row KL(ref || cand) from log-probabilities of the same positions."""
    ref = np.asarray(ref_logp, dtype=np.float64)
    return (np.exp(ref) * (ref - np.asarray(logp, dtype=np.float64))).sum(axis=-1)


def logprob_blocks(logits: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """``(rows, log-probs as CACHE_DTYPE)`` for ROW_BLOCK rows at a time.

    Reference and candidate go through this same rounding, so a model against itself is exactly 0.
    """
    for lo in range(0, len(logits), ROW_BLOCK):
        hi = min(lo + ROW_BLOCK, len(logits))
        yield slice(lo, hi), log_softmax(logits[lo:hi]).astype(CACHE_DTYPE)


def against(ref_logp: np.ndarray, logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row KLD and whether both top tokens agree: the two arrays ``kld_stats`` summarises."""
    ref = np.asarray(ref_logp)
    return kld_rows(ref, logp), ref.argmax(axis=1) == logp.argmax(axis=1)


def forced_logits(
    ctx: llama_cpp.llama_context_p, tokens: Sequence[int], first: int, n_batch: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Teacher forcing: the logits at positions ``first .. len(tokens)-2``, each predicting the
    next id, from one pass over ``tokens`` on an empty KV cache in ``n_batch`` pieces.

    Yields ``(row, logits)``: ``row`` counts from ``first``, and ``logits`` is a view of llama.cpp's
    output buffer, valid until the next piece. ``eval`` and ``compare`` both score through here.
    """
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llama_cpp.llama_get_model(ctx)))
    memory = llama_cpp.llama_get_memory(ctx)
    batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
    try:
        for i in range(n_batch):
            batch.seq_id[i][0] = 0
        np.ctypeslib.as_array(batch.n_seq_id, shape=(n_batch,))[:] = 1
        llama_cpp.llama_memory_clear(memory, True)
        end = len(tokens) - 1  # the last id is only a target
        for lo in range(0, end, n_batch):
            n = min(n_batch, end - lo)
            pos = np.arange(lo, lo + n)
            np.ctypeslib.as_array(batch.token, shape=(n_batch,))[:n] = tokens[lo : lo + n]
            np.ctypeslib.as_array(batch.pos, shape=(n_batch,))[:n] = pos
            np.ctypeslib.as_array(batch.logits, shape=(n_batch,))[:n] = pos >= first
            batch.n_tokens = n
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise ExpoError(f"llama_decode failed ({rc}) on a {n}-token batch")
            k = int((pos >= first).sum())
            if k:
                yield max(lo - first, 0), np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(k, n_vocab))
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_memory_clear(memory, True)


@contextlib.contextmanager
def reference_cache(rows: int, n_vocab: int, hint: str) -> Iterator[np.ndarray]:
    """A ``(rows, n_vocab)`` float32 memmap in TMPDIR for the reference's log-probabilities,
    refused up front when the disk cannot hold it (``hint`` says how to ask for less)."""
    with tempfile.TemporaryDirectory(prefix="expo-kld-") as tmp:
        need = rows * n_vocab * np.dtype(CACHE_DTYPE).itemsize
        free = shutil.disk_usage(tmp).free
        if need > free:
            raise ExpoError(
                f"the reference's log-probabilities need {need / 1e9:.1f} GB in {tmp} "
                f"({free / 1e9:.1f} GB free); {hint} or point TMPDIR at a disk with room"
            )
        cache = np.lib.format.open_memmap(
            Path(tmp) / "ref.npy", mode="w+", dtype=CACHE_DTYPE, shape=(max(rows, 1), n_vocab)
        )
        try:
            yield cache
        finally:
            del cache


@contextlib.contextmanager
def vocab_model(path: Path) -> Iterator[llama_cpp.llama_model_p]:
    """The vocabulary alone: fast even for a 7B file, so every input is checked before scoring."""
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        open_gguf(path)
        raise ExpoError(f"llama.cpp could not read the vocabulary of {path}; --verbose shows its log")
    try:
        yield model
    finally:
        llama_cpp.llama_model_free(model)


def read_vocab(path: Path) -> VocabInfo:
    path = check_header(path)
    with vocab_model(path) as model:
        vocab = llama_cpp.llama_model_get_vocab(model)
        n = llama_cpp.llama_vocab_n_tokens(vocab)
        texts = tuple(llama_cpp.llama_vocab_get_text(vocab, i) or b"" for i in range(n))
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        bos = llama_cpp.llama_vocab_bos(vocab)
        buf = ctypes.create_string_buffer(64)
        got = llama_cpp.llama_model_meta_val_str(model, b"general.file_type", buf, len(buf))
        file_type = file_type_name(buf.value.decode() if got > 0 else None).removeprefix("ALL_")
    return VocabInfo(path, n, texts, bos if add_bos and bos >= 0 else None, file_type)


def check_same_vocab(ref: VocabInfo, cand: VocabInfo) -> None:
    """Distributions over different vocabularies have no KL divergence: refuse in one line."""
    if cand.n_vocab != ref.n_vocab:
        raise ExpoError(
            f"{cand.path} has a different vocabulary than {ref.path} ({cand.n_vocab} vs "
            f"{ref.n_vocab} tokens); KL divergence needs the same tokenizer"
        )
    if cand.texts != ref.texts:
        i = next(i for i, (a, b) in enumerate(zip(ref.texts, cand.texts)) if a != b)
        raise ExpoError(
            f"{cand.path} has a different vocabulary than {ref.path} (token {i}: "
            f"{cand.texts[i]!r} vs {ref.texts[i]!r}); KL divergence needs the same tokenizer"
        )
