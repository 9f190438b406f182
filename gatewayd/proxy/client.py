"""How the forwarder talks to a target: aiohttp's connection pool and HTTP/1.1 client, without
the parts of ``ClientSession.request`` a proxy has no use for.

``ClientSession.request`` merges default headers, consults a cookie jar, a proxy environment and
netrc, runs trace hooks, follows redirects and starts a timeout handle on every call; a proxy
needs none of it and pays for all of it on every request. :class:`Fetcher` keeps the session
(which owns the pooled ``TCPConnector``) and does only what forwarding takes: take a pooled
connection (or open one within the connect timeout), write the request, read the status line
and headers. Like the session, it tries a request again once on a fresh connection when a
pooled keep-alive connection turns out to be closed by the target and the method is idempotent.

A proxy also forwards the client's headers as they are: aiohttp's default request adds
``Accept``, ``Accept-Encoding`` and ``User-Agent`` when they are missing (which would make a
backend compress for a client that never asked) and copies the headers into a new multidict;
:class:`ProxyClientRequest` adds nothing and takes the forwarder's (already private) copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import ClientRequest, ClientResponse, hdrs
from aiohttp.helpers import TimerNoop
from aiohttp.http import HttpVersion11
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# Also keeps aiohttp from inventing a Content-Type for a streamed body the client sent without one.
_SKIP: CIMultiDict[None] = CIMultiDict({"Content-Type": None})
_SKIP_VIEW = CIMultiDictProxy(_SKIP)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
BODILESS = frozenset(ClientRequest.GET_METHODS)  # what aiohttp sends without a body
_NO_TIMER = TimerNoop()  # stateless: one for every request
MAX_LINE = 8190
MAX_FIELD = 8190
MAX_HEADERS = 128


class ProxyClientRequest(ClientRequest):
    def __init__(
        self,
        method: str,
        url: URL,
        *,
        headers: Any = None,
        data: Any = None,
        loop: asyncio.AbstractEventLoop,
        response_class: type[ClientResponse] = ClientResponse,
        session: aiohttp.ClientSession,
        **more: Any,
    ) -> None:
        """A bodiless GET/HEAD/OPTIONS/TRACE with the forwarder's headers (nearly every proxied
        request) is set up directly: the attributes ``ClientRequest.__init__`` would give it,
        without its dozen update steps (cookies, auth, proxy, compression, body) that have
        nothing to do here. Anything else goes through ``ClientRequest.__init__``."""
        if (
            data is not None
            or more
            or method not in BODILESS
            or not isinstance(headers, CIMultiDict)
            or url.raw_user
            or url.raw_password
            or url.raw_fragment
            or loop.get_debug()
        ):
            super().__init__(
                method,
                url,
                headers=headers,
                data=data,
                loop=loop,
                response_class=response_class,
                session=session,
                **more,
            )
            return
        self._session = session
        self.original_url = self.url = url
        self.method = method
        self.chunked = None
        self.compress = None
        self.loop = loop
        self.length = None
        self.response_class = response_class
        self._timer = _NO_TIMER
        self._ssl = True
        self.server_hostname = None
        self.version = HttpVersion11
        self.update_headers(headers)
        self._skip_auto_headers = _SKIP_VIEW  # type: ignore[assignment]
        self.proxy = None
        self.proxy_auth = None
        self.proxy_headers = None
        self._body = None
        if hdrs.EXPECT in headers:
            self.update_expect_continue(False)
        self._traces = []

    def update_headers(self, headers: Any) -> None:
        """Take the forwarder's multidict as the request's own (it is a private copy already);
        a ``Host`` it carries (``preserve_host``) wins over the target's."""
        if isinstance(headers, CIMultiDict):
            self.headers = headers
            if hdrs.HOST not in headers:
                host = self.url.host_port_subcomponent
                assert host is not None
                headers[hdrs.HOST] = host
            return
        super().update_headers(headers)

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _SKIP_VIEW  # type: ignore[assignment]


class Fetcher:
    """One upstream's pooled client (see the module's text)."""

    def __init__(self, session: aiohttp.ClientSession, read_buffer: int) -> None:
        self.session = session
        # Response bodies are read in chunks of up to ``read_buffer`` bytes; reading from the
        # target pauses while twice that waits for a slow client (``pool.read_buffer``).
        self.read_buffer = read_buffer
        connector = session.connector
        assert connector is not None
        self.connector = connector
        self.loop = asyncio.get_running_loop()

    async def fetch(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: Any,
        timeout: aiohttp.ClientTimeout,
    ) -> ClientResponse:
        """The target's response, status line and headers read; its body is still to read.

        Raises what aiohttp's client raises (``ClientConnectorError``, ``ClientOSError``,
        ``ServerDisconnectedError``, ``ConnectionTimeoutError`` for the connect timeout...)."""
        retry = method in IDEMPOTENT and (body is None or isinstance(body, bytes))
        while True:
            req = ProxyClientRequest(
                method,
                url,
                headers=headers,
                data=body,
                loop=self.loop,
                response_class=ClientResponse,
                session=self.session,
            )
            try:
                return await self._send(req, timeout)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
                raise  # never reached the target: the caller's retry policy decides
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                if not retry:
                    raise
                retry = False  # a pooled connection the target had closed: once more
            except aiohttp.ClientError:
                raise
            except OSError as exc:
                if isinstance(exc, TimeoutError):
                    raise
                raise aiohttp.ClientOSError(*exc.args) from exc
            finally:
                if req._body is not None:
                    await req._body.close()

    async def _send(
        self, req: ProxyClientRequest, timeout: aiohttp.ClientTimeout
    ) -> ClientResponse:
        connector = self.connector
        try:
            conn = await connector.connect(req, traces=[], timeout=timeout)
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {req.url}") from exc
        protocol = conn.protocol
        assert protocol is not None
        protocol.set_response_params(
            skip_payload=req.method == "HEAD",
            read_until_eof=True,
            auto_decompress=False,
            read_bufsize=self.read_buffer,
            timeout_ceil_threshold=connector._timeout_ceil_threshold,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
        )
        try:
            resp = await req.send(conn)
            try:
                await resp.start(conn)
            except BaseException:
                resp.close()
                raise
        except BaseException:
            conn.close()
            raise
        return resp
