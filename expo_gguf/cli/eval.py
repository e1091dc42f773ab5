"""``expo-gguf eval``: option parsing, a progress bar, the table, JSON and the chart around evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from .._fs import check_outputs, write_text_atomic
from .._units import human_bytes as _gb
from .._units import plural
from ..errors import ExpoError
from ..measure.perplexity import EvalOptions, FileScore, Report, evaluate
from ..runtime.options import RunOptions
from ._options import run_options
from ._output import print_table, progress, warn

PLOT_HINT = "pip install matplotlib (or pip install 'expo-gguf[plot]')"


def _labels(scores: list[FileScore]) -> list[str]:
    """The type where it tells files apart, else the file name."""
    types = [s.file_type for s in scores]
    return types if len(set(types)) == len(types) else [s.path.name for s in scores]


def render_table(report: Report) -> Table:
    t = Table(
        title=f"{report.text.name}: {plural(report.reference.ppl.n, 'token')} scored "
        f"({plural(report.n_chunks, 'chunk')} of {report.n_ctx}), KLD against {report.reference.path.name}"
    )
    for col, right in (
        ("file", False),
        ("type", False),
        ("size", True),
        ("PPL", True),
        ("mean KLD", True),
        ("KLD p99", True),
        ("same top", True),
    ):
        t.add_column(col, justify="right" if right else "left", no_wrap=True)
    for s in (report.reference, *report.candidates):
        ppl = f"{s.ppl.ppl:.4f} ± {s.ppl.ppl_unc:.4f}"
        if s.kld is None:
            kld = ("reference", "", "")
        else:
            kld = (f"{s.kld.mean:.6f}", f"{s.kld.p99:.5f}", f"{s.kld.same_top_pct:.2f} %")
        t.add_row(s.path.name, s.file_type, _gb(s.size_bytes), ppl, *kld)
    return t


def _pyplot():  # noqa: ANN202 - matplotlib is an optional extra
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ExpoError(f"--png needs matplotlib: {PLOT_HINT}") from None
    return plt


def write_png(report: Report, path: Path) -> None:
    """Two bar charts: mean KLD against the reference (log scale) and perplexity."""
    plt = _pyplot()
    cands = list(report.candidates)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.45 * (len(cands) + 1) + 1.6), sharey=False)
    labels = _labels(cands)
    ax1.barh(labels, [max(s.kld.mean, 1e-9) if s.kld else 0 for s in cands], color="tab:blue")
    ax1.set_xscale("log")
    ax1.set_xlabel(f"mean KL divergence vs {report.reference.file_type} (log scale, lower is better)")
    ax1.invert_yaxis()
    every = [report.reference, *cands]
    ax2.barh(_labels(every), [s.ppl.ppl for s in every], xerr=[s.ppl.ppl_unc for s in every], color="tab:orange")
    ax2.axvline(report.reference.ppl.ppl, color="gray", linestyle="--", linewidth=1)
    ax2.set_xlabel("perplexity (lower is better)")
    ax2.invert_yaxis()
    fig.suptitle(f"{report.text.name}, {plural(report.reference.ppl.n, 'token')}, ctx {report.n_ctx}")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise ExpoError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


@click.command(name="eval")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidates", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--text",
    "text_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Plain text to score (e.g. scripts/data/sample.txt).",
)
@run_options(512, 16, "Chunk length in tokens; the second half of each chunk is scored.")
@click.option("--chunks", type=click.IntRange(min=1), default=None, help="Score at most N chunks [default: all].")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write every file's figures as JSON.",
)
@click.option(
    "--png",
    "png_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also draw a bar chart (needs matplotlib).",
)
def eval_(
    reference: Path,
    candidates: tuple[Path, ...],
    text_path: Path,
    ctx: int,
    chunks: int | None,
    threads: int | None,
    n_gpu_layers: str,
    json_path: Path | None,
    png_path: Path | None,
    verbose: bool,
) -> None:
    """Perplexity of each GGUF, and KL divergence of each CANDIDATE against REFERENCE, over a text.

    As llama.cpp's llama-perplexity --kl-divergence defines them: chunks of --ctx tokens, the
    second half of each scored; mean KLD, its 99th percentile and how often both models' top token
    agree. Files are loaded one at a time; the reference's log-probabilities wait on disk (TMPDIR).

    \b
      expo-gguf eval F32.gguf Q8_0.gguf Q4_K_M.gguf --text scripts/data/sample.txt
    """
    check_outputs({"--json": json_path, "--png": png_path}, [reference, *candidates, text_path])  # before scoring
    if png_path:
        _pyplot()  # a missing matplotlib should not cost a whole evaluation first
    opts = EvalOptions(RunOptions(n_ctx=ctx, n_gpu_layers=n_gpu_layers, threads=threads, verbose=verbose), chunks)
    warning = opts.run.resolved().warning
    if warning:
        warn(warning)
    with progress() as bar:
        report = evaluate(reference, candidates, text_path, opts, bar)
    print_table(render_table(report))
    if json_path:
        write_text_atomic(json_path, json.dumps(report.to_json(), indent=2) + "\n")
    if png_path:
        write_png(report, png_path)


COMMANDS = (eval_,)
