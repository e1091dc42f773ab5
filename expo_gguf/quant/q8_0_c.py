"""Q8_0 compiled (``_q8_0.c``): the reference arithmetic of ``quant.q8_0`` in one pass per block.

The numpy quantizer makes about ten passes over every value (2.5 ns a value); the C loop reads each
value twice from the cache, once for the block's maximum and once to round it. It is the same
float32 arithmetic in the same order (no fast-math, no fused multiply-adds), so the bytes are
ggml's reference bytes on every CPU; ``tests/test_quantize.py`` checks it against
``ggml_quantize_chunk`` on the same hand-picked ties, subnormals and random rows as the numpy one.
Importing this raises ImportError where the extension was not compiled (``setup.py``).
"""

from __future__ import annotations

import numpy as np

from ._q8_0 import q8_0
from .q8_0 import BLOCK, QK


def quantize_q8_0_c(rows: np.ndarray) -> np.ndarray:
    """float32 rows (each a whole number of blocks) -> their Q8_0 bytes, as ``quantize_q8_0``."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    nb = rows.size // QK
    out = np.empty(nb, BLOCK)
    scales = np.empty(nb, np.float32)
    q8_0(rows.reshape(-1), out.view(np.uint8), scales)
    with np.errstate(over="ignore"):  # a scale above 65504 is inf in f16, as in C
        out["d"] = scales  # float32 -> float16, round to nearest even, as C's conversion
    return out.view(np.uint8).reshape(rows.shape[0], -1)
