"""The ExPO arithmetic, and the widening of stored weights to float32 that feeds it."""

from __future__ import annotations

import numpy as np


def extrapolate(rlhf: np.ndarray, sft: np.ndarray, alpha: float, out: np.ndarray | None = None) -> np.ndarray:
    """theta = theta_rlhf + alpha * (theta_rlhf - theta_sft), in float32.

    Model extrapolation (ExPO; Zheng et al., "Weak-to-Strong Extrapolation Expedites Alignment",
    arXiv:2404.16792) moves past the aligned model, away from its SFT starting point. Evaluated as
    (1 + alpha) * rlhf - alpha * sft: the same value, but alpha = 0 returns RLHF and alpha = -1
    returns SFT bit for bit, which a naive difference-then-add does not guarantee.
    ``out`` may be ``rlhf`` itself (the build reuses its buffers).
    """
    a = np.float32(alpha)
    out = np.multiply(rlhf, np.float32(1) + a, out=out, dtype=np.float32)
    out -= np.multiply(sft, a, dtype=np.float32)
    return out


def widen(stored: np.ndarray, dtype: str, out: np.ndarray) -> np.ndarray:
    """Stored weights (bf16 as uint16, f16, f32) into float32, without temporaries for bf16.

    ``out`` is a flat buffer (its first ``stored.size`` values are written) or a view shaped like
    ``stored``, strided as the caller likes (the build lands Q/K rows in their permuted places).
    """
    if out.shape != stored.shape:
        out = out[: stored.size]
    if dtype == "BF16":
        u32 = out.view(np.uint32)
        u32[:] = stored
        u32 <<= 16
    else:
        out[:] = stored
    return out
