"""Perplexity and KL divergence of GGUF files over a text, as ``llama-perplexity`` defines them.

Definitions follow llama.cpp's ``tools/perplexity/perplexity.cpp`` (``perplexity`` and
``kl_divergence``), so figures compare with published ones: the text is tokenized once (BOS first
where the vocab adds one) and cut into whole chunks of ``n_ctx`` tokens, each evaluated from an
empty KV cache with its first token replaced by BOS (same condition); only the second half is
scored, the logits at positions ``n_ctx//2 .. n_ctx-2`` predicting the next token. PPL =
exp(mean NLL) ± PPL * sqrt(var(NLL) / (n - 1)); KLD and its summary are ``divergence``'s, shared
with ``compare``. Deliberate differences: the reference's log-probabilities are kept as float32
(llama.cpp quantizes them to 16 bits and drops p_ref < e^-16) and the KLD sum runs over the whole
vocabulary.

One model is loaded at a time: the reference's log-probabilities for the scored positions go to a
temporary memmap, then each candidate is compared against it chunk by chunk, so memory is bounded
by one chunk's logits whatever the text length.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from .._fs import read_capped
from .._units import plural
from ..errors import ExpoError
from ..gguf_file.header import check_header
from ..progress import SILENT, Progress
from ..runtime.loader import load_llama_model
from ..runtime.log import show_llama_log
from ..runtime.options import RunOptions
from ..runtime.tokens import tokenize_text
from .divergence import (
    KldStats,
    against,
    check_same_vocab,
    forced_logits,
    kld_stats,
    logprob_blocks,
    mean_unc,
    read_vocab,
    reference_cache,
    vocab_model,
)

MAX_EVAL_TEXT_BYTES = 64 * 2**20  # wikitext-2's test set is 1.3 MB, its training set 11 MB


@dataclass(frozen=True)
class EvalOptions:
    """How to run the models (``run.n_ctx`` is the chunk length) and how much of the text to score."""

    run: RunOptions = field(default_factory=lambda: RunOptions(n_ctx=512))
    max_chunks: int | None = None

    @property
    def n_ctx(self) -> int:
        return self.run.n_ctx


@dataclass(frozen=True)
class PplStats:
    n: int
    mean_nll: float
    ppl: float
    ppl_unc: float


@dataclass(frozen=True)
class FileScore:
    path: Path
    file_type: str
    size_bytes: int
    ppl: PplStats
    kld: KldStats | None  # None for the reference itself

    def to_json(self) -> dict[str, object]:
        return {
            "file": str(self.path),
            "type": self.file_type,
            "size_bytes": self.size_bytes,
            "tokens": self.ppl.n,
            "ppl": self.ppl.ppl,
            "ppl_unc": self.ppl.ppl_unc,
            "mean_nll": self.ppl.mean_nll,
            "kld": asdict(self.kld) if self.kld else None,
        }


def ppl_stats(nll: np.ndarray) -> PplStats:
    """Perplexity from per-token negative log-likelihoods (natural log)."""
    mean, unc = mean_unc(np.asarray(nll, dtype=np.float64))
    ppl = float(np.exp(mean))
    return PplStats(len(nll), mean, ppl, ppl * unc)


def tokenize(vocab_path: Path, text: bytes, bos: int | None) -> list[int]:
    """The text as llama.cpp's ``common_tokenize(ctx, text, add_special=true)`` gives it."""
    with vocab_model(vocab_path) as model:
        toks = tokenize_text(llama_cpp.llama_model_get_vocab(model), text, special=False)
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
        run = opts.run.resolved()
        model = load_llama_model(path, run.gpu_layers)
        self._stack.callback(llama_cpp.llama_model_free, model)
        threads = run.threads
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = opts.n_ctx
        cparams.n_ubatch = min(opts.n_ctx, 512)
        cparams.n_threads = cparams.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not self.ctx:
            self._stack.close()
            raise ExpoError(f"llama.cpp could not create a {opts.n_ctx}-token context for {path}")
        self._stack.callback(llama_cpp.llama_free, self.ctx)
        self.first = opts.n_ctx // 2  # llama.cpp scores the second half of each chunk

    def close(self) -> None:
        self._stack.close()


def score_file(
    path: Path,
    chunks: np.ndarray,
    opts: EvalOptions,
    *,
    reference: np.ndarray | None = None,
    store: np.ndarray | None = None,
    progress: Progress = SILENT,
) -> FileScore:
    """PPL of ``path`` over ``chunks``; with ``reference`` also KLD and same-top against it.

    ``reference`` and ``store`` are ``(n_chunks * scored_count(n_ctx), n_vocab)`` arrays of
    log-probabilities: ``store`` receives this file's (to serve as a reference later).
    """
    info = read_vocab(path)  # checks the header too
    path = info.path
    show_llama_log(opts.run.verbose)
    ev = _Evaluator(path, opts)
    n_scored = scored_count(opts.n_ctx)
    nll, kld, same = [], [], []
    try:
        for c, chunk in enumerate(chunks):
            targets = chunk[ev.first + 1 :]
            for row, logits in forced_logits(ev.ctx, chunk, ev.first, opts.n_ctx):
                for block, logp in logprob_blocks(logits):
                    lo, hi = row + block.start, row + block.stop
                    rows = slice(c * n_scored + lo, c * n_scored + hi)
                    nll.append(-logp[np.arange(len(logp)), targets[lo:hi]].astype(np.float64))
                    if store is not None:
                        store[rows] = logp
                    if reference is not None:
                        k, agree = against(reference[rows], logp)
                        kld.append(k)
                        same.append(agree)
            progress.advance(1)
    finally:
        ev.close()
    return FileScore(
        path,
        info.file_type,
        path.stat().st_size,
        ppl_stats(np.concatenate(nll)),
        kld_stats(np.concatenate(kld), np.concatenate(same)) if reference is not None else None,
    )


@dataclass(frozen=True)
class Report:
    text: Path
    n_ctx: int
    n_chunks: int
    n_tokens: int  # tokens in the text, BOS included
    reference: FileScore
    candidates: tuple[FileScore, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "text": str(self.text),
            "n_ctx": self.n_ctx,
            "chunks": self.n_chunks,
            "text_tokens": self.n_tokens,
            "scored_tokens": self.reference.ppl.n,
            "reference": str(self.reference.path),
            "files": [s.to_json() for s in (self.reference, *self.candidates)],
        }


def prepare(
    reference: Path, candidates: Sequence[Path], text_path: Path, opts: EvalOptions
) -> tuple[np.ndarray, int, int]:
    """Check every input and cut the text into chunks before any model is evaluated.

    Returns the chunks, the text's token count and the vocabulary size.
    """
    show_llama_log(opts.run.verbose)
    for p in (reference, *candidates):
        check_header(p)
    ref = read_vocab(reference)
    for c in candidates:
        check_same_vocab(ref, read_vocab(c))
    text = read_capped(Path(text_path), "eval --text reads texts", MAX_EVAL_TEXT_BYTES).encode("utf-8")
    tokens = tokenize(ref.path, text, ref.bos)
    if len(tokens) < opts.n_ctx:
        raise ExpoError(
            f"{text_path} is {plural(len(tokens), 'token')}, shorter than one chunk of --ctx "
            f"{opts.n_ctx}; use a longer text or a smaller --ctx"
        )
    return make_chunks(tokens, opts.n_ctx, opts.max_chunks, ref.bos), len(tokens), ref.n_vocab


def evaluate(
    reference: Path, candidates: Sequence[Path], text_path: Path, opts: EvalOptions, progress: Progress = SILENT
) -> Report:
    """Score the reference, keep its log-probabilities on disk, then each candidate against them.

    Progress counts chunks of every file; each file's figures are a note once it is scored.
    """
    chunks, n_tokens, n_vocab = prepare(reference, candidates, text_path, opts)
    progress.task("scoring", len(chunks) * (1 + len(candidates)))
    rows = len(chunks) * scored_count(opts.n_ctx) if candidates else 0
    with reference_cache(rows, n_vocab, "use --chunks") as cache:
        ref = score_file(reference, chunks, opts, store=cache if candidates else None, progress=progress)
        progress.note(_summary(ref))
        scores = []
        for c in candidates:
            scores.append(score_file(c, chunks, opts, reference=cache, progress=progress))
            progress.note(_summary(scores[-1]))
    return Report(Path(text_path), opts.n_ctx, len(chunks), n_tokens, ref, tuple(scores))


def _summary(s: FileScore) -> str:
    return f"{s.path.name}: PPL {s.ppl.ppl:.4f}" + (f", mean KLD {s.kld.mean:.6f}" if s.kld else "")
