"""``expo-gguf quantize``: any GGUF to another type, through llama.cpp's own quantizer."""

from __future__ import annotations

import re
import time
from pathlib import Path

from .._fs import BuiltFile, part_path, sha256_file
from ..errors import ExpoError
from ..gguf_file.info import describe
from .llama import llama_quantize
from .types import QUANTS, Quant

_SUFFIX = re.compile(r"-(" + "|".join(q.upper() for q in QUANTS) + r")$", re.IGNORECASE)


def default_output(src: Path, quant: Quant) -> Path:
    """``X-F16.gguf`` -> ``X-Q4_K_M.gguf``; a name without a quant suffix gets one."""
    stem = _SUFFIX.sub("", src.stem)
    return src.with_name(f"{stem}-{quant.label}.gguf")


def requantize(src: Path, quant: Quant, out: Path | None, force: bool, threads: int) -> BuiltFile:
    info = describe(src)  # a clear line for a missing, foreign or truncated file
    already_quantized = info.file_type not in (None, "ALL_F32", "F16", "BF16")
    dst = out or default_output(src, quant)
    if dst.resolve() == src.resolve():
        raise ExpoError(f"{dst} is the input; pass --out")
    if dst.exists() and not force:
        raise ExpoError(f"{dst} exists; use --force to overwrite")
    if dst.suffix != ".gguf":
        raise ExpoError(f"{dst}: output name must end in .gguf")
    t0 = time.perf_counter()
    tmp = part_path(dst)
    try:
        llama_quantize(src, tmp, quant, threads, requantize=already_quantized)
        tmp.replace(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BuiltFile(dst, quant.label, dst.stat().st_size, time.perf_counter() - t0, sha256_file(dst))
