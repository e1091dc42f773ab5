"""Every chat kept (issue "A chat you keep"): through the CLI on the real SmolLM2, a pty for the
REPL, and the REPL's own hooks with a scripted model. What is kept reads back word for word, a
SIGKILL loses no completed turn, four chats at once all land, and a store that cannot be used
never stops a chat."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console

from expo_gguf.chat.keeping import ChatLog
from expo_gguf.chat.messages import Sampling
from expo_gguf.chat.repl import Backend, run_repl
from expo_gguf.chat.store import Figures, ModelRecord, Store

from conftest import smollm2, tmpfs
from pty_terminal import Terminal

pytestmark = pytest.mark.slow


def _chat(
    db: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "expo_gguf", "chat", *args, "--temp", "0", "--threads", "1", "--max-tokens", "16"]
    full_env = {**os.environ, "EXPO_GGUF_LOGS_DB": str(db), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, input=stdin, timeout=120)


def _logs(db: Path, *args: str) -> list[dict]:
    env = {**os.environ, "EXPO_GGUF_LOGS_DB": str(db)}
    res = subprocess.run(
        [sys.executable, "-m", "expo_gguf", "logs", *args, "--json"], capture_output=True, text=True, env=env
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_a_one_shot_reply_is_kept_word_for_word_and_found(tmp_path: Path) -> None:
    db, model = tmp_path / "logs.db", smollm2()
    res = _chat(db, str(model), "-p", "Name a colour of the rainbow.", "--system", "Be brief.")
    assert res.returncode == 0, res.stderr
    [conv] = _logs(db, "-n", "0")
    assert conv["model"] == model.name and conv["system"] == "Be brief."
    assert conv["model_file"]["path"] == str(model.resolve()) and conv["model_file"]["size"] == model.stat().st_size
    user, reply = conv["messages"]
    assert user["content"] == "Name a colour of the rainbow."
    assert reply["content"] + "\n" == res.stdout  # exactly what stdout got
    assert reply["tokens"] == 16 and reply["cut"] == "length" and reply["tokens_per_s"] > 0
    word = max(reply["content"].split(), key=len).strip(".,!?:;*")
    assert [c["id"] for c in _logs(db, "-q", word)] == [conv["id"]]
    assert _logs(db, "-q", "xylophonequark") == []

    again = _chat(db, "--continue", "-p", "And another?")  # no MODEL: the conversation's own
    assert again.returncode == 0, again.stderr
    [same] = _logs(db, "-n", "0")
    assert same["id"] == conv["id"] and [m["role"] for m in same["messages"]] == ["user", "assistant"] * 2
    assert same["messages"][2]["content"] == "And another?"
    assert _chat(db, "--resume", conv["id"][:10], "-p", "Once more?").returncode == 0
    assert len(_logs(db, "-n", "0")[0]["messages"]) == 6

    assert _chat(db, str(model), "-p", "Not kept.", "--no-log").returncode == 0
    assert _chat(db, str(model), "-p", "Not kept.", env={"EXPO_GGUF_NO_LOG": "1"}).returncode == 0
    assert len(_logs(db, "-n", "0")) == 1 and _logs(db, "-q", "kept") == []


def test_four_chats_at_once_all_land(tmp_path: Path) -> None:
    db, model = tmp_path / "logs.db", smollm2()
    env = {**os.environ, "EXPO_GGUF_LOGS_DB": str(db)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "expo_gguf", "chat", str(model), "-p", f"Say the number {i}.", "--max-tokens", "8",
             "--threads", "1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for i in range(4)
    ]  # fmt: skip
    for p in procs:
        assert p.wait(180) == 0, p.stderr.read() if p.stderr else ""
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    asked = sorted(r[0] for r in con.execute("SELECT content FROM messages WHERE role = 'user'"))
    assert asked == [f"Say the number {i}." for i in range(4)]
    assert con.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 4


def test_a_store_that_cannot_be_used_never_stops_a_chat(tmp_path: Path) -> None:
    db = tmp_path / "logs.db"
    db.write_bytes(os.urandom(4096))
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    res = _chat(db, str(smollm2()), "-p", "Hello.")
    assert res.returncode == 0 and res.stdout.strip(), res.stderr
    said = [line for line in res.stderr.splitlines() if "not being kept" in line]
    assert len(said) == 1 and "not a database" in said[0], res.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest  # never overwritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.db"]


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 64 KiB."""
    with tmpfs(tmp_path / "small", "size=64k") as mnt:
        yield mnt


def test_a_full_disk_is_one_line_and_the_chat_goes_on(full_disk: Path) -> None:
    (full_disk / "filler").write_bytes(b"\0" * (64 * 1024 - 4096))
    res = _chat(full_disk / "logs.db", str(smollm2()), "-p", "Hello.")
    assert res.returncode == 0 and res.stdout.strip(), res.stderr
    assert len([line for line in res.stderr.splitlines() if "not being kept" in line]) == 1, res.stderr


def test_sigkill_after_two_turns_keeps_both(tmp_path: Path) -> None:
    db = tmp_path / "logs.db"
    os.environ["EXPO_GGUF_LOGS_DB"] = str(db)  # the pty child inherits it
    try:
        term = Terminal([sys.executable, "-m", "expo_gguf", "chat", str(smollm2()), "--temp", "0", "--threads", "1"])
        term.expect("/help for commands")
        term.prompt()
        term.send("/set max_tokens 12\n")
        term.prompt()
        for question in ("Name a fruit.", "Name a tree."):
            term.send(question + "\n")
            assert "tok/s" in term.prompt()
        term.send("/set max_tokens 400\n")
        term.prompt()
        term.send("Write a long story about a dragon.\n")
        term.reply_started()
        os.kill(term.pid, signal.SIGKILL)
        term.wait()
    finally:
        del os.environ["EXPO_GGUF_LOGS_DB"]
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    [conv] = _logs(db)
    roles = [(m["role"], m["content"] if m["role"] == "user" else bool(m["content"])) for m in conv["messages"]]
    assert roles[:4] == [("user", "Name a fruit."), ("assistant", True), ("user", "Name a tree."), ("assistant", True)]
    assert roles[4:] == [("user", "Write a long story about a dragon.")]  # sent, so kept; its reply never ended


def _scripted(replies: list[str], log: ChatLog) -> Backend:
    it = iter(replies)
    return Backend(
        reply=lambda messages: (chunk for chunk in [next(it)]), figures=lambda: Figures(3, 0.1, 30.0), log=log
    )


def _lines(*lines: str) -> Callable[[str], str]:
    it = iter(lines)

    def read(_: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


def test_the_repl_keeps_regen_alternatives_system_and_clear(tmp_path: Path) -> None:
    opened: list[Store] = []

    def open_store() -> Store:
        opened.append(Store(tmp_path / "logs.db"))
        return opened[-1]

    log = ChatLog(open_store, ModelRecord("m.gguf"), lambda: {"temp": 0}, "chat", say=lambda _: None)
    log.start([])
    console = Console(file=open(os.devnull, "w"), width=80)
    lines = _lines("/system Be terse.", "hello", "/regen", "/system", "/clear", "second chat")
    run_repl(_scripted(["first", "second", "third"], log), Sampling(), console=console, read_line=lines, markdown=False)
    store = opened[0]
    rows = store.db.execute("SELECT conversation_id, role, content, replaced FROM messages ORDER BY id").fetchall()
    first, second = rows[0][0], rows[-1][0]
    assert [tuple(r)[1:] for r in rows] == [
        ("user", "hello", 0),
        ("assistant", "first", 1),  # /regen's replaced reply, kept as an alternative
        ("assistant", "second", 0),
        ("user", "second chat", 0),
        ("assistant", "third", 0),
    ]
    assert first != second  # /clear: a new conversation
    systems = dict(store.db.execute("SELECT id, system FROM conversations").fetchall())
    assert systems == {first: "Be terse.", second: "Be terse."}
    assert len(opened) == 1


def test_a_failing_store_is_said_once(tmp_path: Path) -> None:
    said: list[str] = []
    (tmp_path / "logs.db").write_bytes(b"not a database" * 100)
    log = ChatLog(lambda: Store(tmp_path / "logs.db"), ModelRecord("m.gguf"), dict, "chat", say=said.append)
    log.start([])
    console = Console(file=open(os.devnull, "w"), width=80)
    out = run_repl(
        _scripted(["a", "b"], log), Sampling(), console=console, read_line=_lines("one", "two"), markdown=False
    )
    assert [m["content"] for m in out] == ["one", "a", "two", "b"]  # the chat went on
    assert len(said) == 1 and "not being kept" in said[0]
