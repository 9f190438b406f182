"""Fake Anthropic (Messages API) and Ollama (native API) servers: real aiohttp apps on
127.0.0.1 that send those providers' wire bytes as their public API references show them, with
the faults of :class:`fake_openai_server.Fault` scripted per request (the same ``push``,
``behaviour``, ``requests`` and ``cancelled_at`` as :class:`FakeOpenAI`, whose lifecycle they
share).

Content token ``i`` of a reply is ``"t<i> "``; a reply has :attr:`chunks` tokens, or fewer
when ``max_tokens`` (Anthropic, which always sends it) says so, or ``options.num_predict``
(Ollama) tokens; the prompt counts one token per word
of the messages (plus one per message), as the OpenAI fake counts it. Extra knobs:

- ``stop_reason`` / ``done_reason``: what the fake says ended the answer;
- ``tool_call``: ``{"name": ..., "arguments": {...}}`` answers with a tool call as well;
- ``zero_usage``: report 0 tokens (an explicit zero, not a missing count);
- ``cache_tokens`` (Anthropic): prompt tokens written to and read from its prompt cache;
- ``gate``: an ``asyncio.Event`` the stream waits for after its first content token (a test
  proves the kind passed that token on before the fake sent anything else).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from fake_openai_server import MAX_TOKENS, FakeOpenAI, Fault, Seen, count_words

ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def prompt_words(body: dict[str, Any]) -> int:
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    return (
        count_words(messages)
        + len(messages)
        + count_words(body.get("system", ""))
        + count_words(body.get("prompt", ""))
    )


class NativeFake(FakeOpenAI):
    """What both fakes share: scripting and lifecycle (from FakeOpenAI), the reply's plan."""

    def __init__(self, api_key: str | None = None, chunks: int = 3, **kw: Any) -> None:
        super().__init__(api_key=api_key, chunks=chunks, **kw)
        self.tool_call: dict[str, Any] | None = None
        self.zero_usage = False
        self.gate: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _read(self, request: web.Request) -> Seen:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        seen = Seen(request.path, dict(request.headers), body, time.monotonic())
        self.requests.append(seen)
        return seen

    def _tokens(self, seen: Seen, wanted: Any) -> tuple[int, float]:
        chunks = int(wanted) if isinstance(wanted, int) and wanted > 0 else self.chunks
        delay = self.chunk_delay
        fault = seen.fault
        if fault is not None and fault.chunks is not None:
            chunks = fault.chunks
        if fault is not None and fault.chunk_delay is not None:
            delay = fault.chunk_delay
        return min(chunks, MAX_TOKENS), delay

    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request, Seen], Awaitable[Any]]
    ) -> web.StreamResponse:
        """``handler(request, seen)``, counted in :attr:`handlers`; a client that goes away
        (even while its request is being read) is timestamped in ``seen.cancelled_at``."""
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        seen: Seen | None = None
        try:
            seen = await self._read(request)
            result: web.StreamResponse = await handler(request, seen)
            return result
        except (asyncio.CancelledError, ConnectionError):
            if seen is not None and seen.finished_at is None:
                seen.cancelled_at = time.monotonic()
            raise
        finally:
            self.handlers.discard(task)

    async def _send_whole(
        self, request: web.Request, seen: Seen, data: bytes, status: int = 200
    ) -> web.StreamResponse:
        """A whole JSON reply, or as much of it as the fault lets through: ``malformed_after``
        bytes and an end; ``cut_after`` bytes and a closed connection; ``stall_after`` bytes
        and silence."""
        fault = seen.fault or Fault()
        if fault.malformed_after is not None:
            seen.finished_at = time.monotonic()
            return web.Response(body=data[: fault.malformed_after], content_type="application/json")
        partial = fault.stall_after if fault.stall_after is not None else fault.cut_after
        if partial is None:
            seen.finished_at = time.monotonic()
            return web.Response(body=data, content_type="application/json")
        resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[:partial])
        if fault.stall_after is not None:
            await asyncio.sleep(3600)
        seen.finished_at = time.monotonic()
        assert request.transport is not None
        request.transport.close()
        return resp

    async def _fault_step(
        self, request: web.Request, resp: web.StreamResponse, seen: Seen, i: int, bad: bytes
    ) -> bool:
        """Carry out the fault due before content token ``i``; True when the reply is over."""
        fault = seen.fault or Fault()
        if fault.stall_after == i:
            await asyncio.sleep(3600)
        if fault.cut_after == i:
            seen.finished_at = time.monotonic()
            assert request.transport is not None
            request.transport.close()
            return True
        if fault.malformed_after == i:
            await resp.write(bad)
            seen.finished_at = time.monotonic()
            return True
        return False


class FakeAnthropic(NativeFake):
    """``POST /v1/messages`` (whole and streamed), ``GET /v1/models``; ``x-api-key`` checked
    when :attr:`api_key` is set; ``anthropic-version`` and ``max_tokens`` required."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.stop_reason = "end_turn"
        self.ignore_stream = False  # answer a whole Message even when asked to stream
        self.cache_tokens = (0, 0)  # prompt caching: (tokens written, tokens read)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_get("/v1/models", self.list_models)
        return app

    def refuse(self, status: int, message: str, retry_after: int | None = None) -> web.Response:
        kind = ANTHROPIC_ERRORS.get(status, "api_error")
        payload = {"type": "error", "error": {"type": kind, "message": message}}
        headers = {"request-id": "req_fake", "x-should-retry": "true"}
        if retry_after:
            headers["retry-after"] = str(retry_after)
        return web.json_response(payload, status=status, headers=headers)

    def _check(self, request: web.Request) -> web.Response | None:
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return self.refuse(401, "invalid x-api-key")
        if "anthropic-version" not in request.headers:
            return self.refuse(400, "anthropic-version: header is required")
        return None

    async def list_models(self, request: web.Request) -> web.Response:
        seen = await self._read(request)
        seen.finished_at = time.monotonic()
        refused = self._check(request)
        if refused is not None:
            return refused
        data = [
            {
                "type": "model",
                "id": m,
                "display_name": m,
                "created_at": "2025-02-19T00:00:00Z",
            }
            for m in self.models
        ]
        return web.json_response(
            {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        )

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._messages)

    async def _messages(self, request: web.Request, seen: Seen) -> web.StreamResponse:
        refused = self._check(request)
        body = seen.body
        if refused is None and not isinstance(body, dict):
            refused = self.refuse(400, "There was an error parsing the body")
        if refused is None and "max_tokens" not in body:
            refused = self.refuse(400, "max_tokens: Field required")
        if refused is not None:
            seen.finished_at = time.monotonic()
            return refused
        fault = seen.fault = self._fault_for(body)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            seen.finished_at = time.monotonic()
            refusal = self.refuse(fault.status, fault.message, fault.retry_after)
            if fault.cut_after is not None:  # the error reply itself cut short
                assert isinstance(refusal.body, bytes)
                return await self._send_whole(request, seen, refusal.body, fault.status)
            return refusal
        # The model ends its turn after :attr:`chunks` tokens, or at max_tokens if sooner.
        wanted = body.get("max_tokens")
        n, delay = self._tokens(seen, min(wanted, self.chunks) if isinstance(wanted, int) else None)
        p = 0 if self.zero_usage else prompt_words(body)
        out = 0 if self.zero_usage else n
        seen.usage = {"prompt_tokens": p, "completion_tokens": out}
        mid = f"msg_fake{len(self.requests):04d}"
        if body.get("stream") and not self.ignore_stream:
            return await self._stream(request, seen, body, mid, n, delay, p, out)
        if delay:
            await asyncio.sleep(delay * n)
        content: list[dict[str, Any]] = [
            {"type": "text", "text": "".join(f"t{i} " for i in range(n))}
        ]
        stop_reason = self.stop_reason
        if self.tool_call is not None:
            content.append(
                {
                    "type": "tool_use",
                    "id": "toolu_fake01",
                    "name": self.tool_call["name"],
                    "input": self.tool_call["arguments"],
                }
            )
            stop_reason = "tool_use"
        message = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": p,
                "cache_creation_input_tokens": self.cache_tokens[0],
                "cache_read_input_tokens": self.cache_tokens[1],
                "output_tokens": out,
            },
        }
        return await self._send_whole(request, seen, json.dumps(message).encode())

    async def _stream(
        self,
        request: web.Request,
        seen: Seen,
        body: dict[str, Any],
        mid: str,
        n: int,
        delay: float,
        p: int,
        out: int,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await resp.prepare(request)

        async def send(name: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        start = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": p,
                "cache_creation_input_tokens": self.cache_tokens[0],
                "cache_read_input_tokens": self.cache_tokens[1],
                "output_tokens": min(out, 1),
            },
        }
        await send("message_start", {"type": "message_start", "message": start})
        block = {"type": "text", "text": ""}
        await send(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        await send("ping", {"type": "ping"})
        fault = seen.fault or Fault()
        bad = b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {\n\n'
        for i in range(n):
            if await self._fault_step(request, resp, seen, i, bad):
                return resp
            if fault.error_after == i:
                error = {"type": "overloaded_error", "message": fault.message}
                await send("error", {"type": "error", "error": error})
                seen.finished_at = time.monotonic()
                return resp
            if delay:
                await asyncio.sleep(delay)
            delta = {"type": "text_delta", "text": f"t{i} "}
            await send(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
            seen.chunks_sent = i + 1
            if i == 0 and self.gate is not None:
                await self.gate.wait()
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        stop_reason = self.stop_reason
        if self.tool_call is not None:
            stop_reason = "tool_use"
            tool = {
                "type": "tool_use",
                "id": "toolu_fake01",
                "name": self.tool_call["name"],
                "input": {},
            }
            await send(
                "content_block_start",
                {"type": "content_block_start", "index": 1, "content_block": tool},
            )
            args = json.dumps(self.tool_call["arguments"])
            for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
                delta = {"type": "input_json_delta", "partial_json": piece}
                await send(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 1, "delta": delta},
                )
            await send("content_block_stop", {"type": "content_block_stop", "index": 1})
        final = {"stop_reason": stop_reason, "stop_sequence": None}
        await send(
            "message_delta",
            {"type": "message_delta", "delta": final, "usage": {"output_tokens": out}},
        )
        await send("message_stop", {"type": "message_stop"})
        seen.finished_at = time.monotonic()
        await resp.write_eof()
        return resp


class FakeOllama(NativeFake):
    """``POST /api/chat``, ``/api/generate`` (NDJSON streams unless ``"stream": false``),
    ``/api/embed``, ``GET /api/tags``; an unknown model is a 404 as Ollama words it."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.done_reason = "stop"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/chat", self.chat)
        app.router.add_post("/api/generate", self.generate)
        app.router.add_post("/api/embed", self.embed)
        app.router.add_get("/api/tags", self.tags)
        return app

    def _check(self, request: web.Request, seen: Seen) -> web.Response | None:
        if self.api_key is not None and request.headers.get("Authorization") != (
            f"Bearer {self.api_key}"
        ):
            return web.json_response({"error": "unauthorized"}, status=401)
        body = seen.body
        if not isinstance(body, dict):
            return web.json_response({"error": "invalid character"}, status=400)
        if body.get("model") not in self.models:
            message = f'model "{body.get("model")}" not found, try pulling it first'
            return web.json_response({"error": message}, status=404)
        return None

    async def tags(self, request: web.Request) -> web.Response:
        seen = await self._read(request)
        seen.finished_at = time.monotonic()
        models = [
            {
                "name": m,
                "model": m,
                "modified_at": "2025-05-10T08:06:48.639712648-07:00",
                "size": 2019393189,
                "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                "details": {"format": "gguf", "family": "llama", "parameter_size": "3.2B"},
            }
            for m in self.models
        ]
        return web.json_response({"models": models})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, lambda r, seen: self._answer(r, seen, "chat"))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, lambda r, seen: self._answer(r, seen, "generate"))

    async def embed(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._embed)

    async def _admit(self, request: web.Request, seen: Seen) -> web.Response | None:
        refused = self._check(request, seen)
        if refused is None:
            fault = seen.fault = self._fault_for(seen.body)
            if fault is not None and fault.delay:
                await asyncio.sleep(fault.delay)
            if fault is not None and fault.status is not None:
                refused = web.json_response({"error": fault.message}, status=fault.status)
        if refused is not None:
            seen.finished_at = time.monotonic()
        return refused

    def _line(self, model: str, kind: str, text: str, **extra: Any) -> dict[str, Any]:
        line: dict[str, Any] = {"model": model, "created_at": "2025-10-26T17:15:24.097767Z"}
        if kind == "chat":
            line["message"] = {"role": "assistant", "content": text}
        else:
            line["response"] = text
        line.update(extra)
        return line

    def _final(self, model: str, kind: str, text: str, p: int, out: int) -> dict[str, Any]:
        extra: dict[str, Any] = {"done": True, "done_reason": self.done_reason}
        if kind == "generate":
            extra["context"] = [1, 2, 3]
        extra.update(
            total_duration=4883583458,
            load_duration=1334875,
            prompt_eval_count=p,
            prompt_eval_duration=342546000,
            eval_count=out,
            eval_duration=4535599000,
        )
        line = self._line(model, kind, text, **extra)
        if kind == "chat" and self.tool_call is not None:
            call = {
                "function": {
                    "name": self.tool_call["name"],
                    "arguments": self.tool_call["arguments"],
                }
            }
            line["message"]["tool_calls"] = [call]
        return line

    async def _answer(self, request: web.Request, seen: Seen, kind: str) -> web.StreamResponse:
        refused = await self._admit(request, seen)
        if refused is not None:
            return refused
        body = seen.body
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        n, delay = self._tokens(seen, options.get("num_predict"))
        p = 0 if self.zero_usage else prompt_words(body)
        out = 0 if self.zero_usage else n
        seen.usage = {"prompt_tokens": p, "completion_tokens": out}
        model = str(body["model"])
        fault = seen.fault or Fault()
        if body.get("stream", True) is False:
            if delay:
                await asyncio.sleep(delay * n)
            text = "".join(f"t{i} " for i in range(n))
            data = json.dumps(self._final(model, kind, text, p, out)).encode()
            return await self._send_whole(request, seen, data)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)

        async def send(line: dict[str, Any]) -> None:
            await resp.write(json.dumps(line).encode() + b"\n")

        for i in range(n):
            if await self._fault_step(request, resp, seen, i, b"<html>502 Bad Gateway</html>\n"):
                return resp
            if fault.error_after == i:
                await send({"error": fault.message})
                seen.finished_at = time.monotonic()
                return resp
            if delay:
                await asyncio.sleep(delay)
            await send(self._line(model, kind, f"t{i} ", done=False))
            seen.chunks_sent = i + 1
            if i == 0 and self.gate is not None:
                await self.gate.wait()
        await send(self._final(model, kind, "", p, out))
        seen.finished_at = time.monotonic()
        await resp.write_eof()
        return resp

    async def _embed(self, request: web.Request, seen: Seen) -> web.StreamResponse:
        refused = await self._admit(request, seen)
        if refused is not None:
            return refused
        body = seen.body
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) else 3
        p = 0 if self.zero_usage else count_words(items)
        seen.usage = {"prompt_tokens": p, "completion_tokens": 0}
        vectors = [[0.25 * (i + 1)] * dims for i in range(len(items))]
        seen.finished_at = time.monotonic()
        payload = {
            "model": body["model"],
            "embeddings": vectors,
            "total_duration": 14143917,
            "load_duration": 1019500,
            "prompt_eval_count": p,
        }
        return web.json_response(payload)
