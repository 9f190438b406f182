"""``kind: openai``: any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, TGI, LocalAI,
Ollama's ``/v1``).

```yaml
upstreams:
  openai-main:
    kind: openai
    base_url: https://api.openai.com/v1     # the path prefix before /chat/completions
    api_key: ${OPENAI_API_KEY}              # sent as Authorization: Bearer (never logged)
    headers: {OpenAI-Project: proj_123}     # more headers for the provider (optional)
    stream_usage: true                      # ask for the usage chunk (stream_options)
    timeouts: {connect: 2s, read: 30s, total: 120s}
```

The request goes as the exchange holds it (the client's body, ``model`` the deployment's); the
reply comes back as the provider sent it, checked on the way: a non-streamed body must be an
OpenAI object, every streamed event JSON (else ``malformed``), an error event ends the stream
as :class:`StreamFailed` ``provider``, and a stream that ends before ``data: [DONE]`` failed
(``disconnect``). The provider's usage is reported to the exchange as it arrives.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

from multidict import CIMultiDict
from yarl import URL

from gatewayd.chain import (
    Attempt,
    HttpClient,
    PoolConfig,
    RequestContext,
    Response,
    Target,
    TimeoutsConfig,
    UpstreamContext,
    UpstreamError,
    UpstreamTimeout,
)
from gatewayd_llm.exchange import EXCHANGE, Exchange, Operation, StreamFailed
from gatewayd_llm.kinds.base import HttpProvider, Probe, ProviderConfig
from gatewayd_llm.kinds.translate import error_reply
from gatewayd_llm.wire import DONE, SseDecoder, sse_headers

PATHS: dict[Operation, str] = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}
MAX_ERROR_BODY = 64 * 1024
MAX_WHOLE_BODY = 64 * 1024 * 1024  # a whole answer (embeddings of many inputs are large)


class OpenAIUpstreamConfig(ProviderConfig):
    kind: Literal["openai"] = "openai"
    headers: dict[str, str] = {}
    stream_usage: bool = True


class OpenAIUpstream(HttpProvider):
    kind: ClassVar[str] = "openai"
    Config: ClassVar[type[ProviderConfig]] = OpenAIUpstreamConfig

    def __init__(self, name: str, config: ProviderConfig, context: UpstreamContext) -> None:
        super().__init__(name, config, context)
        base = URL(config.base_url)
        self.origin = str(base.origin())
        prefix = base.raw_path.rstrip("/")
        self.paths = {operation: prefix + path for operation, path in PATHS.items()}
        self.client: HttpClient | None = None

    async def start(self) -> None:
        # gatewayd's own HTTP client (the http kind's: pooled, llhttp), not an aiohttp session.
        pool = PoolConfig(max_connections=self.config.max_connections)
        self.client = self.context.http_client(pool)

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.close()

    async def send(
        self,
        target: Target,
        attempt: Attempt,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
    ) -> Response:
        client = self.client
        if client is None:
            raise UpstreamError(503, "upstream_closed", f"upstream '{self.name}' is not started")
        exchange = ctx.state.get(EXCHANGE)
        if isinstance(exchange, Exchange):
            reply = await self.answer(client, ctx, exchange, attempt, timeouts)
        else:
            reply = await self.check(client, ctx, attempt, timeouts)
        attempt.status = reply.status
        return reply

    @classmethod
    def cheap_probe(cls, config: ProviderConfig, secret: str | None) -> Probe:
        """``GET {base_url}/models`` (the model list)."""
        assert isinstance(config, OpenAIUpstreamConfig)
        headers = request_headers(config, None, False, secret)
        return Probe(URL(config.base_url + "/models"), dict(headers))

    def provider_headers(
        self, exchange: Exchange | None, stream: bool, secret: str | None
    ) -> CIMultiDict[str]:
        config = self.config
        assert isinstance(config, OpenAIUpstreamConfig)
        return request_headers(config, exchange, stream, secret)

    def request_body(self, exchange: Exchange) -> dict[str, Any]:
        body = exchange.body
        config = self.config
        assert isinstance(config, OpenAIUpstreamConfig)
        if exchange.stream and exchange.operation != "embeddings":
            options = body.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            if config.stream_usage:
                options["include_usage"] = True
            else:
                options.pop("include_usage", None)
            body = {**body, "stream_options": options}
            if not options:
                del body["stream_options"]  # some servers refuse stream_options at all
        return body

    async def answer(
        self,
        client: HttpClient,
        ctx: RequestContext,
        exchange: Exchange,
        attempt: Attempt,
        timeouts: TimeoutsConfig,
    ) -> Response:
        stream = exchange.stream and exchange.operation != "embeddings"
        path = self.paths[exchange.operation]
        data = json.dumps(self.request_body(exchange)).encode()
        secret = self.secret()
        headers = self.provider_headers(exchange, stream, secret)
        reply = await client.request(
            ctx, attempt, "POST", self.origin, path, headers, data, timeouts
        )
        if reply.status == 401:
            other = self.retry_secret(secret)
            if other is not None:  # a rotation's grace: once with the other secret
                await discard(reply)
                headers = self.provider_headers(exchange, stream, other)
                reply = await client.request(
                    ctx, attempt, "POST", self.origin, path, headers, data, timeouts
                )
        if reply.status >= 400:
            return await self.refusal(reply)
        if not stream:
            return self.whole(await self.read(reply, MAX_WHOLE_BODY, attempt), exchange, attempt)
        if not reply.headers.get("Content-Type", "").startswith("text/event-stream"):
            await discard(reply)
            attempt.error = "malformed"
            raise UpstreamError(
                502, "upstream_malformed", f"upstream '{self.name}' did not answer with a stream"
            )
        body = relay_events(stream_items(reply), exchange)
        return Response(reply.status, sse_headers(), body)

    async def read(self, reply: Response, limit: int, attempt: Attempt) -> bytes:
        """A reply's whole body, at most ``limit`` bytes (else 502: the connection dropped)."""
        body = reply.body
        if isinstance(body, bytes | bytearray):
            return bytes(body)
        parts: list[bytes] = []
        size = 0
        try:
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    attempt.error = "malformed"
                    raise UpstreamError(
                        502, "upstream_malformed", f"upstream '{self.name}' answered too much"
                    )
                parts.append(chunk)
        finally:
            await discard(reply)
        return b"".join(parts)

    async def refusal(self, reply: Response) -> Response:
        """The provider's error reply, OpenAI-shaped (its own message, our request id)."""
        status = reply.status
        try:
            raw = await self.read(reply, MAX_ERROR_BODY, Attempt(""))
            payload = json.loads(raw) if raw else None
        except (ValueError, UpstreamError):
            payload = None
        message, code, param = self.provider_error(status, payload)
        return error_reply(status, message, code, param, reply.headers.get("Retry-After"))

    def whole(self, raw: bytes, exchange: Exchange, attempt: Attempt) -> Response:
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        key = "data" if exchange.operation == "embeddings" else "choices"
        if not isinstance(obj, dict) or not isinstance(obj.get(key), list):
            attempt.error = "malformed"
            raise UpstreamError(
                502, "upstream_malformed", f"upstream '{self.name}' sent a malformed reply"
            )
        report(exchange, obj.get("usage"))
        exchange.mark_first_byte()
        return Response(200, CIMultiDict({"Content-Type": "application/json"}), raw)

    async def check(
        self, client: HttpClient, ctx: RequestContext, attempt: Attempt, timeouts: TimeoutsConfig
    ) -> Response:
        """A health check: the model list (cheap, never billed)."""
        probe = self.cheap_probe(self.config, self.secret())
        reply = await client.request(
            ctx,
            attempt,
            "GET",
            self.origin,
            probe.url.raw_path_qs,
            CIMultiDict(probe.headers),
            None,
            timeouts,
        )
        await discard(reply)
        return Response(reply.status, CIMultiDict({"Content-Type": "application/json"}), b"")


def request_headers(
    config: OpenAIUpstreamConfig, exchange: Exchange | None, stream: bool, secret: str | None
) -> CIMultiDict[str]:
    """Ours only (never the client's): ``headers:``, the credential, the request id."""
    headers: CIMultiDict[str] = CIMultiDict(config.headers)
    headers["Content-Type"] = "application/json"
    headers["Accept"] = "text/event-stream" if stream else "application/json"
    headers["User-Agent"] = "gatewayd-llm"
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    if exchange is not None and exchange.request_id:
        headers["X-Request-ID"] = exchange.request_id
    return headers


async def discard(reply: Response) -> None:
    """Close a reply's body that will not be read on (its connection is dropped)."""
    aclose = getattr(reply.body, "aclose", None)
    if aclose is not None:
        await aclose()


async def stream_items(reply: Response) -> AsyncIterator[bytes]:
    """A streamed reply's bytes as they arrive (gatewayd's client times each read with
    ``timeouts.read``): a read that timed out is ``stall``, a cut connection ``disconnect``."""
    body = reply.body
    if isinstance(body, bytes | bytearray):
        yield bytes(body)
        return
    try:
        async for chunk in body:
            yield chunk
    except UpstreamTimeout:
        raise StreamFailed("stall", "the provider stopped sending") from None
    except UpstreamError:
        raise StreamFailed("disconnect", "the provider's connection was cut") from None
    finally:
        await discard(reply)


def report(exchange: Exchange, usage: Any) -> None:
    """The provider's ``usage`` object (OpenAI's, or an embeddings' without completions)."""
    if not isinstance(usage, dict):
        return
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if exchange.operation == "embeddings" and completion is None and isinstance(prompt, int):
        completion = 0
    exchange.report_usage(
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


async def relay_events(chunks: AsyncIterator[bytes], exchange: Exchange) -> AsyncIterator[bytes]:
    """The provider's SSE events, checked, as whole events (those that arrived together in one
    item); the usage reported; ``[DONE]`` last, or :class:`StreamFailed`. When good events
    and a failure arrive together, the good ones are yielded first, unless nothing was
    yielded yet (then the failure comes at once: the plugin can still fall back)."""
    decoder = SseDecoder()
    done = False
    started = False
    try:
        async for raw in chunks:
            out: list[bytes] = []
            failure: StreamFailed | None = None
            try:
                events = list(decoder.feed(raw))
            except ValueError:
                events = []
                failure = StreamFailed("malformed", "the provider sent an oversized event")
            for data in events:
                if data.strip() == "[DONE]":
                    out.append(DONE)
                    done = True
                    break
                failure = check_event(data, exchange)
                if failure is not None:
                    break
                out.append(b"data: " + data.encode() + b"\n\n")
            if failure is not None and not started:
                raise failure
            if out:
                started = True
                yield b"".join(out)
            if failure is not None:
                raise failure
            if done:
                return  # complete: what may follow [DONE] is not read (the response is closed)
        raise StreamFailed("disconnect", "the provider's stream ended before [DONE]")
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def check_event(data: str, exchange: Exchange) -> StreamFailed | None:
    """One event's data: its usage reported, its first token marked; or why it is a failure."""
    try:
        obj = json.loads(data)
    except ValueError:
        return StreamFailed("malformed", "the provider sent a malformed chunk")
    if not isinstance(obj, dict):
        return StreamFailed("malformed", "the provider sent a malformed chunk")
    error = obj.get("error")
    if error is not None:
        message = error.get("message") if isinstance(error, dict) else str(error)
        return StreamFailed("provider", str(message or "the provider failed")[:2000])
    report(exchange, obj.get("usage"))
    if obj.get("choices"):
        exchange.mark_first_byte()
    return None
