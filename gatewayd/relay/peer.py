"""The peer: dials out to the gateway and serves its streams from a local target.

Also a small API for embedding::

    async with Peer("ws://gw:8080/_relay/connect", "my-app", key, "http://127.0.0.1:9000",
                    on_event=handle) as peer:
        await peer.wait_connected()
        ...

``on_event(event: dict)`` (sync or async) runs for each pushed event, in order, per connection.
``run()`` serves until ``stop()``; it raises :class:`PeerRefused` on 4401/4403.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from yarl import URL

from gatewayd import __version__
from gatewayd.relay import protocol as p
from gatewayd.relay.flow import FlowControlError, InboundBody, SendWindow, StreamReset
from gatewayd.relay.messages import MessageInbox, MessageTooBig
from gatewayd.relay.peer_websocket import serve_websocket
from gatewayd.relay.protocol import Close, FrameType, ProtocolError

log = logging.getLogger("gatewayd.peer")
DATA_CHUNK = 64 * 1024
HOP = frozenset(("connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"))
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0


class PeerRefused(Exception):
    """The gateway refused us for good (bad key, lease not allowed): retrying will not help."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"gateway refused the peer ({code}: {reason})")
        self.code = code
        self.reason = reason


class PeerStream:
    __slots__ = ("body", "closer", "id", "inbox", "task", "window")

    def __init__(self, sid: int, window: int, link: Link) -> None:
        self.id = sid
        self.window = SendWindow(window)
        self.body = InboundBody(window, lambda n: link.send_quiet(p.window_update(sid, n)))
        self.task: asyncio.Task[None] | None = None
        self.inbox: MessageInbox | None = None  # WebSocket messages, for an upgrade
        # An upgraded stream's way to close its WebSocket (1001) when the peer leaves.
        self.closer: Callable[[], Awaitable[None]] | None = None

    def fail(self, exc: BaseException) -> None:
        self.body.fail(exc)
        self.window.fail(exc)
        if self.inbox is not None:
            self.inbox.fail(exc)


class Link:
    """One WebSocket to the gateway, while it lasts."""

    def __init__(self, peer: Peer, index: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.peer = peer
        self.index = index
        self.ws = ws
        self.streams: dict[int, PeerStream] = {}
        self.window = 256 * 1024
        self.max_frame = 1024 * 1024
        self.heartbeat_timeout = 30.0
        self.connection_id = ""
        self.last_seen = time.monotonic()
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send_bytes(data)
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise StreamReset("disconnected", "connection lost") from exc

    async def send_quiet(self, data: bytes) -> None:
        with contextlib.suppress(StreamReset):
            await self.send(data)

    async def hello(self) -> None:
        agent = f"gatewayd-peer/{__version__}"
        hello = {
            "lease": self.peer.lease,
            "version": p.VERSION,
            "agent": agent,
            "peer": self.peer.name,
        }
        await self.send(p.encode_json(0, FrameType.HELLO, hello))
        async with asyncio.timeout(10.0):
            msg = await self.ws.receive()
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            code = self.ws.close_code or 1006
            raise _Closed(code, str(msg.extra or ""))
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise ProtocolError("expected HELLO_ACK")
        frame = p.decode(msg.data, 1 << 24)
        if frame.type != FrameType.HELLO_ACK:
            raise ProtocolError("expected HELLO_ACK")
        ack = frame.json()
        self.window = int(ack["stream_window"])
        self.max_frame = int(ack["max_frame"])
        self.heartbeat_timeout = float(ack["heartbeat_timeout"])
        self.connection_id = str(ack["connection_id"])

    async def run(self) -> tuple[int, str]:
        """Serve until the WebSocket closes; returns (close code, reason)."""
        reason = ""
        tasks = [
            asyncio.create_task(self._watchdog()),
            asyncio.create_task(self._deliver_events()),
        ]
        try:
            while True:
                msg = await self.ws.receive()
                if msg.type != aiohttp.WSMsgType.BINARY:
                    if msg.type == aiohttp.WSMsgType.CLOSE:
                        reason = str(msg.extra or "")
                    break
                self.last_seen = time.monotonic()
                try:
                    await self.handle(p.decode(msg.data, self.max_frame))
                except ProtocolError as exc:
                    log.warning("protocol error from the gateway: %s", exc)
                    await self.ws.close(code=Close.PROTOCOL, message=str(exc).encode()[:120])
                    break
        finally:
            for task in tasks:
                task.cancel()
            streams, self.streams = self.streams, {}
            for stream in streams.values():
                stream.fail(StreamReset("disconnected"))
                if stream.task is not None:
                    stream.task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.ws.close_code or 1006, reason

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(max(self.heartbeat_timeout / 4, 0.05))
            if time.monotonic() - self.last_seen > self.heartbeat_timeout:
                log.warning("no heartbeat from the gateway: reconnecting")
                await self.ws.close(code=Close.HEARTBEAT_TIMEOUT, message=b"heartbeat timeout")
                return

    async def _deliver_events(self) -> None:
        while True:
            event = await self.events.get()
            try:
                await self.peer.deliver(event, self)
            except Exception:
                log.exception("event handler failed for event %s", event.get("id"))
            ack = {"id": event.get("id"), "seq": event.get("seq")}
            await self.send_quiet(p.encode_json(0, FrameType.EVENT_ACK, ack))

    async def handle(self, frame: p.Frame) -> None:
        t = frame.type
        if frame.stream == 0:
            if t == FrameType.PING and not frame.flags & p.FLAG_ACK:
                await self.send_quiet(p.encode(0, FrameType.PING, bytes(frame.payload), p.FLAG_ACK))
            elif t == FrameType.EVENT:
                event = frame.json()
                if isinstance(event, dict):
                    self.events.put_nowait(event)
            return
        stream = self.streams.get(frame.stream)
        if t == FrameType.HEADERS:
            if stream is not None:
                raise ProtocolError("HEADERS for an open stream")
            head = frame.json()
            stream = PeerStream(frame.stream, self.window, self)
            self.streams[frame.stream] = stream
            stream.task = asyncio.create_task(self.serve(stream, head))
            return
        if stream is None:
            return  # finished or reset already: frames in flight are normal
        if t == FrameType.DATA:
            try:
                stream.body.feed(bytes(frame.payload))
            except FlowControlError:
                await self.reset(stream, "flow_control")
        elif t == FrameType.END:
            stream.body.finish()
        elif t == FrameType.WINDOW_UPDATE:
            stream.window.grant(p.window_increment(frame))
        elif t == FrameType.RESET:
            self.streams.pop(stream.id, None)
            stream.fail(StreamReset("cancel"))
            if stream.task is not None:
                stream.task.cancel()
        elif t in (FrameType.WS_MESSAGE, FrameType.WS_CLOSE) and stream.inbox is not None:
            if t == FrameType.WS_CLOSE:
                stream.inbox.close(*p.ws_close_info(frame))
                return
            try:
                await stream.inbox.feed(frame.flags, bytes(frame.payload))
            except FlowControlError:
                await self.reset(stream, "flow_control")
            except MessageTooBig as exc:
                stream.inbox.fail(exc)  # serve_websocket closes both sides with 1009

    async def reset(self, stream: PeerStream, code: str, message: str = "") -> None:
        if self.streams.pop(stream.id, None) is not None:
            stream.fail(StreamReset(code))
            if stream.task is not None and stream.task is not asyncio.current_task():
                stream.task.cancel()
            await self.send_quiet(p.reset(stream.id, code, message))

    async def serve(self, stream: PeerStream, head: Any) -> None:
        sid = stream.id
        try:
            if self.peer.stopping:
                await self.reset(stream, "refused", "peer is leaving")
                return
            if head.get("upgrade") == "websocket":
                await serve_websocket(self, stream, head)
                return
            method = str(head["method"])
            path = str(head.get("path") or "/")
            query = str(head.get("query") or "")
            headers = [
                (k, v)
                for k, v in p.headers_list(head.get("headers", []))
                if k.lower() not in HOP and k.lower() != "host"
            ]
            url = self.peer.target + path + (f"?{query}" if query else "")
            data = stream.body.iterate(self.window) if head.get("body", True) else None
            try:
                resp = await self.peer.session.request(
                    method,
                    URL(url, encoded=True),
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                )
            except aiohttp.ClientConnectorError:
                await self.reset(stream, "target_unreachable", "cannot connect to the target")
                return
            except (aiohttp.ClientError, TimeoutError) as exc:
                await self.reset(stream, "target_error", type(exc).__name__)
                return
            async with resp:
                reply = {
                    "status": resp.status,
                    "reason": resp.reason or "",
                    "headers": [[k, v] for k, v in resp.headers.items() if k.lower() not in HOP],
                }
                await self.send(p.encode_json(sid, FrameType.HEADERS, reply))
                try:
                    async for chunk in resp.content.iter_chunked(DATA_CHUNK):
                        view = memoryview(chunk)
                        while view:
                            n = await stream.window.take(len(view))
                            await self.send(p.encode(sid, FrameType.DATA, view[:n]))  # type: ignore[arg-type]
                            view = view[n:]
                except (aiohttp.ClientError, TimeoutError):
                    await self.reset(stream, "target_error", "the target failed mid-response")
                    return
            await self.send(p.encode(sid, FrameType.END))
            self.streams.pop(sid, None)
        except StreamReset:
            self.streams.pop(sid, None)
        except ProtocolError:
            await self.reset(stream, "protocol", "bad request HEADERS")
        except (KeyError, TypeError, ValueError):
            await self.reset(stream, "protocol", "bad request HEADERS")


class _Closed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed {code}")
        self.code = code
        self.reason = reason


class Peer:
    def __init__(
        self,
        gateway: str,
        lease: str,
        key: str,
        target: str,
        *,
        connections: int = 1,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
        backoff_max: float = BACKOFF_MAX,
        name: str = "default",
    ) -> None:
        self.gateway = gateway
        self.lease = lease
        self.name = name  # with the key's id, this peer's identity at the gateway
        self.key = key
        self.target = target.rstrip("/")
        self.connections = max(1, connections)
        self.on_event = on_event
        self.backoff_max = backoff_max
        self.links: dict[int, Link] = {}
        self.stopping = False
        self.session: aiohttp.ClientSession = None  # type: ignore[assignment]
        self.events_received = 0
        self.refused: PeerRefused | None = None
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: asyncio.Task[None] | None = None

    @property
    def connected(self) -> int:
        return len(self.links)

    async def deliver(self, event: dict[str, Any], link: Link) -> None:
        self.events_received += 1
        if self.on_event is not None:
            result = self.on_event(event)
            if inspect.isawaitable(result):
                await result

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        try:
            self._tasks = [asyncio.create_task(self._keep(i)) for i in range(self.connections)]
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.session.close()
        if self.refused is not None:
            raise self.refused

    async def _keep(self, index: int) -> None:
        """Keep connection ``index`` up: reconnect with exponential backoff and full jitter."""
        failures = 0
        while not self.stopping:
            code, reason = await self._connect_once(index)
            if self.stopping:
                return
            if code in Close.FATAL:
                log.error("gateway refused the peer (close %s: %s)", code, reason)
                self.refused = PeerRefused(code, reason)
                self.stopping = True
                for task in self._tasks:
                    if task is not asyncio.current_task():
                        task.cancel()
                return
            if code == Close.GOING_AWAY:
                failures = 0
                delay = random.uniform(0, 0.1)
            else:
                failures = failures + 1 if code != 1000 else 0
                delay = random.uniform(0, min(self.backoff_max, BACKOFF_BASE * 2**failures))
            log.info("relay connection closed (%s: %s); reconnecting in %.2fs", code, reason, delay)
            await asyncio.sleep(delay)

    async def _connect_once(self, index: int) -> tuple[int, str]:
        try:
            ws = await self.session.ws_connect(
                self.gateway,
                protocols=(p.SUBPROTOCOL,),
                headers={"Authorization": f"Bearer {self.key}"},
                autoping=True,
                heartbeat=None,
                max_msg_size=0,
                compress=0,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("cannot reach the gateway: %s", exc)
            return 1006, str(exc)
        link = Link(self, index, ws)
        try:
            await link.hello()
        except _Closed as exc:
            return exc.code, exc.reason
        except (ProtocolError, TimeoutError, KeyError, ValueError, StreamReset) as exc:
            await ws.close()
            return ws.close_code or 1006, str(exc)
        self.links[index] = link
        self._changed.set()
        log.info("relay connected: lease %s, connection %s", self.lease, link.connection_id)
        try:
            return await link.run()
        finally:
            self.links.pop(index, None)
            self._changed.set()
            if not ws.closed:
                await ws.close()

    async def wait_connected(self, count: int | None = None, timeout: float = 10.0) -> None:
        want = self.connections if count is None else count
        async with asyncio.timeout(timeout):
            while self.connected < want:
                if self.refused is not None:
                    raise self.refused
                self._changed.clear()
                await self._changed.wait()

    async def stop(self, drain: float = 10.0) -> None:
        """Ask the gateway for no new streams, finish those in flight, then close."""
        self.stopping = True
        for link in list(self.links.values()):
            await link.send_quiet(p.reset(0, "going_away", "peer is leaving"))
        # HTTP streams finish; WebSockets would not on their own: they close with 1001.
        closers = [
            s.closer for link in self.links.values() for s in link.streams.values() if s.closer
        ]
        await asyncio.gather(*(close() for close in closers), return_exceptions=True)
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline:
            if not any(link.streams for link in self.links.values()):
                break
            await asyncio.sleep(0.02)
        for link in list(self.links.values()):
            with contextlib.suppress(Exception):
                await link.ws.close(code=1000, message=b"peer stopped")
        for task in self._tasks:  # connections waiting to reconnect
            task.cancel()
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError, PeerRefused):
                await self._runner

    async def __aenter__(self) -> Peer:
        self._runner = asyncio.create_task(self.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(drain=2.0)
