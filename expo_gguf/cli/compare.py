"""``expo-gguf compare``: option parsing, a progress bar and the table around ``compare``."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from .._fs import check_outputs, write_text_atomic
from .._units import plural
from ..measure.compare import Checked, CompareOptions, Comparison, check_inputs, run_checked
from ..measure.compare.metrics import thresholds_text
from ..measure.compare.report import columns, markdown, table_rows, to_json, verdict_lines
from ..runtime.options import RunOptions
from ._options import run_options
from ._output import err, note, progress, table_console, warn

HELP = f"""Run the same prompts through each MODEL and measure the replies, to pick an alpha or a quant.

Greedy (fixed seed), each model with its own chat template, one model loaded at a time. Per
model: mean reply length (tokens, characters), distinct-2 and repeated 4-grams (repetition, on
words), runaway (replies that reach --max-tokens without ending), generation tok/s, and with
--ref the mean and 99th-percentile KL divergence from REF along REF's own greedy replies
(teacher-forced, as `expo-gguf eval` defines it). REF's log-probabilities wait in a temporary
file in TMPDIR, sized once REF has answered: its reply tokens x vocabulary x 4 bytes (25 replies
of 256 tokens with a 128k vocabulary: up to 3.3 GB). Where /tmp is a tmpfs that is RAM: point
TMPDIR at a disk for long runs.

Repetition is counted on words, punctuation left out; distinct-2 per reply, averaged. A verdict
line per model names every figure past its rule: {thresholds_text()}.

--prompts: a .json list (strings, or objects with "prompt" or "messages" for multi-turn, and
optional "id" and "category"), or plain text with one prompt per line (# comments).

\b
  expo-gguf compare A-a0.3-Q4_K_M.gguf A-a0.5-Q4_K_M.gguf --ref A-Q4_K_M.gguf
  expo-gguf compare A.gguf B.gguf --prompts my.txt --max-tokens 256 --report cmp.md --json cmp.json
"""


def render_table(c: Comparison) -> Table:
    kld = f", KL divergence from {c.reference.name}" if c.reference else ""
    t = Table(
        title=f"{plural(len(c.prompts), 'prompt')} ({c.prompts_name}), greedy, "
        f"up to {plural(c.options.max_tokens, 'token')}{kld}"
    )
    for i, col in enumerate(columns(c)):
        right = i >= 2
        t.add_column(col, justify="right" if right else "left", overflow="fold", no_wrap=right)
    for row in table_rows(c):
        t.add_row(*row)
    return t


def print_checked(checked: Checked) -> None:
    """What the check found that the user should know before the run: once per model."""
    for text in checked.warnings:
        warn(text)
    for m in checked.every:
        for text in m.warnings:
            warn(f"{m.label}: {text}")
        for text in m.notes:
            note(f"{m.label}: {text}")


@click.command(name="compare", help=HELP)
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--ref",
    "reference",
    type=click.Path(path_type=Path),
    default=None,
    help="Reference GGUF (same vocabulary): adds KL divergence from it.",
)
@click.option(
    "--prompts",
    "prompts_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Prompt file (.json or one prompt per line) [default: 25 built-in prompts].",
)
@click.option(
    "--max-tokens",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help="Longest reply; a reply cut here counts as runaway.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Run only the first N prompts (a quick look) [default: all].",
)
@run_options(2048, 64, "Context length; must hold the longest prompt plus --max-tokens.")
@click.option("--seed", default=0, show_default=True, type=int, help="Sampling seed.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write a markdown report: the table and every reply side by side.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write every figure and reply as JSON.",
)
def compare_command(
    models: tuple[Path, ...],
    reference: Path | None,
    prompts_path: Path | None,
    max_tokens: int,
    limit: int | None,
    ctx: int,
    seed: int,
    threads: int | None,
    n_gpu_layers: str,
    report_path: Path | None,
    json_path: Path | None,
    verbose: bool,
) -> None:
    check_outputs({"--report": report_path, "--json": json_path}, [*models, reference, prompts_path])
    opts = CompareOptions(
        RunOptions(n_ctx=ctx, n_gpu_layers=n_gpu_layers, threads=threads, verbose=verbose),
        max_tokens=max_tokens,
        seed=seed,
        max_prompts=limit,
    )
    checked = check_inputs(models, reference, prompts_path, opts)
    print_checked(checked)
    with progress() as bar:
        result = run_checked(checked, opts, bar)
    out = table_console()
    out.print(render_table(result))
    for line in verdict_lines(result):
        out.print(line, markup=False, soft_wrap=True)
    for path, text in (
        (report_path, lambda: markdown(result)),
        (json_path, lambda: json.dumps(to_json(result), indent=2, ensure_ascii=False) + "\n"),
    ):
        if path:
            write_text_atomic(path, text())
            err.print(f"wrote {path}", markup=False, style="dim")


COMMANDS = (compare_command,)
