"""The request path: normalise, match, run the chain, forward, stream the reply back."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from types import CoroutineType
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gatewayd.chain.api import (
    PRINCIPAL_HEADERS,
    PluginError,
    Request,
    RequestContext,
    Response,
    RouteInfo,
    error_body,
)
from gatewayd.chain.runner import chunked, failure_response, run_done
from gatewayd.config.schema import UpstreamConfig
from gatewayd.observability.access import AccessLog
from gatewayd.observability.metrics import NO_ROUTE, Metrics
from gatewayd.proxy import websocket
from gatewayd.proxy.errors import UpstreamError
from gatewayd.proxy.headers import add_forwarded, strip_hop_by_hop, valid_request_id
from gatewayd.routing.paths import BadPath, normalise_path
from gatewayd.routing.table import Route, RouteTable

log = logging.getLogger("gatewayd.proxy")
NO_ROUTE_INFO = RouteInfo(NO_ROUTE, None, "")
BODY_CHUNK = 64 * 1024


def json_error(status: int, code: str, message: str, request_id: str) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(code, message, request_id),
        headers={"Content-Type": "application/json", "X-Request-ID": request_id},
    )


async def client_body(raw: web.BaseRequest, ctx: RequestContext) -> AsyncIterator[bytes]:
    async for chunk in raw.content.iter_chunked(BODY_CHUNK):
        ctx.bytes_in += len(chunk)
        yield chunk


class Dispatcher:
    """Serves requests for one generation (its route table and upstreams)."""

    def __init__(
        self,
        table: RouteTable,
        upstreams: Mapping[str, Any],
        upstream_configs: Mapping[str, UpstreamConfig],
        metrics: Metrics,
        access_log: AccessLog | None,
        extra_upstream: Any = None,
        relay: tuple[str, Any] | None = None,
        websockets: Any = None,
    ) -> None:
        self.table = table
        self.upstreams = upstreams
        self.timeouts = {n: c.timeouts for n, c in upstream_configs.items()}
        self.metrics = metrics
        self.access_log = access_log
        # Routes without an upstream (relay by path) ask this object for one.
        self.extra_upstream = extra_upstream
        # (relay.path, handler): the relay's WebSocket endpoint, served before route matching
        # (without pinning a generation: these connections live across reloads).
        self.relay = relay
        # The process's open WebSockets (gatewayd.proxy.websocket.WebSocketRegistry).
        self.websockets = websockets
        # The generation this dispatcher serves (set by it): requests pin it while in flight.
        self.generation: Any = None
        # Request ids: 128 random bits from a generator seeded from os.urandom, without a
        # system call per request (ids must be unique, not secret).
        self._ids = random.Random()

    async def handle(self, raw: web.BaseRequest) -> web.StreamResponse:
        """Serve one request on this dispatcher's generation (pinned until the reply is done).

        One coroutine from request to reply on purpose: every extra layer of ``await`` costs on
        each suspension of every request."""
        relay = self.relay
        if relay is not None and raw.raw_path.partition("?")[0] == relay[0]:
            # A relay peer's WebSocket lives across reloads: it must not pin a generation.
            return await relay[1](raw)
        gen = self.generation
        gen.inflight += 1
        try:
            rid = raw.headers.get("X-Request-ID")
            if rid is None or not valid_request_id(rid):
                rid = f"{self._ids.getrandbits(128):032x}"
            target, _, query = raw.raw_path.partition("?")
            try:
                path = normalise_path(target)
            except BadPath as exc:
                return self.refuse(raw, rid, target, 400, "bad_request", str(exc))
            host = raw.host
            route = self.table.match(host, path, raw.method)
            if route is None:
                return self.refuse(raw, rid, path, 404, "no_route", "no route matches this request")
            headers = CIMultiDict(raw.headers)
            for name in PRINCIPAL_HEADERS:  # only the gateway may set these (auth plugins do)
                if name in headers:
                    del headers[name]
            peer = raw.transport.get_extra_info("peername") if raw.transport else None
            request = Request(
                raw.method,
                path,
                query,
                headers,
                host,
                raw.scheme,
                peer[0] if peer else "",
                None,
                raw.content_length,
                raw,
            )
            ctx = RequestContext(request, rid, route.info)
            if raw.body_exists:
                request.body = client_body(raw, ctx)
            chain = route.chain
            rm = self.metrics.route(route.name)
            rm.inflight.inc()
            seen = -1
            status = 500
            try:
                # The phases run here rather than through chain.runner's coroutines: one
                # coroutine layer less per phase on every request (same rules: fail closed, a
                # local reply stops the chain, later phases only for the plugins that saw it).
                reply = None
                seen = len(chain.plugins) - 1
                for pos, name, on_request, awaited in chain.request:
                    try:
                        reply = on_request(ctx)
                        if awaited or reply.__class__ is CoroutineType:
                            reply = await reply  # a plain method may finish in a coroutine
                    except Exception as exc:
                        reply = failure_response(ctx, name, exc)
                    if reply is not None:
                        seen = pos
                        break
                if reply is None and request.is_websocket and self.websockets is not None:
                    upgraded = await websocket.pass_through(self, raw, ctx, route)
                    if isinstance(upgraded, web.StreamResponse):  # relayed and closed
                        status = 101
                        return upgraded
                    reply = upgraded  # refused before the upgrade: an error reply
                if reply is None:
                    started = time.monotonic()
                    try:
                        reply = await self.send(ctx, route)
                    except (UpstreamError, PluginError) as exc:
                        reply = self.failed(ctx, route, exc)
                    else:
                        if route.info.upstream:
                            self.metrics.upstream(route.info.upstream).observe(
                                time.monotonic() - started
                            )
                for pos, name, on_response, awaited in chain.response:
                    if pos <= seen:
                        try:
                            result = on_response(ctx, reply)
                            if awaited:
                                await result
                        except Exception as exc:
                            reply = failure_response(ctx, name, exc)
                            break
                else:
                    if chain.chunk:
                        reply.body = chunked(chain, ctx, reply.body, seen)
                ctx.response = reply
                status = reply.status
                if isinstance(reply.body, bytes | bytearray):
                    return self.reply(raw, ctx, reply)
                return await self.write(raw, ctx, reply)
            except asyncio.CancelledError:
                status = 499  # the client went away (nginx's convention)
                raise
            finally:
                if chain.done:
                    await run_done(chain, ctx, seen)
                rm.inflight.dec()
                rm.count(status)
                rm.duration.observe(time.monotonic() - ctx.started)
                if self.access_log is not None:
                    self.access_log.record(ctx, status, route.info.upstream)
        finally:
            gen.inflight -= 1
            if gen.retired and gen.inflight == 0:
                gen.drained.set()

    def refuse(
        self, raw: web.BaseRequest, rid: str, path: str, status: int, code: str, message: str
    ) -> web.Response:
        """An error before any route was chosen: counted and access-logged like the rest."""
        self.metrics.route(NO_ROUTE).count(status)
        if self.access_log is not None:
            peer = raw.transport.get_extra_info("peername") if raw.transport else None
            request = Request(
                raw.method, path, "", CIMultiDict(), raw.host, raw.scheme,
                peer[0] if peer else "", None, None,
            )  # fmt: skip
            self.access_log.record(RequestContext(request, rid, NO_ROUTE_INFO), status, None)
        return json_error(status, code, message, rid)

    def upstream_for(self, ctx: RequestContext, route: Route) -> tuple[Any, ...]:
        """(upstream, timeouts) or, from ``extra_upstream``, (upstream, timeouts, path)."""
        name = route.info.upstream
        if name is not None:
            timeouts = route.config.timeouts or self.timeouts[name]
            return self.upstreams[name], timeouts
        if self.extra_upstream is not None:
            return self.extra_upstream(ctx, route)
        raise UpstreamError(502, "no_upstream", f"route '{route.name}' has no upstream")

    def upstream_headers(self, ctx: RequestContext, route: Route) -> CIMultiDict[str]:
        req = ctx.request
        # In place: what the request carried hop by hop is of no use to the plugins after this.
        headers = strip_hop_by_hop(req.headers)
        add_forwarded(headers, req.client_ip, req.scheme, req.host)
        headers["X-Request-ID"] = ctx.request_id
        if not route.config.preserve_host:
            headers.popall("Host", None)
        return headers

    def send(self, ctx: RequestContext, route: Route) -> Awaitable[Response]:
        """The upstream's reply, as the awaitable the upstream hands back (no extra layer).
        Raises UpstreamError/PluginError, now or when awaited: see :meth:`failed`."""
        upstream, timeouts, *path_override = self.upstream_for(ctx, route)
        headers = self.upstream_headers(ctx, route)
        path = path_override[0] if path_override else route.upstream_path(ctx.request.path)
        reply: Awaitable[Response] = upstream.send(ctx, path, headers, timeouts)
        return reply

    def failed(self, ctx: RequestContext, route: Route, exc: Exception) -> Response:
        """The error reply for an upstream failure (or a body that broke a plugin's limit)."""
        if isinstance(exc, PluginError):
            ctx.error = exc
            return failure_response(ctx, "request", exc)
        assert isinstance(exc, UpstreamError)
        ctx.error = ctx.error or exc
        if isinstance(ctx.error, PluginError):  # e.g. the body grew past a limit
            return failure_response(ctx, "request", ctx.error)
        retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        if ctx.attempts and ctx.attempts[-1].error and route.info.upstream:
            self.metrics.upstream_errors.labels(route.info.upstream, ctx.attempts[-1].error).inc()
        return ctx.error_response(exc.status, exc.code, exc.message, retry)

    def reply(self, raw: web.BaseRequest, ctx: RequestContext, reply: Response) -> web.Response:
        """A reply whose body is bytes, as one aiohttp response."""
        headers = reply.headers
        headers["X-Request-ID"] = ctx.request_id
        close = headers.popall("Connection", None) is not None
        body = reply.body
        assert isinstance(body, bytes | bytearray)
        if raw.method != "HEAD":
            headers.popall("Content-Length", None)
        ctx.bytes_out = len(body)
        resp = web.Response(status=reply.status, reason=reply.reason, headers=headers, body=body)
        if close:
            resp.force_close()
        return resp

    async def write(
        self, raw: web.BaseRequest, ctx: RequestContext, reply: Response
    ) -> web.StreamResponse:
        """Stream a reply whose body is an async iterator, chunk by chunk."""
        headers = reply.headers
        headers["X-Request-ID"] = ctx.request_id
        close = headers.popall("Connection", None) is not None
        body = reply.body
        if isinstance(body, bytes | bytearray):
            return self.reply(raw, ctx, reply)
        resp = web.StreamResponse(status=reply.status, reason=reply.reason, headers=headers)
        if close:
            resp.force_close()
        try:
            await resp.prepare(raw)
            async for chunk in body:
                ctx.bytes_out += len(chunk)
                await resp.write(chunk)
            await resp.write_eof()
        except (UpstreamError, aiohttp.ClientError, ConnectionError) as exc:
            # Headers are gone already: the only honest signal left is to cut the connection.
            ctx.error = exc
            log.warning(
                "response aborted mid-stream",
                extra={"request_id": ctx.request_id, "route": ctx.route.name, "reason": str(exc)},
            )
            if raw.transport is not None:
                raw.transport.close()
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        return resp
