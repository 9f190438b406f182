"""``GET /_admin/events``: the gateway's event stream (SSE) for operators, behind admin tokens.

Filters: ``?types=breaker.*,config.*`` and ``?tenant=acme``; resume with ``Last-Event-ID``.
See docs/streams.md.
"""

from __future__ import annotations

from aiohttp import web

from gatewayd.admin.app import DAEMON
from gatewayd.admin.auth import admin_error, admin_route
from gatewayd.events import sse


async def events(request: web.Request) -> web.StreamResponse:
    """The event stream (all tenants, or the one named by ``?tenant=``)."""
    daemon = request.app[DAEMON]
    bus = daemon.services.events if daemon.services is not None else None
    if bus is None:
        return admin_error(503, "events_unavailable", "the event bus is not running")
    try:
        filter_, after = sse.parse_request(request)
    except ValueError as exc:
        return admin_error(400, "bad_request", str(exc))
    settings = daemon.config.events if daemon.config is not None else None
    heartbeat = settings.heartbeat if settings is not None else 15.0
    return await sse.serve(request, bus, filter_, after, heartbeat=heartbeat)


def install(app: web.Application) -> None:
    app.router.add_get("/_admin/events", admin_route(events))
