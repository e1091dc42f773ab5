"""Run the same prompts through several GGUFs, one model loaded at a time, and measure the replies.

Each model answers every prompt greedily (temperature 0, fixed seed) from an empty KV cache, the
prompt rendered with its own chat template exactly as ``chat`` renders it (``load_model``,
``ChatModel.stream``), until an end-of-generation token or ``max_tokens``.

With a reference, KL divergence is teacher-forced along the reference's own greedy reply: the
reference's reply (its stop token included, where it stopped) is appended to each model's prompt
and every model, the reference too, evaluates that sequence in one pass; at each reply position
KLD = sum_v p_ref (log p_ref - log p), ``divergence``'s definition, the same as ``eval``'s. The
reference's log-probabilities wait in a temporary memmap (at most prompts x max_tokens rows), so a
model compared with itself gives exactly 0: both sides are the same computation.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import llama_cpp
import numpy as np

from .compare_metrics import Figures, distinct_n, repeated_ngram_rate
from .compare_prompts import Prompt, load_prompts
from .divergence import KldStats, against, check_same_vocab, kld_stats, logprob_blocks, read_vocab, reference_cache
from .errors import ExpoError
from .gguf_check import check_header
from .loader import LoadOptions, load_model
from .runtime import ChatModel, Sampling, set_llama_log
from .units import distinct_names

Progress = Callable[[str, int, int], None]  # (what runs now, steps done since the last call, total)


@dataclass(frozen=True)
class CompareOptions:
    max_tokens: int = 256
    n_ctx: int = 2048
    seed: int = 0
    threads: int | None = None
    n_gpu_layers: str = "auto"
    verbose: bool = False


@dataclass(frozen=True)
class Reply:
    text: str
    tokens: int  # generated, the stop token not counted
    stop: str  # "eog", or "max_tokens" for a runaway
    timed_tokens: int  # tokens the generation clock covers (all but the first: see TurnStats)
    gen_ms: float
    kld_mean: float | None = None  # over this reply's positions, with a reference


@dataclass(frozen=True)
class ModelRun:
    path: Path
    label: str
    file_type: str
    size_bytes: int
    is_reference: bool
    replies: tuple[Reply, ...]
    kld: KldStats | None  # every scored position of every prompt; None for the reference itself

    @property
    def figures(self) -> Figures:
        texts = [r.text for r in self.replies]
        n = len(self.replies)
        ms = sum(r.gen_ms for r in self.replies)
        return Figures(
            replies=n, mean_tokens=sum(r.tokens for r in self.replies) / n,
            mean_chars=sum(len(t) for t in texts) / n, distinct2=distinct_n(texts, 2),
            rep4=repeated_ngram_rate(texts, 4), runaway=sum(r.stop == "max_tokens" for r in self.replies) / n,
            gen_tps=sum(r.timed_tokens for r in self.replies) / ms * 1000 if ms > 0 else 0.0,
            kld_mean=self.kld.mean if self.kld else None, kld_p99=self.kld.p99 if self.kld else None,
            same_top_pct=self.kld.same_top_pct if self.kld else None)


@dataclass(frozen=True)
class Comparison:
    prompts_name: str
    prompts: tuple[Prompt, ...]
    options: CompareOptions
    runs: tuple[ModelRun, ...]  # the reference first, when there is one
    reference: Path | None


def labels(models: Sequence[Path], reference: Path | None) -> list[str]:
    """File stems, the reference's marked, repeats numbered: unique column names for the report."""
    return distinct_names(([f"{reference.stem} (ref)"] if reference else []) + [m.stem for m in models])


def compare(models: Sequence[Path], reference: Path | None, prompts_path: Path | None,
            opts: CompareOptions, on_progress: Progress | None = None) -> Comparison:
    """Check every input first (prompts, headers, vocabularies), then run the models in turn."""
    set_llama_log(opts.verbose)
    name, prompts = load_prompts(prompts_path)
    paths = [check_header(p) for p in ([reference] if reference else []) + list(models)]
    if reference is not None:
        ref_vocab = read_vocab(paths[0])
        for p in paths[1:]:
            check_same_vocab(ref_vocab, read_vocab(p))
    steps = len(paths) * len(prompts) * (2 if reference else 1)
    tick = on_progress or (lambda what, n, total: None)

    def step(what: str, n: int) -> None:
        tick(what, n, steps)

    names = labels(paths[1:] if reference else paths, paths[0] if reference else None)
    if reference is None:
        runs = [_run(path, label, prompts, opts, step)[0] for path, label in zip(paths, names)]
    else:
        stride = opts.max_tokens  # a reply with its stop token is at most max_tokens ids
        with reference_cache(len(prompts) * stride, ref_vocab.n_vocab, "lower --max-tokens") as cache:
            ref, seqs = _run(paths[0], names[0], prompts, opts, step, _Forced(cache, stride))
            runs = [ref] + [_run(path, label, prompts, opts, step, _Forced(cache, stride, seqs))[0]
                            for path, label in zip(paths[1:], names[1:])]
    return Comparison(name, tuple(prompts), opts, tuple(runs), paths[0] if reference else None)


@dataclass(frozen=True)
class _Forced:
    """How a model's teacher-forced pass goes: without ``ref_seqs`` it is the reference's and
    stores its log-probs in ``cache`` (``stride`` rows per prompt); with them, it compares."""

    cache: np.ndarray
    stride: int
    ref_seqs: list[list[int]] | None = None  # the reference's replies, stop tokens included


def _run(path: Path, label: str, prompts: Sequence[Prompt], opts: CompareOptions,
         step: Callable[[str, int], None], forced: _Forced | None = None) -> tuple[ModelRun, list[list[int]]]:
    """One model: every prompt's greedy reply, then its teacher-forced pass; also the reply ids."""
    sampling = Sampling(temp=0.0, seed=opts.seed, max_tokens=opts.max_tokens)
    with _loaded(path, opts) as session:
        prompt_ids = [session.tokenize(list(p.messages)) for p in prompts]
        for p, ids in zip(prompts, prompt_ids):
            if len(ids) + opts.max_tokens > session.info.n_ctx:
                raise ExpoError(f"prompt {p.id} is {len(ids)} tokens for {path.name}: with --max-tokens "
                                f"{opts.max_tokens} it needs --ctx {len(ids) + opts.max_tokens} "
                                f"(now {session.info.n_ctx})")
        step(f"{label}: generating", 0)
        replies, generated = [], []
        for p in prompts:
            session.llama.reset()  # every reply from an empty cache: independent of prompt order
            text = "".join(session.stream(list(p.messages), sampling))
            s = session.last_stats
            assert s is not None
            replies.append(Reply(text, s.generated, s.stop, max(s.generated - 1, 0), s.gen_ms))
            generated.append(list(session.last_tokens))
            step(f"{label}: generating", 1)
        kld = None
        if forced is not None:
            step(f"{label}: " + ("reference log-probs" if forced.ref_seqs is None else "KL divergence"), 0)
            per_reply, kld = _teacher_forced(session, prompt_ids, forced, forced.ref_seqs or generated,
                                             lambda: step("", 1))
            replies = [dataclasses.replace(r, kld_mean=k) for r, k in zip(replies, per_reply)]
        run = ModelRun(path, label, session.info.quant.removeprefix("ALL_"), path.stat().st_size,
                       forced is not None and forced.ref_seqs is None, tuple(replies), kld)
    return run, generated


@contextlib.contextmanager
def _loaded(path: Path, opts: CompareOptions) -> Iterator[ChatModel]:
    session = load_model(LoadOptions(model=path, n_ctx=opts.n_ctx, n_gpu_layers=opts.n_gpu_layers,
                                     threads=opts.threads, seed=opts.seed, verbose=opts.verbose))
    try:
        yield session
    finally:
        session.close()


def _teacher_forced(session: ChatModel, prompt_ids: list[list[int]], forced: _Forced, seqs: list[list[int]],
                    tick: Callable[[], None]) -> tuple[list[float | None], KldStats | None]:
    """Store or compare the log-probs along each reference reply; per-reply mean KLD and the summary."""
    per_reply: list[float | None] = []
    kld, same = [], []
    for i, (prompt, reply) in enumerate(zip(prompt_ids, seqs)):
        mine = []
        for row, logits in _forced_logits(session, prompt + reply, len(prompt) - 1):
            for block, logp in logprob_blocks(logits):
                at = i * forced.stride + row
                rows = slice(at + block.start, at + block.stop)
                if forced.ref_seqs is None:
                    forced.cache[rows] = logp
                else:
                    k, agree = against(forced.cache[rows], logp)
                    mine.append(k)
                    same.append(agree)
        kld += mine
        per_reply.append(float(np.concatenate(mine).mean()) if mine else None)
        tick()
    if forced.ref_seqs is None:
        return per_reply, None
    return per_reply, kld_stats(np.concatenate(kld), np.concatenate(same))


def _forced_logits(session: ChatModel, seq: list[int], first: int) -> Iterator[tuple[int, np.ndarray]]:
    """Logits at positions ``first .. len(seq)-2`` (each predicting the next id) from one pass
    over ``seq`` on an empty cache, in n_batch pieces; yields (row index, view valid until the next)."""
    llama = session.llama
    n_batch, n_vocab = llama.n_batch, llama.n_vocab()
    memory = llama_cpp.llama_get_memory(llama.ctx)
    batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
    try:
        for i in range(n_batch):
            batch.seq_id[i][0] = 0
        np.ctypeslib.as_array(batch.n_seq_id, shape=(n_batch,))[:] = 1
        llama.reset()
        llama_cpp.llama_memory_clear(memory, True)
        end = len(seq) - 1  # the last id is only a target
        for lo in range(0, end, n_batch):
            n = min(n_batch, end - lo)
            pos = np.arange(lo, lo + n)
            np.ctypeslib.as_array(batch.token, shape=(n_batch,))[:n] = seq[lo:lo + n]
            np.ctypeslib.as_array(batch.pos, shape=(n_batch,))[:n] = pos
            np.ctypeslib.as_array(batch.logits, shape=(n_batch,))[:n] = pos >= first
            batch.n_tokens = n
            rc = llama_cpp.llama_decode(llama.ctx, batch)
            if rc != 0:
                raise ExpoError(f"llama_decode failed ({rc}) on a {n}-token batch")
            k = int((pos >= first).sum())
            if k:
                yield max(lo - first, 0), np.ctypeslib.as_array(llama_cpp.llama_get_logits(llama.ctx),
                                                                shape=(k, n_vocab))
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_memory_clear(memory, True)
        llama.reset()
