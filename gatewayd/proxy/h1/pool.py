"""One upstream's pool of HTTP/1.1 connections, per origin (scheme, host and port).

- At most ``max_connections`` connections are in use (or being made) at once, over all the
  origins; a request beyond that waits for one to come free, within its connect timeout.
  Idle connections do not count (as in aiohttp's connector), and close after ``keepalive``
  seconds unused.
- An idle connection the target closed is dropped from the pool as soon as that is seen. When
  a request fails on a reused connection before any byte of a response came back (the target
  closed it as the request went out), it is sent once more on a fresh connection if that is
  safe: an idempotent method and a body that can be sent again (none, or bytes). A POST, or a
  streamed body, fails instead. The same goes for a reused connection that answers with bytes
  that are no response (:class:`StaleBytes`: the previous response sent more than it framed,
  late); the response from the fresh connection then carries ``framing_error``.
- A cancelled request closes its connection and the ``CancelledError`` goes on untouched.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass, field

from multidict import CIMultiDict
from yarl import URL

from gatewayd.chain.api import IDEMPOTENT_METHODS
from gatewayd.config.schema import PoolConfig
from gatewayd.proxy.h1.errors import (
    ClientClosed,
    ConnectError,
    ConnectTimeout,
    Disconnected,
    StaleBytes,
)
from gatewayd.proxy.h1.head import Body, encode_head, is_resendable
from gatewayd.proxy.h1.protocol import Connection, Interim
from gatewayd.proxy.h1.response import Response

SCHEMES = {"http": "http", "ws": "http", "https": "https", "wss": "https"}


@dataclass(eq=False, slots=True)
class Origin:
    """Where a pool's connections go: made once per target by :meth:`Pool.origin`."""

    url: str
    host: str  # to connect to
    port: int
    authority: str  # the Host header: host, and the port unless it is the scheme's default
    tls: ssl.SSLContext | None
    idle: deque[Connection] = field(default_factory=deque)  # the newest last


class Pool:
    """Make it inside the running loop (upstream start); :meth:`close` it when done."""

    def __init__(self, config: PoolConfig) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = config.max_connections
        self.keepalive = config.keepalive
        self.read_buffer = config.read_buffer
        self.busy = 0  # connections in use or being made
        self.closed = False
        self.origins: dict[str, Origin] = {}
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.sweep: asyncio.TimerHandle | None = None
        self.tls: ssl.SSLContext | None = None

    def origin(self, url: str) -> Origin:
        """The origin of ``url`` (``http://host:port``, ``https://``; ``ws``/``wss`` count as
        ``http``/``https``); one object per origin for the pool's life."""
        origin = self.origins.get(url)
        if origin is None:
            parsed = URL(url)
            scheme = SCHEMES.get(parsed.scheme)
            if scheme is None or not parsed.raw_host:
                raise ValueError(f"not an http(s) origin: {url!r}")
            secure = scheme == "https"
            if secure and self.tls is None:
                self.tls = ssl.create_default_context()
            port = parsed.port or (443 if secure else 80)
            default = 443 if secure else 80
            host = parsed.raw_host
            authority = f"[{host}]" if ":" in host else host
            if port != default:
                authority = f"{authority}:{port}"
            origin = Origin(url, host, port, authority, self.tls if secure else None)
            self.origins[url] = origin
        return origin

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: Body,
        connect_timeout: float,
        interim: Interim | None = None,
    ) -> Response:
        """Send ``method target`` (the path and query, already encoded, as they go on the
        wire) with ``headers`` as they are (plus ``Host`` unless given) and ``body`` (``None``,
        bytes, or an async iterable of bytes: chunked unless ``headers`` carry a
        ``Content-Length``, which is then honoured exactly); the response once its head is in.
        ``interim(status, headers)`` is called (from the parser: it must not block) for each
        interim response before it (1xx but 101).

        Raises :class:`ConnectError` (target not reachable), :class:`ConnectTimeout` (no
        connection or pool slot within ``connect_timeout``), :class:`Disconnected`
        (connection lost before the head), :class:`MalformedResponse`; ``ValueError`` for
        a line break in the target or a header."""
        if self.closed:
            raise ClientClosed("the upstream's pool is closed")
        head, length = encode_head(method, target, origin.authority, headers, body)
        head_only = method == "HEAD"
        conn = self._take_idle(origin)
        reused = conn is not None
        if conn is None:
            conn, reused = await self._connect(origin, connect_timeout, fresh=False)
        try:
            return await conn.send(head, body, head_only, length, interim)
        except (Disconnected, StaleBytes) as exc:
            stale = isinstance(exc, StaleBytes)
            if not (
                reused
                and (stale or not conn.got_data)
                and method in IDEMPOTENT_METHODS
                and is_resendable(body)
            ):
                raise
        except BaseException:  # cancelled, most likely: the connection cannot be trusted
            conn.abort()
            raise
        # The target had closed the pooled connection (or spoilt it): once more, on a fresh one.
        conn, _ = await self._connect(origin, connect_timeout, fresh=True)
        try:
            resp = await conn.send(head, body, head_only, length, interim)
        except BaseException:
            conn.abort()
            raise
        if stale:
            resp.framing_error = "bytes past the previous response's end"
        return resp

    async def _connect(
        self, origin: Origin, timeout: float, fresh: bool
    ) -> tuple[Connection, bool]:
        """A connection to ``origin`` holding a slot, and whether it is a reused one: an idle
        one that came free while waiting for a slot (unless ``fresh``), else a new one."""
        try:
            async with asyncio.timeout(timeout):
                while self.busy >= self.limit:
                    await self._wait()
                    if self.closed:
                        raise ClientClosed("the upstream's pool is closed")
                    if not fresh:
                        idle = self._take_idle(origin)
                        if idle is not None:
                            return idle, True
                self.busy += 1
                try:
                    _, conn = await self.loop.create_connection(
                        lambda: Connection(self, origin),
                        origin.host,
                        origin.port,
                        ssl=origin.tls,
                        server_hostname=origin.host if origin.tls is not None else None,
                    )
                except BaseException:
                    self.busy -= 1
                    self._wake()
                    raise
                conn.busy = True  # the slot taken above is the connection's from here on
                return conn, False
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {origin.url} within {timeout}s") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {origin.url}: {exc}") from exc

    def _take_idle(self, origin: Origin) -> Connection | None:
        """The newest idle connection to ``origin``, holding a slot, if a slot is free."""
        idle = origin.idle
        while idle and self.busy < self.limit:
            conn = idle.pop()
            conn.pooled = False
            if not conn.closed:
                conn.busy = True
                self.busy += 1
                return conn
        return None

    async def _wait(self) -> None:
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake()  # it was woken as it was cancelled: pass the slot on
            raise

    def _wake(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- called by connections ------------------------------------------------------------

    def release(self, conn: Connection, reuse: bool) -> None:
        """``conn``'s response is complete: keep it for the next request, or close it."""
        if conn.busy:
            conn.busy = False
            self.busy -= 1
            self._wake()
        if reuse and not self.closed and not conn.closed and self.keepalive > 0:
            conn.idle_since = self.loop.time()
            conn.pooled = True
            conn.origin.idle.append(conn)
            if self.sweep is None:
                self.sweep = self.loop.call_at(conn.idle_since + self.keepalive, self._sweep)
        else:
            conn.abort()

    def forget(self, conn: Connection) -> None:
        """``conn`` is closed: its slot comes free, or it leaves the idle list."""
        if conn.busy:
            conn.busy = False
            self.busy -= 1
            self._wake()
        elif conn.pooled:
            conn.pooled = False
            conn.origin.idle.remove(conn)

    def _sweep(self) -> None:
        """Close the connections idle for ``keepalive``; come back for the next one."""
        self.sweep = None
        expired = self.loop.time() - self.keepalive
        next_at: float | None = None
        for origin in self.origins.values():
            idle = origin.idle
            while idle and idle[0].idle_since <= expired:
                conn = idle.popleft()
                conn.pooled = False
                conn.abort()
            if idle and (next_at is None or idle[0].idle_since < next_at):
                next_at = idle[0].idle_since
        if next_at is not None:
            self.sweep = self.loop.call_at(next_at + self.keepalive, self._sweep)

    async def close(self) -> None:
        """Close every idle connection; those in use close when their response is done."""
        self.closed = True
        if self.sweep is not None:
            self.sweep.cancel()
            self.sweep = None
        for origin in self.origins.values():
            while origin.idle:
                conn = origin.idle.pop()
                conn.pooled = False
                conn.abort()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
