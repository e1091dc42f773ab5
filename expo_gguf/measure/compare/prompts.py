"""The prompts ``compare`` sends to every model: the shipped set, or a user's file.

Two formats, chosen by the file's extension:

- ``.json``: a list; each item is a string (one user message) or an object with ``"prompt"`` (a
  string) or ``"messages"`` (a conversation of ``role``/``content`` objects ending with the user's
  turn, as ``/save`` writes them; for multi-turn and multi-line prompts), and optionally ``"id"``
  and ``"category"``.
- anything else: plain text, one prompt per line; blank lines and lines starting with ``#`` are
  skipped.

A file someone else wrote is checked like a ``/load`` file: every way it can be wrong is one
``ExpoError`` line naming the prompt at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..._data import data_text
from ..._fs import read_capped
from ...chat.messages import Message, message_problem
from ...errors import ExpoError

SHIPPED = "compare_prompts.json"
SHIPPED_NAME = "built-in prompts"
FORMAT_HINT = (
    'a .json list of strings or {"prompt"|"messages", "id", "category"} objects, or plain text with one prompt per line'
)


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    messages: tuple[Message, ...]  # ends with the user's turn

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


def shipped_prompts() -> tuple[str, list[Prompt]]:
    """The set written for this project (``expo_gguf/data``), with the name reports give it."""
    text = data_text(SHIPPED)
    return SHIPPED_NAME, _from_json(text, SHIPPED)


def load_prompts(path: Path | None) -> tuple[str, list[Prompt]]:
    """``(name, prompts)`` from ``path``, or the shipped set when it is None."""
    if path is None:
        return shipped_prompts()
    text = read_capped(Path(path), "--prompts reads files")
    prompts = _from_json(text, str(path)) if Path(path).suffix.lower() == ".json" else _from_lines(text)
    if not prompts:
        raise ExpoError(f"{path} holds no prompts; give {FORMAT_HINT}")
    ids = [p.id for p in prompts]
    twice = next((i for i in ids if ids.count(i) > 1), None)
    if twice is not None:
        raise ExpoError(f"{path}: prompt id {twice!r} is used more than once")
    return str(path), prompts


def _from_lines(text: str) -> list[Prompt]:
    lines = [line.strip() for line in text.splitlines()]
    kept = [line for line in lines if line and not line.startswith("#")]
    return [Prompt(str(i), "", ({"role": "user", "content": line},)) for i, line in enumerate(kept, 1)]


def _from_json(text: str, where: str) -> list[Prompt]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ExpoError(f"{where}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise ExpoError(f"{where}: JSON nested too deeply") from None
    if not isinstance(data, list):
        raise ExpoError(f"{where} is not a prompt list: expected {FORMAT_HINT}")
    return [_one(i, item, where) for i, item in enumerate(data, 1)]


def _one(i: int, item: object, where: str) -> Prompt:
    """Prompt ``i`` (1-based, as the error names it) from one JSON item."""
    bad = f"{where}: prompt {i}"
    if isinstance(item, str):
        item = {"prompt": item}
    if not isinstance(item, dict) or ("prompt" in item) == ("messages" in item):
        raise ExpoError(f'{bad} needs exactly one of "prompt" or "messages" ({FORMAT_HINT})')
    for key in ("id", "category"):
        if not isinstance(item.get(key, ""), str):
            raise ExpoError(f"{bad}: {key} must be a string")
    if "prompt" in item:
        if not isinstance(item["prompt"], str):
            raise ExpoError(f'{bad}: "prompt" must be a string')
        messages = [{"role": "user", "content": item["prompt"]}]
    else:
        messages = item["messages"]
        if not isinstance(messages, list) or not messages:
            raise ExpoError(f'{bad}: "messages" must be a non-empty list of messages')
        for j, m in enumerate(messages):
            problem = message_problem(j, m)
            if problem:
                raise ExpoError(f"{bad}: {problem}")
        if messages[-1]["role"] != "user":
            raise ExpoError(f"{bad}: the last message is the {messages[-1]['role']}'s; it must be the user's")
    if not messages[-1]["content"].strip():
        raise ExpoError(f"{bad}: the user's message is empty")
    kept = tuple({"role": m["role"], "content": m["content"]} for m in messages)
    return Prompt(item.get("id") or str(i), item.get("category", ""), kept)
