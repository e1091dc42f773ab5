"""The build's pass per value compiled (``_fused.c``): widen, permute, extrapolate, measure, in one loop.

``convert.execute``'s numpy path makes about twenty passes over every value of a BF16 pair: widen
both sides, the difference, and each of the authors' three bf16 roundings in five integer passes,
then the range check (4 ns a value). The C loop reads each stored pair of bf16 values once and
writes the float32 result (0.6 ns a value; 0.35 in float32 maths), the same operations in the same
order: the bf16 rounding is the same integer arithmetic as ``extrapolate._round_bits``, the
float32 formula the same two products and one difference as ``extrapolate.extrapolate``
(``setup.py`` compiles it without fast-math or contraction, so nothing is fused or reordered). Q/K
rows are permuted by reading them in permuted order. ``tests/test_build_fused.py`` checks every
result bit against the numpy functions.

Only for pairs stored in bf16 (every Mistral/Llama release); other dtypes take the numpy path.
"""

from __future__ import annotations

import numpy as np

from . import _fused  # ImportError where the extension was not compiled (setup.py)
from .mapping import permute_rows


def source_rows(rows: int, rope_rows: int | None) -> np.ndarray:
    """For each output row, the stored row it comes from: ``mapping.permute_rows`` (llama.cpp's
    Q/K permutation) applied to the row numbers, or the identity."""
    index = np.arange(rows, dtype=np.int64)
    return permute_rows(index.reshape(rows, 1), rope_rows).reshape(rows) if rope_rows else index


def expo_bf16_rows(
    rlhf: np.ndarray, sft: np.ndarray, rows: int, rope_rows: int | None, alpha: float, math: str, out: np.ndarray
) -> tuple[np.ndarray, float]:
    """Two checkpoints' stored bf16 rows (uint16) -> the extrapolated float32 rows in ``out``
    (flat, at least ``rlhf.size`` values), Q/K permuted; and their largest magnitude (NaN or Inf
    where a result is not finite), what the build checks against each output type's range."""
    n = rlhf.size
    top = _fused.expo_bf16(rlhf, sft, source_rows(rows, rope_rows), n // rows, alpha, math == "bf16", out[:n])
    return out[:n], float(np.uint32(top).view(np.float32))
