"""Perplexity and KL divergence of GGUF files over a text, as ``llama-perplexity`` defines them.

Definitions follow llama.cpp's ``tools/perplexity/perplexity.cpp`` (``perplexity`` and
``kl_divergence``), so figures compare with published ones: the text is tokenized once (BOS first
where the vocab adds one) and cut into whole chunks of ``n_ctx`` tokens, each evaluated from an
empty KV cache with its first token replaced by BOS (same condition); only the second half is
scored, the logits at positions ``n_ctx//2 .. n_ctx-2`` predicting the next token. PPL =
exp(mean NLL) ± PPL * sqrt(var(NLL) / (n - 1)); per token KLD = sum_v p_ref (log p_ref - log p),
summarised by its mean, 99th percentile (linear interpolation) and "same top p", the share of
positions where both models' most likely token agrees. Deliberate differences: the reference's
log-probabilities are kept as float32 (llama.cpp quantizes them to 16 bits and drops p_ref < e^-16)
and the KLD sum runs over the whole vocabulary.

One model is loaded at a time: the reference's log-probabilities for the scored positions go to a
temporary memmap, then each candidate is compared against it chunk by chunk, so memory is bounded
by one chunk's logits whatever the text length.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import llama_cpp
import numpy as np

from .errors import ExpoError
from .gguf_check import check_header, open_gguf
from .runtime import quant_name, set_llama_log

# float32, not float16: float16's step (~1e-3 relative) would be as large as the KLD of Q8_0.
CACHE_DTYPE = np.float32
ROW_BLOCK = 64  # logits rows turned into float64 log-probs at once: bounds memory for any n_ctx


@dataclass(frozen=True)
class EvalOptions:
    """How to run the models; ``n_gpu_layers`` is already resolved (see runtime.resolve_gpu_layers)."""

    n_ctx: int = 512
    max_chunks: int | None = None
    threads: int | None = None
    n_gpu_layers: int = 0
    verbose: bool = False


@dataclass(frozen=True)
class VocabInfo:
    """What must match between reference and candidate for their distributions to be comparable."""

    path: Path
    n_vocab: int
    texts: tuple[bytes, ...]  # every token's text, in id order
    bos: int | None  # the id to put first in each chunk, None where the vocab adds no BOS
    file_type: str


@dataclass(frozen=True)
class PplStats:
    n: int
    mean_nll: float
    ppl: float
    ppl_unc: float


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


@dataclass(frozen=True)
class FileScore:
    path: Path
    file_type: str
    size_bytes: int
    ppl: PplStats
    kld: KldStats | None  # None for the reference itself

    def to_json(self) -> dict[str, object]:
        return {"file": str(self.path), "type": self.file_type, "size_bytes": self.size_bytes,
                "tokens": self.ppl.n, "ppl": self.ppl.ppl, "ppl_unc": self.ppl.ppl_unc,
                "mean_nll": self.ppl.mean_nll, "kld": asdict(self.kld) if self.kld else None}


def _mean_unc(values: np.ndarray) -> tuple[float, float]:
    """llama.cpp's ``mean_and_uncertainty``: no uncertainty from 10 values or fewer."""
    n = len(values)
    mean = float(values.mean())
    var = float((values * values).mean()) - mean * mean
    return mean, (float(np.sqrt(var / (n - 1))) if var > 0 and n > 10 else 0.0)


def ppl_stats(nll: np.ndarray) -> PplStats:
    """Perplexity from per-token negative log-likelihoods (natural log)."""
    mean, unc = _mean_unc(np.asarray(nll, dtype=np.float64))
    ppl = float(np.exp(mean))
    return PplStats(len(nll), mean, ppl, ppl * unc)


def kld_stats(kld: np.ndarray, same_top: np.ndarray) -> KldStats:
    """Summary of per-token KL divergences and top-token agreement, as llama.cpp prints them."""
    kld = np.asarray(kld, dtype=np.float64)
    n = len(kld)
    mean, unc = _mean_unc(kld)
    p = float(np.mean(same_top))
    p_unc = float(np.sqrt(p * (1 - p) / (n - 1))) if n > 1 else 0.0
    return KldStats(n, mean, unc, float(np.median(kld)), float(np.percentile(kld, 99)),
                    float(kld.max()), 100 * p, 100 * p_unc)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities in float64 (llama.cpp sums its exponentials in double too)."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def kld_rows(ref_logp: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """Per-row KL(ref || cand) from log-probabilities of the same positions."""
    ref = np.asarray(ref_logp, dtype=np.float64)
    return (np.exp(ref) * (ref - np.asarray(logp, dtype=np.float64))).sum(axis=-1)


@contextlib.contextmanager
def _vocab_model(path: Path) -> Iterator[llama_cpp.llama_model_p]:
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
    with _vocab_model(path) as model:
        vocab = llama_cpp.llama_model_get_vocab(model)
        n = llama_cpp.llama_vocab_n_tokens(vocab)
        texts = tuple(llama_cpp.llama_vocab_get_text(vocab, i) or b"" for i in range(n))
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        bos = llama_cpp.llama_vocab_bos(vocab)
        buf = ctypes.create_string_buffer(64)
        got = llama_cpp.llama_model_meta_val_str(model, b"general.file_type", buf, len(buf))
        file_type = quant_name(buf.value.decode() if got > 0 else None).removeprefix("ALL_")
    return VocabInfo(path, n, texts, bos if add_bos and bos >= 0 else None, file_type)


def check_same_vocab(ref: VocabInfo, cand: VocabInfo) -> None:
    """Distributions over different vocabularies have no KL divergence: refuse in one line."""
    if cand.n_vocab != ref.n_vocab:
        raise ExpoError(f"{cand.path} has a different vocabulary than {ref.path} ({cand.n_vocab} vs "
                        f"{ref.n_vocab} tokens); KL divergence needs the same tokenizer")
    if cand.texts != ref.texts:
        i = next(i for i, (a, b) in enumerate(zip(ref.texts, cand.texts)) if a != b)
        raise ExpoError(f"{cand.path} has a different vocabulary than {ref.path} (token {i}: "
                        f"{cand.texts[i]!r} vs {ref.texts[i]!r}); KL divergence needs the same tokenizer")


def tokenize(vocab_path: Path, text: bytes, bos: int | None) -> list[int]:
    """The text as llama.cpp's ``common_tokenize(ctx, text, add_special=true)`` gives it."""
    with _vocab_model(vocab_path) as model:
        vocab = llama_cpp.llama_model_get_vocab(model)
        buf = (llama_cpp.llama_token * (len(text) + 1))()
        n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, len(buf), False, False)
        if n < 0:
            buf = (llama_cpp.llama_token * -n)()
            n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, len(buf), False, False)
        toks = list(buf[:n])
    return ([bos] if bos is not None else []) + toks


def make_chunks(tokens: Sequence[int], n_ctx: int, max_chunks: int | None, bos: int | None) -> np.ndarray:
    """Whole chunks of ``n_ctx`` tokens, each starting with BOS where the vocab adds one."""
    n = len(tokens) // n_ctx
    if max_chunks is not None:
        n = min(n, max_chunks)
    chunks = np.asarray(tokens[: n * n_ctx], dtype=np.int32).reshape(n, n_ctx)
    if bos is not None:
        chunks[:, 0] = bos
    return chunks


def scored_count(n_ctx: int) -> int:
    return n_ctx - 1 - n_ctx // 2


class _Evaluator:
    """One model and context, decoding chunk after chunk from an empty KV cache."""

    def __init__(self, path: Path, opts: EvalOptions) -> None:
        self._stack = contextlib.ExitStack()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0x7FFFFFFF if opts.n_gpu_layers == -1 else opts.n_gpu_layers
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            open_gguf(path)
            raise ExpoError(f"llama.cpp could not load {path}; --verbose shows its log")
        self._stack.callback(llama_cpp.llama_model_free, model)
        threads = opts.threads or os.cpu_count() or 1
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = opts.n_ctx
        cparams.n_ubatch = min(opts.n_ctx, 512)
        cparams.n_threads = cparams.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not self.ctx:
            self._stack.close()
            raise ExpoError(f"llama.cpp could not create a {opts.n_ctx}-token context for {path}")
        self._stack.callback(llama_cpp.llama_free, self.ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        self.n_ctx = opts.n_ctx
        self.first = opts.n_ctx // 2
        self.batch = llama_cpp.llama_batch_init(opts.n_ctx, 0, 1)
        self._stack.callback(llama_cpp.llama_batch_free, self.batch)
        for i in range(opts.n_ctx):
            self.batch.seq_id[i][0] = 0
        np.ctypeslib.as_array(self.batch.n_seq_id, shape=(opts.n_ctx,))[:] = 1
        np.ctypeslib.as_array(self.batch.pos, shape=(opts.n_ctx,))[:] = np.arange(opts.n_ctx)
        # llama.cpp asks for logits from position n_ctx/2 on; the last one predicts nothing.
        np.ctypeslib.as_array(self.batch.logits, shape=(opts.n_ctx,))[:] = np.arange(opts.n_ctx) >= self.first
        self.batch.n_tokens = opts.n_ctx

    def logits(self, chunk: np.ndarray) -> np.ndarray:
        """A view of llama.cpp's output buffer: rows for positions first..n_ctx-1, valid until the next call."""
        np.ctypeslib.as_array(self.batch.token, shape=(self.n_ctx,))[:] = chunk
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        rc = llama_cpp.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise ExpoError(f"llama_decode failed ({rc}) on a {self.n_ctx}-token chunk")
        n_out = self.n_ctx - self.first
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.ctx), shape=(n_out, self.n_vocab))

    def close(self) -> None:
        self._stack.close()


def score_file(path: Path, chunks: np.ndarray, opts: EvalOptions, *, reference: np.ndarray | None = None,
               store: np.ndarray | None = None, on_chunk: Callable[[], None] | None = None) -> FileScore:
    """PPL of ``path`` over ``chunks``; with ``reference`` also KLD and same-top against it.

    ``reference`` and ``store`` are ``(n_chunks * scored_count(n_ctx), n_vocab)`` arrays of
    log-probabilities: ``store`` receives this file's (to serve as a reference later).
    """
    info = read_vocab(path)  # checks the header too
    path = info.path
    set_llama_log(opts.verbose)
    ev = _Evaluator(path, opts)
    n_scored = scored_count(opts.n_ctx)
    nll, kld, same = [], [], []
    try:
        for c, chunk in enumerate(chunks):
            logits = ev.logits(chunk)
            targets = chunk[ev.first + 1:]
            for lo in range(0, n_scored, ROW_BLOCK):
                hi = min(lo + ROW_BLOCK, n_scored)
                rows = slice(c * n_scored + lo, c * n_scored + hi)
                logp = log_softmax(logits[lo:hi]).astype(CACHE_DTYPE)
                nll.append(-logp[np.arange(hi - lo), targets[lo:hi]].astype(np.float64))
                if store is not None:
                    store[rows] = logp
                if reference is not None:
                    ref = np.asarray(reference[rows])
                    kld.append(kld_rows(ref, logp))
                    same.append(ref.argmax(axis=1) == logp.argmax(axis=1))
            if on_chunk:
                on_chunk()
    finally:
        ev.close()
    return FileScore(path, info.file_type, path.stat().st_size, ppl_stats(np.concatenate(nll)),
                     kld_stats(np.concatenate(kld), np.concatenate(same)) if reference is not None else None)


@dataclass(frozen=True)
class Report:
    text: Path
    n_ctx: int
    n_chunks: int
    n_tokens: int  # tokens in the text, BOS included
    reference: FileScore
    candidates: tuple[FileScore, ...]

    def to_json(self) -> dict[str, object]:
        return {"text": str(self.text), "n_ctx": self.n_ctx, "chunks": self.n_chunks,
                "text_tokens": self.n_tokens, "scored_tokens": self.reference.ppl.n,
                "reference": str(self.reference.path),
                "files": [s.to_json() for s in (self.reference, *self.candidates)]}


def prepare(reference: Path, candidates: Sequence[Path], text_path: Path,
            opts: EvalOptions) -> tuple[np.ndarray, int, int]:
    """Check every input and cut the text into chunks before any model is evaluated.

    Returns the chunks, the text's token count and the vocabulary size.
    """
    set_llama_log(opts.verbose)
    for p in (reference, *candidates):
        check_header(p)
    ref = read_vocab(reference)
    for c in candidates:
        check_same_vocab(ref, read_vocab(c))
    try:
        text = Path(text_path).read_bytes()
    except OSError as e:
        raise ExpoError(f"cannot read the text {text_path}: {e.strerror or e}") from None
    tokens = tokenize(ref.path, text, ref.bos)
    if len(tokens) < opts.n_ctx:
        raise ExpoError(f"{text_path} is {len(tokens)} tokens, shorter than one chunk of --ctx "
                        f"{opts.n_ctx}; use a longer text or a smaller --ctx")
    return make_chunks(tokens, opts.n_ctx, opts.max_chunks, ref.bos), len(tokens), ref.n_vocab


def evaluate(reference: Path, candidates: Sequence[Path], text_path: Path, opts: EvalOptions,
             on_file: Callable[[FileScore], None] | None = None,
             on_chunk: Callable[[int], None] | None = None) -> Report:
    """Score the reference, keep its log-probabilities on disk, then each candidate against them.

    ``on_chunk(total)`` is called after every chunk of every file, with the total to expect.
    """
    chunks, n_tokens, n_vocab = prepare(reference, candidates, text_path, opts)
    total = len(chunks) * (1 + len(candidates))
    tick = (lambda: on_chunk(total)) if on_chunk else None
    rows = len(chunks) * scored_count(opts.n_ctx)
    with tempfile.TemporaryDirectory(prefix="expo-eval-") as tmp:
        need = rows * n_vocab * np.dtype(CACHE_DTYPE).itemsize if candidates else 0
        free = shutil.disk_usage(tmp).free
        if need > free:
            raise ExpoError(f"the reference's log-probabilities need {need / 1e9:.1f} GB in {tmp} "
                            f"({free / 1e9:.1f} GB free); use --chunks or point TMPDIR elsewhere")
        cache = np.lib.format.open_memmap(Path(tmp) / "ref.npy", mode="w+", dtype=CACHE_DTYPE,
                                          shape=(rows, n_vocab)) if candidates else None
        ref = score_file(reference, chunks, opts, store=cache, on_chunk=tick)
        if on_file:
            on_file(ref)
        scores = []
        for c in candidates:
            scores.append(score_file(c, chunks, opts, reference=cache, on_chunk=tick))
            if on_file:
                on_file(scores[-1])
        del cache
    return Report(Path(text_path), opts.n_ctx, len(chunks), n_tokens, ref, tuple(scores))
