"""Streaming a reply to the terminal: markdown that reaches the scrollback once, or plain text
wrapped at word boundaries.

A live view that re-renders the whole reply cannot redraw lines that have scrolled off the top,
so a reply taller than the terminal left copies of its first lines in the scrollback.
``MarkdownStream`` instead prints every finished markdown block (a paragraph, a heading, a code
block, one item of a top-level list) once, above a live view that holds only the unfinished
block; a block taller than the screen gives its top lines to the scrollback as they stop
changing. Neither imports llama.cpp nor click.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from markdown_it import MarkdownIt
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markdown import ListElement, Markdown
from rich.segment import Segment

REFRESH_S = 1 / 12  # a redraw per token would cost more than the token on a fast model


class _List(ListElement):
    """Numbers right-aligned in at least two digits, so a list printed one item at a time lines up
    as rich lays out a whole list (its width follows the last number)."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.list_type == "bullet_list_open":
            yield from super().__rich_console__(console, options)
            return
        number = 1 if self.list_start is None else self.list_start
        last = max(number + len(self.items), 99)
        for index, item in enumerate(self.items):
            yield from item.render_number(console, options, number + index, last)


class ReplyMarkdown(Markdown):
    """rich's Markdown with ``_List``: how replies are drawn, whole or a block at a time."""

    elements = {**Markdown.elements, "bullet_list_open": _List, "ordered_list_open": _List}


class _Lines:
    """Lines already rendered, printed as they are."""

    def __init__(self, lines: Iterable[list[Segment]]) -> None:
        self.lines = list(lines)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.lines:
            yield from line
            yield Segment.line()


def _blank(line: list[Segment]) -> bool:
    return all(not s.text.strip() and not (s.style and s.style.bgcolor) for s in line)


def _strip_blank(lines: list[list[Segment]]) -> list[list[Segment]]:
    """Without the blank lines around a block: the stream puts its own between blocks."""
    start, end = 0, len(lines)
    while start < end and _blank(lines[start]):
        start += 1
    while end > start and _blank(lines[end - 1]):
        end -= 1
    return lines[start:end]


_parser = MarkdownIt().enable("strikethrough").enable("table")  # as rich's Markdown parses


def block_starts(text: str) -> list[tuple[int, bool]]:
    """(first line, continues a list) of each block a stream may print on its own: every
    top-level block, and every item of a top-level list (``True`` for all but a list's first)."""
    starts: dict[int, bool] = {}
    list_start = -1
    for token in _parser.parse(text):
        if token.map is None or token.nesting == -1:
            continue
        if token.level == 0:
            starts.setdefault(token.map[0], False)
            if token.type in ("bullet_list_open", "ordered_list_open"):
                list_start = token.map[0]
        elif token.level == 1 and token.type == "list_item_open":
            starts.setdefault(token.map[0], token.map[0] > list_start >= 0)
    return sorted(starts.items())


class MarkdownStream:
    """A reply drawn as markdown while it streams; every line reaches the scrollback once.

    Only complete lines decide where a block ends, so a half-received line (``2`` before
    ``2. Spain``) never splits one. Use as a context manager; ``feed`` each chunk.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.text = ""
        self.done = 0  # characters of ``text`` printed as finished blocks
        self.lines_out = 0  # lines of the unfinished block already printed (it outgrew the screen)
        self.gap = False  # a blank line goes before the next block printed
        self.printed = False
        self.last_draw = 0.0
        self.live = Live(console=console, auto_refresh=False, transient=True)

    def __enter__(self) -> MarkdownStream:
        self.live.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _render(self, text: str) -> list[list[Segment]]:
        return _strip_blank(self.console.render_lines(ReplyMarkdown(text), self.console.options))

    def _print(self, lines: list[list[Segment]], new_block: bool) -> None:
        if not lines:
            return
        if new_block and self.gap and self.printed:
            lines = [[], *lines]
        self.console.print(_Lines(lines), end="")
        self.printed = True

    def _commit_finished(self) -> None:
        pending = self.text[self.done :]
        complete = pending[: pending.rfind("\n") + 1]
        starts = block_starts(complete)
        if len(starts) < 2:
            return
        last_line, continues = starts[-1]
        cut = 0
        for _ in range(last_line):
            cut = pending.index("\n", cut) + 1
        finished = self._render(pending[:cut])
        self._print(finished[self.lines_out :], new_block=self.lines_out == 0)
        self.done += cut
        self.lines_out = 0
        self.gap = not continues

    def _draw_live(self) -> None:
        lines = self._render(self.text[self.done :])[self.lines_out :]
        room = max(self.console.height - 3, 3)  # a line for the gap, one for the cursor below
        if len(lines) > room:  # the top of a block taller than the screen no longer changes
            spill = len(lines) - room
            self._print(lines[:spill], new_block=self.lines_out == 0)
            self.lines_out += spill
            lines = lines[spill:]
        gap = [[]] if lines and self.gap and self.printed and self.lines_out == 0 else []
        self.live.update(_Lines([*gap, *lines]), refresh=True)

    def feed(self, chunk: str) -> None:
        self.text += chunk
        now = time.monotonic()
        if now - self.last_draw < REFRESH_S:
            return
        self.last_draw = now
        self._commit_finished()
        self._draw_live()

    def close(self) -> None:
        if not self.live.is_started:
            return
        self.live.update(_Lines([]), refresh=True)
        self.live.stop()
        self._print(self._render(self.text[self.done :])[self.lines_out :], new_block=self.lines_out == 0)
        self.done = len(self.text)


class PlainStream:
    """A reply as plain text; on a terminal (``width``) long lines break between words."""

    def __init__(self, console: Console, width: int | None) -> None:
        self.console, self.width = console, width
        self.column = 0
        self.word = ""
        self.spaces = ""

    def __enter__(self) -> PlainStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _write(self, text: str) -> None:
        self.console.print(text, end="", markup=False, highlight=False, soft_wrap=True)

    def _flush_word(self) -> None:
        word, self.word = self.word, ""
        if not word:
            return
        assert self.width is not None
        if self.column and self.column + cell_len(self.spaces) + cell_len(word) > self.width:
            self._write("\n")
            self.column, self.spaces = 0, ""
        self._write(self.spaces + word)
        self.column += cell_len(self.spaces + word)
        self.spaces = ""
        while self.column > self.width:  # a word longer than the line: the terminal breaks it
            self.column -= self.width

    def feed(self, chunk: str) -> None:
        if self.width is None:
            self._write(chunk)
            return
        for ch in chunk:
            if ch == "\n":
                self._flush_word()
                self._write("\n")
                self.column, self.spaces = 0, ""
            elif ch in " \t":
                self._flush_word()
                self.spaces += ch
            else:
                self.word += ch
        if self.word and self.column + cell_len(self.spaces + self.word) > self.width and not self.column:
            self._flush_word()  # a line-long word: print what there is rather than hold it

    def close(self) -> None:
        if self.width is not None:
            self._flush_word()
        self._write("\n")
