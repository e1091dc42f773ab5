"""Q8_0 compiled with numba: the reference arithmetic of ``quant.q8_0`` in one pass per block.

The numpy quantizer makes about ten passes over every value (2.5 ns a value); this loop reads each
value twice from the cache, once for the block's maximum and once to round it (0.7 ns). It is the
same float32 arithmetic in the same order (no fast-math: no fused multiply-adds, no reordering),
so the bytes are ggml's reference bytes on every CPU; ``tests/test_quantize.py`` checks it against
``ggml_quantize_chunk`` on the same hand-picked ties, subnormals and random rows as the numpy one.
Imported only by a build large enough to repay numba's start-up (``build.execute``).
"""

from __future__ import annotations

import numba
import numpy as np

from .q8_0 import _HALF_BELOW, BLOCK, BLOCK_BYTES, QK


@numba.njit(nogil=True, cache=True)
def _q8_0(x: np.ndarray, out: np.ndarray, scales: np.ndarray) -> None:  # pragma: no cover - compiled
    half = _HALF_BELOW
    for b in range(x.size // QK):
        o = b * QK
        amax = np.float32(0)
        for j in range(QK):
            a = abs(x[o + j])
            if a > amax:  # NaN is never the maximum, as in the numpy tree (the build refuses NaN anyway)
                amax = a
        d = amax / np.float32(127)
        inv = np.float32(1) / d if d != 0 else np.float32(0)
        scales[b] = d
        q0 = b * BLOCK_BYTES + 2
        for j in range(QK):
            v = x[o + j]
            f = abs(v) * inv + half
            # roundf(x * id), ties away from zero; a subnormal block's inf or NaN product casts to 0,
            # as the numpy quantizer's and C's conversions do on x86 and ARM alike
            q = np.int32(f) if f < np.float32(128) else np.int32(0)
            out[q0 + j] = np.uint8(np.int32(-q if v < 0 else q) & 0xFF)


def quantize_q8_0_jit(rows: np.ndarray) -> np.ndarray:
    """float32 rows (each a whole number of blocks) -> their Q8_0 bytes, as ``quantize_q8_0``."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    nb = rows.size // QK
    out = np.empty(nb, BLOCK)
    scales = np.empty(nb, np.float32)
    with np.errstate(all="ignore"):
        _q8_0(rows.reshape(-1), out.view(np.uint8), scales)
        out["d"] = scales  # float32 -> float16, round to nearest even, as C's conversion
    return out.view(np.uint8).reshape(rows.shape[0], -1)
