"""HTTP/1 guard of the public listeners: what a request that breaks the protocol is answered,
how it is logged and counted, the checks aiohttp's parser leaves to us, and the Server header.

- A malformed request gets the JSON error body with a fresh request id, ``Connection: close``
  and its status: 400, 414 (request target over ``server.max_request_line``), 431 (a header
  field over ``server.max_header_size``, all of them over ``server.max_headers_total`` or more
  than ``server.max_headers``), 501 (a transfer coding other than ``chunked``), 505 (HTTP/0.9,
  2.0 or any version but 1.0 and 1.1 on this HTTP/1 port). Nothing of the request is echoed.
- Each is logged once (the connection closes), at INFO on ``gatewayd.protocol``, with the
  client's IP, the status and a reason code from a fixed set, never the request's bytes nor a
  traceback; at most :data:`LOG_LINES_PER_SECOND` lines a second, then one line saying how many
  were left out. ``gatewayd_protocol_errors_total{reason}`` counts them all.
- A handler exception (a bug of ours) is a JSON 500, logged with its traceback (rate-limited).

Only aiohttp's public low-level API: :class:`GuardedServer` is a ``web.Server`` whose protocol
factory builds :class:`GuardedRequestHandler` (``RequestHandler.handle_error`` overridden) and
whose ``request_factory`` does the version, transfer-coding and total-size checks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage, StreamWriter
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.streams import StreamReader
from multidict import CIMultiDict
from prometheus_client import Counter

from gatewayd.chain.api import error_body
from gatewayd.config.schema import ServerConfig

PROTOCOL_LOG = logging.getLogger("gatewayd.protocol")
LOG_LINES_PER_SECOND = 10


@dataclass(frozen=True, slots=True)
class Refusal:
    """How a request that broke HTTP/1 is answered: its status, its reason code (the error
    code of the body and the metric label) and a fixed message (never a part of the request)."""

    status: int
    reason: str
    message: str


BAD_REQUEST = Refusal(400, "bad_request", "malformed request")
BAD_METHOD = Refusal(400, "bad_method", "invalid request method")
BAD_REQUEST_LINE = Refusal(400, "bad_request_line", "malformed request line")
BAD_TARGET = Refusal(400, "bad_target", "invalid character in the request target")
BAD_HEADER = Refusal(400, "bad_header", "malformed request header")
BAD_FRAMING = Refusal(400, "bad_framing", "ambiguous or invalid message framing")
BAD_BODY = Refusal(400, "bad_body", "malformed request body")
URI_TOO_LONG = Refusal(414, "uri_too_long", "request line too long")
HEADER_TOO_LONG = Refusal(431, "header_too_long", "request header field too long")
HEADERS_TOO_LARGE = Refusal(431, "headers_too_large", "request headers too large")
TRANSFER_CODING = Refusal(501, "transfer_encoding", "only the chunked transfer coding is accepted")
BAD_VERSION = Refusal(505, "bad_version", "HTTP version not supported (HTTP/1.0 and 1.1 only)")

REFUSALS = (
    BAD_REQUEST,
    BAD_METHOD,
    BAD_REQUEST_LINE,
    BAD_TARGET,
    BAD_HEADER,
    BAD_FRAMING,
    BAD_BODY,
    URI_TOO_LONG,
    HEADER_TOO_LONG,
    HEADERS_TOO_LARGE,
    TRANSFER_CODING,
    BAD_VERSION,
)

# Where the exception class does not tell, the start of aiohttp's/llhttp's message does (the
# part before the quoted request bytes, so a client cannot steer it). aiohttp is pinned <3.15;
# tests/daemon/test_protocol.py sends a request for every entry, so a change of text shows.
MESSAGES: tuple[tuple[type[HttpProcessingError], str, Refusal], ...] = (
    (BadStatusLine, "Bad status line:\n  Invalid HTTP version", BAD_VERSION),
    (BadHttpMessage, "Request has invalid `Transfer-Encoding`", TRANSFER_CODING),
    (BadHttpMessage, "Invalid `Transfer-Encoding` header value", TRANSFER_CODING),
    (BadHttpMessage, "Too many headers received", HEADERS_TOO_LARGE),
    (BadHttpMessage, "Transfer-Encoding can't be present with Content-Length", BAD_FRAMING),
    (BadHttpMessage, "Content-Length can't be present with Transfer-Encoding", BAD_FRAMING),
    (BadHttpMessage, "Duplicate Content-Length", BAD_FRAMING),
)
# Then the class (subclasses first).
CLASSES: tuple[tuple[type[HttpProcessingError], Refusal], ...] = (
    (BadHttpMethod, BAD_METHOD),
    (BadStatusLine, BAD_REQUEST_LINE),
    (InvalidURLError, BAD_TARGET),
    (InvalidHeader, BAD_HEADER),
    (PayloadEncodingError, BAD_BODY),
)


def classify(exc: HttpProcessingError, max_line_size: int, max_field_size: int) -> Refusal:
    """The refusal for a parser error. ``LineTooLong`` carries the limit it broke
    (``args[1]``): the request-target limit is 414, the field limit 431 (when both limits are
    set to the same value, 431: the parser reports them alike)."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == max_line_size and limit != max_field_size:
            return URI_TOO_LONG
        return HEADER_TOO_LONG
    text = exc.message
    for cls, prefix, refusal in MESSAGES:
        if isinstance(exc, cls) and text.startswith(prefix):
            return refusal
    for cls, refusal in CLASSES:
        if isinstance(exc, cls):
            return refusal
    return BAD_REQUEST


class RateLimitedLog:
    """At most ``per_second`` lines a second; the lines left out are summed up in one line
    when their second is over."""

    def __init__(self, logger: logging.Logger, per_second: int = LOG_LINES_PER_SECOND) -> None:
        self.logger = logger
        self.per_second = per_second
        self.window_end = 0.0
        self.lines = 0
        self.suppressed = 0
        self.timer: asyncio.TimerHandle | None = None

    def allow(self) -> bool:
        """Whether a line may be written now (counts it, or the ones left out)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self.window_end:
            self.flush()
            self.window_end, self.lines = now + 1.0, 0
        if self.lines < self.per_second:
            self.lines += 1
            return True
        self.suppressed += 1
        if self.timer is None:
            self.timer = loop.call_at(self.window_end, self.flush)
        return False

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.suppressed:
            self.logger.info(
                "protocol errors not logged (rate limit)",
                extra={"suppressed": self.suppressed, "per_second": self.per_second},
            )
            self.suppressed = 0

    def close(self) -> None:
        self.flush()


REFUSAL: web.RequestKey[Refusal] = web.RequestKey("gatewayd_refusal", Refusal)


class RefusedRequest(web.BaseRequest):
    """A request the request factory refused (its :data:`REFUSAL` says why): the listener
    answers it without running the gateway."""


class ServerHeaderWriter(StreamWriter):
    """The response writer for the requests whose ``Server`` header aiohttp's default would
    otherwise decide: replaces it with ``server`` or, when that is ``None``, drops it."""

    server: str | None = None

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        if self.server is None:
            headers.popall("Server", None)
        else:
            headers["Server"] = self.server
        await super().write_headers(status_line, headers)


def header_writer(server: str | None) -> type[ServerHeaderWriter]:
    return type("ServerHeaderWriter", (ServerHeaderWriter,), {"server": server})


class ProtocolGuard:
    """The listeners' shared state: limits and the Server header (replaced by
    :meth:`configure` on reload), the counter, the rate-limited log and the request ids."""

    def __init__(
        self,
        config: ServerConfig,
        counter: Counter | None = None,
        logger: logging.Logger = PROTOCOL_LOG,
    ) -> None:
        self.logger = logger
        self.log = RateLimitedLog(logger)
        self.counter = counter  # gatewayd_protocol_errors_total{reason}
        if counter is not None:
            for refusal in REFUSALS:
                counter.labels(refusal.reason)
        # Ids must be unique, not secret: one seeded generator, no system call per request.
        self.ids = random.Random()
        self.configure(config)

    def configure(self, config: ServerConfig) -> None:
        self.max_headers_total = config.headers_total
        self.server: str | None = config.header or None
        # Requests that need our writer: all of them when the header is to be dropped, else
        # only the upgrades (the WebSocket handshakes, whose responses we do not build).
        self.writer_for_all = self.server is None
        self.writer = header_writer(self.server)

    def request_id(self) -> str:
        return f"{self.ids.getrandbits(128):032x}"

    def refuse(self, request: web.BaseRequest, refusal: Refusal) -> web.Response:
        """Log and count ``refusal``, and the JSON error reply that closes the connection."""
        if self.counter is not None:
            self.counter.labels(refusal.reason).inc()
        if self.log.allow():
            self.logger.info(
                "protocol error",
                extra={
                    "client_ip": request.remote,
                    "status": refusal.status,
                    "reason": refusal.reason,
                },
            )
        return self.error_response(refusal.status, refusal.reason, refusal.message)

    def error_response(self, status: int, code: str, message: str) -> web.Response:
        rid = self.request_id()
        headers = {"Content-Type": "application/json", "X-Request-ID": rid, "Connection": "close"}
        if self.server is not None:
            headers["Server"] = self.server
        resp = web.Response(status=status, body=error_body(code, message, rid), headers=headers)
        resp.force_close()
        return resp

    async def answer(self, request: web.BaseRequest) -> web.StreamResponse:
        """The listener's reply to a :class:`RefusedRequest`."""
        return self.refuse(request, request[REFUSAL])

    def handle_error(
        self,
        handler: web.RequestHandler,
        request: web.BaseRequest,
        status: int,
        exc: BaseException | None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # The reply had begun: nothing honest can follow it on this connection.
            raise ConnectionError("response already started: the connection is closed")
        if isinstance(exc, HttpProcessingError):
            return self.refuse(
                request, classify(exc, handler.max_line_size, handler.max_field_size)
            )
        if status == 500:
            if self.log.allow():
                self.logger.error(
                    "request handler failed",
                    exc_info=exc,
                    extra={"client_ip": request.remote},
                )
            return self.error_response(500, "internal_error", "internal error")
        return self.error_response(status, "gateway_timeout", "request handler timed out")

    def check(self, message: RawRequestMessage) -> Refusal | None:
        """What the parser lets through and we do not: any version but 1.0 and 1.1 (HTTP/0.9
        would be answered in kind), a transfer coding other than ``chunked`` (or any in an
        HTTP/1.0 request), headers over ``max_headers_total`` in all."""
        version = message.version
        if version is not HttpVersion11 and version != HttpVersion11 and version != HttpVersion10:
            return BAD_VERSION
        if message.chunked:
            if version == HttpVersion10:
                return BAD_FRAMING
            codings = message.headers.getall("Transfer-Encoding", ())
            if len(codings) != 1 or codings[0].strip().lower() != "chunked":
                return TRANSFER_CODING
        raw = message.raw_headers  # the one per-request cost here: ~0.5 us for 8 headers
        size = 4 * len(raw)  # ": " and CRLF
        for name, value in raw:
            size += len(name) + len(value)
        if size > self.max_headers_total:
            return HEADERS_TOO_LARGE
        return None

    def close(self) -> None:
        self.log.close()


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's connection handler with the guard's error replies."""

    __slots__ = ("guard",)

    def __init__(
        self,
        manager: web.Server,
        *,
        guard: ProtocolGuard,
        loop: asyncio.AbstractEventLoop,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self.guard = guard

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        return self.guard.handle_error(self, request, status, exc)


class GuardedServer(web.Server):
    """A low-level server whose connections are :class:`GuardedRequestHandler` and whose
    requests are checked by the guard. Holds its own copy of the handler's keyword arguments
    and loop (the protocol factory needs them)."""

    def __init__(
        self,
        handler: Any,
        guard: ProtocolGuard,
        *,
        handler_cancellation: bool = False,
        **kwargs: Any,
    ) -> None:
        self.guard = guard
        self.event_loop = asyncio.get_running_loop()
        self.handler_kwargs = {"logger": guard.logger, **kwargs}
        super().__init__(
            handler,
            request_factory=self.make_request,
            handler_cancellation=handler_cancellation,
            loop=self.event_loop,
            **kwargs,
        )

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(
            self, guard=self.guard, loop=self.event_loop, **self.handler_kwargs
        )

    def make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        guard = self.guard
        refusal = guard.check(message)
        if refusal is not None:
            if refusal is BAD_VERSION:
                # The reply's status line takes the request's version: never "HTTP/0.9 ...".
                message = message._replace(version=HttpVersion10)
            return RefusedRequest(
                message, payload, protocol, writer, task, self.event_loop, state={REFUSAL: refusal}
            )
        if guard.writer_for_all or message.upgrade:
            writer = guard.writer(protocol, self.event_loop)
        return web.BaseRequest(message, payload, protocol, writer, task, self.event_loop)
