"""A stand-in for ``expo-gguf serve``'s HTTP contract with canned streaming replies, so the chat
page can be driven in a browser without a model: the page's files at ``/`` and ``/page/NAME``
under the strict Content-Security-Policy, ``/api/info``, ``/v1/chat/completions`` (SSE),
``/api/conversations`` and ``/api/conversations/{id}``."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PAGE = Path(__file__).resolve().parent.parent / "expo_gguf" / "chat" / "page"
CSP = "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'"
MODEL = "stub-model"
N_CTX = 2048

REPLY = (
    "Here is a **short** answer with `code` and a list:\n\n"
    "- one\n- two\n\n"
    "```python\nprint('hello')\n```\n\n"
    "See https://example.org/docs for more."
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reply_for(messages: list[dict[str, str]]) -> tuple[list[str], float]:
    """The canned reply's pieces and the pause between them: a prompt asking for something long
    streams slowly for a minute, so the page can stop it."""
    last = messages[-1]["content"] if messages else ""
    if "long" in last.lower():
        return [f"word{i} " for i in range(2000)], 0.03
    if last.startswith("echo "):
        return [last[5:]], 0.0
    return [w + " " for w in REPLY.split(" ")], 0.01


def make_app(api_key: str | None = None) -> Starlette:
    conversations: dict[str, dict[str, object]] = {}

    def authorised(request: Request) -> bool:
        return api_key is None or request.headers.get("authorization") == f"Bearer {api_key}"

    def refuse() -> JSONResponse:
        return JSONResponse({"error": {"message": "invalid API key", "type": "auth"}}, status_code=401)

    def page(name: str) -> Response:
        path = PAGE / name
        if "/" in name or not path.is_file():
            return JSONResponse({"error": {"message": "not found"}}, status_code=404)
        return FileResponse(path, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})

    async def index(request: Request) -> Response:
        return page("index.html")

    async def page_file(request: Request) -> Response:
        return page(request.path_params["name"])

    async def info(request: Request) -> Response:
        return JSONResponse({"model": MODEL, "n_ctx": N_CTX, "auth": api_key is not None, "logging": True})

    async def completions(request: Request) -> Response:
        if not authorised(request):
            return refuse()
        body = await request.json()
        messages = body["messages"]
        if sum(len(m["content"].split()) for m in messages) > N_CTX:
            message = f"the messages need more than the context's {N_CTX} tokens"
            return JSONResponse({"error": {"message": message, "code": "context_length_exceeded"}}, status_code=400)
        cid = body.get("conversation_id") or uuid.uuid4().hex[:26]
        conv = conversations.setdefault(
            cid, {"id": cid, "model": MODEL, "created": time.time(), "updated": time.time(), "messages": []}
        )
        conv["system"] = next((m["content"] for m in messages if m["role"] == "system"), None)
        kept = conv["messages"]
        assert isinstance(kept, list)
        shown = [m for m in kept if not m.get("replaced")]
        asked = [m for m in messages if m["role"] != "system"]
        if shown and shown[-1]["role"] == "assistant" and len(asked) == len(shown) - 1:
            shown[-1]["replaced"] = True  # regenerate: the old reply stays as an alternative
        else:
            kept.append({"role": "user", "content": asked[-1]["content"], "created": time.time()})
        pieces, pause = reply_for(messages)
        most = body.get("max_tokens")
        finish_reason = "length" if most and len(pieces) > most else "stop"
        pieces = pieces[:most] if most else pieces
        started = time.time()

        async def events() -> AsyncIterator[bytes]:
            text = ""
            finish = None
            try:
                for piece in pieces:
                    text += piece
                    chunk = {
                        "id": "chatcmpl-stub",
                        "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                        "conversation_id": cid,
                    }
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                    await asyncio.sleep(pause)
                finish = finish_reason
                spent = max(time.time() - started, 1e-3)
                last = {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                    "conversation_id": cid,
                    "usage": {"prompt_tokens": 20, "completion_tokens": len(pieces), "total_tokens": 20 + len(pieces)},
                    "timings": {
                        "tokens_per_s": len(pieces) / spent,
                        "ttft_s": 0.01,
                        "context_used": 20 + len(pieces),
                        "n_ctx": N_CTX,
                    },
                }
                yield f"data: {json.dumps(last)}\n\n".encode()
                yield b"data: [DONE]\n\n"
            finally:
                kept.append(
                    {
                        "role": "assistant",
                        "content": text,
                        "created": time.time(),
                        "tokens": len(text.split()),
                        "tokens_per_s": 50.0,
                        "cut": {"stop": None, "length": "length", None: "interrupted"}[finish],
                    }
                )
                conv["updated"] = time.time()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"X-Conversation-Id": cid})

    async def listing(request: Request) -> Response:
        if not authorised(request):
            return refuse()
        q = request.query_params.get("q", "").lower()
        n = int(request.query_params.get("n", "50"))
        rows = []
        for c in sorted(conversations.values(), key=lambda c: -float(c["updated"])):  # type: ignore[arg-type]
            msgs = c["messages"]
            assert isinstance(msgs, list)
            if q and not any(all(w in m["content"].lower() for w in q.split()) for m in msgs):
                continue
            users = [m for m in msgs if m["role"] == "user"]
            first = users[0]["content"].split("\n")[0] if users else ""
            rows.append(
                {
                    "id": c["id"],
                    "created": c["created"],
                    "updated": c["updated"],
                    "model": MODEL,
                    "turns": len(users),
                    "first_line": first,
                }
            )
        return JSONResponse(rows[:n])

    async def one(request: Request) -> Response:
        if not authorised(request):
            return refuse()
        cid = request.path_params["cid"]
        if cid not in conversations:
            return JSONResponse({"error": {"message": f"no conversation {cid}"}}, status_code=404)
        if request.method == "DELETE":
            del conversations[cid]
            return JSONResponse({"deleted": cid})
        return JSONResponse(conversations[cid])

    return Starlette(
        routes=[
            Route("/", index),
            Route("/page/{name}", page_file),
            Route("/api/info", info),
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/api/conversations", listing),
            Route("/api/conversations/{cid}", one, methods=["GET", "DELETE"]),
        ]
    )


class StubServer:
    """The stand-in served by uvicorn in a thread on a free port of 127.0.0.1."""

    def __init__(self, api_key: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(make_app(api_key), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> StubServer:
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the stub server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)
