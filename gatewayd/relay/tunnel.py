"""The relay upstream: requests for a lease go to a peer as streams over its WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict

from gatewayd.chain.api import Attempt, PluginError, RequestContext, Response
from gatewayd.config.schema import TimeoutsConfig
from gatewayd.proxy.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gatewayd.proxy.headers import response_headers
from gatewayd.relay import protocol as p
from gatewayd.relay.connection import Disconnected, PeerConnection, TunnelStream
from gatewayd.relay.flow import StreamReset
from gatewayd.relay.protocol import FrameType

if TYPE_CHECKING:
    from gatewayd.relay.registry import RelayRegistry

DATA_CHUNK = 64 * 1024
RETRYABLE = frozenset({"refused", "disconnected"})  # the peer never started on the request


class RelayUpstream:
    """Same interface as HttpUpstream (``send``, ``start``, ``close``); targets are the peers
    holding ``lease``. Cheap: made per generation (or per request for ``relay: by_path``)."""

    def __init__(self, name: str, lease: str, registry: RelayRegistry) -> None:
        self.name = name
        self.lease = lease
        self.registry = registry

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(
        self, ctx: RequestContext, path: str, headers: CIMultiDict[str], timeouts: TimeoutsConfig
    ) -> Response:
        body = ctx.request.body
        replayable = body is None or isinstance(body, bytes | bytearray)
        tried: set[str] = set()
        while True:
            conn = self.registry.pick(self.lease, tried)
            if conn is None:
                if tried:
                    raise UpstreamError(502, "upstream_error", f"relay lease '{self.lease}' failed")
                raise UpstreamUnavailable(f"no peer holds relay lease '{self.lease}'")
            tried.add(conn.id)
            try:
                return await self.send_on(conn, ctx, path, headers, timeouts)
            except _Retry:
                if not replayable:
                    raise UpstreamError(
                        502, "upstream_error", f"relay peer for '{self.lease}' went away"
                    ) from None

    async def send_on(
        self,
        conn: PeerConnection,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
    ) -> Response:
        req = ctx.request
        attempt = Attempt(f"relay:{self.lease}/{conn.id}")
        ctx.attempts.append(attempt)
        ctx.target = attempt.target
        started = time.monotonic()
        stream = conn.open_stream()
        pump: asyncio.Task[None] | None = None
        head_sent = False
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
                pump = asyncio.create_task(_pump(conn, stream, req.body, ctx))
                reply = await stream.head
        except BaseException as exc:
            attempt.duration = time.monotonic() - started
            if pump is not None:
                pump.cancel()
            if head_sent:
                await conn.reset_stream(
                    stream, "cancel" if not isinstance(exc, TimeoutError) else "timeout"
                )
            conn.finish_stream(stream)
            raise self._map_error(exc, attempt, ctx) from None
        attempt.status = reply["status"]
        hdrs = response_headers(CIMultiDict(reply["headers"]))  # type: ignore[arg-type]
        body = TunnelBody(conn, stream, pump, timeouts.read, attempt, started)
        return Response(reply["status"], hdrs, body, reply.get("reason") or None)

    def _map_error(self, exc: BaseException, attempt: Attempt, ctx: RequestContext) -> Any:
        if isinstance(exc, asyncio.CancelledError):
            return exc
        if isinstance(ctx.error, PluginError):  # the request body broke a limit
            return UpstreamError(ctx.error.status, ctx.error.code, ctx.error.message)
        if isinstance(exc, TimeoutError):
            attempt.error = "timeout"
            return UpstreamTimeout(f"relay lease '{self.lease}' timed out")
        if isinstance(exc, StreamReset):
            attempt.error = "disconnect" if isinstance(exc, Disconnected) else "reset"
            if exc.code in RETRYABLE:
                return _Retry()
            code = "upstream_unreachable" if exc.code == "target_unreachable" else "upstream_error"
            return UpstreamError(502, code, f"relay peer for '{self.lease}' failed ({exc.code})")
        return exc


class _Retry(Exception):
    pass


async def _pump(conn: PeerConnection, stream: TunnelStream, body: Any, ctx: RequestContext) -> None:
    """Send the request body as DATA within the stream's window, then END."""
    try:
        if isinstance(body, bytes | bytearray):
            await _send_data(conn, stream, body)
        elif body is not None:
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
    if it is not read to the end, and released whatever happens, even if never iterated."""

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
