"""The admin listener (loopback by default): /metrics, /_health, /_ready and the admin API."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_async.aio.web import server_stats

from gatewayd.admin.runtime import AdminRuntime
from gatewayd.chain.api import error_body

DAEMON: web.AppKey[AdminRuntime] = web.AppKey("daemon")


async def health(request: web.Request) -> web.Response:
    """Liveness: the process and its event loop answer."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: a generation is serving and the daemon is not shutting down."""
    daemon = request.app[DAEMON]
    if not daemon.ready:
        return web.json_response({"status": "not ready"}, status=503)
    gen = daemon.gateway.current if daemon.gateway else None
    return web.json_response({"status": "ready", "generation": gen.number if gen else None})


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    """``server.header`` on every admin response (aiohttp has put its own, with versions, in
    by now): replaced, or dropped when the setting is empty. Read per response: a reload's
    new value applies at once."""
    config = request.app[DAEMON].config
    value = config.server.header if config is not None else "gatewayd"
    if value:
        response.headers["Server"] = value
    else:
        response.headers.popall("Server", None)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (no such path, a method a path does not take, a body over the
    limit) in the JSON error body like every other admin answer, not aiohttp's plain text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = _CODES.get(exc.status, "error")
        message = {404: f"no admin endpoint {request.path}"}.get(exc.status, exc.reason)
        body = error_body(code, message, uuid.uuid4().hex)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.Response(
            status=exc.status, body=body, content_type="application/json", headers=headers
        )


# Extension point: each module of the admin API has an ``install(app)`` that adds its routes.
RouteInstaller = Callable[[web.Application], None]


def installers() -> list[RouteInstaller]:
    from gatewayd.admin import api as identity_api
    from gatewayd.admin import audit as audit_api
    from gatewayd.admin import dashboard
    from gatewayd.admin import events as events_api
    from gatewayd.admin import openapi as openapi_api
    from gatewayd.admin import plugins as plugins_api
    from gatewayd.admin import relay as relay_api
    from gatewayd.admin import upstreams as upstreams_api

    return [
        identity_api.install,
        events_api.install,
        relay_api.install,
        upstreams_api.install,
        plugins_api.install,
        openapi_api.install,
        audit_api.install,
        dashboard.install,
    ]


def build_admin_app(
    daemon: AdminRuntime, installers: list[RouteInstaller] | None = None
) -> web.Application:
    app = web.Application(client_max_size=2 * 1024 * 1024, middlewares=[json_errors])
    app[DAEMON] = daemon
    app.on_response_prepare.append(server_header)
    app.router.add_get("/metrics", server_stats)
    app.router.add_get("/_health", health)
    app.router.add_get("/_ready", ready)
    for install in installers if installers is not None else globals()["installers"]():
        install(app)
    from gatewayd.admin.plugins import install_mounts

    install_mounts(app)  # last: it matches any /_admin/<segment>
    return app
