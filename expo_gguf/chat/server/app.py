"""The routes: OpenAI's chat completions and models, the page's JSON endpoints, the page's files.

One model, one context: requests are answered one at a time, in the order they came, on one
worker thread that runs the blocking ``ChatModel.stream`` and hands each piece of text to the
request's coroutine. A client that goes away (a closed connection, the page's Stop) sets its
job's ``cancel``; the worker stops at the next token and keeps the partial reply as interrupted.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ...errors import ExpoError
from ...runtime.model import json_grammar
from .. import logs
from ..keeping import ChatLog, NoLog, kept_figures
from . import openai
from .keep import Keeper, read_store
from .openai import ApiError, ChatRequest
from .page import PAGE, page_file

POLL_S = 0.25  # how often a request waiting on the worker checks that its client is still there


@dataclass(eq=False)
class Job:
    """One request on its way through the worker: what it asked, and the pieces coming back.

    The worker appends to ``items`` and wakes the event loop only when it is not already woken:
    a loop that falls behind takes the pieces waiting in one go (one SSE chunk), so the serving
    side costs the model less, not more, when the CPU is busy."""

    request: ChatRequest
    grammar: str | None
    loop: asyncio.AbstractEventLoop
    items: deque[tuple[str, Any]] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    woken: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)

    def post(self, kind: str, value: Any = None) -> None:
        self.items.append((kind, value))
        if not self.woken:
            self.woken = True
            self.loop.call_soon_threadsafe(self.ready.set)

    def take(self) -> tuple[str, Any] | None:
        """The next item, consecutive pieces of text joined; None when there is none yet."""
        if not self.items:
            self.ready.clear()
            self.woken = False
            if not self.items:  # nothing came between the check and the reset
                return None
        kind, value = self.items.popleft()
        if kind == "text":
            while self.items and self.items[0][0] == "text":
                value += self.items.popleft()[1]
        return kind, value


class Server:
    """What the routes share: the model, its id, the key, the keeper and the one worker."""

    def __init__(self, model: Any, api_key: str | None, keeper: Keeper | None, page: Path = PAGE) -> None:
        self.model, self.api_key, self.keeper, self.page = model, api_key, keeper, page
        self.model_id = model.info.path.stem
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="expo-serve")
        self.jobs: set[Job] = set()
        self.closing = False

    def cancel_all(self) -> None:
        """Shutting down: queued requests are refused, replies being written end where they are."""
        self.closing = True
        for job in list(self.jobs):
            job.cancel.set()

    def close(self) -> None:
        self.cancel_all()
        self.worker.shutdown(wait=True, cancel_futures=True)
        if self.keeper is not None:
            self.keeper.close()

    # --- the worker thread

    def work(self, job: Job) -> None:
        try:
            self._work(job)
        except BaseException as e:  # noqa: BLE001 - the waiting request must hear of it, not hang
            job.post("error", ApiError(500, f"internal error: {type(e).__name__}: {e}"[:300], type="server_error"))

    def _work(self, job: Job) -> None:
        req = job.request
        if job.cancel.is_set() or self.closing:
            job.post("error", ApiError(503, "the server is shutting down", type="server_error"))
            return
        log: ChatLog | NoLog = NoLog()
        try:
            kept, _ = self.model.fit(req.messages, req.sampling)
        except ExpoError as e:
            job.post("error", ApiError(400, str(e), "messages", "context_length_exceeded"))
            return
        replaced = None
        if self.keeper is not None:
            log, replaced = self.keeper.log_for(req.messages, req.conversation_id, req.sampling)
        job.post("start", log.id)
        chunks: list[str] = []
        try:
            pieces = self.model.stream(kept, req.sampling, job.grammar)
            try:
                for piece in pieces:
                    chunks.append(piece)
                    job.post("text", piece)
                    if job.cancel.is_set():
                        break
            finally:
                pieces.close()
        except Exception as e:  # noqa: BLE001 - a failed decode is the server's fault, said to the client
            log.reply("".join(chunks), None, "interrupted")
            job.post("error", ApiError(500, f"generation failed: {e}", type="server_error"))
            return
        s = self.model.last_stats
        log.reply("".join(chunks), *kept_figures(s))
        if replaced is not None:
            log.replaced(replaced)
        job.post("end", s)

    # --- the request side

    def authorised(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            why = "no API key given" if not given else "incorrect API key provided"
            raise ApiError(401, f"{why}: send 'Authorization: Bearer KEY'", code="invalid_api_key")

    async def next_item(self, job: Job, request: Request) -> tuple[str, Any]:
        """The worker's next item; meanwhile a client that left cancels the job."""
        while True:
            item = job.take()
            if item is not None:
                return item
            try:
                await asyncio.wait_for(job.ready.wait(), POLL_S)
            except asyncio.TimeoutError:
                if not job.cancel.is_set() and await request.is_disconnected():
                    job.cancel.set()

    async def completions(self, request: Request) -> Response:
        self.authorised(request)
        req = openai.parse_request(openai.parse_json(await _body(request)), self.model_id)
        grammar = None
        if req.json_mode:
            try:
                grammar = json_grammar(req.schema)
                self.model.check_grammar(grammar)
            except ExpoError as e:
                raise ApiError(400, str(e), "response_format") from None
        job = Job(req, grammar, asyncio.get_running_loop())
        self.jobs.add(job)
        done = False
        try:
            self.worker.submit(self.work, job)
            kind, value = await self.next_item(job, request)
            if kind == "error":
                raise value
            cid = value
            headers = {"X-Conversation-Id": cid} if cid else {}
            if req.stream:
                done = True  # the stream's own generator takes the job from here
                return StreamingResponse(
                    self.events(job, request, cid), media_type="text/event-stream", headers=headers
                )
            text = []
            while True:
                kind, value = await self.next_item(job, request)
                if kind == "text":
                    text.append(value)
                elif kind == "error":
                    raise value
                else:
                    rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
                    body = openai.completion(rid, self.model_id, "".join(text), value, cid)
                    return JSONResponse(body, headers=headers)
        finally:
            if not done:
                job.cancel.set()
                self.jobs.discard(job)

    async def events(self, job: Job, request: Request, cid: str | None) -> AsyncIterator[bytes]:
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", 0
        model = self.model_id
        try:
            yield openai.chunk(rid, model, {"role": "assistant", "content": ""}, cid, created=created)
            while True:
                kind, value = await self.next_item(job, request)
                if kind == "text":
                    yield openai.chunk(rid, model, {"content": value}, cid)
                elif kind == "end":
                    yield openai.chunk(rid, model, {}, cid, stats=value)
                    yield openai.DONE
                    return
                else:
                    yield b"data: " + openai.json.dumps(value.body()).encode() + b"\n\n"
                    return
        finally:  # also when the client went away: the worker stops at its next token
            job.cancel.set()
            self.jobs.discard(job)

    async def models(self, request: Request) -> Response:
        self.authorised(request)
        entry = {"id": self.model_id, "object": "model", "created": 0, "owned_by": "expo-gguf"}
        if "model" in request.path_params:
            if request.path_params["model"] != self.model_id:
                raise ApiError(
                    404, f"the model {request.path_params['model']!r} does not exist", "model", "model_not_found"
                )
            return JSONResponse(entry)
        return JSONResponse({"object": "list", "data": [entry]})

    async def info(self, request: Request) -> Response:
        return JSONResponse(
            {
                "model": self.model_id,
                "n_ctx": self.model.info.n_ctx,
                "auth": self.api_key is not None,
                "logging": self.keeper is not None,
            }
        )

    async def conversations(self, request: Request) -> Response:
        self.authorised(request)
        n_text = request.query_params.get("n", "50")
        if not n_text.isdigit() or not 1 <= int(n_text) <= 1000:
            raise ApiError(400, "n must be an integer from 1 to 1000", "n")
        query = request.query_params.get("q") or None
        if self.keeper is None:
            return JSONResponse([])

        def read() -> list[dict[str, object]]:
            store = read_store(self.keeper.path)  # type: ignore[union-attr]
            if store is None:
                return []
            try:
                return [vars(s) for s in logs.summaries(store, int(n_text), query)]
            finally:
                store.close()

        return JSONResponse(await run_in_threadpool(read))

    async def conversation(self, request: Request) -> Response:
        self.authorised(request)
        cid = request.path_params["cid"]
        if self.keeper is None:
            raise ApiError(404, "conversations are not kept by this server (--no-log)", code="not_found")

        def act() -> dict[str, object] | None:
            store = read_store(self.keeper.path)  # type: ignore[union-attr]
            if store is None:
                raise ApiError(404, f"no conversation {cid}", code="not_found")
            try:
                try:
                    conv = logs.conversation(store, cid)
                except ExpoError:
                    raise ApiError(404, f"no conversation {cid}", code="not_found") from None
                if request.method == "DELETE":
                    store.delete(cid)
                    return None
                return conv
            finally:
                store.close()

        conv = await run_in_threadpool(act)
        return Response(status_code=204) if conv is None else JSONResponse(conv)

    # --- the page

    async def index(self, request: Request) -> Response:
        return page_file(self.page, "index.html")

    async def page_route(self, request: Request) -> Response:
        return page_file(self.page, request.path_params["name"])


async def _body(request: Request) -> bytes:
    """The request body, refused (413) past ``openai.MAX_BODY`` without reading the rest."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > openai.MAX_BODY:
        raise ApiError(413, f"the body is over {openai.MAX_BODY} bytes", code="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > openai.MAX_BODY:
            raise ApiError(413, f"the body is over {openai.MAX_BODY} bytes", code="request_too_large")
    return bytes(body)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "unknown path" if exc.status_code == 404 else str(exc.detail)
    error = ApiError(exc.status_code, f"{message}: {request.method} {request.url.path}", code="not_found")
    if exc.status_code == 405:
        error = ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


async def _crash(request: Request, exc: Exception) -> Response:
    error = ApiError(500, f"internal error: {type(exc).__name__}: {exc}"[:300], type="server_error")
    return JSONResponse(error.body(), status_code=500)


def create_app(server: Server) -> Starlette:
    s = server
    routes = [
        Route("/", s.index, methods=["GET"]),
        Route("/page/{name}", s.page_route, methods=["GET"]),
        Route("/v1/chat/completions", s.completions, methods=["POST"]),
        Route("/v1/models", s.models, methods=["GET"]),
        Route("/v1/models/{model}", s.models, methods=["GET"]),
        Route("/api/info", s.info, methods=["GET"]),
        Route("/api/conversations", s.conversations, methods=["GET"]),
        Route("/api/conversations/{cid}", s.conversation, methods=["GET", "DELETE"]),
    ]
    handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _crash}
    return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]
