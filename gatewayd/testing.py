"""Test a plugin without a daemon: ``PluginHarness`` runs one plugin's phases in-process.

    h = PluginHarness(MyPlugin, {"option": 1})
    reply = await h.request("GET", "/path", headers={"Authorization": "Bearer x"})
    assert reply.status == 200

The "backend" is a coroutine ``upstream(ctx) -> Response`` (default: 200 with an empty body).
``h.reload(config)`` builds a new instance the way a SIGHUP does, state hand-over included.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from multidict import CIMultiDict

from gatewayd.chain.api import (
    PluginContext,
    Request,
    RequestContext,
    Response,
    RouteInfo,
    new_request_id,
)
from gatewayd.chain.builder import Chain
from gatewayd.chain.handover import Handover
from gatewayd.chain.runner import run_done, run_request, run_response

Upstream = Callable[[RequestContext], Awaitable[Response]]


async def ok_upstream(ctx: RequestContext) -> Response:
    return Response(200, {"Content-Type": "text/plain"}, b"ok")


class PluginHarness:
    def __init__(
        self,
        plugin_cls: type[Any],
        config: dict[str, Any] | None = None,
        upstream: Upstream = ok_upstream,
        services: Any = None,
        route: str = "test",
        handover: Handover | None = None,
    ) -> None:
        self.plugin_cls = plugin_cls
        self.config_data = config or {}
        self.upstream = upstream
        self.services = services
        self.route = route
        self.handover = handover or Handover()
        model = plugin_cls.Config.model_validate(self.config_data)
        identity = f"route:{route}/{plugin_cls.name}/" + json.dumps(
            self.config_data, sort_keys=True, default=str
        )
        ctx = PluginContext(
            f"route:{route}", route, "test", identity, services, self.handover, None
        )
        self.plugin = plugin_cls(model, ctx)
        self.chain = Chain.of([(plugin_cls.name, self.plugin)])

    def reload(self, config: dict[str, Any] | None = None) -> PluginHarness:
        return PluginHarness(
            self.plugin_cls,
            config,
            self.upstream,
            self.services,
            self.route,
            Handover(self.handover),
        )

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        client_ip: str = "127.0.0.1",
        query_string: str = "",
    ) -> Response:
        """Run the phases for one request; the reply's body is collected into bytes."""
        h = CIMultiDict(headers or {})
        req = Request(
            method,
            path,
            query_string,
            h,
            h.get("Host", "test"),
            "http",
            client_ip,
            body,
            len(body) if body is not None else None,
        )
        ctx = RequestContext(req, new_request_id(), RouteInfo(self.route, "test", ""))
        self.last_context = ctx
        reply, seen = await run_request(self.chain, ctx)
        try:
            if reply is None:
                reply = await self.upstream(ctx)
            reply = await run_response(self.chain, ctx, reply, seen)
            ctx.response = reply
            if not isinstance(reply.body, bytes):
                reply.body = b"".join([c async for c in reply.body])
            return reply
        finally:
            await run_done(self.chain, ctx, seen)
