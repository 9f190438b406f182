"""Per-stream flow control, shared by the gateway and the peer (docs/relay-protocol.md)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable


class StreamReset(Exception):
    """The stream was reset by the other side, or its connection ended."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class FlowControlError(Exception):
    """The sender wrote past the window it was given."""


class SendWindow:
    """How many body bytes we may still send on one stream."""

    __slots__ = ("_error", "_waiter", "available")

    def __init__(self, initial: int) -> None:
        self.available = initial
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    def grant(self, increment: int) -> None:
        self.available += increment
        self._wake()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self, wanted: int) -> int:
        """Wait for some window, then take up to ``wanted`` bytes of it."""
        while True:
            if self._error is not None:
                raise self._error
            if self.available > 0:
                n = min(wanted, self.available)
                self.available -= n
                return n
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class InboundBody:
    """Body chunks received on one stream, bounded by the window we granted the sender."""

    __slots__ = (
        "_chunks",
        "_consumed",
        "_done",
        "_error",
        "_update",
        "_waiter",
        "buffered",
        "window",
    )

    def __init__(self, window: int, update: Callable[[int], Awaitable[None]]) -> None:
        self.window = window  # what the sender may still send
        self.buffered = 0
        self._update = update
        self._chunks: deque[bytes] = deque()
        self._consumed = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def done(self) -> bool:
        return self._done or self._error is not None

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        if len(data) > self.window:
            raise FlowControlError("DATA beyond the stream window")
        self.window -= len(data)
        if data:
            self.buffered += len(data)
            self._chunks.append(data)
            self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if self._error is None and not (self._done and not self._chunks):
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, timeout: float | None = None) -> bytes | None:
        """The next chunk, or None at the end of the body."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                if timeout is None:
                    await self._waiter
                else:
                    async with asyncio.timeout(timeout):
                        await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self.buffered -= len(chunk)
        return chunk

    async def consumed(self, n: int, initial: int) -> None:
        """Tell the sender that ``n`` more bytes were passed on (batched to a quarter window)."""
        self._consumed += n
        if self._consumed >= initial // 4 and not self._done:
            increment, self._consumed = self._consumed, 0
            self.window += increment
            await self._update(increment)

    async def iterate(self, initial: int, timeout: float | None = None) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.next(timeout)
            if chunk is None:
                return
            yield chunk
            await self.consumed(len(chunk), initial)
