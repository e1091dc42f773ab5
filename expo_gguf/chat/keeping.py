"""Keeping one conversation as it happens: what the REPL and a one-shot reply call as messages
are sent and replies end, written to the store (``chat.store``) the moment each is complete.

A chat never fails because of its log: the first problem (a corrupt or locked database, a
read-only or full disk) is said once, in one line, and the rest of this conversation is not kept.
The conversation's row is written with its first message, so a chat with nothing said keeps
nothing. Nothing here imports llama.cpp or click.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ExpoError
from .messages import Message
from .store import Figures, ModelRecord, Store, StoreError, kept_path

NOT_KEPT = "this conversation is not being kept"
CUT_BY_STOP = {"max_tokens": "length", "context": "length", "interrupted": "interrupted"}  # the runtime's stop


def kept_figures(stats: object | None) -> tuple[Figures | None, str | None]:
    """A reply's figures and cut as the store keeps them, from the runtime's ``TurnStats`` (read by
    attribute: this module does not import the runtime); (None, None) before any reply."""
    if stats is None:
        return None, None
    s: Any = stats
    return Figures(s.generated, round(s.ttft_s, 4), round(s.gen_tps, 2)), CUT_BY_STOP.get(s.stop)


class ChatLog:
    """One conversation in the store. ``open_store`` is called once, when the first message is kept."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        model: ModelRecord,
        sampling: Callable[[], dict[str, object]],
        source: str,
        say: Callable[[str], None],
        *,
        resume: str | None = None,
    ) -> None:
        self._open, self.model, self.sampling, self.source, self.say = open_store, model, sampling, source, say
        self.store: Store | None = None
        self.id: str | None = resume  # the conversation new messages go to (None: a new one, when needed)
        self.system: str | None = None
        self.broken = False
        self._last_reply: int | None = None
        self._pending: list[Message] = []  # a loaded conversation, written with the first new message

    def _do(self, write: Callable[[Store], object]) -> object:
        if self.broken:
            return None
        try:
            if self.store is None:
                self.store = self._open()
            return write(self.store)
        except StoreError as e:
            self.broken = True
            self.say(f"{e}; {NOT_KEPT}")
            return None

    def _conversation(self, store: Store) -> str:
        if self.id is None:
            self.id = store.new_conversation(self.model, self.system, self.sampling(), self.source)
            for m in self._pending:
                store.add_message(self.id, m["role"], m["content"])
            self._pending = []
        return self.id

    def start(self, messages: Sequence[Message]) -> None:
        """A new conversation from here on (the chat's start, ``/clear``, ``/load``): the next message
        opens it, with ``messages`` (a loaded conversation) written first."""
        self.id, self._last_reply = None, None
        self.system = next((m["content"] for m in messages if m["role"] == "system"), None)
        self._pending = [dict(m) for m in messages if m["role"] != "system"]  # type: ignore[misc]

    def set_system(self, text: str | None) -> None:
        self.system = text
        if self.id is not None:
            self._do(lambda s: s.set_system(self.id, text))  # type: ignore[arg-type]

    def user(self, text: str) -> None:
        self._do(lambda s: s.add_message(self._conversation(s), "user", text))

    def unsent(self) -> None:
        """The last user message got no reply at all (it did not fit, or the model failed): forget it."""
        if self.id is not None:
            self._do(lambda s: s.drop_last_messages(self.id, 1))  # type: ignore[arg-type]

    def reply(self, text: str, figures: Figures | None, cut: str | None) -> None:
        """A reply that ended (``cut``: why it ended early, or None), kept with its figures."""
        self._last_reply = self._do(lambda s: s.add_message(self._conversation(s), "assistant", text, figures, cut))  # type: ignore[assignment]

    def replaced(self, reply_id: int | None) -> None:
        """``/regen`` answered again: the earlier reply stays, as an alternative."""
        if reply_id is not None:
            self._do(lambda s: s.mark_replaced(reply_id))

    @property
    def last_reply(self) -> int | None:
        return self._last_reply

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


class NoLog:
    """``--no-log``: the same calls, nothing kept."""

    id = None
    last_reply = None

    def start(self, messages: Sequence[Message]) -> None: ...
    def set_system(self, text: str | None) -> None: ...
    def user(self, text: str) -> None: ...
    def unsent(self) -> None: ...
    def reply(self, text: str, figures: Figures | None, cut: str | None) -> None: ...
    def replaced(self, reply_id: int | None) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Resumed:
    """A kept conversation to carry on: its id, the messages the chat starts from, its model's file."""

    id: str
    messages: list[Message]
    model_path: Path | None  # None: the file is gone (or was never recorded)
    model_file: str


def resume(ref: str | None, path: Path | None = None) -> Resumed:
    """The conversation ``chat --resume REF`` (any unique start of an id) or, with None,
    ``chat --continue`` (the newest) carries on. Reading it must work: a store that cannot be
    read is an ``ExpoError`` here, not a note."""
    from . import logs

    store = Store(kept_path(path))
    try:
        cid = logs.resolve(store, ref) if ref is not None else logs.newest(store)
        if cid is None:
            raise ExpoError("no conversation to continue yet; `expo-gguf logs` lists what is kept")
        conv = logs.conversation(store, cid)
    finally:
        store.close()
    file = conv["model_file"]["path"]  # type: ignore[index]
    model = Path(file) if file and Path(file).is_file() else None
    return Resumed(cid, logs.thread(conv), model, str(conv["model"]))  # type: ignore[arg-type]
