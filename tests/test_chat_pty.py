"""The REPL in a real pseudo-terminal: multi-line input, Ctrl+C during a reply and at the prompt.

Ctrl+C is sent as the byte 0x03, so the terminal driver turns it into SIGINT exactly as it does
for a user; stdin is a TTY, so the markdown renderer and readline are in play too.
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
from pathlib import Path

import pytest

from test_chat_cli import smollm_path

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


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

    def expect(self, pattern: str, timeout: float = 60) -> str:
        """Wait for ``pattern`` after the last match; return the text up to its end."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.text.find(pattern, self.pos)
            if found >= 0:
                chunk, self.pos = self.text[self.pos:found + len(pattern)], found + len(pattern)
                return chunk
            if time.monotonic() > deadline or self.closed:
                raise AssertionError(f"{pattern!r} not seen; terminal shows:\n{self.text[-3000:]}")
            self._read(max(0.0, min(0.2, deadline - time.monotonic())))

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
def term() -> Terminal:
    model = smollm_path()
    t = Terminal([sys.executable, "-c", "from expo_gguf.cli import main; main()", "chat", str(model), "--temp", "0",
                  "--seed", "0", "--ctx", "1024", "--threads", "1"])
    yield t
    try:
        os.kill(t.pid, 9)
        os.waitpid(t.pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    os.close(t.fd)


def test_terminal_session(term: Terminal, tmp_path: Path) -> None:
    saved = tmp_path / "conversation.json"
    term.expect("CPU only")  # banner
    term.expect(">>> ")
    term.send('"""\nName a colour.\nJust one word.\n"""\n')
    term.expect("tok/s")  # the status line after the reply
    term.expect(">>> ")

    term.send("/set max_tokens 400\n")
    term.expect(">>> ")
    term.send("Write a very long story about a dragon and a knight.\n")
    time.sleep(1.5)  # let the reply start streaming
    term.send("\x03")
    term.expect("(interrupted)", timeout=30)
    term.expect(">>> ")
    term.send("/stats\n")
    assert "stopped: interrupted" in term.expect(">>> ")

    term.send(f"/save {saved}\n")
    term.expect(">>> ")
    term.send("/clear\n")
    term.expect(">>> ")
    term.send(f"/load {saved}\n")
    assert "loaded 4 messages" in term.expect(">>> ")

    # CPython's readline can miss a SIGINT that lands just before it waits for input (a race a
    # user never sees: the next key press delivers it), so give it a moment to start waiting.
    time.sleep(0.5)
    term.send("\x03")
    term.expect("Ctrl+C again")
    term.expect(">>> ")
    time.sleep(0.5)
    term.send("\x03")
    assert term.wait() == 0
    assert "Traceback" not in term.text

    messages = json.loads(saved.read_text())["messages"]
    assert messages[0] == {"role": "user", "content": "Name a colour.\nJust one word."}
    assert messages[1]["role"] == "assistant" and messages[1]["content"]
    story = messages[3]["content"]
    assert messages[3]["role"] == "assistant" and story  # the partial reply was kept
