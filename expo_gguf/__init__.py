"""expo-gguf: ExPO extrapolation straight to GGUF, and an offline chat on top of it.

What a Python user imports, from here and nowhere deeper (the modules behind these names may
move; these names do not)::

    from expo_gguf import BuildRequest, make_plan, run_build, parse_quants
    plan = make_plan(BuildRequest("org/sft", "org/rlhf", (0.5,), tuple(parse_quants("q8_0")), Path("models")))
    built = run_build(plan)

The names are loaded on first use, so ``import expo_gguf`` (and ``expo-gguf --help``) stays fast.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

# llama.cpp's shared libraries are loaded before anything imports numpy (runtime/preload.py says why).


def _started_as_cli() -> bool:
    """``expo-gguf`` (its script) or ``python -m expo_gguf`` is starting (argv[0] is "-m" while
    Python locates the module it runs)."""
    return sys.argv[:1] == ["-m"] or Path(sys.argv[0] if sys.argv else "").name == "expo-gguf"


if not _started_as_cli():  # a library user: llama.cpp first, whatever they import next
    from .runtime.preload import preload_llama

    preload_llama()

_API = {
    "ExpoError": "errors",
    "Progress": "progress",
    "BuiltFile": "_fs",
    "BuildRequest": "convert.plan",
    "Plan": "convert.plan",
    "make_plan": "convert.plan",
    "run_build": "convert.execute",
    "extrapolate": "convert.extrapolate",
    "extrapolate_bf16": "convert.extrapolate",
    "QUANTS": "quant.types",
    "Quant": "quant.types",
    "parse_quants": "quant.types",
    "requantize": "quant.requantize",
    "plan_requantize": "quant.requantize",
    "TensorOverrides": "quant.llama",
    "parse_overrides": "quant.llama",
    "Imatrix": "gguf_file.imatrix",
    "read_imatrix": "gguf_file.imatrix",
    "write_imatrix": "gguf_file.imatrix",
    "load_imatrix": "gguf_file.imatrix",
    "ImatrixOptions": "measure.imatrix",
    "collect_imatrix": "measure.imatrix",
    "load_presets": "source.presets",
    "find_preset": "source.presets",
    "download": "source.remote_repo",
    "GGUFInfo": "gguf_file.info",
    "describe": "gguf_file.info",
    "write_modelfile": "gguf_file.modelfile",
    "RunOptions": "runtime.options",
    "ChatModel": "runtime.model",
    "load_model": "runtime.loader",
    "Message": "chat.messages",
    "Sampling": "chat.messages",
    "Backend": "chat.repl",
    "run_repl": "chat.repl",
    "load_conversation": "chat.conversation",
    "save_conversation": "chat.conversation",
    "EvalOptions": "measure.perplexity",
    "evaluate": "measure.perplexity",
    "CompareOptions": "measure.compare.checks",
    "Comparison": "measure.compare.run",
    "compare": "measure.compare.run",
}
__all__ = [
    "Backend",
    "BuildRequest",
    "BuiltFile",
    "ChatModel",
    "CompareOptions",
    "Comparison",
    "EvalOptions",
    "ExpoError",
    "GGUFInfo",
    "Imatrix",
    "ImatrixOptions",
    "Message",
    "Plan",
    "Progress",
    "QUANTS",
    "Quant",
    "RunOptions",
    "Sampling",
    "TensorOverrides",
    "collect_imatrix",
    "compare",
    "describe",
    "download",
    "evaluate",
    "extrapolate",
    "extrapolate_bf16",
    "find_preset",
    "load_conversation",
    "load_imatrix",
    "load_model",
    "load_presets",
    "make_plan",
    "parse_overrides",
    "parse_quants",
    "plan_requantize",
    "read_imatrix",
    "requantize",
    "run_build",
    "run_repl",
    "save_conversation",
    "write_imatrix",
    "write_modelfile",
]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'expo_gguf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from ._fs import BuiltFile
    from .chat.conversation import load_conversation, save_conversation
    from .chat.messages import Message, Sampling
    from .chat.repl import Backend, run_repl
    from .convert.execute import run_build
    from .convert.extrapolate import extrapolate, extrapolate_bf16
    from .convert.plan import BuildRequest, Plan, make_plan
    from .errors import ExpoError
    from .gguf_file.imatrix import Imatrix, load_imatrix, read_imatrix, write_imatrix
    from .gguf_file.info import GGUFInfo, describe
    from .gguf_file.modelfile import write_modelfile
    from .measure.compare.checks import CompareOptions
    from .measure.compare.run import Comparison, compare
    from .measure.imatrix import ImatrixOptions, collect_imatrix
    from .measure.perplexity import EvalOptions, evaluate
    from .progress import Progress
    from .quant.llama import TensorOverrides, parse_overrides
    from .quant.requantize import plan_requantize, requantize
    from .quant.types import QUANTS, Quant, parse_quants
    from .runtime.loader import load_model
    from .runtime.model import ChatModel
    from .runtime.options import RunOptions
    from .source.presets import find_preset, load_presets
    from .source.remote_repo import download
