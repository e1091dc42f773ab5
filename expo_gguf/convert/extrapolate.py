"""The ExPO arithmetic, in the two ways the build offers, and the widening of stored weights.

``extrapolate`` computes the formula in float32 and rounds once, when the output type is written.
``extrapolate_bf16`` reproduces the ExPO authors' own script (code/extrapolate.py in
chujiezheng/LLM-Extrapolation), which made every published model: both checkpoints loaded in
bfloat16, then ``dpo + alpha * (dpo - sft)`` on bf16 tensors, as torch evaluates it. Each of the
three operations is computed in float32 and rounded to bf16 (round to nearest even), and the Python
float alpha enters as float32(alpha), not rounded to bf16 (torch's kernels take the scalar in their
float32 "opmath" type; checked against torch 2.13 on the CPU, where alpha 0.3 tells the two apart;
the authors ran on CUDA, whose kernels read the scalar the same way in torch's source, not run
here). No torch here: the rounding is integer arithmetic on the float32 bits, in place.
"""

from __future__ import annotations

import numpy as np

_HALF = np.uint32(0x7FFF)  # just under half a bf16 ulp
_HIGH = np.uint32(0xFFFF0000)
_QUIET = np.uint32(0x00400000)  # float32's quiet-NaN bit: bit 6 of the bf16 it becomes


def extrapolate(
    rlhf: np.ndarray,
    sft: np.ndarray,
    alpha: float,
    out: np.ndarray | None = None,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """theta = theta_rlhf + alpha * (theta_rlhf - theta_sft), in float32.

    Model extrapolation (ExPO; Zheng et al., "Weak-to-Strong Extrapolation Expedites Alignment",
    arXiv:2404.16792) moves past the aligned model, away from its SFT starting point. Evaluated as
    (1 + alpha) * rlhf - alpha * sft: the same value, but alpha = 0 returns RLHF and alpha = -1
    returns SFT bit for bit, which a naive difference-then-add does not guarantee.
    ``out`` may be ``rlhf`` itself (the build reuses its buffers); ``scratch`` (float32, ``sft``'s
    size; may be ``sft`` itself when it is needed no more) takes ``alpha * sft`` instead of a fresh
    temporary per call.
    """
    a = np.float32(alpha)
    out = np.multiply(rlhf, np.float32(1) + a, out=out, dtype=np.float32)
    out -= np.multiply(sft, a, out=scratch, dtype=np.float32)
    return out


def round_bf16(x: np.ndarray, out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16, still as float32 (the low 16 bits zero).

    Round to nearest, ties to even, on the bits: add 0x7FFF plus the lowest kept bit, then cut.
    Overflow goes to infinity and subnormals round like any other value, as torch and ggml do.
    A NaN stays a NaN of the same sign and top payload, made quiet (ggml's and gguf-py's rule;
    torch writes one canonical NaN instead, but a NaN in a result fails the build anyway).
    ``out`` may be ``x``; ``scratch`` is a uint32 buffer of at least ``x.size`` to avoid a temporary.
    """
    x = np.ascontiguousarray(x, np.float32)
    if out is None:
        out = np.empty_like(x)
    u, o = x.reshape(-1).view(np.uint32), out.reshape(-1).view(np.uint32)
    with np.errstate(over="ignore", invalid="ignore"):
        special = not np.isfinite(np.sum(u.view(np.float32)))  # a NaN or Inf (or a sum that overflows)
    nan = np.isnan(u.view(np.float32)) if special else None
    kept = u[nan] if nan is not None else None  # a copy: ``out`` may be ``x``
    _round_bits(u, o, scratch)  # a NaN's payload may carry into its sign here; NaNs are put back below
    if nan is not None:
        o[nan] = (kept & _HIGH) | _QUIET
    return out


def _round_bits(u: np.ndarray, o: np.ndarray, scratch: np.ndarray | None) -> None:
    """Round to nearest even on flat uint32 views. Exact for a NaN whose low 16 bits are zero: the
    NaNs float32 arithmetic makes from bf16 values (a quieted input, or the default NaN) all are."""
    bias = np.right_shift(u, 16, out=None if scratch is None else scratch.reshape(-1)[: u.size])
    bias &= 1
    bias += _HALF
    np.add(u, bias, out=o)
    o &= _HIGH


def _round_result(x: np.ndarray, scratch: np.ndarray | None) -> np.ndarray:
    """``round_bf16`` in place for the result of float32 arithmetic on bf16 values, which needs no
    NaN check (see ``_round_bits``): one pass fewer in the build's hot loop."""
    u = x.reshape(-1).view(np.uint32)
    _round_bits(u, u, scratch)
    return x


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounded as ``round_bf16`` rounds."""
    return (round_bf16(x).view(np.uint32) >> 16).astype(np.uint16)


def bf16_delta(rlhf: np.ndarray, sft: np.ndarray, out: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """The authors' first step, ``dpo - sft`` on bf16 tensors: float32 difference, rounded to bf16.

    Shared by every alpha of a build; ``out`` may be ``sft``.
    """
    np.subtract(rlhf, sft, out=out)
    return _round_result(out, scratch)


def bf16_step(
    rlhf: np.ndarray, delta: np.ndarray, alpha: float, out: np.ndarray, scratch: np.ndarray | None = None
) -> np.ndarray:
    """The authors' last two steps, ``dpo + alpha * delta``: each rounded to bf16; ``out`` may be ``delta``
    when no other alpha needs it."""
    np.multiply(delta, np.float32(alpha), out=out)
    _round_result(out, scratch)
    np.add(rlhf, out, out=out)
    return _round_result(out, scratch)


def extrapolate_bf16(rlhf: np.ndarray, sft: np.ndarray, alpha: float, out: np.ndarray | None = None) -> np.ndarray:
    """theta = dpo + alpha * (dpo - sft) exactly as the ExPO authors' torch script computes it on
    bfloat16 tensors; inputs and result are float32 arrays holding bf16 values.

    Unlike ``extrapolate``, alpha = -1 gives SFT only where the rounded difference is exact; this is
    the published models' arithmetic, not an idealised one. ``out`` may be ``sft``.
    """
    if out is None:
        out = np.empty_like(np.asarray(rlhf, np.float32))
    delta = bf16_delta(rlhf, sft, out)
    return bf16_step(rlhf, delta, alpha, delta)


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
