"""The conversation store: every chat kept in one SQLite file, searchable, resumable.

One database in the user data directory (``logs.db`` beside the input history), opened in WAL
mode with a busy timeout, so several chats and a server write to it at once; every write is one
short transaction, so a process killed at any moment loses at most the message it was writing.
The schema carries its version in ``PRAGMA user_version`` and is brought forward by the
``MIGRATIONS`` below, in order. An FTS5 index mirrors message text (kept by triggers); where the
sqlite3 build lacks FTS5, search falls back on ``LIKE`` and ``Store.fts`` says so.

A file that is not a database, or one we cannot read, is refused with ``StoreError`` and never
deleted, truncated or rewritten. Nothing here imports llama.cpp or click.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExpoError
from . import userdata

BUSY_TIMEOUT_S = 5.0
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


class StoreError(ExpoError):
    """The store cannot be used: one line saying why (the chat goes on without it; ``logs`` exits 1)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message, exit_code)


def new_id() -> str:
    """A ULID in lower case (48 bits of milliseconds, then 80 random bits): 26 characters that sort
    by time, as simonw/llm's ids do; any unique prefix names the conversation."""
    n = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in range(25, -1, -1))


def default_path() -> Path:
    """``EXPO_GGUF_LOGS_DB`` if set, else ``logs.db`` in the user data directory."""
    return Path(os.environ.get("EXPO_GGUF_LOGS_DB") or userdata.data_dir() / "logs.db")


def kept_path(path: Path | None = None) -> Path:
    """The store's file for reading: ``path`` or the default, which must exist (reading never creates it)."""
    where = path or default_path()
    if not where.exists():
        raise ExpoError(f"no conversations kept yet ({where} does not exist)")
    return where


def logging_disabled() -> bool:
    """``EXPO_GGUF_NO_LOG`` set to anything but empty or 0."""
    return os.environ.get("EXPO_GGUF_NO_LOG", "") not in ("", "0")


_V1 = [
    """CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        model TEXT NOT NULL,          -- the GGUF's file name
        model_path TEXT,
        model_size INTEGER,
        model_name TEXT,              -- general.name
        expo TEXT,                    -- the ExPO metadata the file carries, JSON
        system TEXT,
        sampling TEXT,                -- JSON
        source TEXT NOT NULL          -- chat, one-shot, vs, serve
    )""",
    "CREATE INDEX conversations_updated ON conversations(updated)",
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        created REAL NOT NULL,
        tokens INTEGER,
        ttft_s REAL,
        tokens_per_s REAL,
        cut TEXT                      -- why a reply stopped early: interrupted, max_tokens
    )""",
    "CREATE INDEX messages_conversation ON messages(conversation_id, id)",
]
_V2_FTS = [
    "CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages', content_rowid='id')",
    "INSERT INTO messages_fts(rowid, content) SELECT id, content FROM messages",
    """CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
    END""",
    """CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    END""",
    """CREATE TRIGGER messages_au AFTER UPDATE OF content ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
    END""",
]


def _v1(db: sqlite3.Connection) -> None:
    for sql in _V1:
        db.execute(sql)


def _v2(db: sqlite3.Connection) -> None:
    """A reply ``/regen`` replaced stays, marked as an alternative; full-text search where SQLite has FTS5."""
    db.execute("ALTER TABLE messages ADD COLUMN replaced INTEGER NOT NULL DEFAULT 0")
    if fts5_available(db):
        for sql in _V2_FTS:
            db.execute(sql)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2]  # version i + 1 = MIGRATIONS[i]
VERSION = len(MIGRATIONS)


def fts5_available(db: sqlite3.Connection) -> bool:
    try:
        db.execute("CREATE VIRTUAL TABLE temp.fts5_probe USING fts5(x)")
        db.execute("DROP TABLE temp.fts5_probe")
        return True
    except sqlite3.OperationalError:
        return False


@dataclass(frozen=True)
class ModelRecord:
    """Which model a conversation is with, as kept: enough to find the file again and to tell
    two files apart after a rename."""

    file: str
    path: str | None = None
    size: int | None = None
    name: str | None = None
    expo: dict[str, object] | None = None


@dataclass(frozen=True)
class Figures:
    """A reply's figures, as the REPL's /stats shows them."""

    tokens: int | None = None
    ttft_s: float | None = None
    tokens_per_s: float | None = None


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return "the disk is full" if "full" in text else text


class Store:
    """One connection to the store; every method is one short transaction. Raises ``StoreError``."""

    def __init__(self, path: Path | None = None, *, migrate_to: int = VERSION, read_only: bool = False) -> None:
        self.path = path or default_path()
        try:
            self.db = self._open_read_only() if read_only else self._open(migrate_to)
        except sqlite3.Error as e:
            raise StoreError(f"cannot use the chat log {self.path}: {_reason(e)}") from None
        except OSError as e:
            raise StoreError(f"cannot use the chat log {self.path}: {e.strerror or e}") from None
        self.fts = self._has_fts()

    def _open(self, migrate_to: int) -> sqlite3.Connection:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))  # readable by its owner only
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            db.row_factory = sqlite3.Row
            version = db.execute("PRAGMA user_version").fetchone()[0]  # "file is not a database" here
            if version > VERSION:
                raise StoreError(
                    f"the chat log {self.path} is schema version {version}; this expo-gguf knows up to {VERSION}"
                )
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a power cut may lose the last commit, never the file
            for v in range(version, migrate_to):
                with _transaction(db):
                    if db.execute("PRAGMA user_version").fetchone()[0] == v:  # another process may have migrated
                        MIGRATIONS[v](db)
                        db.execute(f"PRAGMA user_version = {v + 1}")
        except BaseException:
            db.close()
            raise
        return db

    def _open_read_only(self) -> sqlite3.Connection:
        """For reading what a read-only disk holds: SQLite cannot open a WAL database there without its
        shared-memory file, unless told nothing will change it (``immutable``)."""
        db = sqlite3.connect(f"{self.path.resolve().as_uri()}?immutable=1", uri=True, check_same_thread=False)
        db.row_factory = sqlite3.Row
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != VERSION:
            db.close()
            raise StoreError(f"the chat log {self.path} is schema version {version} on a disk we cannot write")
        return db

    def _has_fts(self) -> bool:
        row = self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'").fetchone()
        return row is not None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            with _transaction(self.db):
                yield self.db
        except sqlite3.Error as e:
            raise StoreError(f"cannot write the chat log {self.path}: {_reason(e)}") from None

    def new_conversation(
        self, model: ModelRecord, system: str | None, sampling: dict[str, object], source: str, cid: str | None = None
    ) -> str:
        cid = cid or new_id()
        now = time.time()
        with self._write() as db:
            db.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cid,
                    now,
                    now,
                    model.file,
                    model.path,
                    model.size,
                    model.name,
                    json.dumps(model.expo) if model.expo else None,
                    system,
                    json.dumps(sampling),
                    source,
                ),
            )
        return cid

    def add_message(
        self, cid: str, role: str, content: str, figures: Figures | None = None, cut: str | None = None
    ) -> int:
        now, f = time.time(), figures or Figures()
        with self._write() as db:
            row = db.execute(
                "INSERT INTO messages (conversation_id, role, content, created, tokens, ttft_s, tokens_per_s, cut)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, role, content, now, f.tokens, f.ttft_s, f.tokens_per_s, cut),
            )
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, cid))
        return int(row.lastrowid or 0)

    def mark_replaced(self, message_id: int) -> None:
        """A reply ``/regen`` replaces: kept as an alternative, left out of the thread."""
        with self._write() as db:
            db.execute("UPDATE messages SET replaced = 1 WHERE id = ?", (message_id,))

    def set_system(self, cid: str, system: str | None) -> None:
        with self._write() as db:
            db.execute("UPDATE conversations SET system = ?, updated = ? WHERE id = ?", (system, time.time(), cid))

    def set_sampling(self, cid: str, sampling: dict[str, object]) -> None:
        with self._write() as db:
            db.execute("UPDATE conversations SET sampling = ? WHERE id = ?", (json.dumps(sampling), cid))

    def drop_last_messages(self, cid: str, n: int) -> None:
        """Forget the last ``n`` messages of a thread (``/clear`` forgets them all with a new conversation)."""
        with self._write() as db:
            db.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE conversation_id = ? AND replaced = 0"
                " ORDER BY id DESC LIMIT ?)",
                (cid, n),
            )

    def delete(self, cid: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (cid,))


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction: the write lock taken up front, so two writers wait on the
    busy timeout instead of failing on a lock upgrade."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the failed statement may have ended the transaction already
        raise
    db.execute("COMMIT")
