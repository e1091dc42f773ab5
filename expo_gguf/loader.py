"""Turn a GGUF path and the CLI's options into a ``ChatModel``, once per session.

Kept apart from ``runtime`` (what runs every turn) so each reads in one sitting. The context is
capped at the trained length before llama.cpp allocates a KV cache for it, read from the GGUF
header (``gguf_check``) instead of loading the model, checking, and loading it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from .errors import ExpoError
from .gguf_check import check_header, open_gguf, trained_context_length
from .gguf_info import file_type_name
from .runtime import CUDA_HINT, ChatModel, ModelInfo, set_llama_log, resolve_gpu_layers

# llama.cpp's own fallback when a GGUF carries no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


@dataclass(frozen=True)
class LoadOptions:
    """What ``load_model`` needs; built by the CLI from its options."""

    model: Path
    n_ctx: int = 4096
    n_gpu_layers: str = "auto"
    threads: int | None = None
    seed: int = llama_cpp.LLAMA_DEFAULT_SEED
    verbose: bool = False


def cap_context(n_ctx: int, n_ctx_train: int | None, warnings: list[str]) -> int:
    """Never above the trained length: past it a model's positions are out of distribution."""
    if n_ctx_train and n_ctx > n_ctx_train:
        warnings.append(f"--ctx {n_ctx} is above the trained length; using {n_ctx_train}")
        return n_ctx_train
    return n_ctx


def _new_llama(opts: LoadOptions, path: Path, n_ctx: int, n_gpu_layers: int) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        str(path), n_ctx=n_ctx, n_batch=min(512, n_ctx), n_gpu_layers=n_gpu_layers,
        n_threads=opts.threads, n_threads_batch=opts.threads, seed=opts.seed,
        verbose=opts.verbose,
    )


def load_model(opts: LoadOptions) -> ChatModel:
    """Load ``opts.model`` once for the session; bad files end in one ``ExpoError`` line."""
    path = check_header(opts.model)
    set_llama_log(opts.verbose)
    n_gpu_layers, warning = resolve_gpu_layers(opts.n_gpu_layers)
    warnings, notes = [warning] if warning else [], []
    if not llama_cpp.llama_supports_gpu_offload() and not warning:
        notes.append(f"CPU-only llama-cpp-python build; for a GPU: {CUDA_HINT}")
    n_ctx = cap_context(opts.n_ctx, trained_context_length(path), warnings)
    try:
        llama = _new_llama(opts, path, n_ctx, n_gpu_layers)
    except (ValueError, RuntimeError) as e:
        open_gguf(path)  # names the actual defect (truncation, damage) when there is one
        raise ExpoError(f"llama.cpp could not load {path} ({e}); --verbose shows its log") from None
    n_ctx_train = llama_cpp.llama_model_n_ctx_train(llama.model)
    if 0 < n_ctx_train < n_ctx:  # the header walk missed it (an odd GGUF): load again, capped
        llama.close()
        llama = _new_llama(opts, path, cap_context(n_ctx, n_ctx_train, warnings), n_gpu_layers)
    meta = llama.metadata
    template = meta.get("tokenizer.chat_template")
    if not template:
        template = CHATML_TEMPLATE
        notes.append("the GGUF has no chat template; using ChatML")
    n_layers = llama_cpp.llama_model_n_layer(llama.model)
    offloaded = 0 if n_gpu_layers == 0 else n_layers + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layers + 1)
    info = ModelInfo(
        name=meta.get("general.name") or path.stem,
        path=path,
        quant=file_type_name(meta.get("general.file_type")),
        size_bytes=path.stat().st_size,
        # llama-cpp-python's token buffer holds what was asked for; llama.cpp may round its own
        # context up (to a multiple of 256), so the smaller of the two is what a prompt may use
        n_ctx=min(llama.n_ctx(), llama.context_params.n_ctx),
        n_ctx_train=n_ctx_train,
        n_layers=n_layers,
        gpu_layers=offloaded,
        notes=tuple(notes),
        warnings=tuple(warnings),
    )
    return ChatModel(llama, info, template)
