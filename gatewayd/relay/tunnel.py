"""The relay upstream kind: requests for a lease go to a peer as streams over its WebSocket.

Its targets are the peer identities holding the lease (``<key id>/<peer name>``, the same
:class:`~gatewayd.chain.Target` objects across requests and reconnects); the core balances over
them, retries, breaks and counts. One call is one attempt at one target: a stream on one of that
identity's connections (the one with the fewest streams in flight; another of its connections
when the first refuses the stream before the peer started on it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from multidict import CIMultiDict

from gatewayd.chain.api import IDEMPOTENT_METHODS, Attempt, PluginError, RequestContext, Response
from gatewayd.chain.upstream import Target, UpstreamConnectError, UpstreamError, UpstreamTimeout
from gatewayd.config.schema import RelayUpstreamConfig, TimeoutsConfig
from gatewayd.relay import protocol as p
from gatewayd.relay.connection import Disconnected, PeerConnection, TunnelStream
from gatewayd.relay.flow import StreamReset
from gatewayd.relay.messages import MessageInbox
from gatewayd.relay.protocol import FrameType
from gatewayd.relay.websocket import RelayWebSocket

if TYPE_CHECKING:
    from gatewayd.relay.peers import PeerIdentity
    from gatewayd.relay.registry import RelayRegistry

DATA_CHUNK = 64 * 1024


class _NotStarted(Exception):
    """The peer did not start on the request: it refused the stream, or the connection went
    before the request's head was written (``certain``); or the connection went before an
    answer to an idempotent request (not ``certain``: it may have, harmlessly)."""

    def __init__(self, replayable: bool, certain: bool) -> None:
        super().__init__("not started")
        self.replayable = replayable
        self.certain = certain


class RelayLeaseUpstream:
    """``gatewayd.chain.UpstreamKind`` for ``relay: <lease>`` (and ``relay: by_path`` routes,
    through :meth:`RelayRegistry.lease_upstream`)."""

    kind: ClassVar[str] = "relay"
    Config: ClassVar[type[RelayUpstreamConfig]] = RelayUpstreamConfig

    def __init__(self, name: str, lease: str, registry: RelayRegistry) -> None:
        self.name = name
        self.lease = lease
        self.registry = registry

    def targets(self) -> Sequence[Target]:
        return self.registry.targets(self.lease)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _connections(self, target: Target, attempt: Attempt) -> PeerIdentity:
        identity = self.registry.identity(self.lease, target.id)
        if identity is None:
            attempt.error = "connect"
            raise UpstreamConnectError(f"relay peer '{target.id}' no longer holds '{self.lease}'")
        return identity

    async def send(
        self,
        target: Target,
        attempt: Attempt,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
    ) -> Response:
        identity = self._connections(target, attempt)
        tried: set[str] = set()
        certain = True
        while True:
            conn = identity.pick(tried)
            if conn is None:
                if certain:  # never reached: the core may try another target, any method
                    attempt.error = "connect"
                    raise UpstreamConnectError(
                        f"relay peer '{target.id}' of lease '{self.lease}' has no usable connection"
                    )
                attempt.error = "disconnect"
                raise UpstreamError(
                    502, "upstream_error", f"relay peer for '{self.lease}' failed (disconnected)"
                )
            tried.add(conn.id)
            try:
                return await self._send_on(conn, attempt, ctx, path, headers, timeouts)
            except _NotStarted as exc:
                if not exc.replayable:  # part of a streamed body is gone: it cannot go again
                    attempt.error = "disconnect"
                    raise UpstreamError(
                        502, "upstream_error", f"relay peer for '{self.lease}' went away"
                    ) from None
                certain = certain and exc.certain
                # the next connection of this identity, if any (else the core's retry)

    async def _send_on(
        self,
        conn: PeerConnection,
        attempt: Attempt,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
    ) -> Response:
        req = ctx.request
        started = time.monotonic()
        stream = conn.open_stream()
        pump: _Pump | None = None
        head_sent = written = False
        try:
            async with asyncio.timeout(timeouts.total):
                head = {
                    "method": req.method,
                    "path": path,
                    "query": req.query_string,
                    "body": req.body is not None,
                    "headers": [[k, v] for k, v in headers.items()],
                }
                # Set first: the frame is written before send() can be cancelled (while it waits
                # for the buffer to drain), and then the peer has the stream and needs its RESET.
                head_sent = True
                await conn.send(p.encode_json(stream.id, FrameType.HEADERS, head))
                written = True
                pump = _Pump(conn, stream, req.body, ctx)
                reply = await stream.head
        except BaseException as exc:
            attempt.duration = time.monotonic() - started
            if pump is not None:
                pump.task.cancel()
            if head_sent:
                await conn.reset_stream(
                    stream, "cancel" if not isinstance(exc, TimeoutError) else "timeout"
                )
            conn.finish_stream(stream)
            raise self._map_error(exc, attempt, ctx, pump, written) from None
        assert pump is not None
        attempt.status = reply["status"]
        hdrs = CIMultiDict(reply["headers"])  # as the peer sent them: the core makes them ours
        body = TunnelBody(conn, stream, pump.task, timeouts.read, attempt, started)
        return Response(reply["status"], hdrs, body, reply.get("reason") or None)

    def _map_error(
        self,
        exc: BaseException,
        attempt: Attempt,
        ctx: RequestContext,
        pump: _Pump | None,
        written: bool,
    ) -> BaseException:
        if isinstance(exc, asyncio.CancelledError):
            return exc
        if isinstance(ctx.error, PluginError):  # the request body broke a limit
            return UpstreamError(ctx.error.status, ctx.error.code, ctx.error.message)
        if isinstance(exc, TimeoutError):
            attempt.error = "timeout"
            return UpstreamTimeout(f"relay lease '{self.lease}' timed out")
        if isinstance(exc, StreamReset):
            body = ctx.request.body
            replayable = body is None or isinstance(body, bytes | bytearray)
            replayable = replayable or (pump is not None and not pump.touched)
            gone = isinstance(exc, Disconnected)
            if exc.code == "refused" or (gone and not written):
                return _NotStarted(replayable, certain=True)
            if gone and ctx.request.method in IDEMPOTENT_METHODS:
                return _NotStarted(replayable, certain=False)
            if exc.code == "target_unreachable" and replayable:
                attempt.error = "connect"  # the peer never reached its target: try elsewhere
                return UpstreamConnectError(
                    f"relay peer for '{self.lease}' cannot reach its target"
                )
            attempt.error = "disconnect" if isinstance(exc, Disconnected) else "reset"
            code = "upstream_unreachable" if exc.code == "target_unreachable" else "upstream_error"
            return UpstreamError(502, code, f"relay peer for '{self.lease}' failed ({exc.code})")
        return exc

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
    ) -> RelayWebSocket:
        """A WebSocket to the peer's target through a stream (docs/relay-protocol.md)."""
        identity = self._connections(target, attempt)
        tried: set[str] = set()
        while True:
            conn = identity.pick(tried)
            if conn is None:
                attempt.error = "connect"
                raise UpstreamConnectError(
                    f"relay peer '{target.id}' of lease '{self.lease}' has no usable connection"
                )
            tried.add(conn.id)
            try:
                return await self._upgrade_on(
                    conn, attempt, ctx, path, headers, timeouts, protocols, max_message
                )
            except _NotStarted:
                continue

    async def _upgrade_on(
        self,
        conn: PeerConnection,
        attempt: Attempt,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
        protocols: Sequence[str],
        max_message: int,
    ) -> RelayWebSocket:
        started = time.monotonic()
        stream = conn.open_stream()
        stream.inbox = MessageInbox(
            conn.config.stream_window,
            max_message,
            lambda n: conn.send_quiet(p.window_update(stream.id, n)),
        )
        head = {
            "method": "GET",
            "path": path,
            "query": ctx.request.query_string,
            "body": False,
            "headers": [[k, v] for k, v in headers.items()],  # the core left out the handshake's
            "upgrade": "websocket",
            "protocols": list(protocols),
            "max_message": max_message,
        }
        head_sent = False
        try:
            async with asyncio.timeout(timeouts.total):
                head_sent = True
                await conn.send(p.encode_json(stream.id, FrameType.HEADERS, head))
                stream.out_done = True  # no request body
                reply = await stream.head
        except BaseException as exc:
            attempt.duration = time.monotonic() - started
            if head_sent:
                await conn.reset_stream(
                    stream, "cancel" if not isinstance(exc, TimeoutError) else "timeout"
                )
            conn.finish_stream(stream)
            if isinstance(exc, StreamReset) and (
                exc.code == "refused" or isinstance(exc, Disconnected)
            ):
                raise _NotStarted(True, certain=True) from None  # a handshake has no effect
            raise self._map_error(exc, attempt, ctx, None, True) from None
        status = reply["status"]
        attempt.status = status
        if status != 101:
            attempt.error = "handshake"
            await conn.reset_stream(stream, "cancel", "upgrade refused")
            raise UpstreamError(
                502,
                "websocket_refused",
                f"relay peer for '{self.lease}' refused the WebSocket upgrade (status {status})",
            )
        protocol = reply.get("protocol")
        return RelayWebSocket(
            conn, stream, protocol if isinstance(protocol, str) and protocol else None
        )


class _Pump:
    """Sends the request body as DATA within the stream's window, then END (a task)."""

    __slots__ = ("task", "touched")

    def __init__(
        self, conn: PeerConnection, stream: TunnelStream, body: Any, ctx: RequestContext
    ) -> None:
        self.touched = False  # a streamed body has been read from: it cannot be sent again
        self.task = asyncio.create_task(self._run(conn, stream, body, ctx))

    async def _run(
        self, conn: PeerConnection, stream: TunnelStream, body: Any, ctx: RequestContext
    ) -> None:
        try:
            if isinstance(body, bytes | bytearray):
                await _send_data(conn, stream, body)
            elif body is not None:
                self.touched = True
                async for chunk in body:
                    await _send_data(conn, stream, chunk)
            await conn.send(p.encode(stream.id, FrameType.END))
            stream.out_done = True
            if stream.body.done and not stream.body.buffered:
                conn.finish_stream(stream)
        except StreamReset:
            pass
        except Exception as exc:  # the client went away, or a body limit tripped
            if isinstance(exc, PluginError):
                ctx.error = exc
            await conn.reset_stream(stream, "cancel", "request body failed")
            stream.fail(StreamReset("cancel", "request body failed"))


async def _send_data(conn: PeerConnection, stream: TunnelStream, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        n = await stream.window.take(min(len(view), DATA_CHUNK))
        await conn.send(p.encode(stream.id, FrameType.DATA, view[:n]))  # type: ignore[arg-type]
        view = view[n:]


class TunnelBody:
    """The response body from the peer (an async iterator with ``aclose``): the stream is reset
    if it is not read to the end, and released whatever happens, even if never iterated. Each
    chunk may take at most ``read`` seconds to arrive (504 after)."""

    __slots__ = (
        "attempt",
        "closed",
        "complete",
        "conn",
        "passed",
        "pump",
        "read_timeout",
        "started",
        "stream",
    )

    def __init__(
        self,
        conn: PeerConnection,
        stream: TunnelStream,
        pump: asyncio.Task[None] | None,
        read_timeout: float,
        attempt: Attempt,
        started: float,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.pump = pump
        self.read_timeout = read_timeout
        self.attempt = attempt
        self.started = started
        self.complete = False
        self.closed = False
        self.passed = 0

    def __aiter__(self) -> TunnelBody:
        return self

    async def __anext__(self) -> bytes:
        if self.closed:
            raise StopAsyncIteration
        body = self.stream.body
        if self.passed:  # the last chunk has been written on: the peer may send as much again
            await body.consumed(self.passed, self.conn.config.stream_window)
            self.passed = 0
        try:
            chunk = await body.next(self.read_timeout)
        except TimeoutError:
            self.attempt.error = "timeout"
            await self.aclose()
            raise UpstreamTimeout("relay peer timed out mid-response") from None
        except StreamReset as exc:
            self.attempt.error = "disconnect"
            await self.aclose()
            raise UpstreamError(
                502, "upstream_error", f"relay peer failed mid-response ({exc.code})"
            ) from None
        if chunk is None:
            self.complete = True
            await self.aclose()
            raise StopAsyncIteration
        self.passed = len(chunk)
        return chunk

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.attempt.duration = time.monotonic() - self.started
        conn, stream, pump = self.conn, self.stream, self.pump
        if self.complete and stream.out_done:
            conn.finish_stream(stream)
            return
        if pump is not None and not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        reason = "response complete" if self.complete else "client went away"
        await conn.reset_stream(stream, "cancel", reason)
