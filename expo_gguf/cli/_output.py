"""What every command prints besides its result: warnings and notes on stderr, the one progress
bar (``RichProgress``, the CLI's side of ``expo_gguf.progress``), and a table console for stdout."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
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

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def warn(text: str) -> None:
    err.print(f"warning: {text}", style="yellow", markup=False, soft_wrap=True)


def note(text: str) -> None:
    err.print(f"note: {text}", style="dim", markup=False, soft_wrap=True)


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
