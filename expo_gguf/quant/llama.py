"""llama.cpp's own quantizer, in process: K-quants from a 16-bit GGUF, and ``expo-gguf quantize``.

A thin wrapper over ``llama_model_quantize`` (what ``llama-quantize`` runs, with its mixes: Q4_K_M
keeps some tensors at Q6_K) that raises ``ExpoError`` with llama.cpp's own error line on failure.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from ..errors import ExpoError
from .types import Quant


def llama_quantize(src: Path, dst: Path, quant: Quant, threads: int, requantize: bool = False) -> None:
    """Write ``dst`` as ``quant`` from ``src`` with llama.cpp's quantizer; its per-tensor log is silenced."""
    try:
        import llama_cpp

        from ..runtime.log import capture_errors
    except ImportError as e:
        raise ExpoError(f"K-quants need llama-cpp-python ({e}); install it or pick a block quant like q8_0") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(quant.file_type)
    params.nthread = threads
    params.allow_requantize = requantize
    with capture_errors() as errors:
        rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        why = errors[-1] if errors else f"code {rc}"
        raise ExpoError(f"llama.cpp could not quantize {src.name} to {quant.label}: {why}", exit_code=1)
