"""The request path: normalise, match, run the chain, forward, stream the reply back."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Mapping

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
from gatewayd.chain.runner import failure_response, run_done, run_request, run_response
from gatewayd.config.schema import TimeoutsConfig
from gatewayd.observability.access import AccessLog
from gatewayd.observability.metrics import NO_ROUTE, Metrics
from gatewayd.observability.taps import RequestTaps
from gatewayd.proxy import websocket
from gatewayd.proxy.client_ip import ListenerTrust, client_ip
from gatewayd.proxy.errors import UpstreamError
from gatewayd.proxy.headers import add_forwarded, strip_hop_by_hop, valid_request_id
from gatewayd.proxy.leases import LeaseUpstreams, lease_of
from gatewayd.proxy.upstream import ManagedUpstream
from gatewayd.proxy.websocket import WebSocketRegistry
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


def error_reply(ctx: RequestContext, exc: Exception) -> Response:
    """The reply for an upstream failure (:class:`UpstreamError`: 502/503/504 with
    ``Retry-After`` when it has one) or for a request body that broke a plugin's limit while it
    was sent (:class:`PluginError`, e.g. 413), with the JSON error body."""
    if isinstance(exc, PluginError):
        ctx.error = exc
        return failure_response(ctx, "request", exc)
    assert isinstance(exc, UpstreamError)
    ctx.error = ctx.error or exc
    if isinstance(ctx.error, PluginError):  # e.g. the body grew past a limit
        return failure_response(ctx, "request", ctx.error)
    retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return ctx.error_response(exc.status, exc.code, exc.message, retry)


class Dispatcher:
    """Serves requests for one generation: its route table, chains and upstreams.

    A request goes listener -> route -> chain -> ``upstream.send`` (or ``upgrade``) and back;
    nothing here calls into the layer above (the gateway pins the generation, owns the relay
    endpoint and hands each request to the serving generation's dispatcher)."""

    def __init__(
        self,
        table: RouteTable,
        upstreams: Mapping[str, ManagedUpstream],
        metrics: Metrics,
        access_log: AccessLog | None,
        leases: LeaseUpstreams | None = None,
        websockets: WebSocketRegistry | None = None,
        runtime: Mapping[str, ManagedUpstream] | None = None,
        taps: RequestTaps | None = None,
    ) -> None:
        self.table = table
        self.upstreams = upstreams
        # The upstreams added at run time (process-wide, shared by every generation; the
        # configured ones win): gatewayd.daemon.runtime_upstreams.
        self.runtime: Mapping[str, ManagedUpstream] = runtime if runtime is not None else {}
        # Who sees each finished request (the dashboard's live tail): the process's taps.
        self.taps = taps if taps is not None else RequestTaps()
        self.metrics = metrics
        self.access_log = access_log
        # ``relay:`` routes: the upstream of each lease with peers (made on demand, bounded).
        self.leases = leases
        # The process's open WebSockets (gatewayd.proxy.websocket.WebSocketRegistry).
        self.websockets = websockets
        # Request ids: 128 random bits from a generator seeded from os.urandom, without a
        # system call per request (ids must be unique, not secret).
        self._ids = random.Random()
        # The Server header of the replies built here (``server.header``; the gateway sets it
        # per generation). None: the listener's response writer drops the header instead.
        self.server_header: str | None = "gatewayd"

    async def handle(
        self, raw: web.BaseRequest, listener: ListenerTrust | None = None
    ) -> web.StreamResponse:
        """Serve one request (the caller has pinned this dispatcher's generation).

        One coroutine from request to reply on purpose: every extra layer of ``await`` costs on
        each suspension of every request."""
        rid = raw.headers.get("X-Request-ID")
        if rid is None or not valid_request_id(rid):
            rid = f"{self._ids.getrandbits(128):032x}"
        target, _, query = raw.raw_path.partition("?")
        try:
            path = normalise_path(target)
        except BadPath as exc:
            return self.refuse(raw, rid, target, 400, "bad_request", str(exc), listener)
        host = raw.host
        route = self.table.match(host, path, raw.method)
        if route is None:
            allowed = self.table.allowed_methods(host, path)
            if allowed:
                return self.refuse(
                    raw,
                    rid,
                    path,
                    405,
                    "method_not_allowed",
                    f"method {raw.method} not allowed here",
                    listener,
                    ", ".join(sorted(allowed)),
                )
            return self.refuse(
                raw, rid, path, 404, "no_route", "no route matches this request", listener
            )
        headers = CIMultiDict(raw.headers)
        for name in PRINCIPAL_HEADERS:  # only the gateway may set these (ctx.authenticate does)
            if name in headers:
                del headers[name]
        request = Request(
            raw.method,
            path,
            query,
            headers,
            host,
            raw.scheme,
            client_ip(raw.transport, headers, listener),
            None,
            raw.content_length,
        )
        ctx = RequestContext(request, rid, route.info)
        if raw.version >= (1, 1):  # interim (1xx) responses go to HTTP/1.1 clients only
            ctx.interim_writer = raw.writer
        if raw.body_exists:
            request.body = client_body(raw, ctx)
        relay = route.config.relay
        if relay is not None:
            ctx.upstream = "relay:" + (lease_of(route, path) if relay == "by_path" else relay)
        chain = route.chain
        rm = self.metrics.route(route.name)
        rm.inflight.inc()
        seen = len(chain.plugins) - 1
        status = 500
        try:
            reply, seen = await run_request(chain, ctx)
            if reply is None and request.is_websocket and self.websockets is not None:
                upgraded = await self.upgrade(raw, ctx, route)
                if isinstance(upgraded, web.StreamResponse):  # relayed and closed
                    status = 101
                    return upgraded
                reply = upgraded  # refused before the upgrade: an error reply
            if reply is None:
                started = time.monotonic()
                try:
                    reply = await self.send(ctx, route)
                except (UpstreamError, PluginError) as exc:
                    reply = self.failed(ctx, exc)
                else:
                    if ctx.upstream is not None:
                        self.metrics.upstream(ctx.upstream).observe(time.monotonic() - started)
            reply = await run_response(chain, ctx, reply, seen)
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
            rm.request_size.observe(ctx.bytes_in)
            rm.response_size.observe(ctx.bytes_out)
            principal = ctx.principal
            if principal is not None and principal.tenant is not None:
                self.metrics.tenants.count(principal.tenant, status == 429)
            if self.access_log is not None:
                self.access_log.record(ctx, status, ctx.upstream)
            if self.taps.active:
                self.taps.emit(ctx, status)

    def refuse(
        self,
        raw: web.BaseRequest,
        rid: str,
        path: str,
        status: int,
        code: str,
        message: str,
        listener: ListenerTrust | None = None,
        allow: str | None = None,
    ) -> web.Response:
        """An error before any route was chosen: counted and access-logged like the rest
        (``allow``: the Allow header of a 405)."""
        self.metrics.route(NO_ROUTE).count(status)
        if self.access_log is not None:
            ip = client_ip(raw.transport, CIMultiDict(raw.headers), listener)
            request = Request(
                raw.method, path, "", CIMultiDict(), raw.host, raw.scheme, ip, None, None
            )  # fmt: skip
            self.access_log.record(RequestContext(request, rid, NO_ROUTE_INFO), status, None)
        resp = json_error(status, code, message, rid)
        if allow is not None:
            resp.headers["Allow"] = allow
        if self.server_header is not None:
            resp.headers["Server"] = self.server_header
        return resp

    def upstream_of(self, ctx: RequestContext) -> ManagedUpstream:
        """The upstream ``ctx.upstream`` names: configured, or a relay lease's."""
        name = ctx.upstream
        if name is None:
            raise UpstreamError(502, "no_upstream", f"route '{ctx.route.name}' has no upstream")
        upstream = self.upstreams.get(name) or self.runtime.get(name)
        if upstream is not None:
            return upstream
        if name.startswith("relay:") and self.leases is not None:
            return self.leases.get(name[6:])
        raise PluginError(500, "unknown_upstream", f"no upstream named '{name}'")

    def upstream_path(self, ctx: RequestContext, route: Route) -> str:
        path = ctx.request.path
        if route.config.relay == "by_path":
            return "/" + path[len(route.prefix) :].lstrip("/").partition("/")[2]
        return route.upstream_path(path)

    def timeouts(self, route: Route, upstream: ManagedUpstream) -> TimeoutsConfig:
        return route.config.timeouts or upstream.config.timeouts

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
        upstream = self.upstream_of(ctx)
        headers = self.upstream_headers(ctx, route)
        path = self.upstream_path(ctx, route)
        return upstream.send(ctx, path, headers, self.timeouts(route, upstream))

    async def forward(self, ctx: RequestContext) -> Response:
        """``PluginContext.forward``: send ``ctx.request`` to ``ctx.upstream`` as a request of
        ``ctx.route`` would go, without running a chain; failures are error replies."""
        route = self.table.by_name.get(ctx.route.name)
        if route is None:
            return ctx.error_response(502, "no_route", f"no route named '{ctx.route.name}'")
        try:
            return await self.send(ctx, route)
        except (UpstreamError, PluginError) as exc:
            return self.failed(ctx, exc)

    async def upgrade(
        self, raw: web.BaseRequest, ctx: RequestContext, route: Route
    ) -> web.StreamResponse | Response:
        """A WebSocket through the request's upstream, whatever its kind."""
        assert self.websockets is not None
        try:
            upstream = self.upstream_of(ctx)
        except (UpstreamError, PluginError) as exc:
            return self.failed(ctx, exc)
        headers = self.upstream_headers(ctx, route)
        return await websocket.pass_through(
            raw,
            ctx,
            upstream,
            self.upstream_path(ctx, route),
            headers,
            self.timeouts(route, upstream),
            route.config.websocket,
            self.websockets,
        )

    def failed(self, ctx: RequestContext, exc: Exception) -> Response:
        """The error reply for an upstream failure (or a body that broke a plugin's limit)."""
        upstream, attempts = ctx.upstream, ctx.attempts
        if (
            isinstance(exc, UpstreamError)
            and not isinstance(ctx.error, PluginError)
            and upstream
            and attempts
            and attempts[-1].error
        ):
            self.metrics.upstream_errors.labels(upstream, attempts[-1].error).inc()
        return error_reply(ctx, exc)

    def reply(self, raw: web.BaseRequest, ctx: RequestContext, reply: Response) -> web.Response:
        """A reply whose body is bytes, as one aiohttp response."""
        headers = reply.headers
        headers["X-Request-ID"] = ctx.request_id
        if self.server_header is not None:  # the backend's is replaced, as nginx does
            headers["Server"] = self.server_header
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
        body = reply.body
        if isinstance(body, bytes | bytearray):
            return self.reply(raw, ctx, reply)
        headers = reply.headers
        headers["X-Request-ID"] = ctx.request_id
        if self.server_header is not None:
            headers["Server"] = self.server_header
        close = headers.popall("Connection", None) is not None
        resp = web.StreamResponse(status=reply.status, reason=reply.reason, headers=headers)
        if close:
            resp.force_close()
        # An event stream is counted open while it is written (gatewayd_sse_streams_open).
        sse = headers.get("Content-Type", "").startswith("text/event-stream")
        if sse:
            self.metrics.route(ctx.route.name).sse.inc()
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
            if sse:
                self.metrics.route(ctx.route.name).sse.dec()
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        return resp
