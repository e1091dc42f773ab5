"""The interactive chat loop, independent of any model.

``run_repl`` talks to a model only through ``Backend``'s callables (``reply(messages)`` yields
text), so tests drive every command, multi-line input and Ctrl+C with a scripted fake.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import ExpoError

try:
    import termios
except ImportError:  # Windows: no echo to turn off
    termios = None  # type: ignore[assignment]
from .._fs import utf8_text
from .conversation import load_conversation, save_conversation
from .messages import RANDOM_SEED, Message
from .render import MarkdownStream, PlainStream

PROMPT, CONTINUE = ">>> ", "... "
HELP = """\
/help                 this list
/clear                forget the conversation (keeps the system message)
/system [TEXT]        show or set the system message
/set [NAME VALUE]     show settings, or set temp|top_p|top_k|min_p|repeat_penalty|max_tokens|seed
/show [template]      model, settings, system message and context use; or the chat template
/stats                figures for the last reply
/regen                answer the last message again
/save FILE            write the conversation as JSON
/load FILE            read a conversation written by /save
/exit, /quit, Ctrl+D  leave
Multi-line: start and end with \"\"\" , or end a line with \\ to continue it; a paste stays one message.
On a terminal: Up/Down and Ctrl+R search the history, Tab completes commands and their arguments.
Ctrl+C stops a reply (the partial reply is kept); twice at the prompt leaves."""
COMMANDS = ("help", "clear", "system", "set", "show", "stats", "regen", "save", "load", "exit", "quit")


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


class Exit(Exception):
    """Raised by a command to leave the loop."""


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


def command_table(settings: Any) -> dict[str, tuple[str, ...] | None]:
    """Each slash command and what its argument completes to (None: a file path), for Tab."""
    names = tuple(f.name for f in dataclasses.fields(settings))
    table: dict[str, tuple[str, ...] | None] = {name: () for name in COMMANDS}
    table.update(set=names, show=("template",), save=None, load=None)
    return table


class Repl:
    """State of one interactive session; ``run_repl`` is the entry point."""

    def __init__(
        self, backend: Backend, settings: Any, messages: list[Message], console: Console, markdown: bool
    ) -> None:
        self.backend, self.settings, self.messages = backend, settings, messages
        self.console, self.markdown = console, markdown
        self.told_trim = False
        self.commands: dict[str, Callable[[str], None]] = {
            "help": lambda _: self.console.print(HELP, markup=False, highlight=False),
            "clear": self.clear,
            "system": self.system,
            "set": self.set,
            "show": self.show,
            "stats": self.stats,
            "regen": self.regen,
            "save": self.save,
            "load": self.load,
            "exit": self.exit,
            "quit": self.exit,
        }

    def note(self, text: str) -> None:
        self.console.print(text, style="dim", markup=False, highlight=False)

    def error(self, text: str) -> None:
        self.console.print(f"[bold red]error:[/] {escape(text)}", highlight=False)

    # -- commands ---------------------------------------------------------------------------
    def command(self, line: str) -> None:
        name, _, arg = line[1:].partition(" ")
        handler = self.commands.get(name.lower())
        if handler is None:
            self.note(f"unknown command /{name}; /help lists them (start with // to send a '/')")
            return
        try:
            handler(arg.strip())
        except ExpoError as e:
            self.error(str(e))

    def exit(self, _: str) -> None:
        raise Exit

    def clear(self, _: str) -> None:
        self.messages[:] = [m for m in self.messages[:1] if m["role"] == "system"]
        self.note("conversation cleared")

    def system(self, text: str) -> None:
        has = bool(self.messages) and self.messages[0]["role"] == "system"
        if not text:
            self.note(self.messages[0]["content"] if has else "(no system message)")
            return
        if has:
            self.messages[0]["content"] = text
        else:
            self.messages.insert(0, {"role": "system", "content": text})
        self.note("system message set")

    def set(self, arg: str) -> None:
        name, _, value = arg.partition(" ")
        fields = {f.name: f for f in dataclasses.fields(self.settings)}
        if not name:
            self.note("  ".join(f"{k}={v}" for k, v in self.settings_shown().items()))
            return
        if name not in fields or not value.strip():
            raise ExpoError(f"usage: /set {'|'.join(fields)} VALUE")
        kind = type(getattr(self.settings, name))
        value = value.strip()
        if name == "seed" and value.lower() == "random":
            value = "-1"
        try:
            parsed = kind(value)
        except ValueError:
            raise ExpoError(f"{name} takes a {kind.__name__}, not {value!r}") from None
        parsed = getattr(dataclasses.replace(self.settings, **{name: parsed}), name)  # validated (ExpoError)
        setattr(self.settings, name, parsed)
        self.note(f"{name} = {self.settings_shown()[name]}")

    def settings_shown(self) -> dict[str, str]:
        """The settings as /set and /show print them: a random seed is "random", not llama.cpp's 2**32-1."""
        shown = {k: str(v) for k, v in dataclasses.asdict(self.settings).items()}
        if getattr(self.settings, "seed", None) == RANDOM_SEED:
            shown["seed"] = "random"
        return shown

    def _table(self, rows: dict[str, str]) -> None:
        table = Table(show_header=False, box=None, pad_edge=False)
        for key, value in rows.items():
            table.add_row(escape(key), escape(value))
        self.console.print(table)

    def system_shown(self) -> str:
        return self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else "(none)"

    def show_template(self) -> None:
        template = self.backend.template()
        if template:
            self.console.print(template, markup=False, highlight=False, soft_wrap=True)
        else:
            self.note("(no chat template)")

    def show(self, arg: str) -> None:
        if arg == "template":
            return self.show_template()
        if arg:
            raise ExpoError("usage: /show [template]")
        rows = {**self.backend.show(), **self.settings_shown(), "system": self.system_shown()}
        self._table({**rows, "messages": str(len(self.messages))})

    def stats(self, _: str) -> None:
        rows = self.backend.stats()
        self._table(rows) if rows else self.note("no reply yet")

    def regen(self, _: str) -> None:
        before = list(self.messages)
        self.drop_reply()
        self.respond()
        self.restore_if_unanswered(before)

    def restore_if_unanswered(self, before: list[Message]) -> None:
        """A /regen that could not answer (the question no longer fits) keeps the old answer."""
        if not self.messages or self.messages[-1]["role"] != "assistant":
            self.messages[:] = before

    def drop_reply(self) -> None:
        """Take back the last reply, before ``/regen`` asks again."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
        if not self.messages or self.messages[-1]["role"] != "user":
            raise ExpoError("nothing to regenerate")

    def save(self, arg: str) -> None:
        if not arg:
            raise ExpoError("usage: /save FILE")
        save_conversation(Path(arg), self.messages, dataclasses.asdict(self.settings))
        self.note(f"saved {len(self.messages)} messages to {arg}")

    def load(self, arg: str) -> None:
        if not arg:
            raise ExpoError("usage: /load FILE")
        self.messages[:] = load_conversation(Path(arg))
        self.note(f"loaded {len(self.messages)} messages from {arg}")

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
            self.error(str(e))
            return
        if dropped:
            self.messages[:] = kept
            if not self.told_trim:
                self.told_trim = True
                self.note(
                    f"context full: dropped the {dropped} oldest messages"
                    " (older turns will keep being dropped as needed)"
                )
        chunks: list[str] = []
        interrupted = False
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
                return
        self.messages.append({"role": "assistant", "content": "".join(chunks)})
        if interrupted:
            self.note("(interrupted)")
        elif cut := self.backend.cut():
            self.note(f"(cut at {cut} tokens)")
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

    def handle(self, text: str) -> bool:
        """Act on one input; False to leave."""
        if not text.strip():
            return True
        try:
            utf8_text(text, "your message")
        except ExpoError as e:  # bytes a terminal or a pipe could not decode
            self.error(str(e))
            return True
        if text.startswith("/") and not text.startswith("//"):
            try:
                self.command(text.strip())
            except Exit:
                return False
            return True
        self.messages.append({"role": "user", "content": text.removeprefix("/")})
        self.respond()
        return True


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
