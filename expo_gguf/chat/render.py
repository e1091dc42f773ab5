"""Streaming a reply to the terminal: markdown that reaches the scrollback once, or plain text
wrapped at word boundaries.

A live view that re-renders the whole reply cannot redraw lines that have scrolled off the top,
so a reply taller than the terminal left copies of its first lines in the scrollback.
``MarkdownStream`` instead prints every finished markdown block (a paragraph, a heading, a code
block, one item of a top-level list) once, above a live view that holds only the unfinished
block; a block taller than the screen gives its top lines to the scrollback as they stop
changing. A resize lays the unfinished block out anew at the new width: what of it was printed is
then found by its text, not by a count of lines of the old width (which repeated or skipped part
of it). Neither imports llama.cpp nor click.
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


def _is_text(ch: str) -> bool:
    """A character of the reply's text: not a space, nor a box-drawing or block character (rules,
    quote bars, table borders), which are repeated as often as the width asks."""
    return not ch.isspace() and not "\u2500" <= ch <= "\u259f"


def _text_len(line: list[Segment]) -> int:
    return sum(_is_text(ch) for segment in line for ch in segment.text)


def _rest_of(line: list[Segment], n: int) -> list[Segment]:
    """``line`` without its first ``n`` text characters and the spaces after them; its indentation
    (and a quote's bar) kept."""
    out: list[Segment] = []
    lead, gap = True, True
    for segment in line:
        kept = []
        for ch in segment.text:
            if lead and not _is_text(ch):
                kept.append(ch)
                continue
            lead = False
            if n:
                n -= _is_text(ch)
            elif not (gap and ch.isspace()):
                gap = False
                kept.append(ch)
        if kept:
            out.append(Segment("".join(kept), segment.style, segment.control))
    return out


def printed_part(lines: list[list[Segment]], text: int, blanks: int) -> tuple[int, list[Segment] | None]:
    """How much of a block laid out as ``lines`` was printed, given the ``text`` characters printed
    (at another width) and the ``blanks`` lines without text that ended them: the count of lines
    printed, and the rest of the last one when only its start was."""
    i = 0
    while i < len(lines) and text > 0:
        n = _text_len(lines[i])
        if n > text:
            return i + 1, _rest_of(lines[i], text)
        text -= n
        i += 1
    while blanks and i < len(lines) and not _text_len(lines[i]):
        i, blanks = i + 1, blanks - 1
    return i, None


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
        self.lines_out = 0  # lines of the unfinished block already printed (it outgrew the screen)...
        self.width_out = 0  # ... laid out at this width
        self.text_out = 0  # text characters in them, and how many lines without text end them:
        self.blanks_out = 0  # where the printed part ends when a resize lays the block out anew
        self.width = console.width  # of the last layout
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
        options = self.console.options  # the terminal's width now
        self.width = options.max_width
        return _strip_blank(self.console.render_lines(ReplyMarkdown(text), options))

    def _printed(self, block: list[list[Segment]], n: int) -> None:
        """The first ``n`` lines of ``block`` (the unfinished block, laid out now) are printed."""
        self.lines_out, self.width_out = n, self.width
        self.text_out = sum(map(_text_len, block[:n]))
        self.blanks_out = next((i for i, line in enumerate(reversed(block[:n])) if _text_len(line)), n)

    def _unprinted(self, block: list[list[Segment]]) -> list[list[Segment]]:
        """The lines of ``block`` not printed yet. After a resize they are found by the text
        already printed; a line printed only in part has its rest printed now."""
        if self.lines_out and self.width != self.width_out:
            n, rest = printed_part(block, self.text_out, self.blanks_out)
            if rest:
                self._print([rest], new_block=False)
            self._printed(block, n)
        return block[self.lines_out :]

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
        new_block = self.lines_out == 0
        self._print(self._unprinted(self._render(pending[:cut])), new_block=new_block)
        self.done += cut
        self.lines_out = 0
        self.gap = not continues

    def _draw_live(self) -> None:
        block = self._render(self.text[self.done :])
        lines = self._unprinted(block)
        room = max(self.console.height - 3, 3)  # a line for the gap, one for the cursor below
        if len(lines) > room:  # the top of a block taller than the screen no longer changes
            spill = len(lines) - room
            self._print(lines[:spill], new_block=self.lines_out == 0)
            self._printed(block, self.lines_out + spill)
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
        new_block = self.lines_out == 0
        self._print(self._unprinted(self._render(self.text[self.done :])), new_block=new_block)
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
