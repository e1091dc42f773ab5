"""OpenAI's chat-completions protocol, strictly: a request body checked field by field into a
``ChatRequest``, OpenAI's error object, and the response and stream-chunk shapes.

Anything a client may send is checked here, so bad input is a 400 naming the field, never a 500
or a reply to a request that meant something else. Sampling defaults are ``chat``'s (``Sampling``),
so a request and ``chat -p`` with the same settings give the same reply. Nothing here imports
llama.cpp.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import ExpoError
from ..messages import Message, Sampling, message_problem

MAX_BODY = 4 * 1024 * 1024  # bytes: a request body above this is refused (413) before it is parsed
DEFAULTS = Sampling()
IGNORED = {"user", "metadata", "store", "parallel_tool_calls", "stream_options", "service_tier"}  # no effect here
ZERO_ONLY = {"frequency_penalty": 0, "presence_penalty": 0, "n": 1, "logprobs": False}  # other values refused


class ApiError(Exception):
    """A request refused with OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    """One chat-completions request, checked."""

    messages: list[Message]
    sampling: Sampling
    stream: bool
    schema: dict[str, Any] | None  # response_format's JSON schema
    json_mode: bool  # response_format asks for JSON (any object when ``schema`` is None)
    conversation_id: str | None


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body is a JSON {type(data).__name__}, not an object")
    return data


def _number(data: Mapping[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"{name} must be a number from {low} to {high}, not {json.dumps(value)[:40]}", name)
    return float(value)


def _integer(data: Mapping[str, Any], name: str, low: int, default: int) -> int:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ApiError(400, f"{name} must be an integer >= {low}, not {json.dumps(value)[:40]}", name)
    return value


def _content(i: int, content: object) -> object:
    """A message's text; OpenAI's list of text parts is joined (images and audio are refused)."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise ApiError(400, f"message {i}: only text content parts are supported", f"messages[{i}].content")
        texts.append(part["text"])
    return "".join(texts)


def _messages(value: object) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "messages must be a non-empty array of {role, content} objects", "messages")
    out: list[Message] = []
    for i, m in enumerate(value):
        if isinstance(m, dict):
            extra = set(m) - {"role", "content", "name"}
            if extra:
                raise ApiError(400, f"message {i}: unsupported field {sorted(extra)[0]}", f"messages[{i}]")
            m = {"role": m.get("role"), "content": _content(i, m.get("content"))} if "role" in m else m
        problem = message_problem(i, m)
        if problem:
            raise ApiError(400, problem, f"messages[{i}]")
        out.append({"role": m["role"], "content": m["content"]})  # type: ignore[index]
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's: it is what the reply answers", "messages")
    return out


def _response_format(value: object) -> tuple[bool, dict[str, Any] | None]:
    if value is None:
        return False, None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return False, None
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = value.get("json_schema")  # type: ignore[union-attr]
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format.json_schema.schema must be a JSON schema object", "response_format")
        return True, schema
    raise ApiError(400, "response_format.type must be text, json_object or json_schema", "response_format")


def parse_request(data: dict[str, Any], model: str) -> ChatRequest:
    """``data`` (a parsed body) checked against what we serve; ``model`` is the one model's id."""
    known = {"model", "messages", "stream", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed"}
    known |= {"max_tokens", "max_completion_tokens", "stop", "response_format", "conversation_id"}
    unknown = sorted(set(data) - known - IGNORED - set(ZERO_ONLY))
    if unknown:
        raise ApiError(400, f"unrecognized request argument supplied: {unknown[0]}", unknown[0])
    for name, only in ZERO_ONLY.items():
        if data.get(name) not in (None, only):
            raise ApiError(400, f"{name} is not supported (only {json.dumps(only)})", name)
    if data.get("stop") not in (None, [], ""):
        raise ApiError(400, "stop sequences are not supported; the model stops at its end of turn", "stop")
    if "model" not in data:
        raise ApiError(400, "you must provide a model parameter", "model")
    if data["model"] != model:
        raise ApiError(
            404,
            f"the model {str(data['model'])[:80]!r} does not exist; this server has {model!r}",
            "model",
            "model_not_found",
        )
    messages = _messages(data.get("messages"))
    stream = data.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise ApiError(400, "stream must be true or false", "stream")
    cid = data.get("conversation_id")
    if cid is not None and not (isinstance(cid, str) and 0 < len(cid) <= 64):
        raise ApiError(400, "conversation_id must be a conversation's id (a string)", "conversation_id")
    json_mode, schema = _response_format(data.get("response_format"))
    seed = _integer(data, "seed", -(2**63), -1)
    limit = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    try:
        sampling = Sampling(
            temp=_number(data, "temperature", 0, 2, DEFAULTS.temp),
            top_p=_number(data, "top_p", 0, 1, DEFAULTS.top_p),
            top_k=_integer(data, "top_k", 0, DEFAULTS.top_k),
            min_p=_number(data, "min_p", 0, 1, DEFAULTS.min_p),
            repeat_penalty=_number(data, "repeat_penalty", 0.01, 10, DEFAULTS.repeat_penalty),
            max_tokens=_integer(data, limit, 1, DEFAULTS.max_tokens),
            seed=seed & 0xFFFFFFFF if seed >= 0 else -1,
        )
    except ExpoError as e:
        raise ApiError(400, str(e)) from None
    return ChatRequest(messages, sampling, bool(stream), schema, json_mode, cid)


def finish_reason(stop: str) -> str:
    """Our stop reason as OpenAI's: a reply cut by max_tokens or a full context is ``length``."""
    return "length" if stop in ("max_tokens", "context") else "stop"


def figures(stats: Any) -> dict[str, object]:
    """``usage`` and our ``timings`` extension from a reply's ``TurnStats``."""
    return {
        "usage": {
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.generated,
            "total_tokens": stats.prompt_tokens + stats.generated,
        },
        "timings": {
            "tokens_per_s": round(stats.gen_tps, 2),
            "ttft_s": round(stats.ttft_s, 4),
            "context_used": stats.ctx_used,
            "n_ctx": stats.n_ctx,
        },
    }


def _extra(cid: str | None) -> dict[str, object]:
    return {"conversation_id": cid} if cid else {}


def completion(rid: str, model: str, text: str, stats: Any, cid: str | None) -> dict[str, object]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason(stats.stop),
            }
        ],
        **figures(stats),
        **_extra(cid),
    }


def chunk(rid: str, model: str, delta: dict[str, str], cid: str | None, stats: Any = None, created: int = 0) -> bytes:
    """One server-sent event; the last one (``stats`` given) has the finish reason and the figures."""
    body: dict[str, object] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created or int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish_reason(stats.stop) if stats is not None else None,
            }
        ],
        **(figures(stats) if stats is not None else {}),
        **_extra(cid),
    }
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
