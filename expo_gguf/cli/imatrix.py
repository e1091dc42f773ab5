"""``imatrix``: llama-imatrix's importance matrix, in process; and the ``--imatrix auto`` glue for
``build`` and ``quantize`` (the measuring stage runs the model, the quantizer takes the result)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from rich.markup import escape

from .._fs import check_output, default_place
from .._units import plural
from ..errors import ExpoError
from ..gguf_file.imatrix import ImatrixInput, write_imatrix
from ..measure.imatrix import ImatrixOptions, collect_imatrix, compute_and_keep, read_text
from ..progress import Progress
from ..quant.requantize import imatrix_beside
from ..runtime.options import RunOptions
from ._options import run_options
from ._output import note, progress, warn
from ._output import out as console

AUTO_CTX = 512


def auto_maker(
    calibration: Path | None, chunks: int | None, threads: int, bar: Progress
) -> Callable[[Path, Path], ImatrixInput]:
    """``make_imatrix(model, keep)`` for ``--imatrix auto``: chunks of 512 tokens, as llama-imatrix."""
    opts = ImatrixOptions(RunOptions(n_ctx=AUTO_CTX, threads=threads), chunks)

    def make(model: Path, keep: Path) -> ImatrixInput:
        bar.task("importance matrix: reading the text", unit="chunks")  # a stage of its own, after the pass's
        bar.note(f"--imatrix auto: computing the importance matrix of {keep.stem.removesuffix('.imatrix')}")
        return compute_and_keep(model, keep, calibration, opts, bar)

    return make


def check_auto_options(imatrix: str | None, calibration: Path | None, chunks: int | None) -> None:
    if (calibration or chunks) and imatrix != "auto":
        raise click.UsageError("--calibration and --imatrix-chunks go with --imatrix auto")
    if calibration is not None and not calibration.is_file():
        raise ExpoError(f"--calibration {calibration}: no such file")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-f", "--text", "text_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Text to run."
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output file [default: MODEL's name without its quant suffix, .imatrix.gguf, beside it, or in the "
    "current directory when MODEL's folder is not writable or belongs to an installed package].",
)
@click.option("--chunks", type=click.IntRange(min=1), default=None, help="Use at most N chunks [default: all].")
@click.option("--force", is_flag=True, help="Overwrite the output file.")
@run_options(AUTO_CTX, 32, "Chunk length in tokens (llama-imatrix's default: 512).")
def imatrix(
    model: Path,
    text_path: Path,
    out: Path | None,
    chunks: int | None,
    force: bool,
    threads: int | None,
    ctx: int,
    n_gpu_layers: str,
    verbose: bool,
) -> None:
    """The importance matrix of a GGUF over a text, as llama.cpp's llama-imatrix computes it.

    For every weight matrix of every block: the sum of the squared input activations per input
    column over all tokens, and the token count, in llama.cpp's imatrix GGUF (its llama-quantize
    and `expo-gguf quantize --imatrix` read it). Run it on the F16 or F32 file, over text like
    what the model will see; quantize with it for types that lose less (and the IQ1/IQ2 types
    that need it).

    \b
      expo-gguf imatrix models/X-F16.gguf --text my.txt -o X.imatrix.gguf
      expo-gguf quantize models/X-F16.gguf -q iq4_xs --imatrix X.imatrix.gguf
    """
    dst, place = (out, None) if out is not None else default_place(model, imatrix_beside(model).name)
    if dst.suffix != ".gguf":
        raise ExpoError(f"{dst}: output name must end in .gguf (llama.cpp's imatrix format)")
    check_output(dst, "-o", force, inputs=[model, text_path])  # before the run: at 7B, an hour
    if place:
        note(place)
    text = read_text(text_path)
    opts = ImatrixOptions(
        RunOptions(n_ctx=ctx, n_gpu_layers=n_gpu_layers, threads=threads, verbose=verbose), chunks, str(text_path)
    )
    warning = opts.run.resolved().warning
    if warning:
        warn(warning)
    with progress() as bar:
        result = collect_imatrix(model, text, opts, bar)
    write_imatrix(dst, result.imatrix)
    im = result.imatrix
    console.print(
        f"{escape(str(dst))}  {plural(len(im.sums), 'matrix', 'matrices')}, {plural(im.chunk_count, 'chunk')} of "
        f"{im.chunk_size} ({plural(result.tokens, 'token')}, {result.seconds:.1f}s, "
        f"{result.tokens_per_second:,.0f} tok/s), "
        f"PPL {result.ppl:.2f}",
        soft_wrap=True,
    )


COMMANDS = (imatrix,)
