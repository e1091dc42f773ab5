"""Everything ``compare`` checks before the first model loads, and what it has to say about it.

Prompts, headers and (with ``--ref``) vocabularies, then per model what ``load_model`` would
decide (the context capped at the trained length, ChatML where the GGUF has no template) and
whether every prompt, rendered with that model's template over its vocabulary alone, leaves room
for ``--max-tokens``: a run never fails on its last model after the first ones took minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp

from ..._data import chatml_template
from ..._units import file_labels, plural
from ...errors import ExpoError
from ...gguf_file.header import check_header, trained_context_length
from ...gguf_file.info import describe
from ...runtime.log import show_llama_log
from ...runtime.options import RunOptions, cap_context
from ...runtime.tokens import PromptFormat
from ..divergence import check_same_vocab, read_vocab, vocab_model
from .prompts import Prompt, load_prompts

NO_TEMPLATE = "the GGUF has no chat template; using ChatML"


@dataclass(frozen=True)
class CompareOptions:
    """How to run the models (``run.n_ctx`` must hold the longest prompt plus ``max_tokens``)."""

    run: RunOptions = field(default_factory=lambda: RunOptions(n_ctx=2048))
    max_tokens: int = 256
    seed: int = 0
    max_prompts: int | None = None  # the first N prompts only (a quick look), else all

    @property
    def n_ctx(self) -> int:
        return self.run.n_ctx


@dataclass(frozen=True)
class ModelCheck:
    path: Path
    label: str
    n_ctx: int  # --ctx, capped at the trained length
    longest_prompt: int  # tokens, with this model's template
    warnings: tuple[str, ...]  # a request that will not be met (--ctx capped)
    notes: tuple[str, ...]  # how it will run (ChatML for a GGUF without a template)


@dataclass(frozen=True)
class Checked:
    prompts_name: str
    prompts: tuple[Prompt, ...]
    reference: ModelCheck | None
    models: tuple[ModelCheck, ...]
    n_vocab: int  # the shared vocabulary's size with a reference, else 0
    warnings: tuple[str, ...]  # for the whole run (-ngl on a build without a GPU)

    @property
    def every(self) -> tuple[ModelCheck, ...]:
        return ((self.reference,) if self.reference else ()) + self.models


def check_inputs(
    models: Sequence[Path], reference: Path | None, prompts_path: Path | None, opts: CompareOptions
) -> Checked:
    """Refuse in one line whatever would stop the run later; collect what the user should read."""
    show_llama_log(opts.run.verbose)
    name, prompts = load_prompts(prompts_path)
    if opts.max_prompts is not None and len(prompts) > opts.max_prompts:
        prompts = prompts[: opts.max_prompts]
        name = f"{name}, the first {opts.max_prompts}"
    paths = [check_header(p) for p in ([reference] if reference else []) + list(models)]
    n_vocab = 0
    if reference is not None:
        ref_vocab = read_vocab(paths[0])
        for p in paths[1:]:
            check_same_vocab(ref_vocab, read_vocab(p))
        n_vocab = ref_vocab.n_vocab
    gpu_warning = opts.run.resolved().warning
    labels = file_labels(paths)
    if reference is not None:
        labels[0] += " (ref)"
    checks = [_check_model(p, label, prompts, opts) for p, label in zip(paths, labels)]
    return Checked(
        name,
        tuple(prompts),
        checks[0] if reference else None,
        tuple(checks[1:] if reference else checks),
        n_vocab,
        (gpu_warning,) if gpu_warning else (),
    )


def _check_model(path: Path, label: str, prompts: Sequence[Prompt], opts: CompareOptions) -> ModelCheck:
    warnings: list[str] = []
    n_ctx = cap_context(opts.n_ctx, trained_context_length(path), warnings)
    template = describe(path).chat_template
    longest = 0
    with vocab_model(path) as model:
        fmt = PromptFormat(llama_cpp.llama_model_get_vocab(model), template or chatml_template(), path.name)
        for p in prompts:
            try:
                n = len(fmt.tokenize(list(p.messages)))
            except ExpoError as e:
                raise ExpoError(f"prompt {p.id}: {e}") from None
            longest = max(longest, n)
            if n + opts.max_tokens > n_ctx:
                raise ExpoError(_too_long(p, n, path, n_ctx, opts))
    return ModelCheck(path, label, n_ctx, longest, tuple(warnings), () if template else (NO_TEMPLATE,))


def _too_long(p: Prompt, n: int, path: Path, n_ctx: int, opts: CompareOptions) -> str:
    need = n + opts.max_tokens
    head = f"prompt {p.id} is {plural(n, 'token')} for {path.name}: with --max-tokens {opts.max_tokens} it needs"
    if n_ctx < opts.n_ctx:  # capped: a larger --ctx cannot help
        return f"{head} a context of {need}, above the model's trained length {n_ctx}; lower --max-tokens"
    return f"{head} --ctx {need} (now {n_ctx})"
