"""One peer's WebSocket at the gateway: its streams, its event queue, its heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from gatewayd.config.schema import RelayConfig
from gatewayd.relay import protocol as p
from gatewayd.relay.flow import FlowControlError, InboundBody, SendWindow, StreamReset
from gatewayd.relay.messages import MessageInbox, MessageTooBig
from gatewayd.relay.peers import DEFAULT_PEER, Delivery
from gatewayd.relay.protocol import Close, FrameType, ProtocolError

if TYPE_CHECKING:
    from gatewayd.relay.peers import PeerIdentity

log = logging.getLogger("gatewayd.relay")
EVENT_QUEUE = 10_000  # events queued or sent and not yet acknowledged, per connection
STALLED_BUFFER = 4 * 1024 * 1024  # outgoing bytes a peer may leave unread before it is "stalled"


class Disconnected(StreamReset):
    def __init__(self, reason: str) -> None:
        super().__init__("disconnected", reason)


class TunnelStream:
    """The gateway's half of one stream: the response head, body and our send window."""

    __slots__ = ("body", "head", "id", "inbox", "out_done", "window")

    def __init__(self, sid: int, window: int, conn: PeerConnection) -> None:
        self.id = sid
        self.head: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.window = SendWindow(window)
        self.body = InboundBody(window, lambda n: conn.send_quiet(p.window_update(sid, n)))
        self.out_done = False
        self.inbox: MessageInbox | None = None  # WebSocket messages, once upgraded

    def fail(self, exc: BaseException) -> None:
        if not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved: no "never retrieved" warning if nobody waits
        self.body.fail(exc)
        self.window.fail(exc)
        if self.inbox is not None:
            self.inbox.fail(exc)


@dataclass(slots=True)
class PendingEvent:
    frame: bytes
    seq: int
    id: str


# (connection, event ids, reason): a failed delivery, logged and published by the registry
FailureHook = Callable[["PeerConnection", list[str], str], None]


class PeerConnection:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: Any,
        conn_id: str,
        lease: str,
        key_id: str,
        tenant: str | None,
        client_ip: str,
        config: RelayConfig,
        peer: str = DEFAULT_PEER,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.id = conn_id
        self.lease = lease
        self.key_id = key_id
        self.tenant = tenant
        self.client_ip = client_ip
        self.config = config
        self.peer = peer  # the name the peer gave: its identity is "<key_id>/<peer>"
        self.identity: PeerIdentity | None = None  # set by the registry
        self.on_event_failed: FailureHook | None = None  # set by the registry
        self.streams: dict[int, TunnelStream] = {}
        self.next_stream = 1
        self.connected_at = time.time()
        self.last_heartbeat: float | None = None
        self.last_seen = time.monotonic()
        self.draining = False
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.streams_total = 0
        self.unknown_stream_frames = 0
        self.bytes_in = 0  # WebSocket message bytes, both ways (gatewayd_relay_bytes_total)
        self.bytes_out = 0
        self.delivery = Delivery()  # this connection's; the identity keeps its own
        self._events: deque[PendingEvent] = deque()
        self._unacked: deque[PendingEvent] = deque()
        self._events_wake = asyncio.Event()
        self._stalled_since: float | None = None
        self._closer: asyncio.Task[None] | None = None

    # -- state -----------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        return len(self.streams)

    @property
    def usable(self) -> bool:
        return not self.closed and not self.draining and self.inflight < self.config.max_streams

    @property
    def events_queued(self) -> int:
        return len(self._events)

    def stats(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client_ip": self.client_ip,
            "key_id": self.key_id,
            "peer": self.peer,
            "identity": f"{self.key_id}/{self.peer}",
            "connected_at": self.connected_at,
            "last_heartbeat": self.last_heartbeat,
            "in_flight": self.inflight,
            "streams_total": self.streams_total,
            "draining": self.draining,
            **self.delivery.as_dict(),
            "events_queued": len(self._events),
            "events_unacked": len(self._unacked),
            "unknown_stream_frames": self.unknown_stream_frames,
        }

    # -- sending ---------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise Disconnected(self.close_reason or "connection closed")
        try:
            await self.ws.send_bytes(data)
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise Disconnected("connection lost") from exc
        self.bytes_out += len(data)

    async def send_quiet(self, data: bytes) -> None:
        with contextlib.suppress(StreamReset):
            await self.send(data)

    def open_stream(self) -> TunnelStream:
        sid = self.next_stream
        self.next_stream += 1
        stream = TunnelStream(sid, self.config.stream_window, self)
        self.streams[sid] = stream
        self.streams_total += 1
        return stream

    def finish_stream(self, stream: TunnelStream) -> None:
        self.streams.pop(stream.id, None)

    async def reset_stream(self, stream: TunnelStream, code: str, message: str = "") -> None:
        if self.streams.pop(stream.id, None) is not None:
            await self.send_quiet(p.reset(stream.id, code, message))

    # -- events ----------------------------------------------------------------------------

    def enqueue_event(self, event_id: str, seq: int, frame: bytes) -> bool:
        """Queue an EVENT frame (the registry checked it fits in max_frame)."""
        if self.closed:
            self.event_failed([event_id], "disconnected")
            return False
        if len(self._events) + len(self._unacked) >= EVENT_QUEUE:
            self.event_failed([event_id], "queue_full")
            return False
        self._events.append(PendingEvent(frame, seq, event_id))
        self._events_wake.set()
        return True

    def event_failed(self, ids: list[str], reason: str) -> None:
        if not ids:
            return
        self.delivery.failed(reason, len(ids))
        if self.identity is not None:
            self.identity.delivery.failed(reason, len(ids))
        if self.on_event_failed is not None:
            self.on_event_failed(self, ids, reason)

    def event_acked(self, seq: Any) -> None:
        """EVENT_ACK: the peer acknowledges in order; anything else is ignored."""
        unacked = self._unacked
        while unacked and isinstance(seq, int) and unacked[0].seq <= seq:
            done = unacked.popleft()
            if done.seq == seq:
                self.delivery.events_acked += 1
                if self.identity is not None:
                    self.identity.delivery.events_acked += 1

    async def _send_events(self) -> None:
        while True:
            await self._events_wake.wait()
            self._events_wake.clear()
            while self._events:
                event = self._events[0]
                await self.send(event.frame)
                self._events.popleft()
                self._unacked.append(event)
                self.delivery.events_sent += 1
                if self.identity is not None:
                    self.identity.delivery.events_sent += 1

    # -- heartbeat -------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        hb = self.config.heartbeat
        tick = min(hb.interval, max(hb.timeout / 4, 0.05))
        next_ping = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - self.last_seen > hb.timeout:
                await self.close(Close.HEARTBEAT_TIMEOUT, "heartbeat timeout")
                return
            buffered = self.transport.get_write_buffer_size() if self.transport else 0
            if buffered > STALLED_BUFFER:
                self._stalled_since = self._stalled_since or now
                if now - self._stalled_since > hb.timeout:
                    await self.close(Close.HEARTBEAT_TIMEOUT, "peer stopped reading", abort=True)
                    return
                continue
            self._stalled_since = None
            if now >= next_ping:
                next_ping = now + hb.interval
                await self.send_quiet(p.encode(0, FrameType.PING, os.urandom(8)))

    # -- receiving -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends; fail what is in flight when it does."""
        tasks = [
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._send_events()),
        ]
        reason = "closed by peer"
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    reason = f"protocol error: {msg.data}"
                    break
                if msg.type != aiohttp.WSMsgType.BINARY:
                    await self.close(Close.PROTOCOL, "binary frames only")
                    break
                self.last_seen = time.monotonic()
                self.bytes_in += len(msg.data)
                try:
                    await self.handle(p.decode(msg.data, self.config.max_frame))
                except ProtocolError as exc:
                    await self.close(Close.PROTOCOL, str(exc))
                    break
            else:
                if self.ws.close_code == Close.TOO_BIG:
                    reason = "frame over max_frame"
        except Disconnected:
            reason = "connection lost"
        finally:
            # Mark the connection closed and fail its streams before the first await: the
            # listener cancels this handler when the peer's socket goes (handler_cancellation),
            # and a CancelledError at an await below must not skip this, or the streams whose
            # HEADERS the leaving peer never read would wait for the total timeout (504).
            for task in tasks:
                task.cancel()
            self.closed = True
            self.close_reason = self.close_reason or reason
            self.fail_all(Disconnected(self.close_reason))
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._closer is not None:
                await asyncio.gather(self._closer, return_exceptions=True)

    def fail_all(self, exc: StreamReset) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.fail(exc)
        if self._events or self._unacked:  # sent and never acknowledged: not delivered either
            ids = [e.id for e in self._unacked] + [e.id for e in self._events]
            self._events.clear()
            self._unacked.clear()
            self.event_failed(ids, "disconnected")

    async def handle(self, frame: p.Frame) -> None:
        t = frame.type
        if frame.stream == 0:
            if t == FrameType.PING:
                if frame.flags & p.FLAG_ACK:
                    self.last_heartbeat = time.time()
                else:
                    await self.send_quiet(
                        p.encode(0, FrameType.PING, bytes(frame.payload), p.FLAG_ACK)
                    )
            elif t == FrameType.EVENT_ACK:
                ack = frame.json()
                self.event_acked(ack.get("seq") if isinstance(ack, dict) else None)
            elif t == FrameType.RESET:  # on stream 0: "send me no new streams" (peer leaving)
                self.draining = True
            elif t in (FrameType.HELLO, FrameType.HELLO_ACK):
                raise ProtocolError("HELLO after the handshake")
            return
        stream = self.streams.get(frame.stream)
        if stream is None or stream.head.cancelled():
            # Unknown, finished or reset; or its request stopped waiting for the head (timeout,
            # client gone): cancelling that wait cancels ``head`` at once, but the request's
            # cleanup (forget and reset the stream) runs a moment later, and the peer's answer
            # may be read in between. That is the reset race, not a second HEADERS.
            self.unknown_stream_frames += 1
            return
        if t == FrameType.DATA:
            if not stream.head.done():
                raise ProtocolError("DATA before HEADERS")
            try:
                stream.body.feed(bytes(frame.payload))
            except FlowControlError:
                await self.reset_stream(stream, "flow_control", "DATA beyond the window")
                stream.fail(StreamReset("flow_control", "peer overran the stream window"))
        elif t == FrameType.HEADERS:
            if stream.head.done():
                raise ProtocolError("second HEADERS on a stream")
            head = frame.json()
            if not isinstance(head, dict) or not isinstance(head.get("status"), int):
                raise ProtocolError("response HEADERS without a status")
            head["headers"] = p.headers_list(head.get("headers", []))
            stream.head.set_result(head)
        elif t == FrameType.END:
            stream.body.finish()
            if stream.out_done:
                self.finish_stream(stream)
        elif t == FrameType.WINDOW_UPDATE:
            stream.window.grant(p.window_increment(frame))
        elif t == FrameType.RESET:
            info = _reset_info(frame)
            self.streams.pop(stream.id, None)
            stream.fail(StreamReset(info[0], info[1]))
        elif t == FrameType.WS_MESSAGE or t == FrameType.WS_CLOSE:
            inbox = stream.inbox
            if inbox is None or not stream.head.done():
                raise ProtocolError("WebSocket frame on a stream that was not upgraded")
            if t == FrameType.WS_CLOSE:
                inbox.close(*p.ws_close_info(frame))
                return
            try:
                await inbox.feed(frame.flags, bytes(frame.payload))
            except FlowControlError:
                await self.reset_stream(stream, "flow_control", "WS_MESSAGE beyond the window")
                stream.fail(StreamReset("flow_control", "peer overran the stream window"))
            except MessageTooBig as exc:
                inbox.fail(exc)  # the channel closes both sides with 1009
        else:
            raise ProtocolError(f"unexpected frame type {t:#x} on a stream")

    async def close(self, code: int, reason: str, abort: bool = False) -> None:
        """Close with ``code``; safe to call from any task (the close itself is not cancelled
        when the reading task ends meanwhile)."""
        if self._closer is None:
            if self.closed:
                return
            self.closed = True
            self.close_code = code
            self.close_reason = reason
            self._closer = asyncio.create_task(self._close(code, reason, abort))
        await asyncio.shield(self._closer)

    async def _close(self, code: int, reason: str, abort: bool) -> None:
        if abort or self.transport is None:
            if self.transport is not None:
                self.transport.abort()
        else:
            try:
                async with asyncio.timeout(2.0):
                    await self.ws.close(code=code, message=reason.encode()[:120])
            except (TimeoutError, ConnectionError, RuntimeError):
                self.transport.abort()
        self.fail_all(Disconnected(reason))


def _reset_info(frame: p.Frame) -> tuple[str, str]:
    try:
        data = json.loads(bytes(frame.payload))
        return str(data.get("code", "reset"))[:64], str(data.get("message", ""))[:200]
    except (ValueError, AttributeError):
        return "reset", ""
