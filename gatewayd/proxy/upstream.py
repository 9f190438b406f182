"""An upstream: its targets, its balancer and one pooled aiohttp ClientSession."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gatewayd.chain.api import Attempt, RequestContext, Response
from gatewayd.config.schema import TimeoutsConfig, UpstreamConfig
from gatewayd.proxy.balancer import BALANCERS, Target
from gatewayd.proxy.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gatewayd.proxy.headers import response_headers

# Responses up to this size with a Content-Length are read in one go (bounded) and written with
# one call; anything larger or of unknown length streams chunk by chunk.
SMALL_BODY = 64 * 1024
NO_BODY_STATUS = frozenset({204, 304})


class Upstream(Protocol):
    """What the forwarder needs from an upstream (HTTP targets here; the relay has its own)."""

    name: str

    async def send(
        self, ctx: RequestContext, path: str, headers: CIMultiDict[str], timeouts: TimeoutsConfig
    ) -> Response: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class HttpUpstream:
    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.config = config
        self.targets = [Target(url) for url in config.targets]
        self.balancer = BALANCERS[config.balance](self.targets)
        self.hash_header = config.hash_on[7:] if config.hash_on.startswith("header:") else None
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        pool = self.config.pool
        connector = aiohttp.TCPConnector(
            limit=pool.max_connections,
            limit_per_host=0,
            keepalive_timeout=pool.keepalive,
            ttl_dns_cache=10,
            enable_cleanup_closed=False,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
            requote_redirect_url=False,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def hash_key(self, ctx: RequestContext) -> str | None:
        if self.config.balance != "hash":
            return None
        if self.hash_header:
            return ctx.request.headers.get(self.hash_header, "")
        return ctx.request.client_ip

    def pick(self, ctx: RequestContext) -> Target:
        target = self.balancer.pick(ctx.excluded_targets, self.hash_key(ctx))
        if target is None:
            raise UpstreamUnavailable(f"no healthy target in upstream '{self.name}'")
        return target

    async def send(
        self, ctx: RequestContext, path: str, headers: CIMultiDict[str], timeouts: TimeoutsConfig
    ) -> Response:
        target = self.pick(ctx)
        return await self.send_to(target, ctx, path, headers, timeouts)

    async def send_to(
        self,
        target: Target,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
    ) -> Response:
        assert self.session is not None, "upstream not started"
        req = ctx.request
        qs = req.query_string
        url = URL(f"{target.url}{path}?{qs}" if qs else f"{target.url}{path}", encoded=True)
        attempt = Attempt(target.url)
        ctx.attempts.append(attempt)
        ctx.target = target.url
        started = time.monotonic()
        target.inflight += 1
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(timeouts.total):
                resp = await self.session.request(
                    req.method,
                    url,
                    headers=headers,
                    data=req.body,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
                    ),
                )
                length = resp.content_length
                small = (
                    req.method == "HEAD"
                    or resp.status in NO_BODY_STATUS
                    or (length is not None and length <= SMALL_BODY)
                )
                if small:
                    body: bytes | AsyncIterator[bytes] = await resp.read()
                    resp.release()
        except BaseException as exc:
            target.inflight -= 1
            attempt.duration = time.monotonic() - started
            if resp is not None:
                resp.close()
            mapped = self._map_error(exc, attempt)
            if mapped is exc:
                raise
            raise mapped from exc
        attempt.status = resp.status
        if small:
            target.inflight -= 1
            attempt.duration = time.monotonic() - started
        else:
            body = _stream(resp, target, attempt, started)
        return Response(resp.status, response_headers(resp.headers), body, resp.reason)

    def _map_error(self, exc: BaseException, attempt: Attempt) -> BaseException:
        if isinstance(exc, aiohttp.ClientConnectorError):
            attempt.error = "connect"
            return UpstreamConnectError(f"cannot connect to upstream '{self.name}'")
        if isinstance(exc, TimeoutError):  # asyncio.timeout, ServerTimeoutError, connect timeout
            attempt.error = "timeout"
            return UpstreamTimeout(f"upstream '{self.name}' timed out")
        if isinstance(exc, aiohttp.ClientError):
            attempt.error = "disconnect"
            return UpstreamError(502, "upstream_error", f"upstream '{self.name}' failed")
        return exc


async def _stream(
    resp: aiohttp.ClientResponse, target: Target, attempt: Attempt, started: float
) -> AsyncIterator[bytes]:
    """The response body, chunk by chunk as it arrives; the connection is released (or closed,
    if the body was not read to the end) whatever happens."""
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    except aiohttp.ClientError as exc:
        attempt.error = "timeout" if isinstance(exc, TimeoutError) else "disconnect"
        raise UpstreamError(502, "upstream_error", "upstream failed mid-response") from exc
    finally:
        target.inflight -= 1
        attempt.duration = time.monotonic() - started
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()


def build_upstream(name: str, config: UpstreamConfig, relay: Any = None) -> Any:
    """An HTTP upstream, or a relay upstream when the config names a lease."""
    if config.relay:
        if relay is None:
            raise RuntimeError("relay upstreams need the relay registry")
        return relay.upstream(name, config)
    return HttpUpstream(name, config)
