"""The ``serve`` command: the socket bound before the model loads, the addresses it is reachable
at, the key, Ctrl+C and SIGTERM mid-reply, ``--no-log``; the API's reply byte for byte ``chat -p``'s;
``chat -p --json-schema``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.request import Request, urlopen

import pytest
import uvicorn
from click.testing import CliRunner

from expo_gguf.chat.server import run as serve_run
from expo_gguf.cli import cli

from conftest import one_error_line, smollm2

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-c", "from expo_gguf.cli import main; main()"]
MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_uvicorn(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """uvicorn's loop replaced by a record of what it was given: the command's start-up alone."""
    seen: list[dict[str, object]] = []

    def run(self: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        seen.append({"ports": [s.getsockname()[1] for s in sockets or []], "sockets": sockets})

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.delenv("EXPO_GGUF_API_KEY", raising=False)
    return seen


def serve_cli(*args: str) -> object:
    return CliRunner().invoke(cli, ["serve", str(smollm2()), "--threads", "1", *args])


def test_a_busy_port_is_one_line_before_loading(no_uvicorn: list, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_load(*a: object, **k: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(serve_run, "load_model", no_load)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        one_error_line(serve_cli("--port", str(port)), f"port {port} on 127.0.0.1 is in use; pick another with --port")
    one_error_line(serve_cli("--host", "192.0.2.1"), "--host 192.0.2.1 is not an address of this machine")
    one_error_line(serve_cli("--host", "no-such-host.invalid"), "--host no-such-host.invalid: cannot resolve it")
    one_error_line(serve_cli("--api-key", " "), "--api-key: the key is empty")
    assert not no_uvicorn


def test_start_up_loopback_all_interfaces_and_key(no_uvicorn: list, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    res = serve_cli("--port", str(port), "--ctx", "100000")
    assert res.exit_code == 0, res.output
    assert f"at http://127.0.0.1:{port}/ (the API at http://127.0.0.1:{port}/v1)" in res.output
    assert "--ctx 100000 is above the trained length; using 8192" in res.output and "api-key" not in res.output
    assert no_uvicorn[-1]["ports"] == [port]  # bound before loading, handed to uvicorn
    assert no_uvicorn[-1]["sockets"][0].fileno() == -1  # type: ignore[index]  # closed at the end
    res = serve_cli("--host", "0.0.0.0", "--port", str(port))
    assert res.exit_code == 0, res.output
    assert "http://0.0.0.0" not in res.output
    for url in serve_run.reachable_at("0.0.0.0", port):
        assert url in res.output
    assert "127.0.0.1" in " ".join(serve_run.reachable_at("0.0.0.0", port))
    assert "anyone who can reach it can use the model; add --api-key KEY" in res.output
    res = serve_cli("--host", "0.0.0.0", "--port", str(port), "--api-key", "s3cret")
    assert res.exit_code == 0 and "warning" not in res.output and "with an API key" in res.output
    assert "s3cret" not in res.output
    monkeypatch.setenv("EXPO_GGUF_API_KEY", "from-env")  # kept out of `ps` listings
    res = serve_cli("--port", str(port))
    assert "with an API key" in res.output
    for host in ("localhost", "::1", "127.0.0.2"):
        assert "warning" not in serve_cli("--host", host, "--port", str(port)).output


class Process:
    """``expo-gguf serve`` in a process of its own, ready when /api/info answers."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.err = tmp / f"serve-{self.port}.log"
        cmd = [*CLI, "serve", str(smollm2()), "--port", str(self.port), *args]
        with open(self.err, "wb") as log:
            self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            try:
                with urlopen(self.url + "/api/info", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise AssertionError("serve did not start: " + self.err.read_text()) from None
                time.sleep(0.1)

    def post(self, body: dict[str, object]) -> dict[str, object]:
        headers = {"Content-Type": "application/json"}
        req = Request(self.url + "/v1/chat/completions", json.dumps(body).encode(), headers)
        with urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        return rc, self.err.read_text()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


@pytest.mark.parametrize(
    ("prompt", "max_tokens"), [("Name three colours of the rainbow.", 16), ("Say hello in French.", 48)]
)
def test_the_api_reply_is_chat_p_byte_for_byte(
    prompt: str, max_tokens: int, tmp_path: Path, processes: list[Process]
) -> None:
    db = tmp_path / "logs.db"
    env = {"EXPO_GGUF_LOGS_DB": str(db)}
    common = ["--threads", "2", "--ctx", "2048"]
    processes.append(Process(tmp_path, *common, "--no-log", env=env))
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
    reply = processes[0].post(body | {"max_tokens": max_tokens})
    one_shot = subprocess.run(
        [*CLI, "chat", str(smollm2()), "-p", prompt, "--temp", "0", "--max-tokens", str(max_tokens), *common],
        capture_output=True,
        env={**os.environ, **env, "EXPO_GGUF_NO_LOG": "1"},
        check=True,
    )
    text = reply["choices"][0]["message"]["content"]  # type: ignore[index]
    assert text.encode() == one_shot.stdout.removesuffix(b"\n") and text
    assert not db.exists()  # --no-log: nothing kept
    rc, out = processes[0].stop()
    assert rc == 130 and out.strip().endswith("interrupted")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_reply_ends_it_kept_as_interrupted(sig: int, tmp_path: Path, processes: list[Process]) -> None:
    db = tmp_path / "logs.db"
    server = Process(tmp_path, "--threads", "1", env={"EXPO_GGUF_LOGS_DB": str(db)})
    processes.append(server)
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon and a knight."}],
        "temperature": 0,
        "max_tokens": 3000,
        "stream": True,
    }
    req = Request(server.url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    lines: list[bytes] = []
    with urlopen(req, timeout=60) as r:
        cid = r.headers["X-Conversation-Id"]

        def read() -> None:
            lines.extend(r)

        reader = threading.Thread(target=read)
        reader.start()
        while len(lines) < 10:
            time.sleep(0.02)
        server.proc.send_signal(sig)
        reader.join(30)
    rc, out = server.stop()
    assert rc == 130 and out.strip().splitlines()[-1] == "interrupted", out
    assert lines[-2:] == [b"data: [DONE]\n", b"\n"]  # the reply ended, not the connection
    from expo_gguf.chat import logs
    from expo_gguf.chat.store import Store

    store = Store(db)
    conv = logs.conversation(store, cid)
    store.close()
    reply = conv["messages"][-1]  # type: ignore[index]
    assert reply["cut"] == "interrupted" and 0 < reply["tokens"] < 3000 and reply["content"]


def test_chat_json_schema(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    schema["required"] = ["name", "age"]
    (tmp_path / "person.json").write_text(json.dumps(schema))
    model = str(smollm2())
    for given in (json.dumps(schema), str(tmp_path / "person.json")):
        res = CliRunner().invoke(
            cli, ["chat", model, "-p", "Describe Ada as JSON.", "--temp", "0", "--no-log", "--json-schema", given]
        )
        assert res.exit_code == 0, res.output
        person = json.loads(res.stdout)
        assert isinstance(person["name"], str) and isinstance(person["age"], int)
    for given, words in [
        ('{"type": "bogus"}', "--json-schema: the JSON schema cannot be used: Unrecognized schema"),
        ('{"type": ', "--json-schema: not JSON"),
        ("missing.json", "--json-schema: no such file, and not JSON"),
        ("[1]", "--json-schema: the JSON schema is a list, not an object"),
    ]:
        one_error_line(CliRunner().invoke(cli, ["chat", model, "-p", "x", "--json-schema", given]), words)
    res = CliRunner().invoke(cli, ["chat", model, "-i", "--json-schema", "{}"], input="hi\n")
    assert res.exit_code == 2 and "--json-schema shapes one reply" in res.output
