"""Run the same prompts through several GGUFs, one model loaded at a time, and measure the replies.

Each model answers every prompt greedily (temperature 0, fixed seed) from an empty KV cache, the
prompt rendered with its own chat template exactly as ``chat`` renders it (``load_model``,
``ChatModel.stream``), until an end-of-generation token or ``max_tokens``. Every input is checked
first (``compare_check``): nothing is generated until every prompt fits every model.

With a reference, KL divergence is teacher-forced along the reference's own greedy reply: the
reference's reply (its stop token included, where it stopped) is appended to each model's prompt
and every model, the reference too, evaluates that sequence in one pass (``forced_logits``, the
loop ``eval`` uses); at each reply position KLD = sum_v p_ref (log p_ref - log p), ``divergence``'s
definition. The reference's log-probabilities wait in a temporary memmap sized after its replies
are generated (one row per reply token), so a model compared with itself gives exactly 0: both
sides are the same computation.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...chat.messages import Sampling
from ...errors import ExpoError
from ...progress import SILENT, Progress
from ...runtime.loader import load_model
from ...runtime.log import show_llama_log
from ...runtime.model import ChatModel
from ..divergence import KldStats, against, forced_logits, kld_stats, logprob_blocks, reference_cache
from .checks import Checked, CompareOptions, ModelCheck, check_inputs
from .metrics import Figures, figures
from .prompts import Prompt

__all__ = ["CompareOptions", "Comparison", "ModelRun", "Reply", "compare", "run_checked"]

Step = Callable[[str, int], None]  # (what runs now or "" for the same, steps done since the last call)


@dataclass(frozen=True)
class Reply:
    text: str
    tokens: int  # generated, the stop token not counted
    stop: str  # "eog", or "max_tokens" for a runaway
    timed_tokens: int  # the one-token decodes the generation clock covers (llama.cpp's n_eval)
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
        ms = sum(r.gen_ms for r in self.replies)
        return figures(
            [r.text for r in self.replies],
            [r.tokens for r in self.replies],
            [r.stop == "max_tokens" for r in self.replies],
            sum(r.timed_tokens for r in self.replies) / ms * 1000 if ms > 0 else 0.0,
            self.kld,
        )


@dataclass(frozen=True)
class Comparison:
    prompts_name: str
    prompts: tuple[Prompt, ...]
    options: CompareOptions
    runs: tuple[ModelRun, ...]  # the reference first, when there is one
    reference: Path | None

    @property
    def reference_figures(self) -> Figures | None:
        """What every other model's text figures are judged against, with ``--ref``."""
        return self.runs[0].figures if self.reference is not None else None


@dataclass(frozen=True)
class _RefLogprobs:
    """The reference's replies (stop tokens included) and their log-probs, packed row after row."""

    seqs: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # prompt i's rows start at offsets[i]
    cache: np.ndarray


def compare(
    models: Sequence[Path],
    reference: Path | None,
    prompts_path: Path | None,
    opts: CompareOptions,
    progress: Progress = SILENT,
) -> Comparison:
    """Check every input, then run the models in turn (the CLI calls the two halves itself)."""
    return run_checked(check_inputs(models, reference, prompts_path, opts), opts, progress)


def run_checked(checked: Checked, opts: CompareOptions, progress: Progress = SILENT) -> Comparison:
    """Progress counts prompts: one step per model and prompt, twice with a reference (replies, KLD)."""
    show_llama_log(opts.run.verbose)
    prompts = checked.prompts
    every = checked.every
    progress.task("starting", len(every) * len(prompts) * (2 if checked.reference else 1))

    def step(what: str, n: int) -> None:
        if what:
            progress.task(what)
        if n:
            progress.advance(n)

    if checked.reference is None:
        runs = [_plain(m, prompts, opts, step) for m in checked.models]
    else:
        with contextlib.ExitStack() as stack:
            ref_run, ref = _store_reference(checked.reference, prompts, opts, step, stack, checked.n_vocab)
            runs = [ref_run] + [_score_against(m, prompts, opts, step, ref) for m in checked.models]
    return Comparison(
        checked.prompts_name, prompts, opts, tuple(runs), checked.reference.path if checked.reference else None
    )


def _plain(m: ModelCheck, prompts: Sequence[Prompt], opts: CompareOptions, step: Step) -> ModelRun:
    """One model without a reference: its greedy replies."""
    with _loaded(m.path, opts) as session:
        replies, _ = _generate(session, m.label, prompts, opts, step)
        return _model_run(session, m, replies, None, is_reference=False)


def _store_reference(
    m: ModelCheck,
    prompts: Sequence[Prompt],
    opts: CompareOptions,
    step: Step,
    stack: contextlib.ExitStack,
    n_vocab: int,
) -> tuple[ModelRun, _RefLogprobs]:
    """The reference's replies, then its log-probs along them, kept open on ``stack``."""
    with _loaded(m.path, opts) as session:
        replies, seqs = _generate(session, m.label, prompts, opts, step)
        offsets = [0]
        for s in seqs:
            offsets.append(offsets[-1] + len(s))
        cache = stack.enter_context(reference_cache(offsets[-1], n_vocab, "lower --max-tokens or give fewer prompts"))
        step(f"{m.label}: reference log-probs", 0)
        for i, (p, seq) in enumerate(zip(prompts, seqs)):
            for row, logp in _forced_logprobs(session, _prompt_ids(session, p), seq):
                cache[offsets[i] + row : offsets[i] + row + len(logp)] = logp
            step("", 1)
        run = _model_run(session, m, replies, None, is_reference=True)
    return run, _RefLogprobs(tuple(map(tuple, seqs)), tuple(offsets), cache)


def _score_against(
    m: ModelCheck, prompts: Sequence[Prompt], opts: CompareOptions, step: Step, ref: _RefLogprobs
) -> ModelRun:
    """A model's own replies, then its KL divergence from the reference along the reference's."""
    with _loaded(m.path, opts) as session:
        replies, _ = _generate(session, m.label, prompts, opts, step)
        step(f"{m.label}: KL divergence", 0)
        kld, same, per_reply = [], [], []
        for i, (p, seq) in enumerate(zip(prompts, ref.seqs)):
            mine = []
            for row, logp in _forced_logprobs(session, _prompt_ids(session, p), list(seq)):
                at = ref.offsets[i] + row
                k, agree = against(ref.cache[at : at + len(logp)], logp)
                mine.append(k)
                same.append(agree)
            kld += mine
            per_reply.append(float(np.concatenate(mine).mean()))
            step("", 1)
        replies = [dataclasses.replace(r, kld_mean=k) for r, k in zip(replies, per_reply)]
        return _model_run(session, m, replies, kld_stats(np.concatenate(kld), np.concatenate(same)), is_reference=False)


def _generate(
    session: ChatModel, label: str, prompts: Sequence[Prompt], opts: CompareOptions, step: Step
) -> tuple[list[Reply], list[list[int]]]:
    """Every prompt's greedy reply from an empty cache, and its ids (stop token included)."""
    sampling = Sampling(temp=0.0, seed=opts.seed, max_tokens=opts.max_tokens)
    step(f"{label}: generating", 0)
    replies, seqs = [], []
    for p in prompts:
        session.llama.reset()  # every reply from an empty cache: independent of prompt order
        text = "".join(session.stream(list(p.messages), sampling))
        s = session.last_stats
        assert s is not None
        replies.append(Reply(text, s.generated, s.stop, s.gen_evaluated, s.gen_ms))
        seqs.append(list(session.last_tokens))
        step(f"{label}: generating", 1)
    return replies, seqs


def _prompt_ids(session: ChatModel, p: Prompt) -> list[int]:
    try:
        return session.tokenize(list(p.messages))
    except ExpoError as e:
        raise ExpoError(f"prompt {p.id}: {e}") from None


def _forced_logprobs(session: ChatModel, prompt: list[int], reply: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(row, float32 log-probs) along ``reply`` after ``prompt``: one row per reply id."""
    session.llama.reset()
    try:
        for row, logits in forced_logits(session.llama.ctx, prompt + reply, len(prompt) - 1, session.llama.n_batch):
            for block, logp in logprob_blocks(logits):
                yield row + block.start, logp
    finally:
        session.llama.reset()


def _model_run(
    session: ChatModel, m: ModelCheck, replies: list[Reply], kld: KldStats | None, is_reference: bool
) -> ModelRun:
    return ModelRun(
        m.path,
        m.label,
        session.info.quant.removeprefix("ALL_"),
        m.path.stat().st_size,
        is_reference,
        tuple(replies),
        kld,
    )


@contextlib.contextmanager
def _loaded(path: Path, opts: CompareOptions) -> Iterator[ChatModel]:
    """Load warnings were said once by ``check_inputs``, before anything ran."""
    session = load_model(path, opts.run, seed=opts.seed)
    try:
        yield session
    finally:
        session.close()
