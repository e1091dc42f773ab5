"""How to run a model: the ``-ngl``/``--threads``/``--ctx``/``--verbose`` every command shares.

``RunOptions`` is what the CLI parses; ``resolved`` turns it into what llama.cpp is given, in one
place for chat, serve, eval, compare and imatrix: the layer count (a CPU-only build ignores
offload requests silently, so we say so) and the thread count (the cores this process may use,
as the build counts them); and the context, never above the trained length (``for_model``: a
default above it is capped silently, a --ctx the user gave is warned about).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ..errors import ExpoError

CUDA_HINT = 'CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python --force-reinstall --no-cache-dir'


def usable_cores() -> int:
    """Cores this process may run on (affinity and cgroup-pinned sets), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def gpu_offload_available() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def resolve_gpu_layers(value: str | int, supports_gpu: bool | None = None) -> tuple[int, str | None]:
    """``-ngl`` to a layer count for llama.cpp, plus a warning when the request cannot be met.

    A CPU-only build silently ignores offload requests, so say so once and how to fix it.
    """
    if supports_gpu is None:
        supports_gpu = gpu_offload_available()
    text = str(value).strip().lower()
    if text == "auto":
        return (-1 if supports_gpu else 0), None
    try:
        n = int(text)
    except ValueError:
        raise ExpoError(f"-ngl takes a layer count, -1 (all) or auto, not {value!r}") from None
    if n < -1:
        raise ExpoError(f"-ngl takes a layer count, -1 (all) or auto, not {value!r}")
    if n != 0 and not supports_gpu:
        return 0, f"this llama-cpp-python build has no GPU support, -ngl {n} ignored; for CUDA: {CUDA_HINT}"
    return n, None


def cap_context(n_ctx: int, n_ctx_train: int | None, warnings: list[str], model: str | None = None) -> int:
    """Never above the trained length: past it a model's positions are out of distribution.

    The warning names ``model`` when given (``chat --vs``: which of the two was capped)."""
    if n_ctx_train and n_ctx > n_ctx_train:
        whose = f"{model}'s" if model else "the"
        warnings.append(f"--ctx {n_ctx} is above {whose} trained length; using {n_ctx_train}")
        return n_ctx_train
    return n_ctx


@dataclass(frozen=True)
class Resolved:
    """What llama.cpp is given: ``gpu_layers`` -1 means all."""

    n_ctx: int
    gpu_layers: int
    threads: int
    verbose: bool
    warning: str | None  # the -ngl request that cannot be met, said once by the caller


@dataclass(frozen=True)
class RunOptions:
    """How to run a model, as the user asked for it."""

    n_ctx: int = 4096
    n_gpu_layers: str = "auto"  # N, -1 for all, or auto
    threads: int | None = None  # None: every core this process may use
    verbose: bool = False
    ctx_asked: bool = True  # False: n_ctx is the command's default, not the user's --ctx

    def for_model(self, n_ctx_train: int | None, warnings: list[str], model: str | None = None) -> RunOptions:
        """These options with the context capped at a model's trained length, before loading it.

        Only what the user asked for is warned about: a --ctx above the trained length is (naming
        ``model`` when given), a default above it is capped without a word (the banner shows the
        context in use), so a 2048-token model does not warn on every chat."""
        n_ctx = cap_context(self.n_ctx, n_ctx_train, warnings if self.ctx_asked else [], model)
        return dataclasses.replace(self, n_ctx=n_ctx)

    def resolved(self) -> Resolved:
        layers, warning = resolve_gpu_layers(self.n_gpu_layers)
        return Resolved(self.n_ctx, layers, self.threads or usable_cores(), self.verbose, warning)
