"""What the dashboard tests share: a config with an operator and a viewer token and a
backend route, and logging in with a real aiohttp client (cookie jar and CSRF token)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import bcrypt
from aiohttp import web
from support import upstream_url

OPERATOR = "dashboard-operator-token"
VIEWER = "dashboard-viewer-token"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def hashed(token: str) -> str:
    return bcrypt.hashpw(token.encode(), bcrypt.gensalt(4)).decode()


def backend_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404, text="no")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="broken")

    app = web.Application()
    app.router.add_get("/healthz", ok)  # the health check's
    app.router.add_get("/api/ok", ok)
    app.router.add_get("/api/missing", missing)
    app.router.add_get("/api/broken", broken)
    return app


def dashboard_config(config: Any, server: Any, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = config(
        upstreams={"api": {"targets": [upstream_url(server)], "health": {"interval": "1s"}}},
        routes=[{"name": "api", "match": {"path": "/api/"}, "upstream": "api"}],
        **extra,
    )
    cfg["admin"]["tokens"] = [
        {"id": "ops", "hash": hashed(OPERATOR), "role": "operator"},
        {"id": "watcher", "hash": hashed(VIEWER), "role": "viewer"},
    ]
    return cfg


def client() -> aiohttp.ClientSession:
    # the admin listener is 127.0.0.1: aiohttp's jar keeps cookies of IP hosts only when unsafe
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found is not None, html
    return found.group(1)


async def log_in(s: aiohttp.ClientSession, admin_url: str, token: str = OPERATOR) -> str:
    """Log in through the form; the session's CSRF token (from the overview page)."""
    async with s.get(admin_url + "/dashboard/login") as r:
        assert r.status == 200
        login_csrf = csrf_of(await r.text())
    form = {"token": token, "csrf": login_csrf}
    async with s.post(admin_url + "/dashboard/login", data=form, allow_redirects=False) as r:
        assert r.status == 303, await r.text()
        assert r.headers["Location"] == "/dashboard/"
    async with s.get(admin_url + "/dashboard/", headers={"Accept": "text/html"}) as r:
        assert r.status == 200
        return csrf_of(await r.text())
