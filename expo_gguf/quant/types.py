"""Our one table of quant types, the per-tensor policy, and the row quantizer of the streaming pass.

Block formats (F32 .. Q5_1) are written during the extrapolation pass, a row chunk at a time,
by ggml's row quantizers (gguf-py's numpy ones as the fallback); Q8_0 by our vectorised copy of
ggml's reference (``q8_0``), the same bytes in half the time. K- and IQ-quants need whole tensors
and llama.cpp's mixing rules (Q4_K_M keeps some tensors at Q6_K), so they are made afterwards
from a 16-bit GGUF by ``llama_model_quantize`` (``quant.llama``), exactly as ``llama-quantize``
would; so is a block type given an importance matrix or tensor overrides.
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
    """A user-facing quant name (llama-quantize's), the ggml type of its big tensors, and who writes it.

    ``needs_imatrix``: llama.cpp refuses the type without an importance matrix, because one of the
    types its mix uses (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, or Q2_K in a Q2_K_S file) is
    garbage without one (``tensor_requires_imatrix`` in llama-quant.cpp).
    """

    name: str
    ggml_type: T
    file_type: F
    by_llama_cpp: bool
    needs_imatrix: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.name.upper()

    @property
    def bpw(self) -> float:
        """Bits per weight of the main tensor type (a mix keeps some tensors wider)."""
        block, size = gguf.GGML_QUANT_SIZES[self.ggml_type]
        return size * 8 / block

    @property
    def imatrix_helps(self) -> bool:
        """ggml's quantizer for the main type weighs its rounding by an importance matrix
        (every quantized type but Q8_0); llama.cpp ignores one for Q8_0 and the float types."""
        return self.ggml_type not in (T.F32, T.F16, T.BF16, T.Q8_0)


# Every type llama-quantize offers for a dense model, by its names; the main ggml type is
# llama_ftype_get_default_type's (IQ2_S files are mostly IQ2_XS, IQ2_M mostly IQ2_S, IQ3_XS/IQ3_M IQ3_S).
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
        Quant("q2_k_s", T.Q2_K, F.MOSTLY_Q2_K_S, True, needs_imatrix=True),
        Quant("q3_k_s", T.Q3_K, F.MOSTLY_Q3_K_S, True),
        Quant("q3_k_m", T.Q3_K, F.MOSTLY_Q3_K_M, True, aliases=("q3_k",)),
        Quant("q3_k_l", T.Q3_K, F.MOSTLY_Q3_K_L, True),
        Quant("q4_k_s", T.Q4_K, F.MOSTLY_Q4_K_S, True),
        Quant("q4_k_m", T.Q4_K, F.MOSTLY_Q4_K_M, True, aliases=("q4_k",)),
        Quant("q5_k_s", T.Q5_K, F.MOSTLY_Q5_K_S, True),
        Quant("q5_k_m", T.Q5_K, F.MOSTLY_Q5_K_M, True, aliases=("q5_k",)),
        Quant("q6_k", T.Q6_K, F.MOSTLY_Q6_K, True),
        Quant("iq1_s", T.IQ1_S, F.MOSTLY_IQ1_S, True, needs_imatrix=True),
        Quant("iq1_m", T.IQ1_M, F.MOSTLY_IQ1_M, True, needs_imatrix=True),
        Quant("iq2_xxs", T.IQ2_XXS, F.MOSTLY_IQ2_XXS, True, needs_imatrix=True),
        Quant("iq2_xs", T.IQ2_XS, F.MOSTLY_IQ2_XS, True, needs_imatrix=True),
        Quant("iq2_s", T.IQ2_XS, F.MOSTLY_IQ2_S, True, needs_imatrix=True),
        Quant("iq2_m", T.IQ2_S, F.MOSTLY_IQ2_M, True, needs_imatrix=True),
        Quant("iq3_xxs", T.IQ3_XXS, F.MOSTLY_IQ3_XXS, True, needs_imatrix=True),
        Quant("iq3_xs", T.IQ3_S, F.MOSTLY_IQ3_XS, True, needs_imatrix=True),
        Quant("iq3_s", T.IQ3_S, F.MOSTLY_IQ3_S, True),
        Quant("iq3_m", T.IQ3_S, F.MOSTLY_IQ3_M, True),
        Quant("iq4_nl", T.IQ4_NL, F.MOSTLY_IQ4_NL, True),
        Quant("iq4_xs", T.IQ4_XS, F.MOSTLY_IQ4_XS, True),
    )
}
ALIASES: dict[str, str] = {a: q.name for q in QUANTS.values() for a in q.aliases}
# K-quants start from this; F16 keeps 3 more mantissa bits than BF16 and weights are far from its range limit.
INTERMEDIATE = QUANTS["f16"]
# ggml tensor types a --tensor-type, --output-tensor-type or --token-embedding-type may name
TENSOR_TYPES: dict[str, T] = {
    t.name.lower(): t
    for t in T
    if t in gguf.GGML_QUANT_SIZES
    and not t.name.startswith(("I8", "I16", "I32", "I64", "F64", "TQ", "MXFP", "NVFP"))
    and t.name not in ("Q8_1", "Q8_K")  # ggml's dot-product intermediates, never stored
}


def find_quant(name: str) -> Quant | None:
    """A quant by its name or llama-quantize's alias, case-insensitive."""
    key = name.strip().lower()
    return QUANTS.get(ALIASES.get(key, key))


def quant_help() -> str:
    """Every type grouped by size, with its bits per weight, for ``--help``."""
    groups: dict[str, list[str]] = {}
    for q in sorted(QUANTS.values(), key=lambda q: (q.bpw, q.name)):
        band = "16-32 bits" if q.bpw >= 16 else "8 bits" if q.bpw >= 8 else f"{int(q.bpw)}-{int(q.bpw) + 1} bits"
        groups.setdefault(band, []).append(f"{q.name} {q.bpw:.2g}{'*' if q.needs_imatrix else ''}")
    bands = sorted(groups, key=lambda b: -float(b.split("-")[0].split()[0]))
    return "; ".join(f"{b}: {', '.join(groups[b])}" for b in bands) + (
        " (bits per weight of the main tensors; * needs --imatrix; aliases "
        + ", ".join(f"{a}={n}" for a, n in ALIASES.items())
        + ")"
    )


def parse_quants(text: str) -> list[Quant]:
    """``"Q8_0, q4_k_m"`` -> quants, in order, without repeats; unknown names listed in one error."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if find_quant(n) is None]
    if unknown or not names:
        close = difflib.get_close_matches(unknown[0], [*QUANTS, *ALIASES], n=1) if unknown else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ExpoError(f"unknown quant {', '.join(unknown) or repr(text)}{hint}; choose from: {', '.join(QUANTS)}")
    return list(dict.fromkeys(find_quant(n) for n in names))  # type: ignore[arg-type]


def parse_tensor_type(name: str, flag: str) -> T:
    """A ggml type as llama-quantize's ``--output-tensor-type q8_0`` names it."""
    t = TENSOR_TYPES.get(name.strip().lower())
    if t is None:
        raise ExpoError(f"{flag} {name!r}: not a ggml type; choose from: {', '.join(TENSOR_TYPES)}")
    return t


def refuse_without_imatrix(quants: list[Quant] | tuple[Quant, ...], have_imatrix: bool) -> None:
    """The types llama.cpp would refuse without an importance matrix, refused before any work."""
    need = [q.name for q in quants if q.needs_imatrix]
    if need and not have_imatrix:
        raise ExpoError(
            f"{', '.join(need)} need{'s' if len(need) == 1 else ''} an importance matrix: "
            "pass --imatrix FILE (from `expo-gguf imatrix`) or --imatrix auto"
        )


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


F16_MAX = 65504.0  # the largest finite f16; K-quant inputs are held to it (see ``overflows``)
_BF16_INF = np.uint32(0x7F7F8000)  # float32 bits from which bf16 rounding gives infinity
_SCALES = {T.Q4_0: 1, T.Q4_1: 2, T.Q5_0: 1, T.Q5_1: 2}  # f16 fields (d, or d and m) that open each block


def overflows(qtype: T, amax: float) -> bool:
    """Whether values up to ``amax`` in magnitude (NaN or Inf: always) would not be finite once
    stored as ``qtype``: exact for F32, F16 and BF16 (rounding is monotone) and for Q8_0, whose
    largest scale is ``amax / 127`` as f16. For Q4_0 .. Q5_1, whose scales depend on each block,
    ``scales_overflow`` checks the written bytes; for a K- or IQ-quant (llama.cpp's, from a float
    file) the input must fit F16's range: its scales are f16 and a fraction of the block's range,
    so nothing up to 65504 overflows any of them."""
    a = np.float32(amax)
    if not np.isfinite(a):
        return True
    with np.errstate(over="ignore"):
        if qtype == T.F16:
            return not np.isfinite(np.float16(a))
        if qtype == T.BF16:
            return bool(abs(a).view(np.uint32) >= _BF16_INF)
        if qtype == T.Q8_0:
            return not np.isfinite(np.float16(a / np.float32(127)))
    if qtype in _SCALES or qtype == T.F32:
        return False
    return bool(abs(a) > F16_MAX)  # K- and IQ-quants


def scales_overflow(qtype: T, data: np.ndarray) -> bool:
    """Whether any block of ``data`` (bytes as ``quantize_rows`` returns them) has an infinite or
    NaN f16 scale: the check for Q4_0, Q4_1, Q5_0 and Q5_1, whose scales ``overflows`` cannot tell."""
    fields = _SCALES.get(qtype)
    if not fields:
        return False
    heads = data.reshape(-1, gguf.GGML_QUANT_SIZES[qtype][1])[:, : 2 * fields]
    return not np.isfinite(np.ascontiguousarray(heads).view(np.float16)).all()


def limit_text(qtype: T) -> str:
    """What ``overflows`` holds a type to, for a message."""
    if qtype in (T.F32, T.BF16, T.F16):
        return f"{qtype.name} holds |x| up to {dict(F32=3.40e38, BF16=3.39e38, F16=65504)[qtype.name]:.6g}"
    if qtype == T.Q8_0:
        return "Q8_0 holds |x| up to 8.32e+06: its f16 scale is a block's largest |x| / 127"
    if qtype in _SCALES:
        return f"{qtype.name}'s f16 block scales would overflow"
    return "llama.cpp quantizes it from F16's range, |x| up to 65504"


def nbytes(qtype: T, shape: tuple[int, ...]) -> int:
    """Bytes a tensor of ``shape`` (HF order, rows first) takes in ``qtype``."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= d
    return n // block * size
