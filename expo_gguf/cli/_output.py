"""What every command prints besides its result: warnings and notes on stderr, the one progress
bar (``RichProgress``, the CLI's side of ``expo_gguf.progress``), and a table console for stdout."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
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
    """A table on stdout that never splits a cell: on a terminal, drawn whole where it fits, else a
    block per row (``_print_records``: no name or hash cut over two lines, no border wrapped by
    the terminal); piped or redirected, one tab-separated line per row, no header, no padding,
    for ``cut -f`` and scripts."""
    console = console or out
    if not console.is_terminal:
        for row in zip(*(c.cells for c in table.columns)):
            console.file.write("\t".join(_plain(cell) for cell in row) + "\n")
        console.file.flush()
        return
    for column in table.columns:
        column.no_wrap = True
    widest = Measurement.get(console, console.options.update_width(1 << 20), table).maximum  # unclamped
    if widest > console.width:  # too wide to draw: a block per row, whole cells packed into lines
        _print_records(table, console)
        return
    console.print(table)


def _print_records(table: Table, console: Console) -> None:
    """A table on a terminal narrower than it: each row's first cell on a line of its own, then
    ``header value`` pairs packed into indented lines that fit, never split (a pair longer than the
    terminal, a path say, gets a line to itself)."""
    if table.title:
        console.print(table.title, style="italic", highlight=False)
    headers = [_plain(c.header) for c in table.columns]
    for row in zip(*(c.cells for c in table.columns)):
        console.print(Text(_plain(row[0]), style="bold"), soft_wrap=True)
        lines: list[str] = []
        for header, cell in zip(headers[1:], row[1:]):
            pair = f"{header} {_plain(cell)}".strip()
            if not _plain(cell):
                continue
            if lines and len(lines[-1]) + 3 + len(pair) <= console.width:
                lines[-1] += " · " + pair
            else:
                lines.append("  " + pair)
        for line in lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def _plain(cell: object) -> str:
    """A cell's text without its markup or style."""
    if isinstance(cell, str):
        return Text.from_markup(cell).plain
    return cell.plain if isinstance(cell, Text) else str(cell)


def table_console() -> Console:
    """Stdout; piped or redirected output keeps a table's natural width instead of rich's 80 columns."""
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=200)


class _ByUnit(ProgressColumn):
    """One column that draws a task by its unit: ``bytes`` with one column, anything else with another."""

    def __init__(self, in_bytes: ProgressColumn | None, counted: ProgressColumn | None) -> None:
        super().__init__()
        self.in_bytes, self.counted = in_bytes, counted

    def render(self, task: Task) -> RenderableType:
        column = self.in_bytes if task.fields.get("unit") == "bytes" else self.counted
        return column.render(task) if column is not None and task.total is not None else Text()  # no "0/?"


def _columns() -> tuple[ProgressColumn, ...]:
    """Bytes: percent, size done of total, speed and ETA (a build's pass); a count: done of total
    and ETA (chunks, prompts)."""
    return (
        TextColumn("{task.description}"),
        BarColumn(),
        _ByUnit(TaskProgressColumn(), None),
        _ByUnit(DownloadColumn(), MofNCompleteColumn()),
        _ByUnit(TransferSpeedColumn(), None),
        TimeRemainingColumn(),
    )


class RichProgress:
    """One bar on stderr, drawn only when it is a terminal; implements ``expo_gguf.progress.Progress``.

    A ``task`` with a unit replaces the bar with a fresh one counting from zero in that unit, so a
    stage never inherits the count, total or columns of the one before; with ``keep`` the finished
    stage's last state stays above as a line of its own."""

    def __init__(self, bar: Progress, unit: str = "items", keep: bool = False) -> None:
        self.bar, self.keep = bar, keep
        self.id = bar.add_task("starting", total=None, unit=unit)
        self.noted = False  # a note during a stage is its summary: the finished bar is then not kept

    def task(self, description: str, total: float | None = None, unit: str | None = None) -> None:
        if unit is not None:
            self._new(description, total, unit)
            return
        fields = {"total": total} if total is not None else {}
        self.bar.update(self.id, description=escape(description), **fields)

    def _new(self, description: str, total: float | None, unit: str) -> None:
        old = self.bar.tasks[[t.id for t in self.bar.tasks].index(self.id)]
        if self.keep and not self.noted and not self.bar.disable and old.total is not None and old.completed:
            self.bar.console.print(self.bar.make_tasks_table([old]))
        self.bar.remove_task(self.id)
        self.id = self.bar.add_task(escape(description), total=total, unit=unit)
        self.noted = False

    def finish(self) -> None:
        """At the end: a bar that only pulsed (no total) or that a note summed up is not left behind."""
        task = self.bar.tasks[[t.id for t in self.bar.tasks].index(self.id)]
        if task.total is None or self.noted:
            self.bar.remove_task(self.id)

    def advance(self, n: float = 1) -> None:
        self.bar.advance(self.id, n)

    def note(self, text: str) -> None:
        self.bar.console.print(text, style="dim", markup=False, highlight=False, soft_wrap=True)
        self.noted = True


@contextmanager
def progress(unit: str = "items", keep: bool = False) -> Iterator[RichProgress]:
    """The bar's first stage counts ``unit`` ("bytes" shows sizes and speed, anything else a count
    and an ETA); ``keep`` leaves the finished bars on screen."""
    with Progress(*_columns(), console=err, transient=not keep, disable=not err.is_terminal) as bar:
        shown = RichProgress(bar, unit, keep)
        yield shown
        shown.finish()
