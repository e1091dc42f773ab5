"""Every conversation through the server kept in the store, as ``chat`` keeps its own (source "serve").

A request carries the whole thread; its ``conversation_id`` (our extension) says which kept
conversation it continues. The thread decides what happened: the kept thread plus one new user
message is a next turn (appended); the kept thread minus its last reply is a regenerate (the old
reply stays, marked replaced); anything else (no id, an unknown id, an edit) starts a new
conversation holding the request's messages. Runs on the server's one worker thread, so the
writes of one reply never interleave with another's. Nothing here imports llama.cpp.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from ...errors import ExpoError
from .. import logs
from ..keeping import ChatLog
from ..messages import Message, Sampling
from ..store import ModelRecord, Store, default_path


class Keeper:
    """The server's side of the store: one connection for its writes, opened with the first one."""

    def __init__(self, model: ModelRecord, say: Callable[[str], None], path: Path | None = None) -> None:
        self.model, self.say, self.path = model, say, path or default_path()
        self._store: Store | None = None

    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.path)
        return self._store

    def _kept_thread(self, cid: str) -> list[dict[str, str]] | None:
        try:
            return logs.thread(logs.conversation(self.store(), cid, alternatives=False))
        except ExpoError:  # no such conversation (or no store): a new one
            return None

    def _last_reply(self, cid: str) -> int | None:
        row = (
            self.store()
            .db.execute(
                "SELECT id FROM messages WHERE conversation_id = ? AND role = 'assistant' AND replaced = 0"
                " ORDER BY id DESC LIMIT 1",
                (cid,),
            )
            .fetchone()
        )
        return int(row[0]) if row else None

    def log_for(self, messages: Sequence[Message], cid: str | None, sampling: Sampling) -> tuple[ChatLog, int | None]:
        """The log this request's reply goes to, its user message already kept (a regenerate keeps
        none), and the id of the reply it replaces, if any."""
        asked = [{"role": m["role"], "content": m["content"]} for m in messages]
        settings = dataclasses.asdict(sampling)
        thread = self._kept_thread(cid) if cid else None
        if cid and thread is not None:
            log = ChatLog(self.store, self.model, lambda: settings, "serve", self.say, resume=cid)
            if asked[:-1] == thread:
                log.user(asked[-1]["content"])
                return log, None
            if thread and thread[-1]["role"] == "assistant" and asked == thread[:-1]:
                try:
                    return log, self._last_reply(cid)
                except sqlite3.Error:  # the reply is kept anyway; the old one stays in the thread
                    return log, None
        log = ChatLog(self.store, self.model, lambda: settings, "serve", self.say)
        log.start(asked[:-1])  # type: ignore[arg-type]
        log.user(asked[-1]["content"])
        return log, None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def read_store(path: Path | None = None) -> Store | None:
    """A connection for the page's reads (one per request, off the worker); None when nothing is kept yet."""
    where = path or default_path()
    return Store(where) if where.exists() else None
