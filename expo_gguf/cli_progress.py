"""The rich pieces the long-running commands (eval, compare) share: a progress bar on stderr and
a console for the table that keeps its natural width when piped."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

err = Console(stderr=True, highlight=False)


def progress_bar() -> Progress:
    """Drawn on stderr only when it is a terminal, and cleared when done."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, console=err, transient=True, disable=not err.is_terminal)


def table_console() -> Console:
    """Stdout; piped or redirected output keeps a table's natural width instead of rich's 80 columns."""
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=200)
