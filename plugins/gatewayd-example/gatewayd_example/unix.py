"""``kind: unix``: HTTP/1.1 to backends listening on Unix domain sockets.

An upstream kind (see ``gatewayd.chain.upstream``) built on the public API only: the kind says
what its targets are and how to send one request to one of them; gatewayd does the rest as it
does for every kind (balancing, health checks, passive ejection, breakers, retries and their
budget, the ``total`` timeout, metrics, ``GET /_admin/upstreams``). Registered in this
distribution's metadata::

    [project.entry-points."gatewayd.upstreams"]
    unix = "gatewayd_example.unix:UnixUpstream"

Config::

    upstreams:
      app:
        kind: unix
        targets: [/run/app/a.sock, /run/app/b.sock]   # absolute paths; the target ids
        pool: {max_connections: 64, keepalive: 30s}     # per target
        timeouts: {connect: 1s, read: 30s, total: 60s}

How it talks to a target: aiohttp's public client API, one ``ClientSession`` over a
``UnixConnector`` per target (pooled, kept alive). Request bodies (bytes or an async iterator)
and response bodies stream both ways; a response body is an async iterator with ``aclose()``
whose every chunk must arrive within ``timeouts.read``. Errors are reported as the upstream
interface asks: the socket cannot be reached (missing, refused, not a socket) -> ``attempt.error
= "connect"`` and :class:`UpstreamConnectError` (retried for any method); no connection or no
reply head in time -> ``"timeout"`` and :class:`UpstreamTimeout`; the backend closed the
connection or sent garbage -> ``"disconnect"`` and :class:`UpstreamError` (502).

WebSockets: ``upgrade()`` opens an aiohttp client WebSocket (``ClientWebSocketResponse``) on a
session of its own, so a long-lived WebSocket holds no slot of the pool and survives the reload
that closes this generation's pools; closing the channel closes that session too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar, Literal

import aiohttp
from multidict import CIMultiDict
from pydantic import BaseModel, ConfigDict, Field, field_validator
from yarl import URL

from gatewayd.chain import (
    Attempt,
    ClientWebSocketChannel,
    Duration,
    RequestContext,
    Response,
    Target,
    TimeoutsConfig,
    UpstreamConfig,
    UpstreamConnectError,
    UpstreamContext,
    UpstreamError,
    UpstreamTimeout,
)

NO_BODY_STATUS = frozenset({204, 304})
SMALL_BODY = 64 * 1024  # replies up to this size with a Content-Length are read whole
# aiohttp adds these to a request that lacks them; a proxy must not.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class UnixPoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_connections: int = Field(64, ge=1, description="connections per target")
    keepalive: Duration = 30.0


class UnixUpstreamConfig(UpstreamConfig):
    """``kind: unix``: ``targets`` are absolute paths of Unix domain sockets."""

    kind: Literal["unix"] = "unix"
    targets: list[str] = Field(min_length=1)
    pool: UnixPoolConfig = UnixPoolConfig()

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        for path in v:
            if not os.path.isabs(path) or "\x00" in path:
                raise ValueError(f"invalid target {path!r} (expected an absolute socket path)")
        if len(set(v)) != len(v):
            raise ValueError("a socket path is listed twice")
        return v


class UnixUpstream:
    """The ``unix`` upstream kind: one pooled aiohttp session per socket path."""

    kind: ClassVar[str] = "unix"
    Config: ClassVar[type[UnixUpstreamConfig]] = UnixUpstreamConfig

    def __init__(self, name: str, config: UnixUpstreamConfig, context: UpstreamContext) -> None:
        self.name = name
        self.config = config
        # The same Target objects across reloads with this config: health, ejection and
        # in-flight counts carry over (breakers are keyed by the ids, the socket paths).
        self._targets: list[Target] = context.keep(
            "targets", lambda: [Target(path) for path in config.targets]
        )
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def targets(self) -> Sequence[Target]:
        return self._targets

    async def start(self) -> None:
        pool = self.config.pool
        for t in self._targets:
            self._sessions[t.id] = _session(
                aiohttp.UnixConnector(
                    t.id, limit=pool.max_connections, keepalive_timeout=pool.keepalive
                ),
                self.config.timeouts.connect,
            )

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for s in sessions.values():
            await s.close()

    async def send(
        self,
        target: Target,
        attempt: Attempt,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
    ) -> Response:
        session = self._sessions.get(target.id)
        if session is None:
            raise UpstreamError(503, "upstream_closed", f"upstream '{self.name}' is not started")
        req = ctx.request
        resp: aiohttp.ClientResponse | None = None
        try:
            resp = await session.request(
                req.method,
                _url(path, req.query_string),
                headers=headers,
                data=req.body,
                allow_redirects=False,
                timeout=_timeout(timeouts.connect),
            )
            length = resp.content_length
            body: bytes | AsyncIterator[bytes]
            if (
                req.method == "HEAD"
                or resp.status in NO_BODY_STATUS
                or (length is not None and length <= SMALL_BODY)
            ):
                body = await asyncio.wait_for(resp.read(), timeouts.read)
                resp.release()
            else:
                body = UnixBody(resp, timeouts.read, attempt)
        except BaseException as exc:
            if resp is not None:
                resp.close()
            raise self._map_error(exc, attempt) from exc
        attempt.status = resp.status
        return Response(resp.status, CIMultiDict(resp.headers), body, resp.reason)

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
        session = _session(aiohttp.UnixConnector(target.id, limit=1), timeouts.connect)
        try:
            return await ClientWebSocketChannel.open(
                session,
                _url(path, ctx.request.query_string),
                headers,
                protocols,
                max_message,
                attempt,
                self.name,
            )
        except UpstreamError:
            raise
        except BaseException as exc:
            raise self._map_error(exc, attempt) from exc

    def _map_error(self, exc: BaseException, attempt: Attempt) -> BaseException:
        if isinstance(exc, aiohttp.ConnectionTimeoutError | asyncio.TimeoutError):
            attempt.error = "timeout"
            return UpstreamTimeout(f"upstream '{self.name}' timed out")
        if isinstance(exc, aiohttp.ClientConnectorError):
            attempt.error = "connect"
            return UpstreamConnectError(f"cannot connect to upstream '{self.name}'")
        if isinstance(exc, aiohttp.ClientError):
            attempt.error = "disconnect"
            return UpstreamError(502, "upstream_error", f"upstream '{self.name}' failed")
        return exc  # cancellation and the like pass as they are


def _session(connector: aiohttp.BaseConnector, connect: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO_HEADERS,
        auto_decompress=False,
        timeout=_timeout(connect),
        trust_env=False,
    )


def _timeout(connect: float) -> aiohttp.ClientTimeout:
    # ``total`` (until the reply's head) is gatewayd's; ``read`` is per body chunk (UnixBody).
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect)


def _url(path: str, query: str) -> URL:
    # The host only names the virtual server: the socket is the connector's.
    target = f"{path}?{query}" if query else path
    return URL(f"http://localhost{target}", encoded=True)


class UnixBody:
    """A streamed response body: each chunk must arrive within ``read`` seconds; the
    connection goes back to the pool when the body was read to the end, and is closed when
    it was not (``aclose`` early, an error, a timeout)."""

    __slots__ = ("attempt", "closed", "read", "resp")

    def __init__(self, resp: aiohttp.ClientResponse, read: float, attempt: Attempt) -> None:
        self.resp = resp
        self.read = read
        self.attempt = attempt
        self.closed = False

    def __aiter__(self) -> UnixBody:
        return self

    async def __anext__(self) -> bytes:
        if self.closed:
            raise StopAsyncIteration
        try:
            async with asyncio.timeout(self.read):
                chunk = await self.resp.content.readany()
        except TimeoutError:
            self.attempt.error = "timeout"
            await self.aclose()
            raise UpstreamTimeout("upstream read timed out mid-response") from None
        except aiohttp.ClientError as exc:
            self.attempt.error = "disconnect"
            await self.aclose()
            raise UpstreamError(502, "upstream_error", "upstream failed mid-response") from exc
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.resp.content.at_eof():
            self.resp.release()
        else:
            self.resp.close()
