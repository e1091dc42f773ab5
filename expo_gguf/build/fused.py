"""The build's pass per value compiled with numba: widen, permute, extrapolate, check, in one loop.

``build.execute``'s numpy path makes about twenty passes over every value of a BF16 pair: widen
both sides, the difference, and each of the authors' three bf16 roundings in five integer passes,
then the finiteness check (4 ns a value). This loop reads each stored pair of bf16 values once
and writes the float32 result (0.4 ns), with the same operations in the same order: the bf16
rounding is the same integer arithmetic as ``extrapolate._round_bits``, the float32 formula the
same two products and one difference as ``extrapolate.extrapolate`` (numba compiles without
fast-math, so nothing is fused or reordered). Q/K rows are permuted by reading them in permuted
order. ``tests/test_build_fused.py`` checks every result bit against the numpy functions.

Only for pairs stored in bf16 (every Mistral/Llama release); other dtypes take the numpy path.
"""

from __future__ import annotations

import numba
import numpy as np

from .mapping import permute_rows


@numba.njit(inline="always")
def _round(x: np.float32) -> np.float32:  # pragma: no cover - compiled
    u = np.float32(x).view(np.uint32)
    u = np.uint32(u + np.uint32(0x7FFF) + np.uint32(np.uint32(u >> np.uint32(16)) & np.uint32(1)))
    return np.uint32(u & np.uint32(0xFFFF0000)).view(np.float32)


@numba.njit(inline="always")
def _widen(b: np.uint16) -> np.float32:  # pragma: no cover - compiled
    return np.uint32(np.uint32(b) << np.uint32(16)).view(np.float32)


@numba.njit(nogil=True, cache=True)
def _expo_bf16(
    rlhf: np.ndarray, sft: np.ndarray, src: np.ndarray, cols: int, alpha: np.float32, bf16: bool, out: np.ndarray
) -> int:  # pragma: no cover - compiled
    a = np.float32(alpha)
    one_plus = np.float32(np.float32(1) + a)
    bad = 0
    for row in range(src.size):
        i0 = src[row] * cols
        o0 = row * cols
        for c in range(cols):
            r = _widen(rlhf[i0 + c])
            s = _widen(sft[i0 + c])
            if bf16:  # dpo + alpha * (dpo - sft), each operation rounded to bf16
                v = _round(r + _round(_round(r - s) * a))
            else:  # (1 + alpha) * rlhf - alpha * sft in float32
                v = r * one_plus - s * a
            out[o0 + c] = v
            if not np.isfinite(v):
                bad += 1
    return bad


def source_rows(rows: int, rope_rows: int | None) -> np.ndarray:
    """For each output row, the stored row it comes from: ``mapping.permute_rows`` (llama.cpp's
    Q/K permutation) applied to the row numbers, or the identity."""
    index = np.arange(rows, dtype=np.int64)
    return permute_rows(index.reshape(rows, 1), rope_rows).reshape(rows) if rope_rows else index


def expo_bf16_rows(
    rlhf: np.ndarray, sft: np.ndarray, rows: int, rope_rows: int | None, alpha: float, math: str, out: np.ndarray
) -> tuple[np.ndarray, int]:
    """Two checkpoints' stored bf16 rows (uint16) -> the extrapolated float32 rows in ``out``
    (flat, at least ``rlhf.size`` values), Q/K permuted; and how many results are not finite."""
    n = rlhf.size
    bad = _expo_bf16(rlhf, sft, source_rows(rows, rope_rows), n // rows, np.float32(alpha), math == "bf16", out[:n])
    return out[:n], int(bad)
