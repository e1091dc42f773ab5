"""The REPL's slash commands (/system, /set, /show, /save, ...), as a mixin that ``repl.Repl`` inherits.

A command is a method taking the rest of the line; ``vs.VsRepl`` overrides those that act on each
model's side. Every command that changes the conversation acts on ``threads()``: one thread here,
one per model under ``--vs``. Imports neither llama.cpp, click nor prompt_toolkit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .._units import plural
from ..errors import ExpoError
from .conversation import load_conversation, load_threads, save_conversation
from .keeping import ChatLog, NoLog
from .messages import RANDOM_SEED, Message

if TYPE_CHECKING:
    from .repl import Backend

HELP = """\
/help                 this list
/clear                forget the conversation (keeps the system message)
/system [TEXT]        show or set the system message; /system "" clears it
/set [NAME VALUE]     show settings, or set temp|top_p|top_k|min_p|repeat_penalty|max_tokens|seed
/show [template]      model, settings, system message and context use; or the chat template
/stats                figures for the last reply
/regen                answer the last message again
/save FILE            write the conversation as JSON (never over another conversation's file)
/save! FILE           write it even over a file that holds another conversation
/load FILE            read a conversation written by /save
/exit, /quit, Ctrl+D  leave
Multi-line: start and end with \"\"\" , or end a line with \\ to continue it; a paste stays one message.
On a terminal: Up/Down and Ctrl+R search the history, Tab completes commands and their arguments.
Ctrl+C stops a reply (the partial reply is kept); twice at the prompt leaves."""
COMMANDS = ("help", "clear", "system", "set", "show", "stats", "regen", "save", "save!", "load", "exit", "quit")


class Exit(Exception):
    """Raised by a command to leave the loop."""


def command_table(settings: Any) -> dict[str, tuple[str, ...] | None]:
    """Each slash command and what its argument completes to (None: a file path), for Tab."""
    names = tuple(f.name for f in dataclasses.fields(settings))
    table: dict[str, tuple[str, ...] | None] = {name: () for name in COMMANDS}
    table.update({"set": names, "show": ("template",), "save": None, "save!": None, "load": None})
    return table


def unquoted(text: str) -> str:
    """``"text"`` or ``'text'`` without its quotes, as a shell would take one quoted word, so
    ``/system ""`` is empty; anything else as typed."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text[0] not in text[1:-1]:
        return text[1:-1]
    return text


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells that a file is still the one we wrote: its inode, size and modification time."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def set_system(thread: list[Message], text: str) -> None:
    """``text`` as ``thread``'s system message; an empty ``text`` removes it."""
    has = bool(thread) and thread[0]["role"] == "system"
    if not text:
        if has:
            del thread[0]
    elif has:
        thread[0]["content"] = text
    else:
        thread.insert(0, {"role": "system", "content": text})


class Commands:
    """The slash commands; ``Repl`` provides the state they act on and ``respond``."""

    backend: Backend
    settings: Any
    messages: list[Message]
    console: Console
    respond: Callable[[], None]

    def __init__(self) -> None:
        # files this conversation wrote, as they were just after: /save may replace them
        self.own_saves: dict[Path, tuple[int, int, int] | None] = {}
        self.commands: dict[str, Callable[[str], None]] = {
            "help": lambda _: self.console.print(HELP, markup=False, highlight=False),
            "clear": self.clear,
            "system": self.system,
            "set": self.set,
            "show": self.show,
            "stats": self.stats,
            "regen": self.regen,
            "save": self.save,
            "save!": lambda arg: self.save(arg, replace=True),
            "load": self.load,
            "exit": self.exit,
            "quit": self.exit,
        }

    def threads(self) -> list[list[Message]]:
        """The conversations a command acts on: one per model."""
        return [self.messages]

    def logs(self) -> list[ChatLog | NoLog]:
        """Where each of ``threads`` is kept."""
        return [self.backend.log]

    def note(self, text: str) -> None:
        self.console.print(text, style="dim", markup=False, highlight=False)

    def error(self, text: str) -> None:
        self.console.print(f"[bold red]error:[/] {escape(text)}", highlight=False)

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

    def _for_each(self, text: str) -> str:
        return text if len(self.threads()) == 1 else f"{text} for both models"

    def clear(self, _: str) -> None:
        for thread, log in zip(self.threads(), self.logs()):
            thread[:] = [m for m in thread[:1] if m["role"] == "system"]
            log.start(thread)  # a new conversation in the store too
        self.own_saves.clear()  # a new conversation: the files the old one wrote are not its own
        self.note("conversation cleared" if len(self.threads()) == 1 else "both conversations cleared")

    def system(self, arg: str) -> None:
        if not arg:
            self.note(self.system_shown() if self.system_shown() != "(none)" else "(no system message)")
            return
        text = unquoted(arg)
        if not text.strip():
            if self.system_shown() == "(none)":
                self.note("(no system message to clear)")
                return
            text = ""
        for thread, log in zip(self.threads(), self.logs()):
            set_system(thread, text)
            log.set_system(text or None)
        self.note(self._for_each("system message set" if text else "system message cleared"))

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
        before, replaced = list(self.messages), self.backend.log.last_reply
        self.drop_reply()
        self.respond()
        self.restore_if_unanswered(before)
        self.kept_as_alternative(replaced)

    def kept_as_alternative(self, replaced: int | None) -> None:
        """After ``/regen``: the reply it replaced stays in the store, marked as an alternative."""
        if self.backend.log.last_reply != replaced:
            self.backend.log.replaced(replaced)

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

    # -- /save and /load ----------------------------------------------------------------------
    def check_replace(self, path: Path, arg: str) -> None:
        """Refuse to write over a file that is not an earlier save of this conversation: one this
        conversation wrote (unchanged since), or one whose messages it still starts with (the file
        it was loaded from, carried on). Anything else would lose messages without a word."""
        if not path.exists() or (path in self.own_saves and self.own_saves[path] == _stamp(path)):
            return
        if path.is_dir():
            raise ExpoError(f"cannot write {arg}: it is a folder")
        threads = self.threads()
        try:
            earlier = load_threads(path, len(threads))
        except ExpoError:
            raise ExpoError(f"{arg} exists and is not a conversation like this one; /save! {arg} replaces it") from None
        if all(thread[: len(old)] == old for thread, old in zip(threads, earlier)):
            return
        if all(t == earlier[0] for t in earlier):  # one conversation (a plain file, under --vs too)
            held = plural(len(earlier[0]), "message")
        else:
            held = ", ".join(str(len(t)) for t in earlier) + " messages"
        raise ExpoError(
            f"{arg} holds another conversation ({held}); /save! {arg} replaces it, or save under another name"
        )

    def write(self, path: Path) -> str:
        """Write the conversation to ``path``; what was written, for the note."""
        save_conversation(path, self.messages, dataclasses.asdict(self.settings))
        return plural(len(self.messages), "message")

    def save(self, arg: str, replace: bool = False) -> None:
        if not arg:
            raise ExpoError(f"usage: /save{'!' if replace else ''} FILE")
        path = Path(arg).expanduser().resolve()
        if not replace:
            self.check_replace(path, arg)
        what = self.write(path)
        self.own_saves[path] = _stamp(path)
        self.note(f"saved {what} to {arg}")

    def read(self, path: Path) -> str:
        """Replace the conversation with the one in ``path``; what was read, for the note."""
        self.messages[:] = load_conversation(path)
        return plural(len(self.messages), "message")

    def load(self, arg: str) -> None:
        if not arg:
            raise ExpoError("usage: /load FILE")
        what = self.read(Path(arg).expanduser())
        self.own_saves.clear()  # another conversation now; its own file is the one it came from
        for thread, log in zip(self.threads(), self.logs()):
            log.start(thread)
        self.note(f"loaded {what} from {arg}")
