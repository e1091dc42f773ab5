"""The REPL in a real pseudo-terminal: commands, multi-line input, Ctrl+C, a context that fills up.

Stdin is a TTY, so the markdown renderer and readline are in play too; ``pty_terminal`` drives
it as a user would (see there for how Ctrl+C and waiting work).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from pty_terminal import Terminal

pytestmark = pytest.mark.pty


def test_terminal_session(chat: Callable[..., Terminal], tmp_path: Path) -> None:
    saved = tmp_path / "conversation.json"
    term = chat("--ctx", "1024")
    term.expect("/help for commands")  # banner
    term.prompt()
    term.send("/help\n")
    assert "Multi-line" in term.prompt()
    term.send("/set max_tokens 32\n")  # greedy SmolLM2 can loop until the context is full
    assert "max_tokens = 32" in term.prompt()
    term.send("/system Answer in as few words as possible.\n")
    assert "system message set" in term.prompt()
    term.send('"""\nName a colour.\nJust one word.\n"""\n')
    assert "tok/s" in term.prompt()  # the status line after the reply
    term.send("Name a fruit\\\nin one word.\n")  # a trailing backslash continues the line
    assert "tok/s" in term.prompt()
    term.send("/regen\n")
    assert "tok/s" in term.prompt()
    term.send("/frobnicate\n")
    assert "unknown command /frobnicate" in term.prompt()

    term.send("/set max_tokens 400\n")
    assert "max_tokens = 400" in term.prompt()
    term.send("Write a very long story about a dragon and a knight.\n")
    term.reply_started()
    term.send("\x03")
    term.expect("(interrupted)", timeout=30)
    term.prompt()
    term.send("/stats\n")
    assert "stopped: interrupted" in term.prompt()

    term.send(f"/save {saved}\n")
    assert "saved 7 messages" in term.prompt()
    term.send("/clear\n")
    assert "conversation cleared" in term.prompt()
    term.send(f"/load {saved}\n")
    assert "loaded 7 messages" in term.prompt()
    term.send("/show\n")
    assert re.search(r"messages\s+7\b", term.prompt())

    term.send("\x03")
    term.expect("Ctrl+C again")
    term.prompt()
    term.send("\x03")
    assert term.wait() == 0
    assert "Traceback" not in term.text

    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3
    assert messages[0]["content"] == "Answer in as few words as possible."
    assert messages[1]["content"] == "Name a colour.\nJust one word."
    assert messages[3]["content"] == "Name a fruit\nin one word."
    assert all(m["content"] for m in messages)
    assert messages[5]["content"].startswith("Write a very long story")
    assert messages[6]["content"]  # the partial reply was kept


def test_context_overflow_in_a_terminal(chat: Callable[..., Terminal], tmp_path: Path) -> None:
    """With a tiny --ctx the oldest turns go, the user is told once, and the chat carries on."""
    saved = tmp_path / "conversation.json"
    term = chat("--ctx", "256", "--max-tokens", "24")
    term.expect("/help for commands")
    term.prompt()
    questions = [f"Tell me fact number {i} about the moon." for i in range(8)]
    for question in questions:
        term.send(question + "\n")
        assert "/256" in term.prompt()  # the status line's context use
    term.send("word " * 400 + "\n")
    assert "message too long" in term.prompt()
    term.send("And one about the sun?\n")
    assert "tok/s" in term.prompt()
    term.send(f"/save {saved}\n")
    term.prompt()
    term.send("/exit\n")
    assert term.wait() == 0
    assert term.text.count("context full: dropped the") == 1
    assert "Traceback" not in term.text

    users = [m["content"] for m in json.loads(saved.read_text())["messages"] if m["role"] == "user"]
    assert users[-1] == "And one about the sun?" and users[-2] == questions[-1]
    assert questions[0] not in users and len(users) < len(questions)
    assert all("word word" not in u for u in users)  # the refused message was not kept


def test_a_paste_is_one_message_and_history_outlives_the_session(
    chat: Callable[..., Terminal], tmp_path: Path, own_data_dir: Path
) -> None:
    """Bug: a pasted text of several lines was sent a line at a time. With bracketed paste (which
    the line editor turns on, as terminals support) it is one message; the history file in the
    user's data directory gives it back in the next session."""
    saved = tmp_path / "conversation.json"
    term = chat("--ctx", "512", "--max-tokens", "8")
    term.prompt()
    term.send("\x1b[200~Name a tree.\nOne word only.\x1b[201~\n")
    assert "tok/s" in term.prompt()
    term.send("\x04")  # Ctrl+D: leaves, and is no history entry
    assert term.wait() == 0
    assert "Name a tree." in (own_data_dir / "history").read_text()

    term = chat("--ctx", "512", "--max-tokens", "8")
    term.prompt()
    term.send("\x1b[A\n")  # Up: the last message, both lines
    assert "tok/s" in term.prompt()
    term.send(f"/save {saved}\n")
    term.prompt()
    term.send("/exit\n")
    assert term.wait() == 0
    users = [m["content"] for m in json.loads(saved.read_text())["messages"] if m["role"] == "user"]
    assert users == ["Name a tree.\nOne word only."]
