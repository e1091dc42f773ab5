"""What a long streamed reply leaves in a real terminal's scrollback, through a pseudo-terminal and
a terminal emulator (pyte): every line once, in order, rendered as rich renders the whole reply.

The child runs the REPL over a fake model that streams a fixed markdown text in small chunks, so
the test is about the terminal, not a model; the reference is rich's rendering of the whole text.
"""

from __future__ import annotations

import io
import os
import re
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.segment import Segment

from expo_gguf.chat.render import ReplyMarkdown, block_starts, printed_part

from pty_terminal import Terminal

pytestmark = pytest.mark.pty

CHILD = """
import sys, time
from rich.console import Console
from expo_gguf import Sampling
from expo_gguf.chat.repl import Backend, run_repl
from expo_gguf.chat.session import _input_line

text = open(sys.argv[1], encoding="utf-8").read()
pause = float(sys.argv[2])

def reply(messages):
    for i in range(0, len(text), 5):
        time.sleep(pause)
        yield text[i : i + 5]

console, settings = Console(), Sampling()
backend = Backend(reply=reply, status=lambda: "STATUS-LINE")
run_repl(backend, settings, console=console, markdown=True, read_line=_input_line(console, settings))
"""


def long_reply() -> str:
    """Several 40-line screens: a heading, paragraphs, an 80-item list, a code block, a quote."""
    countries = [f"Country number {i}, with a few words about its capital and rivers" for i in range(1, 81)]
    para = " ".join(["A long paragraph of plain words that wraps across several terminal lines."] * 6)
    code = "\n".join(f"    value_{i} = compute({i})  # line {i}" for i in range(30))
    return (
        "# Fifty countries and more\n\nHere is the list you asked for, **in order**:\n\n"
        + "\n".join(f"{i}. {c}" for i, c in enumerate(countries, 1))
        + f"\n\n{para}\n\n```python\ndef main():\n{code}\n```\n\n> A quote to finish\n> on two lines.\n\n"
        + "- one bullet\n- another bullet\n\nThe end."
    )


def rendered(text: str) -> list[str]:
    """rich's rendering of the whole text at the terminal's width: what the user must see once."""
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(ReplyMarkdown(text))
    return [line.rstrip() for line in console.file.getvalue().splitlines()]


def start(tmp_path: Path, text: str, pause: float) -> Terminal:
    reply = tmp_path / "reply.md"
    reply.write_text(text, encoding="utf-8")
    return Terminal([sys.executable, "-c", CHILD, str(reply), str(pause)])


def between(lines: list[str], first: str, last: str) -> list[str]:
    i = next(n for n, line in enumerate(lines) if line.startswith(first))
    j = next(n for n, line in enumerate(lines) if line.startswith(last) and n > i)
    return lines[i + 1 : j]


def test_a_reply_taller_than_the_terminal_reaches_the_scrollback_once(tmp_path: Path) -> None:
    text = long_reply()
    term = start(tmp_path, text, 0.002)
    term.prompt()
    term.send("list them\n")
    term.expect("STATUS-LINE", timeout=120)
    term.prompt()
    term.send("\x04")
    assert term.wait() == 0
    shown = between(term.transcript(), ">>> list them", "STATUS-LINE")
    expected = rendered(text)
    assert len(expected) > 3 * 40  # several screens tall
    assert shown == expected


def test_ctrl_c_mid_reply_leaves_each_line_once(tmp_path: Path) -> None:
    """Bug: Ctrl+C mid-reply printed the reply's first line twice (the echoed ^C shifted the view)."""
    line = "of a list that goes on and on, long enough to fill the line"
    items = "\n".join(f"{i}. Item {i} {line}" for i in range(1, 400))
    term = start(tmp_path, "Intro line of the reply.\n\n" + items, 0.01)
    term.prompt()
    term.send("go\n")
    term.reply_started()
    term.expect("Item 13 ")  # item 12 is whole by then
    term.send("\x03")
    term.expect("(interrupted)", timeout=30)
    term.prompt()
    term.send("\x04")
    assert term.wait() == 0
    lines = term.transcript()
    assert lines.count("Intro line of the reply.") == 1
    shown = between(lines, ">>> go", "(interrupted)")
    assert shown[:2] == ["Intro line of the reply.", ""]
    numbered = [line for line in shown if "of a list that goes on" in line]
    assert len(numbered) == len(set(numbered)) >= 12
    assert [int(line.split()[0]) for line in numbered] == list(range(1, len(numbered) + 1))
    assert "^C" not in "\n".join(lines)


def test_blocks_split_where_markdown_says() -> None:
    text = "# T\n\npara\nmore\n\n1. a\n2. b\n   still b\n\n```\nx\n\ny\n```\n"
    assert block_starts(text) == [(0, False), (2, False), (5, False), (6, True), (9, False)]


# A scripted model in the REPL, on the pseudo-terminal: it streams a reply with one paragraph far
# taller than the screen and waits at words PAUSES until the test has resized the terminal.
STREAMING_REPLY = """
import pathlib, sys, time
from rich.console import Console
from expo_gguf import Sampling
from expo_gguf.chat.repl import Backend, run_repl

gate, n, *pauses = sys.argv[1:]
words = [f"w{i:04d}" for i in range(int(n))]

def reply(messages):
    yield "Intro.\\n\\n"
    for i, word in enumerate(words):
        if str(i) in pauses:
            (pathlib.Path(gate) / f"paused-{i}").touch()
            while not (pathlib.Path(gate) / f"go-{i}").exists():
                time.sleep(0.01)
        time.sleep(0.002)
        yield (" " if i else "") + word
    yield "\\n\\nThe end."

run_repl(Backend(reply=reply), Sampling(), console=Console(highlight=False), read_line=input)
"""


def test_a_resize_mid_reply_leaves_one_clean_copy_in_the_scrollback(tmp_path: Path) -> None:
    """Bug: narrowing the terminal (120 -> 90 columns) while a reply streamed left a broken partial
    copy of the paragraph in the scrollback: the part of a block taller than the screen already
    printed was counted in lines of the old width, so the block laid out at the new width repeated
    the tail of that part (and, widening, skipped some). Here the paragraph spills at 120 columns,
    the terminal narrows to 90, spills more, widens to 120: every word reaches the scrollback once,
    in order. (A terminal that does not reflow, as xterm and pyte, cuts the lines on the screen when
    it narrows; those words, and only those, may be missing.)"""
    n, pauses = 1400, {600: (24, 90), 1100: (24, 120)}
    term = Terminal(
        [sys.executable, "-c", STREAMING_REPLY, str(tmp_path), str(n), *map(str, pauses)], rows=24, columns=120
    )
    try:
        term.expect(">>> ")
        term.send("go\n")
        cut: set[str] = set()
        for at, (rows, columns) in pauses.items():
            term.wait_for((tmp_path / f"paused-{at}").exists, f"the reply at word {at}")
            term.drain()
            shown = {w for line in term.screen.display for w in line.split()}
            if at == 600:  # the paragraph has outgrown the screen: its top went to the scrollback
                assert any("w0000" in "".join(c.data for c in line.values()) for line in term.screen.history.top)
            term.resize(rows, columns)
            cut |= shown - {w for line in term.screen.display for w in line.split()}
            (tmp_path / f"go-{at}").touch()
        term.expect("The end.")
        term.expect(">>> ")
        term.drain()
        lines = term.transcript()
    finally:
        os.kill(term.pid, 9)
        os.waitpid(term.pid, 0)
    words = [w for line in lines for w in line.split() if re.fullmatch(r"w\d{4}", w)]
    assert words == sorted(set(words)), "a word twice or out of order"
    missing = {f"w{i:04d}" for i in range(n)} - set(words)
    assert missing <= cut, sorted(missing - cut)
    assert len(missing) < 40 and "Intro." in lines and "The end." in lines


def test_what_was_printed_is_found_again_at_another_width() -> None:
    """The printed top of a block, laid out at one width, is found in its layout at another: the
    lines printed, and the rest of a line printed only in part, so no word is repeated or lost."""
    paragraph = " ".join(f"w{i:03d}" for i in range(150))
    code = "```\n" + "\n".join(["first(" + "a, " * 30 + "z)", "", *["x = 1"] * 3, "", "last()"]) + "\n```"
    quote = "> " + " ".join(f"q{i:03d}" for i in range(60))

    def layout(width: int, block: str) -> list[list[Segment]]:
        console = Console(file=io.StringIO(), width=width)
        return list(console.render_lines(ReplyMarkdown(block), console.options))

    def text(line: list[Segment]) -> str:
        return "".join(s.text for s in line)

    def words(lines: list[list[Segment]]) -> list[str]:
        return [w for line in lines for w in text(line).replace("▌", " ").split()]

    for block in (paragraph, code, quote):
        for wide, narrow in ((80, 50), (50, 80)):
            before, after = layout(wide, block), layout(narrow, block)
            for k in range(1, len(before)):
                printed = before[:k]
                blanks = next((i for i, line in enumerate(reversed(printed)) if text(line).strip()), k)
                chars = len("".join(words(printed)))
                assert printed_part(before, chars, blanks) == (k, None)  # the same width: whole lines
                n, rest = printed_part(after, chars, blanks)
                assert words(printed) + words(([rest] if rest else []) + after[n:]) == words(after), (block[:9], k)
