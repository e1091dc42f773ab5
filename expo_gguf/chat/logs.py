"""Reading the conversation store back: the newest conversations, search, one conversation whole,
as JSON objects or as a markdown transcript. The ``logs`` command prints these; ``chat --resume``
and ``--continue`` start from ``load``.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone

from .._units import plural
from ..errors import ExpoError
from .store import Store, StoreError


@dataclass(frozen=True)
class Summary:
    """One line of ``logs``: a conversation, newest first."""

    id: str
    created: float
    updated: float
    model: str
    turns: int
    first_line: str


def iso(t: float | None) -> str | None:
    """A store time as ISO 8601 in UTC, to the second."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _fts_query(text: str) -> str:
    """Every word of ``text`` as a quoted FTS5 string, all of them required: what a user types is
    words, never FTS5 syntax (``NEAR``, ``*``, a stray quote)."""
    return " ".join('"' + w.replace('"', '""') + '"' for w in text.split())


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


_SUMMARY = """
    SELECT c.id, c.created, c.updated, c.model,
        (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id AND m.role = 'user') AS turns,
        (SELECT content FROM messages m WHERE m.conversation_id = c.id AND m.role = 'user' ORDER BY m.id LIMIT 1)
            AS first
    FROM conversations c
"""


def summaries(store: Store, n: int = 3, query: str | None = None, model: str | None = None) -> list[Summary]:
    """The newest ``n`` conversations (by their last message), newest first; with ``query``, those
    with a message holding every word of it; with ``model``, those whose file or model name holds it."""
    where, args = [], []
    if query is not None and query.split():
        if store.fts:
            where.append(
                "c.id IN (SELECT m.conversation_id FROM messages_fts f JOIN messages m ON m.id = f.rowid"
                " WHERE messages_fts MATCH ?)"
            )
            args.append(_fts_query(query))
        else:
            like = " AND ".join("m.content LIKE ? ESCAPE '\\'" for _ in query.split())
            where.append(f"c.id IN (SELECT m.conversation_id FROM messages m WHERE {like})")
            args += [_like(w) for w in query.split()]
    if model:
        where.append("(c.model LIKE ? ESCAPE '\\' OR c.model_name LIKE ? ESCAPE '\\')")
        args += [_like(model)] * 2
    sql = _SUMMARY + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY c.updated DESC LIMIT ?"
    rows = _read(store, sql, (*args, n))
    return [
        Summary(r["id"], r["created"], r["updated"], r["model"], r["turns"], (r["first"] or "").strip().split("\n")[0])
        for r in rows
    ]


def _read(store: Store, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
    try:
        return store.db.execute(sql, args).fetchall()
    except sqlite3.Error as e:
        raise StoreError(f"cannot read the chat log {store.path}: {e}") from None


def resolve(store: Store, prefix: str) -> str:
    """The id of the one conversation whose id starts with ``prefix`` (ids are case-insensitive)."""
    p = prefix.strip().lower()
    if not p:
        raise ExpoError("no conversation id given")
    rows = _read(store, "SELECT id FROM conversations WHERE id >= ? AND id < ? LIMIT 2", (p, p + "\uffff"))
    if not rows:
        raise ExpoError(f"no conversation {prefix} in {store.path} (expo-gguf logs lists them)")
    if len(rows) > 1:
        raise ExpoError(f"{prefix} names more than one conversation: give more of its id")
    return str(rows[0]["id"])


def newest(store: Store) -> str | None:
    rows = _read(store, "SELECT id FROM conversations ORDER BY updated DESC LIMIT 1")
    return str(rows[0]["id"]) if rows else None


def conversation(store: Store, cid: str, alternatives: bool = True) -> dict[str, object]:
    """One conversation as the JSON ``logs --json`` prints: id, model, created, system, messages
    (each with role, content, created; a reply with its figures and ``cut``; a reply ``/regen``
    replaced with ``"replaced": true``, left out when ``alternatives`` is False)."""
    rows = _read(store, "SELECT * FROM conversations WHERE id = ?", (cid,))
    if not rows:
        raise ExpoError(f"no conversation {cid} in {store.path}")
    c = rows[0]
    messages = []
    for m in _read(store, "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (cid,)):
        if m["replaced"] and not alternatives:
            continue
        item: dict[str, object] = {"role": m["role"], "content": m["content"], "created": iso(m["created"])}
        if m["role"] == "assistant":
            item.update(tokens=m["tokens"], ttft_s=m["ttft_s"], tokens_per_s=m["tokens_per_s"], cut=m["cut"])
            if m["replaced"]:
                item["replaced"] = True
        messages.append(item)
    return {
        "id": c["id"],
        "model": c["model"],
        "created": iso(c["created"]),
        "updated": iso(c["updated"]),
        "system": c["system"],
        "messages": messages,
        "model_file": {
            "path": c["model_path"],
            "size": c["model_size"],
            "name": c["model_name"],
            "expo": json.loads(c["expo"]) if c["expo"] else None,
        },
        "sampling": json.loads(c["sampling"]) if c["sampling"] else None,
        "source": c["source"],
    }


def thread(conv: dict[str, object]) -> list[dict[str, str]]:
    """The messages a resumed chat starts from: the system message, then the thread without the
    replies ``/regen`` replaced."""
    out = [{"role": "system", "content": str(conv["system"])}] if conv.get("system") else []
    for m in conv["messages"]:  # type: ignore[union-attr]
        if not m.get("replaced"):
            out.append({"role": m["role"], "content": m["content"]})
    return out


def markdown(conv: dict[str, object]) -> str:
    """A transcript a person reads, or pastes into an issue: a heading with the model and time, the
    system message, then each message under its role; a reply's figures in italics."""
    lines = [f"# {conv['model']} · {conv['created']}", "", f"id `{conv['id']}`", ""]
    if conv.get("system"):
        lines += ["## system", "", str(conv["system"]), ""]
    for m in conv["messages"]:  # type: ignore[union-attr]
        title = m["role"] + (" (replaced by /regen)" if m.get("replaced") else "")
        lines += [f"## {title}", "", m["content"], ""]
        if m["role"] == "assistant":
            figures = [plural(m["tokens"], "token") if m.get("tokens") is not None else None]
            figures.append(f"{m['tokens_per_s']:.1f} tokens/s" if m.get("tokens_per_s") else None)
            figures.append(f"cut: {m['cut']}" if m.get("cut") else None)
            shown = ", ".join(f for f in figures if f)
            lines += [f"*{shown}*", ""] if shown else []
    return "\n".join(lines).rstrip() + "\n"
