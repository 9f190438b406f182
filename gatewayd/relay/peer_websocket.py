"""The peer's half of a WebSocket through the relay: a real WebSocket to the peer's target, its
messages as WS_MESSAGE frames on the stream (docs/relay-protocol.md, "A WebSocket stream")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import WSMsgType
from yarl import URL

from gatewayd.relay import protocol as p
from gatewayd.relay.flow import StreamReset
from gatewayd.relay.messages import CLOSE_TIMEOUT, MessageInbox, MessageTooBig, send_message
from gatewayd.relay.messages import wire_code as travelling_code
from gatewayd.relay.protocol import FrameType

if TYPE_CHECKING:
    from gatewayd.relay.peer import Link, PeerStream

log = logging.getLogger("gatewayd.peer")
HOP = frozenset(("connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"))
MAX_MESSAGE = 1 << 30  # the largest max_message a gateway may ask for
MAX_PROTOCOLS = 32


def _target_code(code: int) -> int:
    """A close code our WebSocket client may send to the target."""
    return (
        code
        if code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011) or (3000 <= code <= 4999)
        else 1000
    )


async def serve_websocket(link: Link, stream: PeerStream, head: dict[str, Any]) -> None:
    """Open a WebSocket to the target for this stream, answer 101 (or the target's refusal),
    then carry messages both ways until both sides have closed."""
    sid = stream.id
    max_message = head.get("max_message")
    if not isinstance(max_message, int) or not 0 < max_message <= MAX_MESSAGE:
        max_message = 16 * 1024 * 1024
    raw_protocols = head.get("protocols") or []
    protocols = (
        [str(x) for x in raw_protocols[:MAX_PROTOCOLS]] if isinstance(raw_protocols, list) else []
    )
    path = str(head.get("path") or "/")
    query = str(head.get("query") or "")
    headers = [
        (k, v)
        for k, v in p.headers_list(head.get("headers", []))
        if k.lower() not in HOP
        and k.lower() != "host"
        and not k.lower().startswith("sec-websocket-")
    ]
    url = link.peer.target + path + (f"?{query}" if query else "")
    stream.inbox = MessageInbox(
        link.window, max_message, lambda n: link.send_quiet(p.window_update(sid, n))
    )
    try:
        ws = await link.peer.session.ws_connect(
            URL(url, encoded=True),
            headers=headers,
            protocols=protocols,
            autoclose=False,
            autoping=True,
            max_msg_size=max_message,
            compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
        )
    except aiohttp.WSServerHandshakeError as exc:
        reply = {"status": exc.status, "reason": exc.message or "", "headers": []}
        await link.send(p.encode_json(sid, FrameType.HEADERS, reply))
        await link.send(p.encode(sid, FrameType.END))
        link.streams.pop(sid, None)
        return
    except aiohttp.ClientConnectorError:
        await link.reset(stream, "target_unreachable", "cannot connect to the target")
        return
    except (aiohttp.ClientError, TimeoutError) as exc:
        await link.reset(stream, "target_error", type(exc).__name__)
        return
    state = _Closing()

    async def going_away() -> None:
        with contextlib.suppress(StreamReset):
            await _send_close(link, sid, state, 1001, "peer going away")
        with contextlib.suppress(Exception):
            await ws.close(code=1001, message=b"peer going away")

    stream.closer = going_away
    try:
        reply = {
            "status": 101,
            "reason": "Switching Protocols",
            "headers": [],
            "protocol": ws.protocol,
        }
        await link.send(p.encode_json(sid, FrameType.HEADERS, reply))
        tasks = [
            asyncio.create_task(_to_gateway(link, stream, ws, state)),
            asyncio.create_task(_to_target(link, stream, ws, state)),
        ]
        try:
            # Both directions end at their WS_CLOSE; a failure (the stream reset, the relay
            # connection gone) ends both.
            for task in asyncio.as_completed(tasks):
                await task
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    except StreamReset:
        pass
    finally:
        link.streams.pop(sid, None)
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"gateway went away")


class _Closing:
    """Who has sent WS_CLOSE on the stream."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


async def _send_close(link: Link, sid: int, state: _Closing, code: int, reason: str) -> None:
    if not state.sent:
        state.sent = True
        await link.send(p.ws_close(sid, travelling_code(code), reason))


async def _to_gateway(
    link: Link, stream: PeerStream, ws: aiohttp.ClientWebSocketResponse, state: _Closing
) -> None:
    """The target's messages to the gateway, until the target closes (WS_CLOSE)."""
    while not state.sent:
        msg = await ws.receive()
        if msg.type is WSMsgType.TEXT:
            data = msg.data.encode()
            await send_message(link.send, stream.window, stream.id, data, True, link.max_frame)
        elif msg.type is WSMsgType.BINARY:
            await send_message(link.send, stream.window, stream.id, msg.data, False, link.max_frame)
        elif msg.type is WSMsgType.CLOSE:
            await _send_close(link, stream.id, state, int(msg.data or 1000), str(msg.extra or ""))
        elif msg.type is WSMsgType.ERROR:  # e.g. a message over max_message: 1009
            await _send_close(link, stream.id, state, ws.close_code or 1011, str(msg.data))
        elif msg.type in (WSMsgType.CLOSED, WSMsgType.CLOSING):
            await _send_close(link, stream.id, state, 1011, "target connection lost")


async def _to_target(
    link: Link, stream: PeerStream, ws: aiohttp.ClientWebSocketResponse, state: _Closing
) -> None:
    """The gateway's messages to the target, until the gateway's WS_CLOSE."""
    assert stream.inbox is not None
    while True:
        try:
            msg = await stream.inbox.get()
        except MessageTooBig:
            await _send_close(link, stream.id, state, 1009, "message too big")
            with contextlib.suppress(Exception):
                await ws.close(code=1009, message=b"message too big")
            return
        if msg.type is WSMsgType.CLOSE:
            code, reason = int(msg.data), str(msg.extra or "")
            with contextlib.suppress(Exception):
                await ws.close(code=_target_code(code), message=reason.encode()[:123])
            await _send_close(link, stream.id, state, ws.close_code or code, reason)
            return
        try:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            else:
                await ws.send_bytes(msg.data)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            await _send_close(link, stream.id, state, 1011, "target connection lost")
            return
