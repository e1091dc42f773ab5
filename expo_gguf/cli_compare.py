"""``expo-gguf compare``: option parsing, a progress bar and the table around ``compare``."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .cli import cli
from .compare import Comparison, CompareOptions, compare
from .compare_metrics import thresholds_text
from .compare_report import COLUMNS, check_writable, markdown, table_rows, to_json, verdict_lines, write_atomic

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

HELP = f"""Run the same prompts through each MODEL and measure the replies, to pick an alpha or a quant.

Greedy (fixed seed), each model with its own chat template, one model loaded at a time. Per
model: mean reply length (tokens, characters), distinct-2 and repeated 4-grams (repetition, on
words), runaway (replies that reach --max-tokens without ending), generation tok/s, and with
--ref the mean and 99th-percentile KL divergence from REF along REF's own greedy replies
(teacher-forced, as `expo-gguf eval` defines it; REF's log-probabilities wait in TMPDIR, at most
prompts x max-tokens x vocabulary x 4 bytes).

A verdict line per model names every figure past its threshold: {thresholds_text()}.

--prompts: a .json list (strings, or objects with "prompt" or "messages" for multi-turn, and
optional "id" and "category"), or plain text with one prompt per line (# comments).

\b
  expo-gguf compare A-a0.3-Q4_K_M.gguf A-a0.5-Q4_K_M.gguf --ref A-Q4_K_M.gguf
  expo-gguf compare A.gguf B.gguf --prompts my.txt --max-tokens 256 --report cmp.md --json cmp.json
"""


def render_table(c: Comparison) -> Table:
    kld = f", KL divergence from {c.reference.name}" if c.reference else ""
    t = Table(title=f"{len(c.prompts)} prompts ({c.prompts_name}), greedy, up to "
                    f"{c.options.max_tokens} tokens{kld}")
    columns = COLUMNS if c.reference else tuple(x for x in COLUMNS if "KLD" not in x)
    for i, col in enumerate(columns):
        right = i >= 2
        t.add_column(col, justify="right" if right else "left", overflow="fold", no_wrap=right)
    for row in table_rows(c):
        t.add_row(*(row if c.reference else row[:8] + row[10:]))
    return t


@cli.command(name="compare", help=HELP)
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--ref", "reference", type=click.Path(path_type=Path), default=None,
              help="Reference GGUF (same vocabulary): adds KL divergence from it.")
@click.option("--prompts", "prompts_path", type=click.Path(path_type=Path), default=None,
              help="Prompt file (.json or one prompt per line) [default: 25 built-in prompts].")
@click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(min=1),
              help="Longest reply; a reply cut here counts as runaway.")
@click.option("--ctx", default=2048, show_default=True, type=click.IntRange(min=64),
              help="Context length; must hold the longest prompt plus --max-tokens.")
@click.option("--seed", default=0, show_default=True, type=int, help="Sampling seed.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: llama.cpp's choice).")
@click.option("-ngl", "--n-gpu-layers", default="auto", show_default=True, metavar="N|-1|auto",
              help="Layers to offload to the GPU: N, -1 for all, or auto.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None,
              help="Also write a markdown report: the table and every reply side by side.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write every figure and reply as JSON.")
@click.option("--verbose", is_flag=True, help="Show llama.cpp's log.")
def compare_command(models: tuple[Path, ...], reference: Path | None, prompts_path: Path | None,
                    max_tokens: int, ctx: int, seed: int, threads: int | None, n_gpu_layers: str,
                    report_path: Path | None, json_path: Path | None, verbose: bool) -> None:
    for path, option in ((report_path, "--report"), (json_path, "--json")):
        if path is not None:
            check_writable(path, option)
    opts = CompareOptions(max_tokens=max_tokens, n_ctx=ctx, seed=seed, threads=threads,
                          n_gpu_layers=n_gpu_layers, verbose=verbose)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as p:
        task = p.add_task("checking inputs", total=None)

        def progress(what: str, n: int, total: int) -> None:
            p.update(task, total=total, advance=n, **({"description": escape(what)} if what else {}))

        result = compare(models, reference, prompts_path, opts, on_progress=progress)
    # Piped or redirected output keeps the table's natural width instead of rich's 80 columns.
    out = console if console.is_terminal else Console(highlight=False, width=200)
    out.print(render_table(result))
    for line in verdict_lines(result):
        out.print(line, markup=False, soft_wrap=True)
    if report_path:
        write_atomic(report_path, markdown(result))
        err.print(f"wrote {report_path}", markup=False, style="dim")
    if json_path:
        write_atomic(json_path, json.dumps(to_json(result), indent=2, ensure_ascii=False) + "\n")
        err.print(f"wrote {json_path}", markup=False, style="dim")
