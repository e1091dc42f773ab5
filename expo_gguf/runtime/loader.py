"""Turn a GGUF path and the run options into a ``ChatModel``, once per session.

Kept apart from ``model`` (what runs every turn) so each reads in one sitting. The context is
capped at the trained length before llama.cpp allocates a KV cache for it, read from the GGUF
header (``gguf_file.header``) instead of loading the model, checking, and loading it again.
"""

from __future__ import annotations

from pathlib import Path

import llama_cpp

from .._data import chatml_template
from ..errors import ExpoError
from ..gguf_file.header import check_header, open_gguf, trained_context_length
from ..gguf_file.info import file_type_name
from .interrupt import interruptible
from .log import show_llama_log
from .model import ChatModel, ModelInfo
from .options import CUDA_HINT, Resolved, RunOptions, cap_context, gpu_offload_available

CHATML_TEMPLATE = chatml_template()  # llama.cpp's own fallback when a GGUF carries no template
CPU_ONLY_NOTE = f"CPU-only llama-cpp-python build; for a GPU: {CUDA_HINT}"  # the chat says it once


def load_llama_model(path: Path, gpu_layers: int) -> llama_cpp.llama_model_p:
    """llama.cpp's model alone, for a stage that makes its own context (eval, imatrix); the caller
    frees it with ``llama_model_free``. A file llama.cpp refuses is one line."""
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0x7FFFFFFF if gpu_layers == -1 else gpu_layers
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        open_gguf(path)  # a damaged file is named by our header check first
        raise ExpoError(f"llama.cpp could not load {path}; --verbose shows its log")
    return model


def _new_llama(run: Resolved, path: Path, n_ctx: int, seed: int) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        str(path),
        n_ctx=n_ctx,
        n_batch=min(512, n_ctx),
        n_gpu_layers=run.gpu_layers,
        n_threads=run.threads,
        n_threads_batch=run.threads,
        seed=seed,
        verbose=run.verbose,
    )


def load_model(path: Path, options: RunOptions | None = None, seed: int = llama_cpp.LLAMA_DEFAULT_SEED) -> ChatModel:
    """Load ``path`` once for the session; bad files end in one ``ExpoError`` line."""
    path = check_header(path)
    run = (options or RunOptions()).resolved()
    show_llama_log(run.verbose)
    warnings, notes = [run.warning] if run.warning else [], []
    if not gpu_offload_available() and not run.warning:
        notes.append(CPU_ONLY_NOTE)
    n_ctx = cap_context(run.n_ctx, trained_context_length(path), warnings)
    try:
        llama = interruptible(_new_llama, run, path, n_ctx, seed, name="llama-load")
    except (ValueError, RuntimeError) as e:
        open_gguf(path)  # names the actual defect (truncation, damage) when there is one
        raise ExpoError(f"llama.cpp could not load {path} ({e}); --verbose shows its log") from None
    n_ctx_train = llama_cpp.llama_model_n_ctx_train(llama.model)
    if 0 < n_ctx_train < n_ctx:  # the header walk missed it (an odd GGUF): load again, capped
        llama.close()
        llama = interruptible(_new_llama, run, path, cap_context(n_ctx, n_ctx_train, warnings), seed, name="llama-load")
    meta = llama.metadata
    template = meta.get("tokenizer.chat_template")
    if not template:
        template = CHATML_TEMPLATE
        notes.append("the GGUF has no chat template; using ChatML")
    n_layers = llama_cpp.llama_model_n_layer(llama.model)
    layers = run.gpu_layers
    offloaded = 0 if layers == 0 else n_layers + 1 if layers < 0 else min(layers, n_layers + 1)
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
