"""WebSocket pass-through: after the route's chain ran on the handshake, open a WebSocket to a
target through the request's upstream (``ManagedUpstream.upgrade``: any kind, HTTP, relay lease
or a plugin's) and relay messages both ways until either side closes.

- The upstream handshake happens first: a target that refuses the upgrade (any status but 101),
  cannot be reached or does not answer in time gives the client 502/504 with the usual JSON body,
  and the client is never upgraded.
- Text and binary messages are relayed whole (``websocket.max_message`` bounds them; a larger one
  closes that side with 1009). Pings are answered by the gateway on each side. A close frame is
  passed on with its code and reason and echoed back to the side that sent it.
- After the upgrade, an upstream that fails (connection lost, protocol error) closes the client
  with 1011; a client that goes away closes the upstream with 1001; ``websocket.idle_timeout``
  without a message either way closes both with 1001 ``idle timeout``.
- The connection is pinned to its generation like any request and lives until it closes (the
  HTTP kind gives each WebSocket its own small client session, so a reload, which closes the old
  generation's pools once its last request is done, cannot cut it). At shutdown the daemon
  waits for the grace period, then :meth:`WebSocketRegistry.close_all` closes what is left
  with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Gauge

from gatewayd.chain.api import RequestContext, Response
from gatewayd.chain.upstream import CLOSE_TIMEOUT, UpstreamError, WebSocketChannel
from gatewayd.config.schema import TimeoutsConfig, WebSocketConfig

if TYPE_CHECKING:
    from gatewayd.proxy.upstream import ManagedUpstream

log = logging.getLogger("gatewayd.proxy")

HANDSHAKE_HEADERS = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)
# Close codes that may be sent on the wire (RFC 6455 7.4; 1005, 1006 and 1015 may not).
WIRE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def wire_code(code: int | None) -> int:
    if code is not None and (code in WIRE_CODES or 3000 <= code <= 4999):
        return code
    return 1000


class WebSocketRegistry:
    """The open WebSockets of the process, whatever their generation (for shutdown and metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.relays: set[Relay] = set()
        self.open: Any = None
        self.messages: Any = None
        if registry is not None:
            self.open = Gauge(
                "gatewayd_websockets_open",
                "Open proxied WebSockets, by route",
                ["route"],
                registry=registry,
            )
            self.messages = Counter(
                "gatewayd_websocket_messages_total",
                "Messages relayed over proxied WebSockets, by route and direction",
                ["route", "direction"],
                registry=registry,
            )

    def __len__(self) -> int:
        return len(self.relays)

    async def close_all(
        self, code: int = 1001, reason: str = "server shutting down", timeout: float = 5.0
    ) -> None:
        relays = list(self.relays)
        if not relays:
            return
        log.info("closing websockets", extra={"count": len(relays), "code": code})
        for relay in relays:
            relay.finish("shutdown", code, reason)
        done = [r.done.wait() for r in relays]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(*done)


class Relay:
    """One proxied WebSocket: two pumps (client to upstream, upstream to client), an idle
    watchdog, and one outcome that decides how both sides are closed."""

    def __init__(
        self,
        client: web.WebSocketResponse,
        upstream: WebSocketChannel,
        ctx: RequestContext,
        idle_timeout: float,
        counters: tuple[Any, Any] | None,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.ctx = ctx
        self.idle_timeout = idle_timeout
        self.counters = counters
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.last = loop.time()
        self.outcome: asyncio.Future[tuple[str, int, str]] = loop.create_future()
        self.done = asyncio.Event()

    def finish(self, kind: str, code: int = 1000, reason: str = "") -> None:
        if not self.outcome.done():
            self.outcome.set_result((kind, code, reason))

    async def run(self) -> None:
        """Relay until one side closes, then close both. The task may be cancelled when the
        client's connection ends (aiohttp cancels the handler): the closing still completes
        (it is bounded by CLOSE_TIMEOUT), and the cancellation is passed on only if the client
        went away without a close handshake."""
        tasks = [
            asyncio.create_task(self._pump(self.client, self.upstream, "client")),
            asyncio.create_task(self._pump(self.upstream, self.client, "upstream")),
            asyncio.create_task(self._watch_idle()),
        ]
        cancelled = 0
        try:
            try:
                await asyncio.shield(self.outcome)
            except asyncio.CancelledError:
                cancelled += 1
                self.finish("client_lost")
            kind, code, reason = self.outcome.result()
            closing = asyncio.create_task(self._close(kind, code, reason))
            while not closing.done():
                try:
                    await asyncio.shield(closing)
                except asyncio.CancelledError:
                    cancelled += 1
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.done.set()
        if cancelled:
            if kind in ("client_closed", "upstream_closed", "idle", "shutdown"):
                current = asyncio.current_task()
                assert current is not None
                for _ in range(cancelled):
                    current.uncancel()
            else:
                raise asyncio.CancelledError

    async def _pump(self, src: Any, dst: Any, side: str) -> None:
        other = "upstream" if side == "client" else "client"
        counter = self.counters[0 if side == "client" else 1] if self.counters else None
        ctx = self.ctx
        try:
            while not self.outcome.done():
                msg = await src.receive()
                kind = msg.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    self.last = self.loop.time()
                    size = len(msg.data)
                    if side == "client":
                        ctx.bytes_in += size
                    else:
                        ctx.bytes_out += size
                    try:
                        if kind is WSMsgType.TEXT:
                            await dst.send_str(msg.data)
                        else:
                            await dst.send_bytes(msg.data)
                    except (ConnectionError, RuntimeError, aiohttp.ClientError):
                        self.finish(f"{other}_lost")
                        return
                    if counter is not None:
                        counter.inc()
                elif kind is WSMsgType.PING:
                    self.last = self.loop.time()
                    with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
                        await src.pong(msg.data)
                elif kind is WSMsgType.PONG:
                    self.last = self.loop.time()
                elif kind is WSMsgType.CLOSE:
                    self.finish(f"{side}_closed", msg.data, msg.extra or "")
                    return
                elif kind is WSMsgType.ERROR:
                    self.finish(f"{side}_error", src.close_code or 1011, str(msg.data))
                    return
                else:  # CLOSING (we are closing it) or CLOSED (the connection ended)
                    self.finish(f"{side}_lost")
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "websocket relay failed",
                extra={"request_id": ctx.request_id, "side": side, "reason": repr(exc)},
            )
            self.finish(f"{side}_lost")

    async def _watch_idle(self) -> None:
        while not self.outcome.done():
            remaining = self.last + self.idle_timeout - self.loop.time()
            if remaining <= 0:
                self.finish("idle", 1001, "idle timeout")
                return
            await asyncio.sleep(remaining)

    async def _close(self, kind: str, code: int = 1000, reason: str = "") -> None:
        """Close both sides as the outcome says (see the module docstring)."""
        if kind in ("client_lost", "client_error"):
            up, cl = (1001, "client went away"), (wire_code(code), reason)
        elif kind == "upstream_error" and code == 1009:
            up, cl = (1009, reason), (1009, "upstream message too big")
        elif kind in ("upstream_lost", "upstream_error"):
            up, cl = (1011, ""), (1011, "upstream connection failed")
        else:  # idle, shutdown
            up = cl = (wire_code(code), reason)
        self.ctx.state["websocket_close"] = {"outcome": kind, "code": cl[0]}
        if kind == "client_closed":  # pass it on, then echo: the client waits for the echo
            await _close(self.upstream, *up)
            await _close(self.client, *cl)
        elif kind == "upstream_closed":
            await _close(self.client, *cl)
            await _close(self.upstream, *up)
        else:
            await asyncio.gather(_close(self.upstream, *up), _close(self.client, *cl))


async def _close(ws: Any, code: int, reason: str) -> None:
    message = reason.encode()[:123]  # a close frame's reason fits in 123 bytes
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await ws.close(code=code, message=message)


async def pass_through(
    raw: web.BaseRequest,
    ctx: RequestContext,
    upstream: ManagedUpstream,
    path: str,
    headers: CIMultiDict[str],
    timeouts: TimeoutsConfig,
    settings: WebSocketConfig,
    registry: WebSocketRegistry,
) -> web.StreamResponse | Response:
    """Serve an upgrade request whose chain has run, through ``upstream`` (any kind): the
    finished (closed) WebSocket response, or a :class:`Response` (an error) for the normal
    reply path."""
    if not web.WebSocketResponse().can_prepare(raw).ok:
        return ctx.error_response(400, "bad_handshake", "invalid WebSocket handshake")
    req = ctx.request
    forwarded = CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in HANDSHAKE_HEADERS
    )
    protocols = [
        p.strip()
        for value in req.headers.getall("Sec-WebSocket-Protocol", ())
        for p in value.split(",")
        if p.strip()
    ]
    try:
        opened = await upstream.upgrade(
            ctx, path, forwarded, timeouts, protocols, settings.max_message
        )
    except UpstreamError as exc:
        ctx.error = exc
        retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return ctx.error_response(exc.status, exc.code, exc.message, retry)
    up = opened.channel
    try:
        client = web.WebSocketResponse(
            protocols=(up.protocol,) if up.protocol else (),
            autoclose=False,
            autoping=False,
            max_msg_size=settings.max_message,
            compress=False,
            timeout=CLOSE_TIMEOUT,
        )
        client.headers["X-Request-ID"] = ctx.request_id
        try:
            await client.prepare(raw)
        except BaseException:
            await _close(up, 1001, "client went away")
            raise
        ctx.response = Response(101)
        counters = None
        route = ctx.route.name
        if registry.messages is not None:
            counters = (
                registry.messages.labels(route, "upstream"),
                registry.messages.labels(route, "client"),
            )
            registry.open.labels(route).inc()
        relay = Relay(client, up, ctx, settings.idle_timeout, counters)
        registry.relays.add(relay)
        try:
            await relay.run()
        finally:
            registry.relays.discard(relay)
            if registry.open is not None:
                registry.open.labels(route).dec()
        return client
    finally:
        opened.release()
