"""Our one table of quant types, the per-tensor policy, and the row quantizer of the streaming pass.

Block formats (F32 .. Q5_1) are written during the extrapolation pass, a row chunk at a time,
by ggml's row quantizers (gguf-py's numpy ones as the fallback); Q8_0 by our vectorised copy of
ggml's reference (``q8_0``), the same bytes in half the time. K-quants need whole tensors and
llama.cpp's mixing rules (Q4_K_M keeps some tensors at Q6_K), so they are made afterwards from a
16-bit GGUF by ``llama_model_quantize`` (``quant.llama``), exactly as ``llama-quantize`` would.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import gguf
import numpy as np

from ..errors import ExpoError
from .ggml import row_quantizer
from .q8_0 import quantize_q8_0

T = gguf.GGMLQuantizationType
F = gguf.LlamaFileType


@dataclass(frozen=True)
class Quant:
    """A user-facing quant name: the ggml type of its big tensors and who writes it."""

    name: str
    ggml_type: T
    file_type: F
    by_llama_cpp: bool

    @property
    def label(self) -> str:
        return self.name.upper()


QUANTS: dict[str, Quant] = {
    q.name: q
    for q in (
        Quant("f32", T.F32, F.ALL_F32, False),
        Quant("f16", T.F16, F.MOSTLY_F16, False),
        Quant("bf16", T.BF16, F.MOSTLY_BF16, False),
        Quant("q8_0", T.Q8_0, F.MOSTLY_Q8_0, False),
        Quant("q4_0", T.Q4_0, F.MOSTLY_Q4_0, False),
        Quant("q4_1", T.Q4_1, F.MOSTLY_Q4_1, False),
        Quant("q5_0", T.Q5_0, F.MOSTLY_Q5_0, False),
        Quant("q5_1", T.Q5_1, F.MOSTLY_Q5_1, False),
        Quant("q2_k", T.Q2_K, F.MOSTLY_Q2_K, True),
        Quant("q3_k_m", T.Q3_K, F.MOSTLY_Q3_K_M, True),
        Quant("q4_k_s", T.Q4_K, F.MOSTLY_Q4_K_S, True),
        Quant("q4_k_m", T.Q4_K, F.MOSTLY_Q4_K_M, True),
        Quant("q5_k_s", T.Q5_K, F.MOSTLY_Q5_K_S, True),
        Quant("q5_k_m", T.Q5_K, F.MOSTLY_Q5_K_M, True),
        Quant("q6_k", T.Q6_K, F.MOSTLY_Q6_K, True),
    )
}
# K-quants start from this; F16 keeps 3 more mantissa bits than BF16 and weights are far from its range limit.
INTERMEDIATE = QUANTS["f16"]


def parse_quants(text: str) -> list[Quant]:
    """``"Q8_0, q4_k_m"`` -> quants, in order, without repeats; unknown names listed in one error."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in QUANTS]
    if unknown or not names:
        close = difflib.get_close_matches(unknown[0], QUANTS, n=1) if unknown else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ExpoError(f"unknown quant {', '.join(unknown) or repr(text)}{hint}; choose from: {', '.join(QUANTS)}")
    return [QUANTS[n] for n in dict.fromkeys(names)]


def tensor_type(quant: Quant, gguf_name: str, shape: tuple[int, ...]) -> tuple[T, str | None]:
    """The type one tensor gets in a block-format file, and a warning when it must fall back.

    1-D tensors (norms) stay F32 as llama.cpp's converter keeps them; rows that do not split into
    whole blocks fall back to F16.
    """
    if len(shape) < 2 or quant.ggml_type == T.F32:
        return T.F32, None
    qtype = quant.ggml_type
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block:
        return T.F16, f"{gguf_name}: rows of {shape[-1]} do not split into {qtype.name} blocks of {block}; F16 instead"
    return qtype, None


def quantize_rows(rows: np.ndarray, qtype: T) -> np.ndarray:
    """float32 rows -> the bytes ``qtype`` stores for them (a view of ``rows`` for F32)."""
    if qtype == T.F32:
        return rows
    if qtype == T.Q8_0:
        return quantize_q8_0(rows)
    fast = row_quantizer(qtype)
    if fast is not None:
        return fast(rows)
    if qtype == T.F16:
        return rows.astype(np.float16)
    return gguf.quants.quantize(rows, qtype)


def nbytes(qtype: T, shape: tuple[int, ...]) -> int:
    """Bytes a tensor of ``shape`` (HF order, rows first) takes in ``qtype``."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= d
    return n // block * size
