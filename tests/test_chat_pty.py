"""The REPL in a real pseudo-terminal: commands, multi-line input, Ctrl+C, a context that fills up.

Ctrl+C is sent as the byte 0x03, so the terminal driver turns it into SIGINT exactly as it does
for a user; stdin is a TTY, so the markdown renderer and readline are in play too. Every step
waits for what the terminal shows, or for the child to block reading it, never a fixed sleep:
the machine running the tests may be busy.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from test_chat_cli import smollm_path

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
# select/poll family: where readline sleeps while it waits for a key.
WAIT_SYSCALLS = {"x86_64": {7, 23, 270, 271}, "aarch64": {72, 73}}


class Terminal:
    """A child process on a pseudo-terminal, with just enough of pexpect's ``expect``."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "TERM": "xterm", "PYTHONUNBUFFERED": "1"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child: the pty is its controlling terminal
            os.chdir(ROOT)
            os.execvpe(args[0], args, env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.text, self.pos, self.closed = "", 0, False

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        self.closed = not data
        self.text += ANSI.sub("", data.decode("utf-8", errors="replace"))
        return bool(data)

    def _until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline or self.closed:
                raise AssertionError(f"{what} not seen; terminal shows:\n{self.text[-3000:]}")
            self._read(max(0.0, min(0.05, deadline - time.monotonic())))

    def expect(self, pattern: str, timeout: float = 60) -> str:
        """Wait for ``pattern`` after the last match; return the text up to its end."""
        start = self.pos
        self._until(lambda: self.text.find(pattern, start) >= 0, timeout, repr(pattern))
        end = self.text.find(pattern, start) + len(pattern)
        self.pos = end
        return self.text[start:end]

    def expect_output(self, timeout: float = 60) -> str:
        """Wait for any visible text after the last match (a reply that has started)."""
        start = self.pos
        self._until(lambda: bool(self.text[start:].strip()), timeout, "any output")
        self.pos = len(self.text)
        return self.text[start:]

    def _reading_input(self) -> bool | None:
        """Whether the child's main thread sleeps in select/poll; None where /proc cannot say."""
        calls = WAIT_SYSCALLS.get(os.uname().machine)
        try:
            state = Path(f"/proc/{self.pid}/syscall").read_text().split()
        except OSError:
            return None
        if calls is None or not state:
            return None
        return state[0].isdigit() and int(state[0]) in calls  # "running" while it runs

    def wait_for_input(self, timeout: float = 30) -> None:
        """Wait until readline is blocked waiting for a key.

        CPython's readline checks for signals only when its select() is interrupted: a Ctrl+C
        that lands between drawing the prompt and entering select() stays pending until the next
        key (a race a typing user never hits). Without /proc, fall back to a pause.
        """
        if self._reading_input() is None:
            time.sleep(0.5)
            return
        self._until(lambda: bool(self._reading_input()), timeout, "the child waiting for input")

    def prompt(self) -> str:
        """Wait for the next prompt and for readline to be ready; return what came before it."""
        text = self.expect(">>> ")
        self.wait_for_input()
        return text

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError(f"did not exit; terminal shows:\n{self.text[-3000:]}")


@pytest.fixture
def chat() -> Iterator[Callable[..., Terminal]]:
    """Start ``expo-gguf chat`` on SmolLM2 (greedy, one thread) with extra options."""
    model = smollm_path()
    started: list[Terminal] = []

    def start(*options: str) -> Terminal:
        t = Terminal([sys.executable, "-c", "from expo_gguf.cli import main; main()", "chat", str(model),
                      "--temp", "0", "--seed", "0", "--threads", "1", *options])
        started.append(t)
        return t

    yield start
    for t in started:
        try:
            os.kill(t.pid, 9)
            os.waitpid(t.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(t.fd)


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
    term.expect("knight.")  # readline's echo of the line
    term.expect_output()  # the reply has started streaming
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
