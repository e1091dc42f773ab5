"""The chat's input line on a terminal, by prompt_toolkit (the line editor of IPython and pgcli).

A message is one buffer: a paste (bracketed paste) stays one message with its lines, an open
\"\"\" block or a trailing backslash makes Enter start a new line instead of sending, and the
history (kept in the user's data directory, searched with Ctrl+R) holds whole messages. Tab
completes slash commands and their arguments. Ctrl+C and Ctrl+D raise KeyboardInterrupt and
EOFError as ``input()`` does, so the REPL (``repl.read_message``) reads from it or from a pipe
alike. Nothing here imports llama.cpp or click.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.filters import is_searching
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import Output

from .repl import CONTINUE, unfinished

PATH = None  # in a command table: the argument is a file path


class SlashCompleter(Completer):
    """``/se`` -> ``/set``, ``/set te`` -> ``/set temp``, ``/load ch`` -> ``/load chats/``."""

    def __init__(self, commands: Mapping[str, Sequence[str] | None]) -> None:
        self.commands = commands
        self.paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        if not text.startswith("/") or "\n" in text:
            return
        name, space, arg = text[1:].partition(" ")
        if not space:
            for command in sorted(self.commands):
                if command.startswith(name.lower()):
                    yield Completion(command, start_position=-len(name))
            return
        choices = self.commands.get(name.lower(), ())
        if choices is PATH:
            yield from self.paths.get_completions(Document(arg, len(arg)), complete_event)
        elif " " not in arg:
            for choice in choices:
                if choice.startswith(arg):
                    yield Completion(choice, start_position=-len(arg))


def _bindings() -> KeyBindings:
    keys = KeyBindings()

    @keys.add("enter", filter=~is_searching)  # while Ctrl+R searches, Enter ends the search
    def _enter(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if not unfinished(buffer.text):
            buffer.validate_and_handle()
        elif buffer.text.endswith("\\") and buffer.cursor_position == len(buffer.text):
            buffer.delete_before_cursor()  # the backslash only asked for a new line
            buffer.newline(copy_margin=False)
        else:
            buffer.newline(copy_margin=False)

    @keys.add("escape", "enter", filter=~is_searching)  # Alt+Enter: a new line, whatever the buffer holds
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.newline(copy_margin=False)

    return keys


def open_history(path: Path | None) -> tuple[History, str | None]:
    """The history file, or one in memory and why when it cannot be kept."""
    if path is None:
        return InMemoryHistory(), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as e:
        return InMemoryHistory(), f"input history not kept: cannot write {path} ({e.strerror or e})"
    return FileHistory(str(path)), None


class LineEditor:
    """``read_line(prompt)`` for the REPL, on a terminal."""

    def __init__(
        self,
        commands: Mapping[str, Sequence[str] | None],
        history: History,
        input: Input | None = None,
        output: Output | None = None,
    ) -> None:
        self.session: PromptSession[str] = PromptSession(
            history=history,
            completer=SlashCompleter(commands),
            complete_while_typing=False,
            key_bindings=_bindings(),
            prompt_continuation=CONTINUE,
            enable_open_in_editor=False,
            input=input,
            output=output,
        )

    def read_line(self, prompt: str) -> str:
        return self.session.prompt(prompt)
