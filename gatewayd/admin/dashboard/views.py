"""The dashboard's pages and actions (server-rendered; the script only refreshes figures and
follows the two streams)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from gatewayd.admin.app import DAEMON
from gatewayd.admin.audit import AUDIT
from gatewayd.admin.auth import admin_error
from gatewayd.admin.dashboard import events as dashboard_events
from gatewayd.admin.dashboard import sessions, stats, tail
from gatewayd.admin.dashboard.sessions import SESSIONS, Session
from gatewayd.chain.panels import PanelView, panels_of
from gatewayd.events import sse

log = logging.getLogger("gatewayd.admin")
JINJA: web.AppKey[jinja2.Environment] = web.AppKey("dashboard_jinja", jinja2.Environment)
PAGES = (
    ("overview", "/dashboard/", "Overview"),
    ("upstreams", "/dashboard/upstreams", "Upstreams"),
    ("relay", "/dashboard/relay", "Relay"),
    ("keys", "/dashboard/keys", "Keys & tenants"),
    ("audit", "/dashboard/audit", "Audit"),
    ("tail", "/dashboard/tail", "Live tail"),
    ("events", "/dashboard/events", "Events"),
    ("plugins", "/dashboard/plugins", "Plugins"),
)
PANEL_TIMEOUT = 2.0
View = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


def render(
    request: web.Request,
    session: Session | None,
    page: str,
    context: dict[str, Any],
    status: int = 200,
) -> web.Response:
    base = {
        "page": page,
        "pages": PAGES,
        "session": session,
        "operator": session is not None and session.role == "operator",
        "csrf": session.csrf if session is not None else "",
    }
    return aiohttp_jinja2.render_template(
        f"{page}.html", request, base | context, app_key=JINJA, status=status
    )


def page(view: View) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A page or stream for logged-in admins: no session sends a browser to the login page
    (a stream or JSON gets 401); a POST without the session's CSRF token is refused (403)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        session = sessions.current(request)
        if session is None:
            if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
                raise web.HTTPSeeOther("/dashboard/login")
            return admin_error(401, "unauthorized", "log in to the dashboard first")
        # who acts, as the admin API's guard says it (the audit log's actor)
        request["admin_token"] = session.token_id
        request["admin_role"] = session.role
        if request.method == "POST":
            form = await request.post()
            sent = form.get("csrf")
            if not isinstance(sent, str) or not sessions.same(sent, session.csrf):
                return admin_error(403, "csrf", "the form's CSRF token is missing or wrong")
        try:
            return await view(request, session)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("dashboard page failed", extra={"path": request.path})
            return admin_error(500, "dashboard_error", "this dashboard page failed (see the log)")

    handler.__name__ = view.__name__
    return handler


def operator_only(view: View) -> View:
    async def checked(request: web.Request, session: Session) -> web.StreamResponse:
        if session.role != "operator":
            return admin_error(403, "forbidden", "this action needs an operator admin token")
        return await view(request, session)

    checked.__name__ = view.__name__
    return checked


# -- login ---------------------------------------------------------------------------------


async def login_form(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    nonce = secrets.token_urlsafe(16)
    response = render(
        request,
        None,
        "login",
        {"csrf": request.app[SESSIONS].login_token(nonce), "error": error},
        status=status,
    )
    sessions.set_cookie(response, request, sessions.LOGIN_COOKIE, nonce)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    nonce = request.cookies.get(sessions.LOGIN_COOKIE, "")
    sent = form.get("csrf")
    store = request.app[SESSIONS]
    if not nonce or not isinstance(sent, str) or not sessions.same(sent, store.login_token(nonce)):
        return admin_error(403, "csrf", "the login form's CSRF token is missing or wrong")
    token = form.get("token")
    found = await sessions.identify(request, token) if isinstance(token, str) else None
    if found is None:
        return await login_form(request, "This admin token is not accepted.", status=403)
    token_id, role, how, token_hash = found
    request["admin_token"] = token_id
    session = store.open(token_id, token_hash, role=role, how=how)
    log.info("dashboard login", extra={"admin": token_id})
    response = web.HTTPSeeOther("/dashboard/")
    sessions.set_cookie(response, request, sessions.COOKIE, session.id)
    sessions.clear_cookie(response, sessions.LOGIN_COOKIE)
    raise response


@page
async def logout(request: web.Request, session: Session) -> web.StreamResponse:
    request.app[SESSIONS].close(session.id)
    response = web.HTTPSeeOther("/dashboard/login")
    sessions.clear_cookie(response, sessions.COOKIE)
    raise response


# -- pages ---------------------------------------------------------------------------------


@page
async def overview(request: web.Request, session: Session) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    view = stats.overview(daemon, stats.dashboard_state(daemon))
    return render(
        request, session, "overview", {"o": view, "reloaded": request.query.get("reload")}
    )


@page
async def overview_json(request: web.Request, session: Session) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    return web.json_response(stats.overview(daemon, stats.dashboard_state(daemon)))


@page
@operator_only
async def reload(request: web.Request, session: Session) -> web.StreamResponse:
    log.info("dashboard reload", extra={"admin": session.token_id})
    ok = await request.app[DAEMON].reload()
    raise web.HTTPSeeOther(f"/dashboard/?reload={'ok' if ok else 'refused'}")


@page
async def upstreams(request: web.Request, session: Session) -> web.StreamResponse:
    return render(
        request, session, "upstreams", {"upstreams": stats.upstreams(request.app[DAEMON])}
    )


@page
async def relay(request: web.Request, session: Session) -> web.StreamResponse:
    return render(request, session, "relay", {"relay": stats.relay(request.app[DAEMON])})


@page
async def keys(request: web.Request, session: Session) -> web.StreamResponse:
    return render(request, session, "keys", {"keys": await stats.keys(request.app[DAEMON])})


@page
async def audit(request: web.Request, session: Session) -> web.StreamResponse:
    return render(request, session, "audit", {"audit": stats.audit(request.app.get(AUDIT))})


@page
async def tail_page(request: web.Request, session: Session) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    routes = sorted(r.name for r in daemon.config.routes) if daemon.config is not None else []
    try:
        chosen = tail.TailFilter.parse(request.query)
    except ValueError:
        chosen = tail.TailFilter()
    return render(
        request, session, "tail", {"routes": routes, "filter": chosen, "classes": tail.CLASSES}
    )


@page
async def tail_stream(request: web.Request, session: Session) -> web.StreamResponse:
    taps = stats.taps_of(request.app[DAEMON])
    if taps is None:
        return admin_error(503, "tail_unavailable", "the daemon has no request taps")
    try:
        chosen = tail.TailFilter.parse(request.query)
    except ValueError as exc:
        return admin_error(400, "bad_request", str(exc))
    if request.app[tail.TAILS].clients >= tail.MAX_CLIENTS:
        return admin_error(503, "too_many_tails", f"{tail.MAX_CLIENTS} live tails are open")
    return await tail.serve(request, taps, chosen)


@page
async def events_page(request: web.Request, session: Session) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    bus = daemon.services.events if daemon.services is not None else None
    return render(request, session, "events", {"events": stats.recent_events(bus)})


@page
async def events_stream(request: web.Request, session: Session) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    bus = daemon.services.events if daemon.services is not None else None
    if bus is None:
        return admin_error(503, "events_unavailable", "the event bus is not running")
    try:
        filter_, after = sse.parse_request(request)
    except ValueError as exc:
        return admin_error(400, "bad_request", str(exc))
    heartbeat = daemon.config.events.heartbeat if daemon.config is not None else 15.0
    return await dashboard_events.serve(request, bus, filter_, after, heartbeat)


@page
async def plugins(request: web.Request, session: Session) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    gen = daemon.gateway.current if daemon.gateway is not None else None
    instances: Sequence[Any] = gen.plugins if gen is not None else ()
    classes: dict[str, type[Any]] = {}
    for p in instances:
        classes.setdefault(getattr(type(p), "name", "") or type(p).__name__, type(p))
    shown = []
    for name, cls in sorted(classes.items()):
        try:
            declared = panels_of(cls)
        except ValueError as exc:
            log.error("plugin dashboard panels refused", extra={"plugin": name, "error": str(exc)})
            shown.append({"plugin": name, "title": name, "error": "its panels are malformed"})
            continue
        mine = [p for p in instances if type(p) is cls]
        for panel in declared:
            if panel.role == "operator" and session.role != "operator":
                continue
            shown.append({"plugin": name, "title": panel.title} | await _render(name, panel, mine))
    return render(request, session, "plugins", {"panels": shown})


async def _render(plugin: str, panel: Any, instances: list[Any]) -> dict[str, Any]:
    try:
        async with asyncio.timeout(PANEL_TIMEOUT):
            view = await panel.render(instances)
        if not isinstance(view, PanelView):
            raise TypeError(f"render returned {type(view).__name__}, not a PanelView")
    except Exception:
        log.exception(
            "plugin dashboard panel failed", extra={"plugin": plugin, "panel": panel.title}
        )
        return {"error": "this panel failed (see the log)"}
    return {"view": view}
