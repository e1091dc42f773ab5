"""What every command prints besides its result: warnings and notes on stderr, the one progress
bar (``RichProgress``, the CLI's side of ``expo_gguf.progress``), and a table console for stdout."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def warn(text: str) -> None:
    err.print(f"warning: {text}", style="yellow", markup=False, soft_wrap=True)


def note(text: str) -> None:
    err.print(f"note: {text}", style="dim", markup=False, soft_wrap=True)


def print_table(table: Table, console: Console | None = None) -> None:
    """A table on stdout that never splits a cell: on a terminal, drawn at least as wide as its
    widest row (the terminal wraps a too-long row; no name or hash is cut over two lines); piped
    or redirected, one tab-separated line per row, no header, no padding, for ``cut -f`` and
    scripts. Give names and hashes ``no_wrap=True`` columns."""
    console = console or out
    if not console.is_terminal:
        for row in zip(*(c.cells for c in table.columns)):
            console.file.write("\t".join(_plain(cell) for cell in row) + "\n")
        console.file.flush()
        return
    for column in table.columns:
        column.no_wrap = True
    widest = Measurement.get(console, console.options, table).maximum
    console.print(table, width=max(console.width, widest), crop=False)


def _plain(cell: object) -> str:
    """A cell's text without its markup or style."""
    if isinstance(cell, str):
        return Text.from_markup(cell).plain
    return cell.plain if isinstance(cell, Text) else str(cell)


def table_console() -> Console:
    """Stdout; piped or redirected output keeps a table's natural width instead of rich's 80 columns."""
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=200)


class RichProgress:
    """One bar on stderr, drawn only when it is a terminal; implements ``expo_gguf.progress.Progress``."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.id = bar.add_task("starting", total=None)

    def task(self, description: str, total: float | None = None) -> None:
        fields = {"total": total} if total is not None else {}
        self.bar.update(self.id, description=escape(description), **fields)

    def advance(self, n: float = 1) -> None:
        self.bar.advance(self.id, n)

    def note(self, text: str) -> None:
        self.bar.console.print(text, style="dim", markup=False, highlight=False, soft_wrap=True)


@contextmanager
def progress(unit: str = "items", keep: bool = False) -> Iterator[RichProgress]:
    """``unit`` "bytes" shows sizes and speed (build), anything else a count and an ETA;
    ``keep`` leaves the finished bar on screen."""
    if unit == "bytes":
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
    else:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=not keep, disable=not err.is_terminal) as bar:
        yield RichProgress(bar)
