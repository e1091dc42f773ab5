"""What a long streamed reply leaves in a real terminal's scrollback, through a pseudo-terminal and
a terminal emulator (pyte): every line once, in order, rendered as rich renders the whole reply.

The child runs the REPL over a fake model that streams a fixed markdown text in small chunks, so
the test is about the terminal, not a model; the reference is rich's rendering of the whole text.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

from expo_gguf.chat.render import ReplyMarkdown, block_starts

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
