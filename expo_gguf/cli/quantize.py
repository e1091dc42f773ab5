"""``quantize``: GGUF to GGUF through llama.cpp's quantizer, with build's options and Modelfile."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .._units import human_bytes, plural
from ..gguf_file.imatrix import ImatrixInput, load_imatrix
from ..gguf_file.modelfile import modelfile_path, refresh_modelfile
from ..quant.llama import DryRun, check_imatrix, parse_overrides
from ..quant.requantize import (
    Requantization,
    check_ready,
    dry_run_job,
    file_size_of,
    imatrix_beside,
    model_tensors,
    plan_requantize,
    planned_tensors,
    run_requantize,
)
from ..quant.types import parse_quants, quant_help
from ..runtime.options import usable_cores
from ._options import imatrix_options, override_options, threads_option
from ._output import note, print_table, progress, warn
from ._output import out as console
from .build import print_quant_choices
from .imatrix import auto_maker, check_auto_options


@click.command(short_help="GGUF to GGUF through llama.cpp's quantizer (any type it has).")
@click.argument("src", type=click.Path(path_type=Path))
@click.option(
    "-q", "--quant", "quant_text", required=True, help=f"Target type, by llama-quantize's names. {quant_help()}."
)
@click.option(
    "-o",
    "--out",
    type=click.Path(),  # a str: Path() would drop the slash of DIR/
    default=None,
    help="Output file, or a folder (DIR/) for the default name [default: SRC's name with its type "
    "replaced (X-F16.gguf -> X-Q4_K_M.gguf, X.Q4_1.gguf -> X.Q8_0.gguf), beside SRC, or in the current "
    "directory when SRC's folder is not writable or belongs to an installed package].",
)
@click.option("--force", is_flag=True, help="Overwrite the output file.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the type and size llama.cpp's quantizer would give each tensor; write nothing.",
)
@imatrix_options
@override_options
@threads_option
def quantize(
    src: Path,
    quant_text: str,
    out: str | None,
    force: bool,
    dry_run: bool,
    imatrix: str | None,
    calibration: Path | None,
    imatrix_chunks: int | None,
    output_tensor_type: str | None,
    token_embedding_type: str | None,
    tensor_types: tuple[str, ...],
    pure: bool,
    threads: int | None,
) -> None:
    """GGUF to GGUF with llama.cpp's quantizer (e.g. F16 -> Q4_K_M, or any type -> F32).

    Warns when SRC has fewer bits than the target (its losses stay). Beside the GGUF goes an
    Ollama Modelfile, as build writes one.

    \b
      expo-gguf quantize X-F16.gguf -q iq4_xs --imatrix X.imatrix.gguf
      expo-gguf quantize X-F16.gguf -q q4_k_m --output-tensor-type q8_0 --tensor-type attn_v=q6_k
    """
    quants = parse_quants(quant_text)
    if len(quants) != 1:
        raise click.UsageError("quantize takes one --quant")
    check_auto_options(imatrix, calibration, imatrix_chunks)
    overrides = parse_overrides(output_tensor_type, token_embedding_type, tensor_types, pure)
    threads = threads or usable_cores()
    given: ImatrixInput | None = None
    if imatrix is not None and imatrix != "auto":
        given = load_imatrix(Path(imatrix))  # a damaged file is refused before any work
    job = plan_requantize(src, quants[0], out, force, overrides=overrides, have_imatrix=imatrix is not None)
    if not dry_run:
        check_ready(job)  # before any work; a dry run prints its plan first, then fails as the run would
    keep = imatrix_beside(job.dst) if imatrix == "auto" else None  # beside the output: SRC's folder may not be ours
    if keep is not None and keep.exists():
        given = load_imatrix(keep)
    for text in job.warnings:
        warn(text)
    for text in job.notes:
        note(text)
    if given is not None and job.uses_imatrix:
        check_imatrix(given.data, model_tensors(src), src.name, job.quant.needs_imatrix)
        if keep is not None:
            note(f"reusing {keep} (an earlier --imatrix auto of this model); delete it to recompute")
    elif imatrix is not None and not job.uses_imatrix:
        warn(f"{job.quant.name} does not use an importance matrix; --imatrix ignored")
    print_quant_choices(overrides, job.changed)
    if dry_run:
        print_dry_run(job, dry_run_job(job, threads, given if job.uses_imatrix else None))
        if keep is not None and given is None and job.uses_imatrix:
            console.print(f"  importance matrix: would be computed over the calibration text -> {keep}")
        check_ready(job)
        return
    with progress() as bar:
        quantizing = f"llama.cpp quantize -> {job.dst.name}"
        bar.task(quantizing)
        get = (lambda: given) if given is not None else None
        if keep is not None and given is None:
            make = auto_maker(calibration, imatrix_chunks, threads, bar)

            def get() -> ImatrixInput:
                made = make(src, keep)
                bar.task(quantizing, unit="tensors")  # a stage of its own: the matrix's finished bar goes
                return made

        result = run_requantize(job, threads, get)
    kept = refresh_modelfile(result.path)  # derived from the file just written, as build's; the user's edits kept
    if kept:
        note(kept)
    modelfile = modelfile_path(result.path)
    console.print(
        f"{result.path}  {result.quant}  {human_bytes(result.nbytes)}  {result.seconds:.1f}s  sha256 {result.sha256}",
        soft_wrap=True,
    )
    console.print(f"  ollama create NAME -f {escape(str(modelfile))}", soft_wrap=True)


def _size(n: int) -> str:
    """``human_bytes``, with kB for the small tensors (norms) that would all read 0.0 MB."""
    return human_bytes(n) if n >= 1e6 else f"{n / 1e3:.1f} kB"


def print_dry_run(job: Requantization, plan: DryRun) -> None:
    """Every tensor's name, shape, type and size as llama.cpp's quantizer would write it, then the total."""
    tensors = planned_tensors(job.src, plan.types)
    t = Table(box=None, pad_edge=False)
    for col, right in (("tensor", False), ("shape", True), ("type", False), ("size", True)):
        t.add_column(col, justify="right" if right else "left", no_wrap=True)
    for x in tensors:
        t.add_row(x.name, " x ".join(map(str, x.shape)), x.type.name, _size(x.nbytes))
    print_table(t)
    counts: dict[str, int] = {}
    for x in tensors:
        counts[x.type.name] = counts.get(x.type.name, 0) + 1
    mix = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    approx = "~" if job.uses_imatrix else ""  # the keys an importance matrix adds are not counted
    console.print(
        f"{escape(str(job.dst))}  {job.quant.label}  {approx}{human_bytes(file_size_of(job.src, plan.types))}"
        f" ({human_bytes(sum(x.nbytes for x in tensors))} in {plural(len(tensors), 'tensor')}: {mix})",
        soft_wrap=True,
    )
    console.print("  [dim]types and sizes from llama.cpp's own dry run; nothing written[/]")


COMMANDS = (quantize,)
