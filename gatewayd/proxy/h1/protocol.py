"""One HTTP/1.1 connection to a target (an asyncio protocol, llhttp through httptools parses
what comes back) and the response read from it.

A connection serves one request at a time. Its response is handed over as soon as the head
is in; the body keeps arriving into the :class:`Response`, which the caller reads as an async
iterator of chunks. While more than ``read_buffer`` bytes wait unread, reading from the socket
pauses (the target's writes stall once the kernel's buffers fill); it resumes when the reader
has taken them. Once the response is complete the connection goes back to its pool, if the
target allows that (HTTP/1.1 or 1.0 with keep-alive, no ``Connection: close``) and the request
body went out whole; anything else closes it. A response closed before its end closes the
connection too, as does a cancelled request.

Framing errors, as nginx handles them: bytes past a response's end (more than its
``Content-Length``) are dropped with the connection, and the response, whole as it was framed,
says so in ``framing_error``; a body that ends early (:class:`Truncated`) or a bad chunk fails the
body; a bad head fails the request (:class:`MalformedResponse`). Interim responses (1xx but 101)
are skipped, each handed to the request's ``interim`` callback if it has one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable
from typing import TYPE_CHECKING, cast

import httptools
from multidict import CIMultiDict

from gatewayd.proxy.h1.errors import (
    ClientError,
    Disconnected,
    MalformedResponse,
    StaleBytes,
    Truncated,
)
from gatewayd.proxy.h1.response import Response

if TYPE_CHECKING:
    from gatewayd.proxy.h1.pool import Origin, Pool

MAX_LINE = 8190  # the status line, and each header line, of a response
MAX_HEADERS = 128
# What may arrive before the head is complete: every line at its longest.
MAX_HEAD = (MAX_HEADERS + 1) * (MAX_LINE + 2) + 2
NO_BODY_STATUS = (204, 304)
Interim = Callable[[int, CIMultiDict[str]], object]


class Connection(asyncio.Protocol):
    """One connection of a :class:`~gatewayd.proxy.h1.pool.Pool`, to one origin."""

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.busy = False  # holds a slot of the pool (set by the pool)
        self.pooled = False  # in its origin's idle list
        self.idle_since = 0.0
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.writer: asyncio.Task[None] | None = None
        # The exchange under way
        self.head_waiter: asyncio.Future[Response] | None = None
        self.response: Response | None = None  # its body is arriving
        self.head_only = False  # a HEAD request: the response has no body, whatever it says
        self.got_data = False  # any byte of a response to this request
        self.body_sent = True
        self.keep_alive = False
        self.done = False  # the response is complete: release after the current feed
        self.spent = False  # the parser is past a HEAD response: a fresh one for the next
        self.broken = False  # the target broke the protocol: never reuse
        self.interim = False
        self.on_interim: Interim | None = None  # the request's interim responses go there
        self.served = False  # a response came whole on this connection before
        self.last: Response | None = None  # the response just completed in this feed
        self.until_close = False
        self.head_size = 0
        self.reason = b""
        self.headers: CIMultiDict[str] | None = None

    # -- the request ----------------------------------------------------------------------

    def send(
        self,
        head: bytes,
        body: object,
        head_only: bool,
        length: int | None,
        interim: Interim | None = None,
    ) -> asyncio.Future[Response]:
        """Write the request; the future is the response once its head is in."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            self._drop(Disconnected("connection closed by the target"))
            raise Disconnected("connection closed by the target")
        waiter = self.head_waiter = self.loop.create_future()
        self.head_only = head_only
        self.on_interim = interim
        self.got_data = False
        self.keep_alive = False
        self.until_close = False
        self.broken = False
        self.head_size = 0
        if body is None:
            transport.write(head)
            self.body_sent = True
        elif isinstance(body, bytes | bytearray | memoryview):
            transport.writelines((head, body))
            self.body_sent = True
        else:
            assert isinstance(body, AsyncIterable)
            transport.write(head)
            self.body_sent = False
            self.writer = self.loop.create_task(self._send_stream(body, length))
        return waiter

    async def _send_stream(self, body: AsyncIterable[bytes], length: int | None) -> None:
        transport = self.transport
        assert transport is not None
        try:
            if length is None:
                async for chunk in body:
                    if not chunk:
                        continue
                    if self.closed:
                        return
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                    if self.write_paused:
                        await self._drain()
                if self.closed:
                    return
                transport.write(b"0\r\n\r\n")
            else:
                left = length
                if left:
                    async for chunk in body:
                        if self.closed:
                            return
                        if len(chunk) >= left:
                            transport.write(chunk[:left] if len(chunk) > left else chunk)
                            left = 0
                            break
                        transport.write(chunk)
                        left -= len(chunk)
                        if self.write_paused:
                            await self._drain()
                if left:
                    raise ClientError("request body shorter than its Content-Length")
            self.body_sent = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The client's body failed (it went away), or the connection did: the request
            # cannot be completed on this connection.
            if isinstance(exc, ClientError):
                self._drop(exc)
            else:
                err = Disconnected("request body failed")
                err.__cause__ = exc
                self._drop(err)
        finally:
            self.writer = None

    async def _drain(self) -> None:
        if self.closed:
            raise Disconnected("connection lost while sending the request body")
        waiter = self.drain_waiter = self.loop.create_future()
        await waiter

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the response ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport, but they are one
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self.got_data = True
        if self.head_waiter is not None:
            self.head_size += len(data)
            if self.head_size > MAX_HEAD:
                self._drop(MalformedResponse("response head too large"))
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.done:
                # The response is whole as framed; what came after it is none: dropped with
                # the connection (never reused), and the response says so.
                last = self.last
                if last is not None:
                    last.framing_error = "bytes past the response's end"
                self.broken = True
                self._release()
                return
            if (
                self.served
                and self.head_waiter is not None
                and self.head_size == len(data)
                and not data.startswith(b"HTTP/")
            ):
                # What the previous response sent past its end, arriving late.
                self._drop(StaleBytes("bytes past the previous response's end"))
                return
            reason = exc.__context__ if isinstance(exc.__context__, ClientError) else exc
            self._drop(MalformedResponse(f"malformed response: {reason}"))
            return
        if self.done:
            self._release()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        response = self.response
        if response is not None and not self.broken:
            self.response = None
            if self.until_close:
                response._end()  # the body's end is the connection's end
            elif exc is None:
                response._fail(Truncated("the target closed the connection mid-body"))
            else:
                response._fail(Disconnected(f"connection lost mid-body: {exc}"))
        self._drop(Disconnected("connection lost" if exc is None else f"connection lost: {exc}"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.head_waiter is None:
            raise MalformedResponse("data from the target that no request asked for")
        self.headers = CIMultiDict()
        self.reason = b""

    def on_status(self, status: bytes) -> None:
        self.reason += status
        if len(self.reason) > MAX_LINE - 13:  # "HTTP/1.1 200 " and the reason
            raise MalformedResponse("status line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if headers is None:  # a trailer of a chunked body: dropped
            return
        if len(name) + len(value) + 2 > MAX_LINE:
            raise MalformedResponse("header line too long")
        if len(headers) >= MAX_HEADERS:
            raise MalformedResponse("too many headers")
        headers.add(name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        headers = self.headers
        assert headers is not None
        self.headers = None
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise MalformedResponse("101 Switching Protocols without an upgrade asked for")
            self.interim = True  # 100 Continue, 103 Early Hints...: skipped, or handed on
            relay = self.on_interim
            if relay is not None:
                relay(status, headers)
            return
        length = headers.get("Content-Length")
        content_length = int(length) if length is not None else None
        response = Response(
            self,
            status,
            self.reason.decode("utf-8", "surrogateescape"),
            headers,
            parser.get_http_version(),
            content_length,
        )
        self.keep_alive = parser.should_keep_alive()
        if self.head_only:
            # llhttp does not know the request was HEAD: the message ends here, and the
            # parser, which expects a body, is replaced after this feed.
            response._end()
            self.spent = True
            self.done = True
            self.last = response
        elif status in NO_BODY_STATUS:
            response._end()  # llhttp knows: its message completes next
            self.last = response
        else:
            self.response = response
            self.until_close = content_length is None and not _chunked(headers)
        waiter = self.head_waiter
        self.head_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is None:  # after a HEAD response: the target sent a body anyway
            self.broken = True
            return
        if response._feed(body) > self.pool.read_buffer and not self.read_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self.read_paused = True

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.spent:
            return
        response = self.response
        if response is not None:
            self.response = None
            self.last = response
            response._end()
        self.done = True

    # -- the end of an exchange -----------------------------------------------------------

    def resume_reading(self) -> None:
        self.read_paused = False
        if self.transport is not None:
            self.transport.resume_reading()

    def _release(self) -> None:
        """The response is complete: back to the pool, or closed."""
        self.done = False
        self.last = None
        self.served = True
        if self.spent:
            self.spent = False
            self.parser = httptools.HttpResponseParser(self)
        if self.read_paused:
            self.resume_reading()
        reuse = self.keep_alive and self.body_sent and not self.broken
        self.pool.release(self, reuse)

    def abort(self) -> None:
        """Give the connection up (a response not read to its end, a cancelled request)."""
        self._drop(Disconnected("connection given up"))

    def _drop(self, exc: ClientError) -> None:
        """Close the connection; whatever waits on it fails with ``exc``."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        waiter = self.head_waiter
        if waiter is not None:
            self.head_waiter = None
            if not waiter.done():
                waiter.set_exception(exc)
        response = self.response
        if response is not None:
            self.response = None
            response._fail(exc)
        drain = self.drain_waiter
        if drain is not None:
            self.drain_waiter = None
            if not drain.done():
                drain.set_exception(exc)
        writer = self.writer
        if writer is not None and writer is not asyncio.current_task():
            self.writer = None
            writer.cancel()
        self.pool.forget(self)


def _chunked(headers: CIMultiDict[str]) -> bool:
    codings: list[str] = headers.getall("Transfer-Encoding", [])
    return bool(codings) and codings[-1].rsplit(",", 1)[-1].strip().lower() == "chunked"
