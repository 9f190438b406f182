"""OpenAI's wire format, as the plugin and every kind write it: errors, SSE events, chunks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from multidict import CIMultiDict

from gatewayd.chain import Response

DONE = b"data: [DONE]\n\n"
MAX_EVENT_BYTES = 1024 * 1024  # one SSE event (or NDJSON line) longer than this is malformed

# OpenAI's error types by status (what its API and SDK use).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_object(
    message: str,
    status: int,
    code: str | None = None,
    param: str | None = None,
    request_id: str | None = None,
    type: str | None = None,
) -> dict[str, Any]:
    """``{"error": {"message", "type", "code", "param"}}`` (plus the gateway's request id)."""
    error: dict[str, Any] = {
        "message": message,
        "type": type or error_type(status),
        "code": code,
        "param": param,
    }
    if request_id is not None:
        error["request_id"] = request_id
    return {"error": error}


def error_body(
    message: str,
    status: int,
    code: str | None = None,
    param: str | None = None,
    request_id: str | None = None,
    type: str | None = None,
) -> bytes:
    return json.dumps(error_object(message, status, code, param, request_id, type)).encode()


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
    type: str | None = None,
) -> Response:
    """An OpenAI-shaped error reply."""
    h = CIMultiDict(headers or {})
    h["Content-Type"] = "application/json"
    if request_id is not None:
        h["X-Request-ID"] = request_id
    return Response(status, h, error_body(message, status, code, param, request_id, type))


def json_response(data: Any, status: int = 200) -> Response:
    return Response(
        status, CIMultiDict({"Content-Type": "application/json"}), json.dumps(data).encode()
    )


def sse_event(data: Any) -> bytes:
    """One SSE event whose data is ``data`` as compact JSON."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def sse_headers() -> CIMultiDict[str]:
    return CIMultiDict({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})


class SseDecoder:
    """Incremental SSE parser: feed bytes as they arrive, get each complete event's ``data``
    (the ``data:`` lines joined with newlines; events without data are skipped). An event that
    grows past :data:`MAX_EVENT_BYTES` raises ValueError (a malformed stream, bounded memory)."""

    __slots__ = ("buffer", "limit")

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.buffer = b""
        self.limit = limit

    def feed(self, data: bytes) -> Iterator[str]:
        buffer = self.buffer + data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            raw, buffer = buffer[:end], buffer[end + 2 :]
            lines = []
            for line in raw.split(b"\n"):
                if line.startswith(b"data:"):
                    value = line[5:]
                    lines.append(value[1:] if value.startswith(b" ") else value)
            if lines:
                yield b"\n".join(lines).decode("utf-8", "replace")
        if len(buffer) > self.limit:
            raise ValueError("SSE event too large")
        self.buffer = buffer


class LineDecoder:
    """Incremental NDJSON splitter (Ollama's native stream): complete lines as they arrive."""

    __slots__ = ("buffer", "limit")

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.buffer = b""
        self.limit = limit

    def feed(self, data: bytes) -> Iterator[bytes]:
        buffer = self.buffer + data
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line, buffer = buffer[:end].strip(), buffer[end + 1 :]
            if line:
                yield line
        if len(buffer) > self.limit:
            raise ValueError("line too large")
        self.buffer = buffer


def chat_chunk(
    id: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` with one choice."""
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def usage_chunk(
    id: str, model: str, created: int, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The final chunk of a stream with ``include_usage``: no choices, the usage."""
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
