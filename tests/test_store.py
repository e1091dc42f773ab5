"""The conversation store (chat.store) and the ``logs`` command on it: what is kept reads back word
for word, search finds what is there and nothing else, old schemas migrate, and a file we cannot
use is refused in one line and never touched."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from expo_gguf.chat import logs
from expo_gguf.chat.store import VERSION, Figures, ModelRecord, Store, StoreError

from conftest import run_cli, tmpfs

MODEL = ModelRecord("Starling-LM-7B-beta-ExPO-Q8_0.gguf", "/m/x.gguf", 123, "Starling ExPO", {"alpha": 0.5})


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "logs.db"
    monkeypatch.setenv("EXPO_GGUF_LOGS_DB", str(path))
    return path


def _chat(store: Store, *turns: str, model: ModelRecord = MODEL, system: str | None = None) -> str:
    cid = store.new_conversation(model, system, {"temp": 0.0}, "chat")
    for i, text in enumerate(turns):
        store.add_message(cid, "user", text)
        store.add_message(cid, "assistant", f"reply {i} to {text}", Figures(5, 0.25, 12.5))
    return cid


def test_kept_reads_back_word_for_word(db: Path) -> None:
    store = Store(db)
    text = "Ünïcode, *markdown*\n\n```py\nprint('<script>')\n```"
    cid = _chat(store, text, system="Be brief.")
    res = run_cli("logs", "--json")
    assert res.exit_code == 0, res.output
    [conv] = json.loads(res.output)
    assert conv["id"] == cid and conv["model"] == MODEL.file and conv["system"] == "Be brief."
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert conv["messages"][0]["content"] == text
    reply = conv["messages"][1]
    assert (reply["tokens"], reply["ttft_s"], reply["tokens_per_s"], reply["cut"]) == (5, 0.25, 12.5, None)
    assert conv["model_file"] == {"path": "/m/x.gguf", "size": 123, "name": "Starling ExPO", "expo": {"alpha": 0.5}}
    assert conv["created"].endswith("Z") and conv["messages"][0]["created"]
    assert oct(db.stat().st_mode & 0o777) == "0o600"


def test_search_finds_what_is_there_and_nothing_else(db: Path) -> None:
    store = Store(db)
    a = _chat(store, "the colours of the rainbow", "and the sky")
    b = _chat(store, "a poem about rain")
    _chat(store, "something else entirely", model=ModelRecord("other.gguf"))
    found = lambda *args: [s.id for s in logs.summaries(store, 10, *args)]  # noqa: E731
    assert found("rainbow") == [a]
    assert found("rain") == [b]  # words, not substrings
    assert found("reply rainbow") == [a]  # every word, in any message
    assert found("zebra") == [] and found('"unbalanced') == [] and found("NEAR(") == []
    assert found(None, "other") != [] and a not in found(None, "other")
    assert found(None, "starling") == [b, a]  # general.name too, newest first
    res = run_cli("logs", "-q", "rainbow", "-n", "0")
    assert res.exit_code == 0 and res.output.startswith(a) and b not in res.output, res.output
    assert res.output.split("\t")[3:5] == ["2", "the colours of the rainbow\n"]  # piped: id when model turns first
    assert run_cli("logs", "-q", "zebra").output == ""


def test_search_without_fts5_falls_back_on_like(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import expo_gguf.chat.store as store_module

    monkeypatch.setattr(store_module, "fts5_available", lambda db: False)
    store = Store(db)
    assert not store.fts
    a = _chat(store, "100% of the rainbow_colours")
    assert [s.id for s in logs.summaries(store, 5, "rainbow_colours")] == [a]
    assert logs.summaries(store, 5, "rainbowXcolours") == []  # _ is not a wildcard
    assert logs.summaries(store, 5, "100%") != [] and logs.summaries(store, 5, "10%") == []
    res = run_cli("logs", "-q", "rainbow")
    assert res.exit_code == 0 and a in res.output and "without FTS5" in res.output, res.output


def test_show_rm_export_and_prefixes(db: Path, tmp_path: Path) -> None:
    store = Store(db)
    a, b = _chat(store, "first chat"), _chat(store, "second chat")
    res = run_cli("logs", "show", a[:12])
    assert res.exit_code == 0 and "## user\n\nfirst chat\n" in res.output and "second" not in res.output
    assert json.loads(run_cli("logs", "show", a, "--json").output)["id"] == a
    out = tmp_path / "all.json"
    assert run_cli("logs", "export", "--format", "json", "-o", out).exit_code == 0
    assert [c["id"] for c in json.loads(out.read_text())] == [a, b]  # oldest first
    again = run_cli("logs", "export", "-o", out)
    assert again.exit_code == 2 and "--force" in again.output and json.loads(out.read_text())
    md = run_cli("logs", "export", b).output
    assert md.startswith(f"# {MODEL.file}") and "second chat" in md and "first chat" not in md
    shared = os.path.commonprefix([a, b])
    res = run_cli("logs", "show", shared)
    assert res.exit_code == 2 and "more than one conversation" in res.output
    assert run_cli("logs", "rm", a, "nosuchid").exit_code == 2  # nothing deleted when one id is wrong
    assert len(logs.summaries(store, 0 or -1)) == 2
    res = run_cli("logs", "rm", a)
    assert res.exit_code == 0 and [s.id for s in logs.summaries(store, -1)] == [b]
    assert store.db.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (a,)).fetchone()[0] == 0


def test_logs_never_creates_the_file(db: Path) -> None:
    res = run_cli("logs")
    assert res.exit_code == 0 and res.output == "" and not db.exists()
    assert run_cli("logs", "path").output.strip() == str(db)
    res = run_cli("logs", "show", "abc")
    assert res.exit_code == 2 and "no conversations kept yet" in res.output and not db.exists()


def test_first_schema_migrates(db: Path) -> None:
    old = Store(db, migrate_to=1)
    assert old.db.execute("PRAGMA user_version").fetchone()[0] == 1
    old.db.execute(
        "INSERT INTO conversations VALUES ('01old', 1, 1, 'old.gguf', NULL, NULL, NULL, NULL, NULL, NULL, 'chat')"
    )
    old.db.execute(
        "INSERT INTO messages (conversation_id, role, content, created) VALUES ('01old', 'user', 'ancient words', 1)"
    )
    old.close()
    store = Store(db)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == VERSION
    assert [s.id for s in logs.summaries(store, 5, "ancient")] == ["01old"]  # indexed by the migration
    assert logs.conversation(store, "01old")["messages"][0]["content"] == "ancient words"


def test_a_file_we_cannot_use_is_refused_and_left_alone(db: Path) -> None:
    db.write_bytes(os.urandom(8192))
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    for args in (["logs"], ["logs", "-q", "x"], ["logs", "show", "01"], ["logs", "export"]):
        res = run_cli(*args)
        lines = res.output.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1 and "not a database" in lines[0], res.output
    with pytest.raises(StoreError):
        Store(db)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in db.parent.iterdir()) == ["logs.db"]


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs, remounted read-only by the test once it holds a store."""
    with tmpfs(tmp_path / "ro") as mnt:
        yield mnt


def test_read_only_disk(read_only_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = read_only_dir / "logs.db"
    store = Store(path)
    _chat(store, "kept before the disk went read-only")
    store.close()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_dir)], check=True)
    monkeypatch.setenv("EXPO_GGUF_LOGS_DB", str(path))
    res = run_cli("logs", "-q", "kept")  # still read
    assert res.exit_code == 0 and "kept before" in res.output, res.output
    with pytest.raises(StoreError):
        _chat(Store(path), "new")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def _writer(path: str, n: int) -> None:
    store = Store(Path(path))
    for i in range(n):
        _chat(store, f"process {os.getpid()} turn {i}")


def test_four_writers_at_once_all_land(db: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(db), 25)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 100
    assert con.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 200


def test_a_store_locked_past_the_timeout_is_said_once(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import expo_gguf.chat.store as store_module
    from expo_gguf.chat.keeping import ChatLog

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.2)
    Store(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process, mid-write for longer than the timeout
    said: list[str] = []
    log = ChatLog(lambda: Store(db), MODEL, dict, "chat", said.append)
    log.start([])
    log.user("first")
    log.reply("an answer", None, None)
    log.user("second")
    assert len(said) == 1 and "locked" in said[0] and "not being kept" in said[0], said
    holder.execute("ROLLBACK")
    assert logs.summaries(Store(db), 5) == []


def test_logs_on_an_80_column_terminal(db: Path) -> None:
    import sys

    from pty_terminal import Terminal

    store = Store(db)
    _chat(store, "an older one")
    cid = _chat(store, "a question " * 20)
    os.environ["EXPO_GGUF_LOGS_DB"] = str(db)  # the pty child inherits it
    try:
        term = Terminal([sys.executable, "-m", "expo_gguf", "logs", "-n", "1"], columns=80)
        assert term.wait() == 0
    finally:
        del os.environ["EXPO_GGUF_LOGS_DB"]
    lines = [line for line in term.transcript() if line.strip()]
    assert lines[0].startswith(f"{cid}  ") and lines[0].endswith("  1 turn") and len(lines) == 3
    assert lines[2] == "more: expo-gguf logs -n 10, or -n 0 for all"  # -n 1 of 2
    assert lines[1].startswith(f"  {MODEL.file}: a question a question") and lines[1].endswith("…")
    assert len(lines[1]) == 80
