"""ggml's own quantizers, reached through ctypes in the libraries llama-cpp-python bundles.

Block types go through ``ggml_quantize_chunk`` (libggml-base): the reference code llama-quantize
uses, byte-identical to gguf-py's numpy quantizers and so to convert_hf_to_gguf, on every CPU
(measured: Q8_0 233 M values/s/core against gguf-py's ~100-270 M). F16/BF16 use libggml-cpu's
SIMD converters, which round exactly as IEEE/gguf-py do (1.0 of bytes equal, 0.7-3 G values/s).
ggml's SIMD *Q8_0* row quantizer is faster still but rounds ties differently per CPU, so a file's
sha256 would depend on the machine: not used. Both release the GIL, so worker threads scale.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

FromFloat = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_int64)


class _TraitsCpu(ctypes.Structure):
    _fields_ = [
        ("from_float", ctypes.c_void_p),
        ("vec_dot", ctypes.c_void_p),
        ("vec_dot_type", ctypes.c_int),
        ("nrows", ctypes.c_int64),
    ]


_LOCK = threading.Lock()
_LIBS: dict[str, ctypes.CDLL | None] = {}


def _lib(stem: str) -> ctypes.CDLL | None:
    """libggml-base / libggml-cpu from llama-cpp-python's package, or None where unavailable."""
    with _LOCK:
        if stem in _LIBS:
            return _LIBS[stem]
        lib = None
        if not os.environ.get("EXPO_GGUF_NO_GGML"):  # lets tests and benchmarks use gguf-py's numpy
            try:
                import llama_cpp  # loads the libraries with the rpaths they need

                libdir = Path(llama_cpp.__file__).parent / "lib"
                path = next(
                    (
                        libdir / f"{p}{stem}{s}"
                        for p in ("lib", "")
                        for s in (".so", ".dylib", ".dll")
                        if (libdir / f"{p}{stem}{s}").exists()
                    ),
                    None,
                )
                lib = ctypes.CDLL(str(path)) if path else None
                if lib is not None and stem == "ggml-cpu":
                    lib.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_TraitsCpu)
                    lib.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
                    lib.ggml_cpu_init()
                elif lib is not None:
                    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
                    lib.ggml_quantize_chunk.argtypes = [
                        ctypes.c_int,
                        ctypes.c_void_p,
                        ctypes.c_void_p,
                        ctypes.c_int64,
                        ctypes.c_int64,
                        ctypes.c_int64,
                        ctypes.c_void_p,
                    ]
            except (ImportError, OSError, AttributeError):
                lib = None
        _LIBS[stem] = lib
        return lib


@functools.cache
def row_quantizer(qtype: gguf.GGMLQuantizationType) -> Callable[[np.ndarray], np.ndarray] | None:
    """A function float32 rows -> packed bytes for ``qtype`` from ggml, or None if absent."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if qtype in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16):
        cpu = _lib("ggml-cpu")
        addr = cpu.ggml_get_type_traits_cpu(int(qtype)).contents.from_float if cpu else None
        if not addr:
            return None
        convert = FromFloat(addr)

        def run(rows: np.ndarray, out: np.ndarray) -> None:
            convert(rows.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.ctypes.data, rows.size)
    else:
        base = _lib("ggml-base")
        if base is None:
            return None

        def run(rows: np.ndarray, out: np.ndarray) -> None:
            base.ggml_quantize_chunk(
                int(qtype), rows.ctypes.data, out.ctypes.data, 0, rows.shape[0], rows.shape[1], None
            )

    def quantize(rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        out = np.empty((rows.shape[0], rows.shape[1] // block * type_size), dtype=np.uint8)
        run(rows, out)
        return out

    return quantize
