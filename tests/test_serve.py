"""``serve``'s HTTP API on the real SmolLM2 model, served in this process by uvicorn in a thread:
the official ``openai`` client (streamed and not), raw HTTP for every malformed request, the key,
the kept conversations (append, regenerate, edit), a client that leaves mid-stream, structured
output, the page's files. The command itself (binding, signals, ``chat -p`` equality) is in
test_serve_cli.py."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from expo_gguf.chat.server.app import Server, create_app
from expo_gguf.chat.server.keep import Keeper
from expo_gguf.chat.server.page import CSP
from expo_gguf.chat.store import ModelRecord
from expo_gguf.runtime.loader import load_model
from expo_gguf.runtime.model import ChatModel
from expo_gguf.runtime.options import RunOptions

from conftest import smollm2

pytestmark = pytest.mark.slow
KEY = "s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """``Server`` over ``model`` on a free port of 127.0.0.1, in a thread."""

    def __init__(self, model: ChatModel, api_key: str | None = None, db: Path | None = None, page: Path | None = None):
        record = ModelRecord(model.info.path.name, str(model.info.path))
        keeper = Keeper(record, lambda text: None, db) if db is not None else None
        self.server = Server(model, api_key, keeper, **({"page": page} if page else {}))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(self.server), host="127.0.0.1", port=self.port, log_level="warning")
        self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        while not self.uvicorn.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.cancel_all()
        self.uvicorn.should_exit = True
        self.thread.join(10)
        self.server.close()

    def request(
        self, method: str, path: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers=headers or {})
        res = conn.getresponse()
        out = (res.status, {k.lower(): v for k, v in res.getheaders()}, res.read())
        conn.close()
        return out


@pytest.fixture(scope="module")
def model() -> Iterator[ChatModel]:
    m = load_model(smollm2(), RunOptions(n_ctx=2048, threads=2))
    yield m
    m.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store") / "logs.db"


@pytest.fixture(scope="module")
def served(model: ChatModel, db: Path) -> Iterator[Served]:
    with Served(model, db=db) as s:
        yield s


def ask(text: str, **extra: object) -> dict[str, object]:
    return {"model": "SmolLM2-135M-Instruct.Q4_1", "messages": [{"role": "user", "content": text}], **extra}


def test_openai_client_non_streamed_and_streamed(served: Served) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=served.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct.Q4_1"]
    done = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "Name three colours of the rainbow."}],
        temperature=0,
        max_tokens=16,
    )
    text = done.choices[0].message.content
    assert text and done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.completion_tokens == 16
    assert done.usage.total_tokens == done.usage.prompt_tokens + 16
    timings = done.model_extra["timings"]  # type: ignore[index]
    assert timings["n_ctx"] == 2048 and timings["tokens_per_s"] > 0 and timings["context_used"] > 16
    chunks = list(
        client.chat.completions.create(
            model="SmolLM2-135M-Instruct.Q4_1",
            messages=[{"role": "user", "content": "Name three colours of the rainbow."}],
            temperature=0,
            max_tokens=16,
            stream=True,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text  # one reply path
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16
    ids = {c.model_extra["conversation_id"] for c in chunks}  # type: ignore[index]
    assert len(ids) == 1 and ids != {done.model_extra["conversation_id"]}  # type: ignore[index]


def test_raw_stream_is_sse_ending_in_done(served: Served) -> None:
    status, headers, body = served.request("POST", "/v1/chat/completions", ask("Hi", stream=True, max_tokens=4))
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = body.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""] and all(e.startswith("data: {") for e in events[:-2])
    last = json.loads(events[-3][6:])
    assert last["choices"][0]["finish_reason"] == "length" and last["choices"][0]["delta"] == {}
    assert last["conversation_id"] == headers["x-conversation-id"]
    assert set(last["timings"]) == {"tokens_per_s", "ttft_s", "context_used", "n_ctx"}


MALFORMED = [
    (b"{bad", 400, None, "not valid JSON"),
    (b"\xff\xfe", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "not an object"),
    (b'{"foo": 1}', 400, "foo", "unrecognized request argument"),
    (b'{"model": "SmolLM2-135M-Instruct.Q4_1"}', 400, "messages", "non-empty array"),
    (b'{"model": "SmolLM2-135M-Instruct.Q4_1", "messages": []}', 400, "messages", "non-empty array"),
    (b'{"model": "SmolLM2-135M-Instruct.Q4_1", "messages": "hi"}', 400, "messages", "non-empty array"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model", "provide a model"),
    (json.dumps(ask("hi") | {"model": "gpt-4"}).encode(), 404, "model", "does not exist"),
    (json.dumps(ask("hi") | {"messages": [{"role": "bot", "content": "hi"}]}).encode(), 400, "messages[0]", "role"),
    (json.dumps(ask("hi") | {"messages": [{"role": "user"}]}).encode(), 400, "messages[0]", "content"),
    (json.dumps(ask("hi") | {"messages": [{"role": "user", "content": 5}]}).encode(), 400, "messages[0]", "int"),
    (json.dumps(ask("hi") | {"messages": ["hi"]}).encode(), 400, "messages[0]", "not an object"),
    (
        json.dumps(ask("hi") | {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}),
        400,
        "messages[1]",
        "only the first",
    ),
    (
        json.dumps(ask("hi") | {"messages": [{"role": "assistant", "content": "hi"}]}).encode(),
        400,
        "messages",
        "last message",
    ),
    (json.dumps(ask("hi", temperature="hot")).encode(), 400, "temperature", "number"),
    (json.dumps(ask("hi", temperature=5)).encode(), 400, "temperature", "number"),
    (json.dumps(ask("hi", max_tokens=0)).encode(), 400, "max_tokens", "integer"),
    (json.dumps(ask("hi", top_p=0)).encode(), 400, None, "top_p must be > 0"),
    (json.dumps(ask("hi", max_tokens=1.5)).encode(), 400, "max_tokens", "integer"),
    (json.dumps(ask("hi", stream="yes")).encode(), 400, "stream", "true or false"),
    (json.dumps(ask("hi", n=2)).encode(), 400, "n", "not supported"),
    (json.dumps(ask("hi", stop=["x"])).encode(), 400, "stop", "not supported"),
    (json.dumps(ask("hi", conversation_id=5)).encode(), 400, "conversation_id", "string"),
    (json.dumps(ask("hi", response_format={"type": "xml"})).encode(), 400, "response_format", "json_schema"),
    (
        json.dumps(ask("hi", response_format={"type": "json_schema", "json_schema": {"name": "x"}})).encode(),
        400,
        "response_format",
        "schema",
    ),
    (
        json.dumps(
            ask("hi", response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bo"}}})
        ).encode(),
        400,
        "response_format",
        "cannot be used",
    ),
    (json.dumps(ask("x" * 20000)).encode(), 400, "messages", "too long"),
]


@pytest.mark.parametrize(("body", "status", "param", "words"), MALFORMED)
def test_malformed_requests_are_openai_errors(
    served: Served, body: bytes | str, status: int, param: str | None, words: str
) -> None:
    data = body.encode() if isinstance(body, str) else body
    got, headers, raw = served.request("POST", "/v1/chat/completions", data, {"Content-Type": "application/json"})
    error = json.loads(raw)["error"]
    assert got == status, raw
    assert set(error) == {"message", "type", "param", "code"} and words in error["message"], error
    assert error["param"] == param and headers["content-type"] == "application/json"


def test_other_http_errors_are_json(served: Served) -> None:
    big = b'{"messages": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    for method, path, body, status in [
        ("POST", "/v1/chat/completions", big, 413),
        ("GET", "/v1/nothing", None, 404),
        ("GET", "/v1/models/gpt-4", None, 404),
        ("GET", "/v1/chat/completions", None, 405),
        ("GET", "/api/conversations?n=zero", None, 400),
        ("GET", "/api/conversations/0000", None, 404),
        ("DELETE", "/api/conversations/0000", None, 404),
    ]:
        got, headers, raw = served.request(method, path, body)
        assert got == status and set(json.loads(raw)["error"]) == {"message", "type", "param", "code"}, (path, raw)
    got, _, raw = served.request("GET", "/v1/models/SmolLM2-135M-Instruct.Q4_1")
    assert got == 200 and json.loads(raw)["id"] == "SmolLM2-135M-Instruct.Q4_1"


def test_huge_max_tokens_is_capped_by_the_context(model: ChatModel) -> None:
    small = load_model(smollm2(), RunOptions(n_ctx=128, threads=2))
    try:
        with Served(small) as s:
            body = ask("Write a very long story about a dragon.", temperature=0, max_tokens=10**9)
            status, _, raw = s.request("POST", "/v1/chat/completions", body)
            reply = json.loads(raw)
            assert status == 200, raw
            used = reply["timings"]["context_used"]
            assert reply["choices"][0]["finish_reason"] in ("length", "stop") and used <= 128
    finally:
        small.close()


def test_api_key_on_the_api_not_on_the_page(model: ChatModel, tmp_path: Path) -> None:
    page = tmp_path / "page"
    page.mkdir()
    (page / "index.html").write_text("<!doctype html><title>t</title>")
    with Served(model, api_key=KEY, db=tmp_path / "logs.db", page=page) as s:
        for path in ("/v1/models", "/api/conversations"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                status, _, raw = s.request("GET", path, headers=headers)
                assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key", (path, headers)
            assert s.request("GET", path, headers={"Authorization": f"Bearer {KEY}"})[0] == 200
        status, _, raw = s.request("POST", "/v1/chat/completions", ask("hi"))
        assert status == 401
        status, _, raw = s.request("GET", "/api/info")
        assert status == 200 and json.loads(raw) == {
            "model": "SmolLM2-135M-Instruct.Q4_1",
            "n_ctx": 2048,
            "auth": True,
            "logging": True,
        }
        assert s.request("GET", "/")[0] == 200


def test_page_files_are_served_safely(model: ChatModel, tmp_path: Path) -> None:
    page = tmp_path / "page"
    page.mkdir()
    (page / "index.html").write_text("<!doctype html><title>t</title>")
    (page / "app.js").write_text("console.log(1)")
    (page / "style.css").write_text("body{}")
    (page / ".hidden").write_text("secret")
    (tmp_path / "outside.txt").write_text("secret")
    with Served(model, page=page) as s:
        status, headers, body = s.request("GET", "/")
        assert status == 200 and body.startswith(b"<!doctype html>")
        assert headers["content-type"] == "text/html; charset=utf-8" and headers["content-security-policy"] == CSP
        assert headers["x-content-type-options"] == "nosniff"
        assert s.request("GET", "/page/app.js")[1]["content-type"] == "text/javascript; charset=utf-8"
        assert s.request("GET", "/page/style.css")[1]["content-type"] == "text/css; charset=utf-8"
        for path in ("/page/", "/page/.hidden", "/page/..%2Foutside.txt", "/page/../outside.txt", "/page/%2e%2e"):
            status, _, body = s.request("GET", path)
            assert status == 404 and b"secret" not in body, path
        assert json.loads(s.request("GET", "/api/info")[2])["logging"] is False  # no keeper: --no-log
        assert json.loads(s.request("GET", "/api/conversations")[2]) == []


def _post(s: Served, messages: list[dict[str, str]], cid: str | None = None) -> tuple[str, str]:
    body = ask("", temperature=0, max_tokens=8) | {"messages": messages}
    if cid:
        body["conversation_id"] = cid
    status, headers, raw = s.request("POST", "/v1/chat/completions", body)
    assert status == 200, raw
    reply = json.loads(raw)
    assert reply["conversation_id"] == headers["x-conversation-id"]
    return reply["conversation_id"], reply["choices"][0]["message"]["content"]


def test_conversations_kept_appended_regenerated_edited(served: Served) -> None:
    sys_msg = {"role": "system", "content": "Be brief."}
    first = [sys_msg, {"role": "user", "content": "What is a cat?"}]
    cid, reply1 = _post(served, first)
    second = first + [{"role": "assistant", "content": reply1}, {"role": "user", "content": "And a dog?"}]
    cid2, reply2 = _post(served, second, cid)
    assert cid2 == cid  # a next turn
    cid3, _ = _post(served, second, cid)  # the same thread again: a regenerate
    assert cid3 == cid
    status, _, raw = served.request("GET", f"/api/conversations/{cid}")
    conv = json.loads(raw)
    assert status == 200 and conv["system"] == "Be brief." and conv["source"] == "serve"
    roles = [(m["role"], m.get("replaced", False)) for m in conv["messages"]]
    assert roles == [("user", False), ("assistant", False), ("user", False), ("assistant", True), ("assistant", False)]
    assert conv["messages"][3]["content"] == reply2 and conv["messages"][4]["tokens"] > 0
    assert conv["messages"][4]["cut"] in (None, "length") and conv["messages"][4]["tokens_per_s"] > 0
    edited = first[:1] + [{"role": "user", "content": "What is a horse?"}]
    cid4, _ = _post(served, edited + second[2:], cid)  # an edit: a new conversation
    assert cid4 != cid
    listing = json.loads(served.request("GET", "/api/conversations?n=50&q=horse")[2])
    assert [c["id"] for c in listing] == [cid4]
    assert set(listing[0]) == {"id", "created", "updated", "model", "turns", "first_line"}
    assert listing[0]["turns"] == 2 and listing[0]["first_line"] == "What is a horse?"
    newest = json.loads(served.request("GET", "/api/conversations?n=2")[2])
    assert [c["id"] for c in newest] == [cid4, cid]
    assert served.request("DELETE", f"/api/conversations/{cid4}")[0] == 204
    assert served.request("GET", f"/api/conversations/{cid4}")[0] == 404


def test_a_client_that_leaves_mid_stream_stops_the_reply(served: Served) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    body = ask("Write a very long story about a dragon and a knight.", stream=True, temperature=0, max_tokens=1500)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    res = conn.getresponse()
    cid = res.getheader("X-Conversation-Id")
    for _ in range(3):
        assert res.readline().startswith(b"data: ")
        assert res.readline() == b"\n"
    conn.sock.shutdown(2)  # type: ignore[union-attr]
    conn.close()
    started = time.time()
    _, text = _post(served, [{"role": "user", "content": "Hi"}])  # served once the worker is free
    assert text and time.time() - started < 10
    conv = json.loads(served.request("GET", f"/api/conversations/{cid}")[2])
    reply = conv["messages"][-1]
    assert reply["cut"] == "interrupted" and 0 < reply["tokens"] < 1000 and reply["content"]


def _check(value: object, schema: dict) -> None:
    """The few JSON-schema rules the test schema uses, checked by hand."""
    kinds = {"object": dict, "string": str, "integer": int, "array": list, "boolean": bool}
    assert isinstance(value, kinds[schema["type"]]), (value, schema)
    if schema["type"] == "object":
        assert set(schema.get("required", ())) <= set(value)  # type: ignore[arg-type]
        for key, sub in schema.get("properties", {}).items():
            if key in value:  # type: ignore[operator]
                _check(value[key], sub)  # type: ignore[index]
    if schema["type"] == "array":
        for item in value:  # type: ignore[union-attr]
            _check(item, schema["items"])


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "hobbies": {"type": "array", "items": {"type": "string"}, "maxItems": 3},  # a small model repeats itself
    },
    "required": ["name", "age", "hobbies"],
}


def test_structured_output(served: Served) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=served.url + "/v1", api_key="unused")
    done = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "Describe a person called Ada as JSON."}],
        temperature=0,
        max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}},
    )
    assert done.choices[0].finish_reason == "stop"
    _check(json.loads(done.choices[0].message.content or ""), SCHEMA)
    body = ask("Reply with a JSON object with one key, answer, holding yes or no: is the sky blue?", temperature=0)
    status, _, raw = served.request("POST", "/v1/chat/completions", body | {"response_format": {"type": "json_object"}})
    text = json.loads(raw)["choices"][0]["message"]["content"]
    assert status == 200 and isinstance(json.loads(text), dict), text
    unknown = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}
    status, _, raw = served.request("POST", "/v1/chat/completions", body | {"response_format": unknown})
    assert status == 400 and "cannot be used" in json.loads(raw)["error"]["message"]


def test_requests_are_answered_one_at_a_time_in_order(served: Served) -> None:
    done: list[int] = []

    def one(i: int) -> None:
        body = ask(f"Count to {i + 3}.", temperature=0, max_tokens=24)
        status, _, _ = served.request("POST", "/v1/chat/completions", body)
        assert status == 200
        done.append(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.05)  # each request reaches the server before the next
    for t in threads:
        t.join(60)
    assert done == [0, 1, 2, 3]
