"""The chat's input line (prompt_toolkit), fed keys as a terminal sends them: paste, multi-line
messages, history across sessions, Ctrl+R, Tab completion, Ctrl+C and Ctrl+D."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from expo_gguf import Sampling
from expo_gguf.chat.commands import command_table
from expo_gguf.chat.line_editor import LineEditor, open_history
from expo_gguf.chat.repl import read_message

ENTER, CTRL_C, CTRL_D, CTRL_R, TAB, UP = "\r", "\x03", "\x04", "\x12", "\t", "\x1b[A"


def typed(*keys: str, history: History | None = None) -> list[object]:
    """The messages ``read_message`` gets from the editor for ``keys``, until Ctrl+D; a Ctrl+C is
    recorded as KeyboardInterrupt. Each string after the first is typed a moment later, as a
    person would: completion and history loading run between two keys."""
    got: list[object] = []
    first, *later = [*keys[:-1], keys[-1] + CTRL_D] if keys else [CTRL_D]
    with create_pipe_input() as keyboard:
        editor = LineEditor(
            command_table(Sampling()), history or InMemoryHistory(), input=keyboard, output=DummyOutput()
        )
        keyboard.send_text(first)

        def type_later() -> None:
            for part in later:
                time.sleep(0.3)
                keyboard.send_text(part)

        threading.Thread(target=type_later, daemon=True).start()
        while True:
            try:
                got.append(read_message(editor.read_line))
            except EOFError:
                return got
            except KeyboardInterrupt:
                got.append(KeyboardInterrupt)


def paste(text: str) -> str:
    return f"\x1b[200~{text}\x1b[201~"


def test_a_paste_is_one_message() -> None:
    """Bug: each pasted line was sent as a message of its own."""
    assert typed(paste("line one\nline two\n\nline four") + ENTER) == ["line one\nline two\n\nline four"]
    assert typed(paste("ends with a backslash \\\nkept") + ENTER) == ["ends with a backslash \\\nkept"]


def test_blocks_and_backslashes_still_work() -> None:
    assert typed('"""' + ENTER + "x" + ENTER + ENTER + "y" + ENTER + '"""' + ENTER) == ["x\n\ny"]
    assert typed('"""one line"""' + ENTER) == ["one line"]
    assert typed("a \\" + ENTER + "b\\" + ENTER + "c" + ENTER) == ["a \nb\nc"]
    assert typed("first" + ENTER + "second" + ENTER) == ["first", "second"]


def test_ctrl_c_and_ctrl_d_keep_their_meaning() -> None:
    assert typed("half a messa" + CTRL_C + "next" + ENTER) == [KeyboardInterrupt, "next"]
    assert typed('"""' + ENTER + "in a block" + CTRL_C + "after" + ENTER) == [KeyboardInterrupt, "after"]
    assert typed("") == []  # Ctrl+D on an empty line leaves


def test_history_is_kept_across_sessions_and_searched(tmp_path: Path) -> None:
    path = tmp_path / "data" / "history"
    history, problem = open_history(path)
    assert problem is None and path.exists()
    block = '"""' + ENTER + "two" + ENTER + 'lines"""' + ENTER
    assert typed("alpha one" + ENTER + block, history=history) == ["alpha one", "two\nlines"]
    saved = path.read_bytes()

    def later() -> FileHistory:
        """A new session on the history as the first one left it (a sent line is added to it)."""
        path.write_bytes(saved)
        return FileHistory(str(path))

    assert typed("", UP, ENTER, history=later()) == ["two\nlines"]  # the whole block, one entry
    # it comes back as typed, quotes and all: Up moves through its three lines, then on
    assert typed("", UP, UP, UP, UP, ENTER, history=later()) == ["alpha one"]
    assert typed("", CTRL_R, "alp", ENTER, ENTER, history=later())[0] == "alpha one"


def test_history_that_cannot_be_written_is_kept_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    history, problem = open_history(blocker / "history")
    assert isinstance(history, InMemoryHistory) and problem and "input history not kept" in problem


def test_tab_completes_commands_settings_and_paths(tmp_path: Path) -> None:
    (tmp_path / "conversation.json").write_text("[]")
    assert typed("/se", TAB, ENTER) == ["/set"]
    assert typed("/set te", TAB, " 0.5" + ENTER) == ["/set temp 0.5"]
    assert typed("/set max", TAB, ENTER) == ["/set max_tokens"]
    assert typed("/show t", TAB, ENTER) == ["/show template"]
    assert typed(f"/load {tmp_path}/conv", TAB, ENTER) == [f"/load {tmp_path}/conversation.json"]
    assert typed(f"/save {tmp_path}/conv", TAB, ENTER) == [f"/save {tmp_path}/conversation.json"]
    assert typed("hello /se", TAB, ENTER) == ["hello /se"]  # only at the start of a message
