"""The gateway's end of a WebSocket through the relay: a ``gatewayd.chain.WebSocketChannel``
over one upgraded stream (docs/relay-protocol.md, "A WebSocket stream")."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSMessage, WSMsgType

from gatewayd.relay import protocol as p
from gatewayd.relay.connection import PeerConnection, TunnelStream
from gatewayd.relay.flow import StreamReset
from gatewayd.relay.messages import CLOSE_TIMEOUT, MessageInbox, MessageTooBig, send_message

CLOSED = WSMessage(WSMsgType.CLOSED, None, None)


class RelayWebSocket:
    """Messages both ways on one stream, within its window. ``receive`` gives TEXT, BINARY,
    CLOSE (the peer's target closed: code and reason), ERROR (a message over ``max_message``:
    ``close_code`` 1009) or CLOSED (the stream or the relay connection ended)."""

    __slots__ = ("_close_code", "_ended", "_protocol", "_sent_close", "conn", "inbox", "stream")

    def __init__(self, conn: PeerConnection, stream: TunnelStream, protocol: str | None) -> None:
        assert stream.inbox is not None
        self.conn = conn
        self.stream = stream
        self.inbox: MessageInbox = stream.inbox
        self._protocol = protocol
        self._close_code: int | None = None
        self._sent_close = False
        self._ended = False  # CLOSE, ERROR or CLOSED was returned: CLOSED from now on

    @property
    def protocol(self) -> str | None:
        return self._protocol

    @property
    def close_code(self) -> int | None:
        return self._close_code

    async def receive(self) -> WSMessage:
        if self._ended:
            return CLOSED
        try:
            msg = await self.inbox.get()
        except MessageTooBig as exc:
            self._ended = True
            self._close_code = 1009
            await self._send_close(1009, "message too big")
            return WSMessage(WSMsgType.ERROR, exc, None)
        except StreamReset:
            self._ended = True
            self._close_code = self._close_code or 1006
            self._done()
            return CLOSED
        if msg.type is WSMsgType.CLOSE:
            self._ended = True
            self._close_code = msg.data
            self._finish_if_done()
        return msg

    async def send_str(self, data: str) -> None:
        await self._send(data.encode(), True)

    async def send_bytes(self, data: bytes) -> None:
        await self._send(bytes(data), False)

    async def _send(self, data: bytes, text: bool) -> None:
        if self._sent_close:
            raise ConnectionResetError("the relay WebSocket is closed")
        try:
            await send_message(
                self.conn.send,
                self.stream.window,
                self.stream.id,
                data,
                text,
                self.conn.config.max_frame,
            )
        except StreamReset as exc:
            raise ConnectionResetError(f"the relay stream ended ({exc.code})") from None

    async def pong(self, message: bytes = b"") -> None:
        """Pings are answered on each side (the peer answers its target's): nothing crosses."""

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """Send WS_CLOSE (once) and wait, bounded, for the peer's; then the stream is done."""
        first = not self._sent_close
        await self._send_close(code, message.decode("utf-8", "replace"))
        if self.inbox.closed is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self.inbox.wait_closed()
        if self.inbox.closed is None:  # the peer never answered: abandon the stream
            await self.conn.reset_stream(self.stream, "cancel", "WebSocket close timed out")
        self._done()
        return first

    async def _send_close(self, code: int, reason: str) -> None:
        if self._sent_close:
            return
        self._sent_close = True
        await self.conn.send_quiet(p.ws_close(self.stream.id, code, reason))
        self._finish_if_done()

    def _finish_if_done(self) -> None:
        if self._sent_close and self.inbox.closed is not None:
            self._done()

    def _done(self) -> None:
        self.conn.finish_stream(self.stream)
