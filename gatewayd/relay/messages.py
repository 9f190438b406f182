"""WebSocket messages on a relay stream, shared by the gateway and the peer
(docs/relay-protocol.md, "A WebSocket stream"): fragments within the stream's window, reassembly
bounded by ``max_message``, and the WS_CLOSE exchange."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import WSMessage, WSMsgType

from gatewayd.relay import protocol as p
from gatewayd.relay.flow import FlowControlError, SendWindow
from gatewayd.relay.protocol import FrameType

FRAGMENT = 64 * 1024  # largest WS_MESSAGE payload we send (never over max_frame either)
CLOSE_TIMEOUT = 5.0  # how long a side waits for the other's WS_CLOSE


class MessageTooBig(Exception):
    """A message over ``max_message``: the receiver closes its side with 1009."""


class MessageInbox:
    """Messages received on one stream. The sender may have at most the window unacknowledged;
    a fragment's bytes are credited back once its message is taken (``get``), or at once while
    the message is still incomplete (memory: one window plus one message)."""

    __slots__ = (
        "_closed_event",
        "_error",
        "_messages",
        "_owed",
        "_parts",
        "_size",
        "_update",
        "_waiter",
        "closed",
        "initial",
        "max_message",
        "window",
    )

    def __init__(
        self, window: int, max_message: int, update: Callable[[int], Awaitable[None]]
    ) -> None:
        self.initial = window
        self.window = window
        self.max_message = max_message
        self._update = update
        self._parts: list[bytes] = []
        self._size = 0
        self._messages: deque[tuple[bool, bytes, int]] = deque()
        self._owed = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        # Set once the other side's WS_CLOSE arrived, or the stream ended: (code, reason).
        self.closed: tuple[int, str] | None = None
        self._closed_event = asyncio.Event()

    async def feed(self, flags: int, data: bytes) -> None:
        if self._error is not None or self.closed is not None:
            return
        if len(data) > self.window:
            raise FlowControlError("WS_MESSAGE beyond the stream window")
        self.window -= len(data)
        self._size += len(data)
        if self._size > self.max_message:
            self._parts.clear()
            raise MessageTooBig(f"message over {self.max_message} bytes")
        self._parts.append(data)
        if flags & p.FLAG_MORE:
            await self._credit(len(data))
            return
        message = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []
        self._size = 0
        self._messages.append((bool(flags & p.FLAG_TEXT), message, len(data)))
        self._wake()

    def close(self, code: int, reason: str) -> None:
        """The other side's WS_CLOSE: delivered after the messages before it."""
        if self.closed is None:
            self.closed = (code, reason)
        self._closed_event.set()
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        if self.closed is None:
            self.closed = (1006, "")
        self._closed_event.set()
        self._wake()

    async def wait_closed(self) -> None:
        """Until the other side's WS_CLOSE arrived, or the stream ended."""
        await self._closed_event.wait()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> WSMessage:
        """The next message (TEXT or BINARY), then CLOSE with the code and reason once closed;
        raises the stream's failure (a reset, the connection gone, :class:`MessageTooBig`)."""
        while not self._messages:
            if self._error is not None:
                raise self._error
            if self.closed is not None:
                return WSMessage(WSMsgType.CLOSE, self.closed[0], self.closed[1])
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        text, data, last = self._messages.popleft()
        await self._credit(last)
        if text:
            return WSMessage(WSMsgType.TEXT, data.decode("utf-8", "replace"), None)
        return WSMessage(WSMsgType.BINARY, data, None)

    async def _credit(self, n: int) -> None:
        self._owed += n
        if self._owed >= self.initial // 4 and self.closed is None:
            increment, self._owed = self._owed, 0
            self.window += increment
            await self._update(increment)


async def send_message(
    send: Callable[[bytes], Awaitable[None]],
    window: SendWindow,
    stream: int,
    data: bytes,
    text: bool,
    max_frame: int,
) -> None:
    """One message as WS_MESSAGE fragments, each within the window (waits for it)."""
    flags = p.FLAG_TEXT if text else 0
    if not data:
        await send(p.encode(stream, FrameType.WS_MESSAGE, b"", flags))
        return
    view = memoryview(data)
    size = min(FRAGMENT, max_frame)
    while view:
        n = await window.take(min(len(view), size))
        more = p.FLAG_MORE if n < len(view) else 0
        await send(p.encode(stream, FrameType.WS_MESSAGE, bytes(view[:n]), flags | more))
        view = view[n:]


def wire_code(code: int | None) -> int:
    """A close code that may travel (1005, 1006 and 1015 may not: a lost connection is 1011)."""
    if code is None or code in (1005, 1006, 1015) or not 1000 <= code <= 4999:
        return 1011
    return code
