"""Conversation files for ``/save`` and ``/load``: what is written, and what is accepted back.

A file someone else wrote is hostile until checked, so loading is bounded in size and every way
it can be wrong is one ``ExpoError`` line naming the first offender; the session goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

from .._fs import read_capped, write_text_atomic
from .._units import plural
from ..errors import ExpoError
from .messages import Message, message_problem


def _read_json(path: Path) -> object:
    text = read_capped(path, "/load reads conversations")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ExpoError(f"cannot read {path}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:  # json recurses per nesting level
        raise ExpoError(f"cannot read {path}: JSON nested too deeply") from None


def _checked(messages: object, path: Path, where: str = "") -> list[Message]:
    if not isinstance(messages, list):
        raise ExpoError(
            f"{path} is not a conversation{where}: expected a list of messages or an"
            ' object with "messages", as /save writes'
        )
    for i, m in enumerate(messages):
        problem = message_problem(i, m)
        if problem:
            raise ExpoError(f"{path} is not a conversation{where}: {problem}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def load_conversation(path: Path) -> list[Message]:
    """Messages from a ``/save`` file (or a bare list of messages), validated.

    A file someone else wrote is hostile until checked: every way it can be wrong is one
    ``ExpoError`` line naming the first offender, so the session that loads it goes on. A file
    ``chat --vs`` saved gives its first model's thread (its ``messages``).
    """
    data = _read_json(path)
    return _checked(data.get("messages") if isinstance(data, dict) else data, path)


def load_threads(path: Path, n: int) -> list[list[Message]]:
    """One conversation per model for ``chat --vs``: the threads of a file ``chat --vs`` saved
    (as many as there are models), or else the file's one conversation, copied for each model."""
    data = _read_json(path)
    threads = data.get("threads") if isinstance(data, dict) else None
    if threads is None:
        one = _checked(data.get("messages") if isinstance(data, dict) else data, path)
        return [[dict(m) for m in one] for _ in range(n)]
    if not isinstance(threads, list) or len(threads) != n:
        held = plural(len(threads), "thread") if isinstance(threads, list) else "no list of threads"
        raise ExpoError(f"{path} holds {held}; this chat has {plural(n, 'model')}")
    return [
        _checked(t.get("messages") if isinstance(t, dict) else None, path, f" (thread {i + 1})")
        for i, t in enumerate(threads)
    ]


def save_conversation(
    path: Path, messages: list[Message], settings: dict[str, object], threads: list[dict[str, object]] | None = None
) -> None:
    """The JSON ``load_conversation`` reads back: the messages, and the sampling settings as a record.

    ``chat --vs`` adds ``threads``, one ``{"model", "file", "messages"}`` per model; ``messages``
    is then the first model's thread, so a plain ``chat`` can load the file too. Whether ``path``
    may be replaced is the caller's question (``commands.Commands.check_replace``).
    """
    data: dict[str, object] = {"messages": messages, "settings": settings}
    if threads is not None:
        data["threads"] = threads
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")  # never half a file
