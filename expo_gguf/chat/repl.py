"""The interactive chat loop, independent of any model.

``run_repl`` talks to a model only through ``Backend``'s callables (``reply(messages)`` yields
text), so tests drive every command, multi-line input and Ctrl+C with a scripted fake. The slash
commands are ``commands.Commands``, which ``Repl`` inherits.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from .._fs import utf8_text
from .._units import plural
from ..errors import ExpoError
from .commands import Commands, Exit
from .keeping import ChatLog, NoLog
from .messages import Message
from .render import MarkdownStream, PlainStream
from .store import Figures

try:
    import termios
except ImportError:  # Windows: no echo to turn off
    termios = None  # type: ignore[assignment]

PROMPT, CONTINUE = ">>> ", "... "


def _keep_all(messages: list[Message]) -> tuple[list[Message], int]:
    return messages, 0


@dataclass
class Backend:
    """What the REPL needs from a model; every field but ``reply`` is optional."""

    reply: Callable[[list[Message]], Iterator[str]]
    fit: Callable[[list[Message]], tuple[list[Message], int]] = _keep_all
    status: Callable[[], str | None] = lambda: None
    stats: Callable[[], dict[str, str]] = dict
    show: Callable[[], dict[str, str]] = dict
    cut: Callable[[], int | None] = lambda: None  # tokens, when the last reply hit max_tokens or the context
    template: Callable[[], str | None] = lambda: None  # the chat template, for /show template
    figures: Callable[[], Figures | None] = lambda: None  # the last reply's, for the log
    log: ChatLog | NoLog = field(default_factory=NoLog)  # where this model's thread is kept


@contextmanager
def sigint_flag() -> Iterator[threading.Event]:
    """Turn Ctrl+C into a flag for the duration, so a reply stops between two tokens.

    Raising KeyboardInterrupt at an arbitrary point could cut llama-cpp-python's bookkeeping
    in half; a flag checked per token cannot.
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda *_: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def quiet_terminal() -> Iterator[None]:
    """No echo while a reply streams: a ``^C`` or a key typed ahead would land inside the live
    view and shift it by a line, so its redraw left a copy of a line behind. Keys typed ahead
    are still read by the next prompt."""
    if termios is None:
        yield
        return
    try:
        fd = sys.stdin.fileno()
        before = termios.tcgetattr(fd) if os.isatty(fd) else None
    except (OSError, ValueError, termios.error):  # no stdin, or a test's stand-in
        before = None
    if before is None:
        yield
        return
    quiet = list(before)
    quiet[3] &= ~(termios.ECHO | termios.ECHOCTL)
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, before)


def unfinished(text: str) -> bool:
    """Whether typed ``text`` (its lines joined by newlines) waits for more: an open \"\"\" block,
    or a trailing backslash. The line editor asks it on Enter; ``read_message`` when reading lines."""
    lines = text.split("\n")
    first = lines[0].lstrip()
    if first.startswith('"""'):
        if len(lines) == 1:
            return not first[3:].rstrip().endswith('"""')
        return not any(line.rstrip().endswith('"""') for line in lines[1:])
    return text.endswith("\\")


def _block(text: str) -> str:
    """The message in a \"\"\" block: the lines between the quotes, as typed."""
    lines = text.split("\n")
    first = lines[0].lstrip()[3:]
    if len(lines) == 1:
        return first.rstrip()[:-3] if first.rstrip().endswith('"""') else first
    body = [first] if first else []
    for line in lines[1:]:
        if line.rstrip().endswith('"""'):
            if line.rstrip()[:-3]:
                body.append(line.rstrip()[:-3])
            break
        body.append(line)
    return "\n".join(body)


def read_message(read_line: Callable[[str], str]) -> str:
    """One user message: a line, lines joined by trailing backslashes, or a \"\"\" block.

    ``read_line`` may return several lines at once (a paste, or the line editor's whole buffer):
    they stay one message, verbatim.
    """
    text = read_line(PROMPT)
    if text.lstrip().startswith('"""'):
        while unfinished(text):
            try:
                text += "\n" + read_line(CONTINUE)
            except EOFError:
                break
        return _block(text)
    parts = []
    while text.endswith("\\"):
        parts.append(text[:-1])
        text = read_line(CONTINUE)
    parts.append(text)
    return "\n".join(parts)


class Repl(Commands):
    """State of one interactive session; ``run_repl`` is the entry point."""

    def __init__(
        self, backend: Backend, settings: Any, messages: list[Message], console: Console, markdown: bool
    ) -> None:
        super().__init__()
        self.backend, self.settings, self.messages = backend, settings, messages
        self.console, self.markdown = console, markdown
        self.told_trim = False

    # -- replies ----------------------------------------------------------------------------
    def respond(self, stop: threading.Event | None = None) -> None:
        """Answer the last user message; on Ctrl+C keep what was said so far.

        ``stop`` is a caller's Ctrl+C flag (``chat --vs`` holds one for a whole turn); without
        one the reply sets up its own.
        """
        try:
            kept, dropped = self.backend.fit(self.messages)
        except ExpoError as e:
            self.messages.pop()
            self.backend.log.unsent()
            self.error(str(e))
            return
        if dropped:
            self.messages[:] = kept
            if not self.told_trim:
                self.told_trim = True
                self.note(
                    f"context full: dropped the {'oldest message' if dropped == 1 else f'{dropped} oldest messages'}"
                    " (older turns will keep being dropped as needed)"
                )
        chunks: list[str] = []
        interrupted, failed = False, False
        try:
            flag = nullcontext(stop) if stop is not None else sigint_flag()
            with flag as pressed, closing(self.backend.reply(self.messages)) as reply:
                with quiet_terminal(), self._renderer() as show:
                    for chunk in reply:
                        chunks.append(chunk)
                        show.feed(chunk)
                        if pressed.is_set():
                            interrupted = True
                            break
        except ExpoError as e:
            self.error(str(e))
            if not chunks:
                self.messages.pop()
                self.backend.log.unsent()
                return
            failed = True
        text = "".join(chunks)
        self.messages.append({"role": "assistant", "content": text})
        cut = None if interrupted or failed else self.backend.cut()
        reason = "interrupted" if interrupted else "error" if failed else "length" if cut else None
        self.backend.log.reply(text, self.backend.figures(), reason)
        if interrupted:
            self.note("(interrupted)")
        elif cut:
            self.note(f"(cut at {plural(cut, 'token')})")
        status = self.backend.status()
        if status:
            self.note(status)

    def _renderer(self) -> MarkdownStream | PlainStream:
        if self.markdown:
            return MarkdownStream(self.console)
        return PlainStream(self.console, self.console.width if self.console.is_terminal else None)

    def run(self, read_line: Callable[[str], str]) -> None:
        pressed_ctrl_c = False
        while True:
            try:
                try:
                    text = read_message(read_line)
                except EOFError:
                    self.console.print()
                    return
                except KeyboardInterrupt:
                    self.console.print()
                    if pressed_ctrl_c:
                        return
                    pressed_ctrl_c = True
                    self.note("(Ctrl+C again or /exit to leave)")
                    continue
            except KeyboardInterrupt:  # the second press landed while the first was handled
                return
            pressed_ctrl_c = False
            try:
                if not self.handle(text):
                    return
            except KeyboardInterrupt:  # outside a reply's own handling: drop a dangling question
                self.drop_dangling()
                self.note("(interrupted)")

    def drop_dangling(self) -> None:
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()
            self.backend.log.unsent()

    def handle(self, text: str) -> bool:
        """Act on one input, as typed or piped, for this REPL and ``--vs`` alike; False to leave."""
        if not text.strip():
            return True
        try:
            utf8_text(text, "your message")
        except ExpoError as e:  # bytes a terminal or a pipe could not decode: never sent to a model
            self.error(str(e))
            return True
        if text.startswith("/") and not text.startswith("//"):
            try:
                self.command(text.strip())
            except Exit:
                return False
            return True
        self.ask(text.removeprefix("/"))
        return True

    def ask(self, text: str) -> None:
        """Send a message (checked by ``handle``) and answer it."""
        self.messages.append({"role": "user", "content": text})
        self.backend.log.user(text)
        self.respond()


def run_repl(
    backend: Backend,
    settings: Any,
    *,
    console: Console,
    messages: list[Message] | None = None,
    markdown: bool = True,
    read_line: Callable[[str], str] = input,
) -> list[Message]:
    """Chat until /exit, Ctrl+D or Ctrl+C twice; returns the conversation."""
    repl = Repl(backend, settings, messages if messages is not None else [], console, markdown)
    repl.run(read_line)
    return repl.messages
