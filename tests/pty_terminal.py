"""A child process on a pseudo-terminal, shared by the pty tests and ``scripts/soak_chat.py``.

Ctrl+C is sent as the byte 0x03, so the terminal driver turns it into SIGINT exactly as it does
for a user. Every step waits for what the terminal shows, or for the child to block reading it,
never a fixed sleep: the machine running it may be busy.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pyte

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[=>]|\r")
FORWARD = re.compile(r"\x1b\[(\d*)C")  # the line editor moves past a prompt's trailing space
# select/poll/epoll family: where readline (select) and prompt_toolkit (epoll) sleep waiting for a key.
WAIT_SYSCALLS = {"x86_64": {7, 23, 232, 270, 271, 281, 441}, "aarch64": {22, 72, 73, 441}}


class _Screen(pyte.HistoryScreen):
    """A screen (120x40 unless told) keeping 100,000 lines of scrollback, replying to the child's
    queries. Like xterm, it does not reflow: a narrower screen cuts the lines it shows."""

    def __init__(self, fd: int, rows: int = 40, columns: int = 120) -> None:
        super().__init__(columns, rows, history=100_000, ratio=0.001)
        self.fd = fd

    def write_process_input(self, data: str) -> None:
        os.write(self.fd, data.encode())


class Terminal:
    """A child process on a pseudo-terminal, with just enough of pexpect's ``expect``."""

    def __init__(self, args: list[str], rows: int = 40, columns: int = 120) -> None:
        # the child reads its size from the pty, as under a real terminal: not from COLUMNS/LINES
        # that a parent exported (pytest-xdist's workers carry COLUMNS=80)
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env |= {"TERM": "xterm", "PYTHONUNBUFFERED": "1"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child: the pty is its controlling terminal
            os.chdir(ROOT)
            os.execvpe(args[0], args, env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.text, self.pos, self.closed = "", 0, False
        self.raw = b""  # every byte the child wrote, escapes included
        self.raw_mark = 0
        self.screen = _Screen(self.fd, rows, columns)  # the terminal the child draws on, as an xterm shows it
        self.stream = pyte.ByteStream(self.screen)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        self.closed = not data
        self.raw += data
        self.stream.feed(data)  # answers the line editor's cursor-position requests, as a terminal does
        shown = FORWARD.sub(lambda m: " " * int(m.group(1) or 1), data.decode("utf-8", errors="replace"))
        self.text += ANSI.sub("", shown)
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

    def expect_any(self, *patterns: str, timeout: float = 60) -> str:
        """Wait for whichever of ``patterns`` shows first after the last match; return it."""
        start = self.pos

        def first() -> tuple[int, str] | None:
            found = [(self.text.find(p, start), p) for p in patterns]
            return min(((i, p) for i, p in found if i >= 0), default=None)

        self._until(lambda: first() is not None, timeout, " or ".join(map(repr, patterns)))
        at, pattern = first()  # type: ignore[misc]
        self.pos = at + len(pattern)
        return pattern

    def expect_output(self, timeout: float = 60) -> str:
        """Wait for any visible text after the last match (a reply that has started)."""
        start = self.pos
        self._until(lambda: bool(self.text[start:].strip()), timeout, "any output")
        self.pos = len(self.text)
        return self.text[start:]

    def reply_started(self, timeout: float = 60) -> str:
        """After a message was sent: wait until the line editor has let go of the terminal (it
        turns bracketed paste off as it leaves, ``ESC[?2004l``), then for the reply's first text.
        A Ctrl+C sent before that would reach the line editor, or the moment before the reply."""
        leave = b"\x1b[?2004l"
        self._until(lambda: leave in self.raw[self.raw_mark :], timeout, "the line editor leaving the prompt")
        after = self.raw.index(leave, self.raw_mark) + len(leave)

        def visible() -> bool:
            return bool(ANSI.sub("", self.raw[after:].decode("utf-8", errors="replace")).strip())

        self._until(visible, timeout, "the reply's first text")
        self.pos = len(self.text)
        return ANSI.sub("", self.raw[after:].decode("utf-8", errors="replace"))

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
        self._until(lambda: bool(self._reading_input()), timeout, f"the child (pid {self.pid}) waiting for input")

    def prompt(self) -> str:
        """Wait for the next prompt and for the child to wait for a key; return what came before it.

        The line editor draws the prompt again when a line is sent (and on redraws), so the prompt
        is the last one drawn once the child waits for a key.
        """
        start = self.pos
        self.expect(">>> ")
        self.wait_for_input()
        while self._read(0.05):  # what the child wrote before it blocked
            pass
        last = self.text.rfind(">>> ")
        self.pos = last + 4
        self.raw_mark = len(self.raw)  # where what follows this prompt starts (``reply_started``)
        return self.text[start:last]

    def resize(self, rows: int, columns: int) -> None:
        """Resize the terminal as a window manager does: the new size on the pty, which sends the
        child SIGWINCH; the screen resized at the same point of the output (read everything the
        child wrote before calling this)."""
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.screen.resize(rows, columns)
        self.screen.ensure_hbounds()

    def wait_for(self, done: Callable[[], bool], what: str, timeout: float = 60) -> None:
        """Read what the child writes until ``done()``."""
        self._until(done, timeout, what)

    def drain(self, quiet: float = 0.3) -> None:
        """Read until the child has written nothing for ``quiet`` seconds."""
        while self._read(quiet):
            pass

    def transcript(self) -> list[str]:
        """What a user would see scrolling back: every line that left the screen (as wide as it was
        written), then the screen."""
        screen = self.screen
        gone = [
            "".join(line[x].data for x in range(max(screen.columns, max(line, default=-1) + 1)))
            for line in screen.history.top
        ]
        return [line.rstrip() for line in [*gone, *screen.display]]

    def send(self, text: str) -> None:
        """Type ``text``; a newline is the Enter key (a carriage return, as a terminal sends it)."""
        os.write(self.fd, text.replace("\n", "\r").encode())

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError(f"did not exit; terminal shows:\n{self.text[-3000:]}")
