"""llama.cpp's own quantizer, in process: K- and IQ-quants from a 16-bit GGUF, and ``expo-gguf quantize``.

A thin wrapper over ``llama_model_quantize`` (what ``llama-quantize`` runs, with its mixes: Q4_K_M
keeps some tensors at Q6_K) that raises ``ExpoError`` with llama.cpp's own error line on failure.
An importance matrix goes in through ``llama_model_imatrix_data`` and the per-tensor overrides
through the same parameters llama-quantize fills from ``--output-tensor-type``,
``--token-embedding-type``, ``--tensor-type`` and ``--pure``; the output carries the
``quantize.imatrix.*`` keys llama-quantize writes. ``dry_run_types`` asks llama.cpp's dry run
which type each tensor would get, without writing anything.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass
from pathlib import Path

import gguf

from ..errors import ExpoError
from ..gguf_file.imatrix import Imatrix, ImatrixInput
from .types import Quant, parse_tensor_type

T = gguf.GGMLQuantizationType
IMATRIX_KEYS = (
    "quantize.imatrix.file",
    "quantize.imatrix.dataset",
    "quantize.imatrix.entries_count",
    "quantize.imatrix.chunks_count",
)


@dataclass(frozen=True)
class TensorOverrides:
    """llama-quantize's per-tensor choices; ``tensor_types`` are (regex searched in the GGUF name, type)."""

    output_tensor_type: T | None = None
    token_embedding_type: T | None = None
    tensor_types: tuple[tuple[str, T], ...] = ()
    pure: bool = False

    @property
    def any(self) -> bool:
        return bool(self.output_tensor_type or self.token_embedding_type or self.tensor_types or self.pure)

    def matches(self, names: list[str]) -> dict[str, list[str]]:
        """Per ``--tensor-type`` pattern, the tensors it changes (the first pattern that matches wins,
        as in llama.cpp); a pattern that matches nothing is refused: it is a typo."""
        found: dict[str, list[str]] = {p: [] for p, _ in self.tensor_types}
        for name in names:
            for pattern, _ in self.tensor_types:
                if re.search(pattern, name):
                    found[pattern].append(name)
                    break
        empty = [p for p, hit in found.items() if not hit]
        if empty:
            raise ExpoError(f"--tensor-type {empty[0]!r} matches no tensor of this model (names: blk.0.attn_v.weight)")
        return found


def parse_overrides(
    output_tensor_type: str | None, token_embedding_type: str | None, tensor_types: tuple[str, ...], pure: bool
) -> TensorOverrides:
    """The CLI's strings, checked as llama-quantize checks them (``NAME=TYPE``, a ggml type name),
    plus the pattern compiled, so a bad one is refused before any work."""
    pairs = []
    for text in tensor_types:
        pattern, sep, tname = text.partition("=")
        if not sep or not pattern.strip() or not tname.strip():
            raise ExpoError(f"--tensor-type {text!r}: write PATTERN=TYPE, e.g. attn_v=q6_k")
        try:
            re.compile(pattern.lower())
        except re.error as e:
            raise ExpoError(f"--tensor-type {text!r}: {pattern!r} is not a regular expression ({e})") from None
        pairs.append((pattern.lower(), parse_tensor_type(tname, "--tensor-type")))
    return TensorOverrides(
        parse_tensor_type(output_tensor_type, "--output-tensor-type") if output_tensor_type else None,
        parse_tensor_type(token_embedding_type, "--token-embedding-type") if token_embedding_type else None,
        tuple(pairs),
        pure,
    )


def check_imatrix(im: Imatrix, tensors: dict[str, tuple[int, ...]], what: str, complete: bool = False) -> None:
    """Refuse an importance matrix made for another model before any output is opened.

    ``tensors``: GGUF name -> shape in ggml order (``ne``, columns first). Every entry must name a
    weight matrix of this model with as many input columns (llama.cpp would stop half-way on a
    size mismatch), and the matrix must cover the model's ``blk.*`` matrices: all of them when
    ``complete`` (a type that needs one, which llama.cpp would abandon at the first one missing).
    """
    wrong = []
    for name, sums in im.sums.items():
        shape = tensors.get(name)
        n_in = shape[0] * (shape[2] if len(shape) > 2 else 1) if shape else None
        if n_in is None:
            wrong.append(f"{name} is not a tensor of {what}")
        elif sums.size != n_in:
            wrong.append(f"{name} has {sums.size} values, {what} has {n_in} input columns")
    mats = [n for n, s in tensors.items() if n.startswith("blk.") and len(s) >= 2]
    missing = [n for n in mats if n not in im.sums]
    if complete and missing and not wrong and len(missing) < len(mats):
        raise ExpoError(
            f"the importance matrix has no entry for {missing[0]} ({len(missing)} missing), which this type needs"
        )
    if wrong or len(missing) == len(mats):
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        why = wrong[0] + more if wrong else f"it has no entry for any of {what}'s {len(mats)} blk.* matrices"
        raise ExpoError(f"importance matrix made for another model: {why}")


def _params(  # noqa: ANN202
    quant: Quant,
    threads: int,
    requantize: bool,
    overrides: TensorOverrides,
    imatrix: ImatrixInput | None,
    dry_run: bool,
    keep: list[object],
):
    """llama_model_quantize_params as llama-quantize fills them; ``keep`` holds every buffer they
    point at, alive until llama.cpp returns."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(quant.file_type)
    params.nthread = threads
    params.allow_requantize = requantize
    params.dry_run = dry_run
    params.pure = overrides.pure
    if overrides.output_tensor_type is not None:
        params.output_tensor_type = int(overrides.output_tensor_type)
    if overrides.token_embedding_type is not None:
        params.token_embedding_type = int(overrides.token_embedding_type)
    if overrides.tensor_types:
        tt = (llama_cpp.llama_model_tensor_override * (len(overrides.tensor_types) + 1))()
        for i, (pattern, qtype) in enumerate(overrides.tensor_types):
            tt[i].pattern, tt[i].type = pattern.encode(), int(qtype)
        params.tt_overrides = tt  # the last element stays zeroed: a null pattern ends the list
        keep.append(tt)
    if imatrix is not None:
        entries = imatrix.data.importance()
        arr = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
        for i, (name, values) in enumerate(sorted(entries.items())):
            keep.append(values)
            arr[i].name = name.encode()
            arr[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = values.size
        params.imatrix = arr  # a null name ends the list
        keep.append(arr)
        kv = (llama_cpp.llama_model_kv_override * (len(IMATRIX_KEYS) + 1))()
        meta = (imatrix.file, imatrix.data.dataset, len(entries), imatrix.data.chunk_count)
        n = 0
        for key, value in zip(IMATRIX_KEYS, meta):
            if value == "":
                continue  # llama-quantize writes no dataset key when the file names none
            kv[n].key = key.encode()
            if isinstance(value, str):
                kv[n].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
                kv[n].value.val_str = value.encode()[:127]
            else:
                kv[n].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
                kv[n].value.val_i64 = value
            n += 1
        params.kv_overrides = kv  # an empty key ends the list
        keep.append(kv)
    return params


def llama_quantize(
    src: Path,
    dst: Path,
    quant: Quant,
    threads: int,
    requantize: bool = False,
    overrides: TensorOverrides = TensorOverrides(),  # noqa: B008 (frozen)
    imatrix: ImatrixInput | None = None,
) -> None:
    """Write ``dst`` as ``quant`` from ``src`` with llama.cpp's quantizer; its per-tensor log is silenced."""
    try:
        import llama_cpp

        from ..runtime.log import capture_errors
    except ImportError as e:
        raise ExpoError(f"K-quants need llama-cpp-python ({e}); install it or pick a block quant like q8_0") from None
    keep: list[object] = []
    params = _params(quant, threads, requantize, overrides, imatrix, False, keep)
    with capture_errors() as errors:
        rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        why = errors[-1] if errors else f"code {rc}"
        raise ExpoError(f"llama.cpp could not quantize {src.name} to {quant.label}: {why}", exit_code=1)


# "[   3/  20]  blk.0.attn_q.weight  - [  256,   256,     1,     1], type =    f16, size = ... (q4_K)"
_TENSOR_LINE = re.compile(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\S+), size =[^\n(]*(?:\((\S+)\))?")


@dataclass(frozen=True)
class DryRun:
    types: dict[str, T]  # GGUF tensor name -> the type llama.cpp would write
    needs_imatrix: bool  # llama.cpp's own verdict: the real run would stop without an imatrix


def dry_run(
    src: Path,
    quant: Quant,
    threads: int,
    requantize: bool = False,
    overrides: TensorOverrides = TensorOverrides(),  # noqa: B008 (frozen)
    imatrix: ImatrixInput | None = None,
) -> DryRun:
    """The type llama.cpp's quantizer gives each tensor of ``src``, from its own ``dry_run`` (nothing
    is written, no tensor data read), as the lines it logs name them."""
    import llama_cpp

    from ..runtime.log import capture

    keep: list[object] = []
    params = _params(quant, threads, requantize, overrides, imatrix, True, keep)
    with capture() as lines:
        rc = llama_cpp.llama_model_quantize(os.fsencode(src), b"", ctypes.byref(params))
    if rc != 0:
        raise ExpoError(f"llama.cpp could not size {src.name} as {quant.label}", exit_code=1)
    log = "".join(lines)
    types = {name: T[(new or cur).upper()] for name, cur, new in _TENSOR_LINE.findall(log)}
    return DryRun(types, "will require an imatrix" in log)
