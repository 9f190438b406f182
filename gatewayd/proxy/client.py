"""How the forwarder talks to a target: one pooled aiohttp ``ClientSession`` per upstream, used
through its public API only (``ClientSession.request``).

A proxy forwards what the client sent and invents nothing, so the session is set up for that:

- no auto headers: aiohttp adds ``Accept``, ``Accept-Encoding`` and ``User-Agent`` when they are
  missing (which would make a backend compress for a client that never asked) and a
  ``Content-Type`` for a body sent without one; ``skip_auto_headers`` keeps all four out;
- bodies pass as they are: no decompression of responses (``auto_decompress=False``), no
  compression of requests, no redirects followed, no cookies kept (``DummyCookieJar``), no
  requoting of the already-normalised URL, no proxy or netrc from the environment;
- ``read_bufsize`` is ``pool.read_buffer``: response bodies are read in chunks of up to that
  size, and reading from the target pauses while about twice that waits for a slow client;
- only the connect timeout is aiohttp's (``sock_connect``); the read and total timeouts are the
  forwarder's own deadlines (``gatewayd.proxy.deadlines``), so a client disconnect that races a
  timeout keeps its cancellation.

The session also does what a pool must: a request on a pooled keep-alive connection that the
target had closed meanwhile is sent once more on a fresh connection when the method is
idempotent and its body can be sent again (bytes, or a stream not started yet); a POST, or a
streamed body already under way, fails instead (the caller answers 502).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gatewayd.config.schema import PoolConfig

# What aiohttp would add to a request on its own when the client did not send it.
AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
MAX_LINE = 8190  # status line and header lines of a response
MAX_FIELD = 8190
MAX_HEADERS = 128


class HttpClient:
    """One upstream's pooled HTTP/1.1 client. Make it inside the running loop (upstream start),
    :meth:`close` it when the upstream closes."""

    __slots__ = ("session", "timeouts")

    def __init__(self, pool: PoolConfig) -> None:
        connector = aiohttp.TCPConnector(
            limit=pool.max_connections,
            limit_per_host=0,
            keepalive_timeout=pool.keepalive,
            ttl_dns_cache=10,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            skip_auto_headers=AUTO_HEADERS,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
            requote_redirect_url=False,
            read_bufsize=pool.read_buffer,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
            trust_env=False,
            raise_for_status=False,
        )
        # One ClientTimeout per connect timeout in use (routes may each set their own).
        self.timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def fetch(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: Any,
        connect_timeout: float,
    ) -> Awaitable[aiohttp.ClientResponse]:
        """The target's response, status line and headers read; its body is still to read
        (``read()``/``content``, then ``release()``, or ``close()`` to drop the connection).

        ``url`` is sent as it is (build it with ``encoded=True``); ``headers`` are sent as
        they are, plus ``Host`` from ``url`` unless they carry one; ``body`` is ``None``,
        bytes or an async iterator of bytes (sent chunked unless ``headers`` carry a
        ``Content-Length``). Awaiting it raises what aiohttp's client raises
        (``ClientConnectorError``, ``ConnectionTimeoutError`` for the connect timeout,
        ``ClientOSError``, ``ServerDisconnectedError``...). A plain function handing back
        aiohttp's awaitable: no extra coroutine layer per request."""
        timeout = self.timeouts.get(connect_timeout)
        if timeout is None:
            timeout = self.timeouts[connect_timeout] = aiohttp.ClientTimeout(
                total=None, sock_connect=connect_timeout
            )
        return self.session.request(
            method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=timeout,
        )

    async def close(self) -> None:
        await self.session.close()
