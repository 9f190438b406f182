"""The dashboard on the admin listener, at ``/dashboard/`` (the JSON API stays under
``/_admin``): server-rendered pages (aiohttp-jinja2, autoescaped), usable without JavaScript;
one static script refreshes the overview's figures and follows the live tail and the event
stream. Login with an admin token into a session cookie (see :mod:`.sessions`); see
docs/dashboard.md for the pages.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from gatewayd.admin.app import DAEMON
from gatewayd.admin.auth import AdminAuth
from gatewayd.admin.dashboard import stats, tail, views
from gatewayd.admin.dashboard.sessions import LOGIN_AUTH, SESSIONS, SessionStore

PREFIX = "/dashboard"
STATIC = Path(__file__).resolve().parent.parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)


def ago(at: float | None) -> str:
    """``12 s ago`` / ``3 min ago`` for a time since the epoch; ``never`` for None."""
    if at is None:
        return "never"
    return duration(max(time.time() - at, 0.0)) + " ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def stamp(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


async def start(app: web.Application) -> None:
    daemon = app[DAEMON]
    bus = daemon.services.events if daemon.services is not None else None
    await stats.dashboard_state(daemon).start(bus)


async def stop(app: web.Application) -> None:
    await stats.dashboard_state(app[DAEMON]).close()


def install(app: web.Application) -> None:
    aiohttp_jinja2.setup(
        app,
        app_key=views.JINJA,
        loader=jinja2.PackageLoader("gatewayd.admin", "templates"),
        autoescape=True,
        default_helpers=False,
        filters={"ago": ago, "duration": duration, "stamp": stamp, "number": number},
    )
    app[SESSIONS] = SessionStore()
    app[LOGIN_AUTH] = AdminAuth()
    app[tail.TAILS] = tail.TailHub()
    app.on_response_prepare.append(security_headers)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    r = app.router
    r.add_get(PREFIX, lambda request: _to_dashboard())
    r.add_get(PREFIX + "/login", views.login_form)
    r.add_post(PREFIX + "/login", views.login)
    r.add_post(PREFIX + "/logout", views.logout)
    r.add_get(PREFIX + "/", views.overview)
    r.add_get(PREFIX + "/overview.json", views.overview_json)
    r.add_post(PREFIX + "/reload", views.reload)
    r.add_get(PREFIX + "/upstreams", views.upstreams)
    r.add_get(PREFIX + "/relay", views.relay)
    r.add_get(PREFIX + "/keys", views.keys)
    r.add_get(PREFIX + "/audit", views.audit)
    r.add_get(PREFIX + "/tail", views.tail_page)
    r.add_get(PREFIX + "/tail/stream", views.tail_stream)
    r.add_get(PREFIX + "/events", views.events_page)
    r.add_get(PREFIX + "/events/stream", views.events_stream)
    r.add_get(PREFIX + "/plugins", views.plugins)
    r.add_static(PREFIX + "/static", STATIC, append_version=True)


async def _to_dashboard() -> web.StreamResponse:
    raise web.HTTPMovedPermanently(PREFIX + "/")
