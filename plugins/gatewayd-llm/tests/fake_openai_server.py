"""A fake OpenAI-compatible provider: a real aiohttp app on 127.0.0.1 speaking OpenAI's wire
format (``/v1/chat/completions`` streamed and not, with ``stream_options.include_usage``,
``/v1/completions``, ``/v1/embeddings``, ``/v1/models``), with faults scripted per request.

In tests (the ``fake_openai`` fixture)::

    fake.push(Fault(status=429))                 # the next request gets a 429
    fake.push(Fault(cut_after=2), model="m")     # the next request for model "m": cut mid-stream
    fake.behaviour = lambda body: Fault(...)     # decide for every request from its body
    fake.requests[-1].cancelled_at               # when the client (the gateway) went away

As a process, for benchmarks (answers at once, no faults)::

    python plugins/gatewayd-llm/tests/fake_openai_server.py --port 8311 [--chunks 16]
        [--chunk-delay 0] [--host 127.0.0.1]

Content chunk ``i`` of a reply is the token ``"t<i> "``; a reply has ``max_tokens`` tokens
(``max_completion_tokens`` too; default :attr:`FakeOpenAI.chunks`, at most 10,000); the prompt
counts one token per whitespace-separated word of the messages (or prompt/input) plus one per
message. The usage the fake reported is recorded on the request (:attr:`Seen.usage`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

MAX_TOKENS = 10_000


@dataclass(slots=True)
class Fault:
    """What one request gets instead of (or on top of) a normal answer.

    ``status``: an OpenAI-shaped error reply with this status (``code``/``message`` in it, and
    ``Retry-After`` when ``retry_after``). ``delay``: seconds before the reply's head (a timeout
    when longer than the gateway's). The rest count events (streamed: the role chunk of a chat
    stream, then one per token) or body bytes (not streamed): ``stall_after`` sends that many,
    then holds the connection open without sending; ``cut_after`` sends that many, then closes
    the connection; ``malformed_after`` sends that many, then a chunk that is not JSON (not
    streamed: a 200 whose body is not JSON);
    ``error_after`` (streamed) sends that many, then an OpenAI error event and ends.
    ``usage=False``: no usage reported at all. ``chunks``/``chunk_delay`` override the reply's
    length and pace."""

    status: int | None = None
    code: str | None = None
    message: str = "fake provider error"
    retry_after: int | None = None
    delay: float = 0.0
    stall_after: int | None = None
    cut_after: int | None = None
    malformed_after: int | None = None
    error_after: int | None = None
    usage: bool = True
    chunks: int | None = None
    chunk_delay: float | None = None


@dataclass(slots=True)
class Seen:
    """One request the fake received, and what became of it."""

    path: str
    headers: dict[str, str]
    body: Any
    received: float  # time.monotonic() (the same clock in every process on Linux)
    fault: Fault | None = None
    chunks_sent: int = 0
    usage: dict[str, int] | None = None  # the usage the fake reported, if it did
    cancelled_at: float | None = None  # the client went away before the reply was complete
    finished_at: float | None = None  # the reply was complete (or the fault carried out)

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def request_id(self) -> str | None:
        return self.headers.get("X-Request-ID")


def count_words(value: Any) -> int:
    """The fake's prompt "tokenizer": whitespace-separated words in every string inside."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_words(v) for v in value)
    if isinstance(value, dict):
        return sum(count_words(v) for k, v in value.items() if k in ("content", "text"))
    return 0


def prompt_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        messages = body["messages"] if isinstance(body["messages"], list) else []
        return count_words(messages) + len(messages)
    return count_words(body.get("prompt", body.get("input", ""))) + 1


class FakeOpenAI:
    """The fake provider (see the module's text). ``start()`` serves it on ``host:port`` (a free
    port by default); ``url`` is its ``base_url`` (``http://127.0.0.1:<port>/v1``)."""

    def __init__(
        self,
        api_key: str | None = None,
        chunks: int = 3,
        chunk_delay: float = 0.0,
        models: tuple[str, ...] = ("fake-model",),
    ) -> None:
        self.api_key = api_key  # when set, other Authorization values get 401
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self.models = models
        self.requests: list[Seen] = []
        self.behaviour: Callable[[Any], Fault | None] | None = None
        self.record = True  # False: keep no Seen (long benchmark runs)
        self._script: list[tuple[str | None, Fault]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.host = "127.0.0.1"
        self.handlers: set[asyncio.Task[Any]] = set()

    # -- scripting --------------------------------------------------------------------------

    def push(self, fault: Fault, model: str | None = None, times: int = 1) -> None:
        """The next ``times`` requests (for ``model``, when given) get ``fault``."""
        self._script.extend([(model, fault)] * times)

    def clear(self) -> None:
        self._script.clear()
        self.requests.clear()
        self.behaviour = None

    def _fault_for(self, body: Any) -> Fault | None:
        model = body.get("model") if isinstance(body, dict) else None
        for i, (want, fault) in enumerate(self._script):
            if want is None or want == model:
                del self._script[i]
                return fault
        return self.behaviour(body) if self.behaviour is not None else None

    def seen(self, path: str | None = None) -> list[Seen]:
        return [s for s in self.requests if path is None or s.path.endswith(path)]

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Until no request is being handled (every handler has ended)."""
        if self.handlers:
            await asyncio.wait(set(self.handlers), timeout=timeout)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.list_models)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeOpenAI:
        self.host = host
        # handler_cancellation: a client that goes away cancels its handler at once, which is
        # how the fake sees (and timestamps) a cancelled request.
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock, backlog=4096).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers ---------------------------------------------------------------------------

    async def _begin(
        self, request: web.Request, holder: list[Seen]
    ) -> tuple[Seen, Any, web.Response | None]:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        seen = Seen(request.path, dict(request.headers), body, time.monotonic())
        holder.append(seen)
        if self.record:
            self.requests.append(seen)
        if self.api_key is not None and request.headers.get("Authorization") != (
            f"Bearer {self.api_key}"
        ):
            seen.finished_at = time.monotonic()
            return seen, body, error(401, "Incorrect API key provided", "invalid_api_key")
        if not isinstance(body, dict):
            seen.finished_at = time.monotonic()
            return seen, body, error(400, "We could not parse the JSON body", None)
        fault = self._fault_for(body)
        seen.fault = fault
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            seen.finished_at = time.monotonic()
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else None
            return seen, body, error(fault.status, fault.message, fault.code, headers)
        return seen, body, None

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        holder: list[Seen] = []
        try:
            seen, body, refused = await self._begin(request, holder)
            if refused is not None:
                return refused
            if kind == "embeddings":
                return await self._embeddings(seen, body)
            if body.get("stream"):
                return await self._stream(request, seen, body, kind)
            return await self._whole(request, seen, body, kind)
        except (asyncio.CancelledError, ConnectionError):
            if holder and holder[0].finished_at is None:
                holder[0].cancelled_at = time.monotonic()
            raise
        finally:
            self.handlers.discard(task)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "completions")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "embeddings")

    async def list_models(self, request: web.Request) -> web.Response:
        if self.api_key is not None and request.headers.get("Authorization") != (
            f"Bearer {self.api_key}"
        ):
            return error(401, "Incorrect API key provided", "invalid_api_key")
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    # -- replies ----------------------------------------------------------------------------

    def _plan(self, seen: Seen, body: dict[str, Any]) -> tuple[int, float, dict[str, int]]:
        fault = seen.fault
        n = body.get("max_completion_tokens") or body.get("max_tokens")
        chunks = int(n) if isinstance(n, int) and n > 0 else self.chunks
        if fault is not None and fault.chunks is not None:
            chunks = fault.chunks
        chunks = min(chunks, MAX_TOKENS)
        delay = self.chunk_delay
        if fault is not None and fault.chunk_delay is not None:
            delay = fault.chunk_delay
        p = prompt_tokens(body)
        return chunks, delay, {"prompt_tokens": p, "completion_tokens": chunks}

    async def _whole(
        self, request: web.Request, seen: Seen, body: dict[str, Any], kind: str
    ) -> web.StreamResponse:
        chunks, delay, usage = self._plan(seen, body)
        if delay:
            await asyncio.sleep(delay * chunks)
        text = "".join(f"t{i} " for i in range(chunks))
        oid = f"fake-{len(self.requests)}"
        obj: dict[str, Any]
        if kind == "chat":
            obj = {
                "id": "chatcmpl-" + oid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
            }
        else:
            obj = {
                "id": "cmpl-" + oid,
                "object": "text_completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
            }
        fault = seen.fault
        if fault is None or fault.usage:
            obj["usage"] = {**usage, "total_tokens": usage["prompt_tokens"] + chunks}
        data = json.dumps(obj).encode()
        if fault is not None and fault.malformed_after is not None:
            seen.finished_at = time.monotonic()
            return web.Response(body=data[: fault.malformed_after] + b"}{not json", headers=JSON)
        partial = fault.cut_after if fault else None
        partial = fault.stall_after if fault and fault.stall_after is not None else partial
        if fault is not None and partial is not None:
            resp = web.StreamResponse(headers=JSON)
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[:partial])
            if fault.stall_after is not None:
                await asyncio.sleep(3600)
            seen.finished_at = time.monotonic()
            assert request.transport is not None
            request.transport.close()
            return resp
        if "usage" in obj:
            seen.usage = usage
        seen.finished_at = time.monotonic()
        return web.Response(body=data, headers=JSON)

    async def _stream(
        self, request: web.Request, seen: Seen, body: dict[str, Any], kind: str
    ) -> web.StreamResponse:
        chunks, delay, usage = self._plan(seen, body)
        fault = seen.fault or Fault()
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        oid = f"fake-{len(self.requests)}"
        created = int(time.time())
        model = body["model"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def chunk(content: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
            if kind == "chat":
                delta: dict[str, Any] = {"role": "assistant"} if role else {}
                if content is not None:
                    delta["content"] = content
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
                out = {"id": "chatcmpl-" + oid, "object": "chat.completion.chunk"}
            else:
                choice = {"index": 0, "text": content or "", "finish_reason": finish}
                out = {"id": "cmpl-" + oid, "object": "text_completion"}
            out.update({"created": created, "model": model, "choices": [choice]})
            if include_usage:
                out["usage"] = None
            return out

        # The events before the final one: the role chunk (chat), then one per token. A fault
        # "after n" comes after n of them.
        contents: list[str | None] = [None] if kind == "chat" else []
        contents += [f"t{i} " for i in range(chunks)]
        for n, content in enumerate(contents):
            if fault.stall_after == n:
                await asyncio.sleep(3600)
            if fault.cut_after == n:
                seen.finished_at = time.monotonic()
                assert request.transport is not None
                request.transport.close()
                return resp
            if fault.malformed_after == n:
                await resp.write(b'data: {"id": "broken", "choices": [{"delta": \n\n')
                seen.finished_at = time.monotonic()
                return resp
            if fault.error_after == n:
                await resp.write(
                    event(
                        {
                            "error": {
                                "message": fault.message,
                                "type": "api_error",
                                "code": fault.code,
                                "param": None,
                            }
                        }
                    )
                )
                seen.finished_at = time.monotonic()
                return resp
            if content is None:
                await resp.write(event(chunk("", None, role=True)))
                continue
            if delay:
                await asyncio.sleep(delay)
            await resp.write(event(chunk(content, None)))
            seen.chunks_sent += 1
        await resp.write(event(chunk(None if kind == "chat" else "", "stop")))
        if include_usage and fault.usage:
            total = {**usage, "total_tokens": usage["prompt_tokens"] + chunks}
            last = {
                "id": "x-" + oid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": total,
            }
            if kind != "chat":
                last["object"] = "text_completion"
            await resp.write(event(last))
            seen.usage = usage
        await resp.write(b"data: [DONE]\n\n")
        seen.finished_at = time.monotonic()
        await resp.write_eof()
        return resp

    async def _embeddings(self, seen: Seen, body: dict[str, Any]) -> web.Response:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) else 3
        if not 1 <= dims <= MAX_DIMENSIONS:  # as OpenAI refuses what its models cannot make
            return error(400, f"dimensions must be 1 to {MAX_DIMENSIONS}", "invalid_value")
        data = [
            {"object": "embedding", "index": i, "embedding": [round(0.1 * (i + 1), 3)] * dims}
            for i in range(len(items))
        ]
        fault = seen.fault
        obj: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model")}
        p = prompt_tokens(body)
        if fault is None or fault.usage:
            obj["usage"] = {"prompt_tokens": p, "total_tokens": p}
            seen.usage = {"prompt_tokens": p, "completion_tokens": 0}
        seen.finished_at = time.monotonic()
        return web.json_response(obj)


JSON = {"Content-Type": "application/json"}
MAX_DIMENSIONS = 3072  # text-embedding-3-large's


def event(data: Any) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def error(
    status: int, message: str, code: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    types = {400: "invalid_request_error", 401: "invalid_request_error", 429: "requests"}
    payload = {
        "error": {
            "message": message,
            "type": types.get(status, "server_error"),
            "param": None,
            "code": code,
        }
    }
    return web.json_response(payload, status=status, headers=headers)


async def _main(host: str, port: int, chunks: int, chunk_delay: float) -> None:
    fake = FakeOpenAI(chunks=chunks, chunk_delay=chunk_delay)
    fake.record = False
    await fake.start(host, port)
    print(f"fake OpenAI server on {fake.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake OpenAI-compatible server (no faults)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8311)
    parser.add_argument("--chunks", type=int, default=16, help="tokens per reply by default")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between tokens")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop

            uvloop.run(_main(args.host, args.port, args.chunks, args.chunk_delay))
        except ImportError:
            asyncio.run(_main(args.host, args.port, args.chunks, args.chunk_delay))


if __name__ == "__main__":
    main()
