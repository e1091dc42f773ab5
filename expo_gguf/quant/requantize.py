"""``expo-gguf quantize``: any GGUF to another type, through llama.cpp's own quantizer.

As a build does, it plans first (``plan_requantize``: where the file goes, what to warn about,
every refusal) and only then writes (``run_requantize``), under a ``.part`` name until complete.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from .._fs import BuiltFile, default_place, part_path, sha256_file, unwritable_reason
from ..errors import ExpoError
from ..gguf_file.header import read_gguf_header
from ..gguf_file.imatrix import ImatrixInput
from ..gguf_file.info import describe
from .llama import DryRun, TensorOverrides, check_imatrix, dry_run, llama_quantize
from .types import QUANTS, Quant, refuse_without_imatrix

# Every type name a GGUF's file name may end in: ours, and llama.cpp's file types (IQ4_XS, Q3_K_L...)
_LABELS = {q.label for q in QUANTS.values()} | {
    f.name.removeprefix("MOSTLY_").removeprefix("ALL_") for f in gguf.LlamaFileType if f.name != "GUESSED"
}
_SUFFIX = re.compile(r"([-.])(" + "|".join(sorted(map(re.escape, _LABELS), key=len, reverse=True)) + r")$", re.I)
UNQUANTIZED = ("ALL_F32", "F16", "BF16")


@dataclass(frozen=True)
class Requantization:
    """What ``quantize`` will do, decided before anything is written."""

    src: Path
    dst: Path
    quant: Quant
    source_type: str | None
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    overrides: TensorOverrides = TensorOverrides()
    changed: dict[str, list[str]] = field(default_factory=dict)  # per --tensor-type pattern, the tensors it sets
    uses_imatrix: bool = False
    blocked: str | None = None  # what would stop the run (the output exists, its folder cannot be written)

    @property
    def requantize(self) -> bool:
        return self.source_type not in (None, *UNQUANTIZED)


def output_name(src: Path, quant: Quant) -> str:
    """``X-F16.gguf`` -> ``X-Q4_K_M.gguf``, ``X.Q4_1.gguf`` -> ``X.Q8_0.gguf``; a name without a
    type suffix gets ``-QUANT``."""
    stem = src.name.removesuffix(src.suffix) if src.suffix.lower() == ".gguf" else src.name
    m = _SUFFIX.search(stem)
    return f"{stem[: m.start()]}{m.group(1)}{quant.label}.gguf" if m else f"{stem}-{quant.label}.gguf"


def imatrix_beside(src: Path) -> Path:
    """Where ``--imatrix auto`` keeps a model's importance matrix: ``X-F16.gguf`` -> ``X.imatrix.gguf``."""
    stem = src.name.removesuffix(src.suffix) if src.suffix.lower() == ".gguf" else src.name
    m = _SUFFIX.search(stem)
    return src.with_name(f"{stem[: m.start()] if m else stem}.imatrix.gguf")


def default_output(src: Path, quant: Quant, cwd: Path | None = None) -> tuple[Path, str | None]:
    """Beside the source, or in the current directory when its folder is not ours to fill
    (``default_place``), with the note saying so."""
    return default_place(src, output_name(src, quant), cwd)


def _bits_per_weight(file_type: str | None) -> float | None:
    """The bits per weight of a file type's main tensors (Q4_K_M: Q4_K's 4.5), or None if unknown."""
    if not file_type:
        return None
    name = file_type.removeprefix("ALL_")
    for candidate in (name, re.sub(r"_[SML]$", "", name)):
        qtype = gguf.GGMLQuantizationType.__members__.get(candidate)
        if qtype is not None:
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            return size * 8 / block
    return None


def lossier_warning(src: Path, source_type: str | None, quant: Quant) -> str | None:
    """A warning when the source keeps fewer bits than the target: its losses stay, in a bigger file."""
    have, want = _bits_per_weight(source_type), _bits_per_weight(quant.ggml_type.name)
    if have is None or want is None or have >= want:
        return None
    shown = (source_type or "").removeprefix("ALL_")
    return (
        f"{src.name} is {shown} ({have:g} bits per weight), lossier than {quant.label} ({want:g}): the result "
        f"keeps {shown}'s errors; quantize from an F16 or F32 file where you have one"
    )


def plan_requantize(
    src: Path,
    quant: Quant,
    out: Path | str | None = None,
    force: bool = False,
    cwd: Path | None = None,
    overrides: TensorOverrides = TensorOverrides(),  # noqa: B008 (frozen)
    have_imatrix: bool = False,
) -> Requantization:
    """Where the output goes and what to say about it, before anything is written: a bad request
    raises here; what only stops the run (the output exists, its folder cannot be written) is
    recorded in ``blocked`` and raised by ``check_ready``, which ``run_requantize`` calls first.

    ``out`` is a file, or a folder (existing, or written with a trailing slash) for the default
    name; without it the file goes beside ``src``, or into ``cwd`` when that folder is not writable
    or belongs to an installed package.
    """
    info = describe(src)  # a clear line for a missing, foreign or truncated file
    src = Path(src)
    refuse_without_imatrix([quant], have_imatrix)
    changed = overrides.matches([t.name for t in read_gguf_header(src).tensors])
    notes: list[str] = []
    if out is None:
        dst, place = default_output(src, quant, cwd)
        notes += [place] if place else []
    elif Path(out).is_dir() or str(out).endswith(("/", os.sep)):  # a str keeps its trailing slash
        dst = Path(out) / output_name(src, quant)
    else:
        dst = Path(out)
    if dst.suffix != ".gguf":
        raise ExpoError(f"{dst}: output name must end in .gguf")
    if dst.resolve() == src.resolve():
        raise ExpoError(f"{dst} is the input; pass --out")
    why = unwritable_reason(dst.parent)
    blocked = f"cannot write {dst}: {why}" if why else None
    if blocked is None and dst.exists() and not force:
        blocked = f"{dst} exists; use --force to overwrite"
    warning = lossier_warning(src, info.file_type, quant)
    uses = have_imatrix and (quant.imatrix_helps or quant.needs_imatrix)
    return Requantization(
        src, dst, quant, info.file_type, (warning,) if warning else (), tuple(notes), overrides, changed, uses, blocked
    )


def check_ready(job: Requantization) -> None:
    """Raise what would stop ``job`` (``--dry-run`` prints the plan first, then fails here as the run would)."""
    if job.blocked:
        raise ExpoError(job.blocked)


def model_tensors(src: Path) -> dict[str, tuple[int, ...]]:
    return {t.name: t.shape for t in read_gguf_header(src).tensors}


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the output: what ``quantize --dry-run`` prints per tensor."""

    name: str
    shape: tuple[int, ...]  # as GGUF lists it, ne0 first
    type: gguf.GGMLQuantizationType
    nbytes: int


def planned_tensors(src: Path, types: dict[str, gguf.GGMLQuantizationType]) -> list[PlannedTensor]:
    """Every tensor of ``src`` in file order with the type ``types`` gives it (else its own) and
    its bytes in that type (data only, as llama.cpp counts it)."""
    planned = []
    for t in read_gguf_header(src).tensors:
        qtype = types.get(t.name, gguf.GGMLQuantizationType(t.ggml_type))
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n = 1
        for d in t.shape:
            n *= d
        planned.append(PlannedTensor(t.name, tuple(t.shape), qtype, n // block * size))
    return planned


def size_of(src: Path, types: dict[str, gguf.GGMLQuantizationType]) -> int:
    """Bytes of the tensors ``src`` would become with ``types`` (data only, as llama.cpp counts it)."""
    return sum(t.nbytes for t in planned_tensors(src, types))


def file_size_of(src: Path, types: dict[str, gguf.GGMLQuantizationType]) -> int:
    """The whole file llama.cpp's quantizer writes from ``src`` with ``types``: ``src``'s header
    (the quantizer keeps every key and tensor entry, changing values of the same size) and each
    tensor's data padded to the alignment. Exact without an importance matrix, whose keys it adds."""
    header = read_gguf_header(src)
    align = int(header.values.get("general.alignment", 32))  # type: ignore[call-overload]
    return header.data_start + sum(-(-t.nbytes // align) * align for t in planned_tensors(src, types))


def dry_run_job(job: Requantization, threads: int, imatrix: ImatrixInput | None = None) -> DryRun:
    return dry_run(job.src, job.quant, threads, job.requantize, job.overrides, imatrix)


def run_requantize(
    job: Requantization, threads: int, get_imatrix: Callable[[], ImatrixInput] | None = None
) -> BuiltFile:
    """Write ``job.dst`` under a ``.part`` name, renamed only once llama.cpp has finished;
    ``get_imatrix`` is called first (it may compute one), its matrix checked against the model
    before the output is opened."""
    check_ready(job)
    imatrix = get_imatrix() if get_imatrix is not None and job.uses_imatrix else None
    if imatrix is not None:
        check_imatrix(imatrix.data, model_tensors(job.src), job.src.name, job.quant.needs_imatrix)
    t0 = time.perf_counter()
    job.dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_path(job.dst)
    try:
        llama_quantize(job.src, tmp, job.quant, threads, job.requantize, job.overrides, imatrix)
        tmp.replace(job.dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BuiltFile(job.dst, job.quant.label, job.dst.stat().st_size, time.perf_counter() - t0, sha256_file(job.dst))


def requantize(src: Path, quant: Quant, out: Path | None, force: bool, threads: int) -> BuiltFile:
    """``src`` as ``quant``, written as ``quantize`` writes it (``plan_requantize``, then ``run_requantize``)."""
    return run_requantize(plan_requantize(src, quant, out, force), threads)
