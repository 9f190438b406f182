"""A target's response as the caller reads it: the head at once, the body as it arrives.

Its connection feeds it (``_feed``, ``_end``, ``_fail``); reading takes what waits, and when
that brings what waits under the pool's ``read_buffer`` the connection resumes reading from
the socket it had paused.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from gatewayd.proxy.h1.errors import Disconnected

if TYPE_CHECKING:
    from gatewayd.proxy.h1.protocol import Connection


class Response:
    """A target's response: ``status``, ``reason``, ``headers`` (as received, duplicates kept),
    ``version``, ``content_length``, and the body: iterate it (chunks of what has arrived) or
    :meth:`read` it whole. :meth:`close` (or ``aclose``) before its end drops the connection.

    ``framing_error`` says what was wrong with a response that is whole all the same (bytes
    past its end, dropped with its connection; bytes past the previous response's end on a
    reused connection, which made the request go again on a fresh one), else ``None``: the
    caller counts and logs it. It is set by the time the body's end is read."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_eof",
        "_error",
        "_loop",
        "_size",
        "_waiter",
        "content_length",
        "framing_error",
        "headers",
        "reason",
        "status",
        "version",
    )

    def __init__(
        self,
        conn: Connection,
        status: int,
        reason: str,
        headers: CIMultiDict[str],
        version: str,
        content_length: int | None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.version = version
        self.content_length = content_length
        self.framing_error: str | None = None
        self._conn: Connection | None = conn  # while the body is still arriving
        self._loop = conn.loop
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived (some of it may be unread)."""
        return self._eof and self._error is None

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.readany()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def take(self) -> bytes | None:
        """What has arrived of the body and is unread, ``b""`` at its end, ``None`` when
        nothing waits yet. Raises :class:`Disconnected` when the connection was lost before
        the end (after what had arrived was taken)."""
        chunks = self._chunks
        if not chunks:
            if self._error is not None:
                raise self._error
            return b"" if self._eof else None
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn.read_paused:
            conn.resume_reading()
        return data

    async def readany(self) -> bytes:
        """What has arrived of the body (waiting for some if nothing has), ``b""`` at its end."""
        data = self.take()
        while data is None:
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
            data = self.take()
        return data

    async def read(self) -> bytes:
        """The whole body (for bodies known to be small: nothing bounds it here)."""
        if self._eof and self._error is None:
            data = b"".join(self._chunks)
            self._chunks.clear()
            return data
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Done with the response: if its body has not all arrived, the connection is closed
        (it cannot serve another request)."""
        conn = self._conn
        self._conn = None
        self._chunks.clear()
        self._size = 0
        if not self._eof:
            self._eof = True
            self._error = Disconnected("response closed before its end")
        if conn is not None:
            conn.abort()

    async def aclose(self) -> None:
        self.close()

    # -- fed by the connection ------------------------------------------------------------

    def _feed(self, data: bytes) -> int:
        self._chunks.append(data)
        self._size += len(data)
        self._wake()
        return self._size

    def _end(self) -> None:
        self._eof = True
        self._conn = None
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._eof:
            return
        self._eof = True
        self._error = exc
        self._conn = None
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
