"""The ``http`` upstream kind: a pool of HTTP/1.1 targets (``targets: [http://host:port]``).

One attempt at one target per call (the core picks, retries and times out): the request goes
through the upstream's connection pool (:mod:`gatewayd.proxy.h1`), a small response (up to
``SMALL_BODY`` with a Content-Length) is read whole, anything else streams with a ``read``
deadline per chunk. Interim responses (``103 Early Hints``...) go to the client as they come
(:mod:`gatewayd.proxy.interim`, HTTP/1.1 clients only). A framing error of the target (a bad
head or chunk, a body shorter or longer than it said) is ``attempt.error = "framing"``, logged
once here (a WARNING without header values or body bytes); what was framed right is passed on
(a body longer than its ``Content-Length`` is cut to it, and the connection dropped). A
WebSocket gets its own small client session, so it holds no slot of the HTTP pool and a reload,
which closes the old generation's pool once its last request is done, cannot cut it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gatewayd.chain.api import Attempt, RequestContext, Response
from gatewayd.chain.upstream import (
    ClientWebSocketChannel,
    Target,
    UpstreamConnectError,
    UpstreamContext,
    UpstreamError,
    UpstreamTimeout,
)
from gatewayd.config.schema import HttpUpstreamConfig, PoolConfig, TimeoutsConfig
from gatewayd.proxy import h1
from gatewayd.proxy.deadlines import Deadlines
from gatewayd.proxy.interim import InterimRelay

log = logging.getLogger("gatewayd.proxy")

# Responses up to this size with a Content-Length are read in one go (bounded) and written with
# one call; anything larger or of unknown length streams chunk by chunk.
SMALL_BODY = 64 * 1024
NO_BODY_STATUS = frozenset({204, 304})


class PooledHttpClient:
    """The daemon's HTTP/1.1 client behind :class:`gatewayd.chain.HttpClient`: one pool
    (:mod:`gatewayd.proxy.h1`) for any number of origins. The ``http`` kind sends through one,
    and plugin kinds get their own from ``UpstreamContext.http_client()``."""

    def __init__(self, name: str, pool: PoolConfig) -> None:
        self.name = name
        self.pool = h1.Pool(pool)
        self.deadlines: Deadlines | None = None

    async def request(
        self,
        ctx: RequestContext,
        attempt: Attempt,
        method: str,
        origin: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | Any | None,
        timeouts: TimeoutsConfig,
    ) -> Response:
        pool = self.pool
        deadlines = self.deadlines
        if deadlines is None:
            deadlines = self.deadlines = Deadlines(asyncio.get_running_loop())
        resp: h1.Response | None = None
        interim = InterimRelay(ctx) if ctx.interim_writer is not None else None
        try:
            resp = await pool.request(
                pool.origin(origin),
                method,
                target,
                headers,
                body,
                timeouts.connect,
                None if interim is None else interim.received,
            )
            if interim is not None and interim.pending is not None:
                await interim.flush()
            length = resp.content_length
            if (
                method == "HEAD"
                or resp.status in NO_BODY_STATUS
                or (length is not None and length <= SMALL_BODY)
            ):
                reply: bytes | AsyncIterator[bytes] = await resp.read()
                resp.close()
                if resp.framing_error is not None:
                    framing(self.name, attempt, ctx, resp.framing_error)
            else:
                reply = _Stream(resp, deadlines, timeouts.read, attempt, self.name, ctx)
        except BaseException as exc:
            if interim is not None:
                interim.cancel()
            if resp is not None:
                resp.close()
            if isinstance(exc, h1.MalformedResponse):
                framing(self.name, attempt, ctx, str(exc))
            raise map_error(self.name, exc, attempt) from exc
        return Response(resp.status, resp.headers, reply, resp.reason)

    async def close(self) -> None:
        await self.pool.close()


class HttpUpstream:
    kind: ClassVar[str] = "http"
    Config: ClassVar[type[HttpUpstreamConfig]] = HttpUpstreamConfig

    def __init__(self, name: str, config: HttpUpstreamConfig, context: UpstreamContext) -> None:
        self.name = name
        self.config = config
        # The same Target objects across reloads that keep this config: health, ejection and
        # in-flight counts carry over.
        self._targets: list[Target] = context.keep(
            "targets", lambda: [Target(url) for url in config.targets]
        )
        self.client: PooledHttpClient | None = None

    def targets(self) -> Sequence[Target]:
        return self._targets

    async def start(self) -> None:
        self.client = PooledHttpClient(self.name, self.config.pool)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

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
        assert client is not None, "upstream not started"
        req = ctx.request
        qs = req.query_string
        return await client.request(
            ctx,
            attempt,
            req.method,
            target.id,
            f"{path}?{qs}" if qs else path,
            headers,
            req.body,
            timeouts,
        )

    def _map_error(self, exc: BaseException, attempt: Attempt) -> BaseException:
        return map_error(self.name, exc, attempt)

    async def upgrade(
        self,
        target: Target,
        attempt: Attempt,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
        protocols: Sequence[str],
        max_message: int,
    ) -> ClientWebSocketChannel:
        base = target.id.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        qs = ctx.request.query_string
        url = URL(f"{base}{path}?{qs}" if qs else f"{base}{path}", encoded=True)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect),
            trust_env=False,
        )
        try:
            return await ClientWebSocketChannel.open(
                session, url, headers, protocols, max_message, attempt, self.name
            )
        except UpstreamError:
            raise
        except BaseException as exc:
            raise self._map_error(exc, attempt) from exc


def map_error(name: str, exc: BaseException, attempt: Attempt) -> BaseException:
    """An h1 (or, for WebSockets, aiohttp) error as the upstream error a kind raises."""
    if isinstance(exc, h1.ConnectTimeout):
        attempt.error = "timeout"
        return UpstreamTimeout(f"connecting to upstream '{name}' timed out")
    if isinstance(exc, h1.ConnectError):
        attempt.error = "connect"
        return UpstreamConnectError(f"cannot connect to upstream '{name}'")
    if isinstance(exc, h1.MalformedResponse):
        attempt.error = "framing"
        return UpstreamError(502, "upstream_error", f"upstream '{name}' sent a malformed response")
    if isinstance(exc, h1.ClientError):
        attempt.error = "disconnect"
        return UpstreamError(502, "upstream_error", f"upstream '{name}' failed")
    # the WebSocket handshake (aiohttp's client)
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            attempt.error = "timeout"
            return UpstreamTimeout(f"connecting to upstream '{name}' timed out")
        attempt.error = "connect"
        return UpstreamConnectError(f"cannot connect to upstream '{name}'")
    if isinstance(exc, aiohttp.ClientError):
        attempt.error = "disconnect"
        return UpstreamError(502, "upstream_error", f"upstream '{name}' failed")
    return exc


def framing(upstream: str, attempt: Attempt, ctx: RequestContext, reason: str) -> None:
    """A framing error of the target: on the attempt (the core counts it), and logged once."""
    attempt.error = "framing"
    log.warning(
        "upstream framing error",
        extra={
            "upstream": upstream,
            "target": attempt.target,
            "request_id": ctx.request_id,
            "reason": reason,
        },
    )


class _Stream:
    """A streamed response body: each read waits at most ``read`` seconds (the time spent
    writing to a slow client does not count); the connection is released (or closed, if the
    body was not read to the end) whatever happens."""

    __slots__ = ("attempt", "closed", "ctx", "deadlines", "read", "resp", "upstream")

    def __init__(
        self,
        resp: h1.Response,
        deadlines: Deadlines,
        read: float,
        attempt: Attempt,
        upstream: str,
        ctx: RequestContext,
    ) -> None:
        self.resp = resp
        self.deadlines = deadlines
        self.read = read
        self.attempt = attempt
        self.upstream = upstream
        self.ctx = ctx
        self.closed = False

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> bytes:
        if self.closed:
            raise StopAsyncIteration
        try:
            chunk = self.resp.take()  # what has arrived already: no deadline to wait on
        except h1.ClientError as exc:
            raise await self._failed(exc) from exc
        if chunk is not None:
            if not chunk:
                await self._end()
            return chunk
        deadline = self.deadlines.start(self.read)
        try:
            chunk = await self.resp.readany()
        except asyncio.CancelledError as exc:
            if not deadline.timed_out(exc):
                raise  # not the deadline's alone: the client went away too
            self.attempt.error = "timeout"
            await self.aclose()
            raise UpstreamTimeout("upstream read timed out mid-response") from None
        except h1.ClientError as exc:
            raise await self._failed(exc) from exc
        finally:
            deadline.cancel()
        if not chunk:
            await self._end()
        return chunk

    async def _end(self) -> None:
        if self.resp.framing_error is not None:
            framing(self.upstream, self.attempt, self.ctx, self.resp.framing_error)
        await self.aclose()
        raise StopAsyncIteration

    async def _failed(self, exc: h1.ClientError) -> UpstreamError:
        if isinstance(exc, h1.MalformedResponse):
            framing(self.upstream, self.attempt, self.ctx, str(exc))
        else:
            self.attempt.error = "disconnect"
        await self.aclose()
        return UpstreamError(502, "upstream_error", "upstream failed mid-response")

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.resp.close()
