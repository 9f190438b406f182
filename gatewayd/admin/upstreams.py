"""Admin API for traffic control: ``GET /_admin/upstreams`` (targets, health, ejection, breaker
states) and ``POST /_admin/cache/purge`` (``{"key": "/path?query"}`` or ``{"prefix": "/v1/"}``,
optionally ``"route": name`` to purge one route's cache only)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gatewayd.admin.app import DAEMON
from gatewayd.admin.auth import admin_error, admin_route


def _plugins(request: web.Request, name: str) -> list[Any]:
    daemon = request.app[DAEMON]
    gen = daemon.gateway.current if daemon.gateway is not None else None
    if gen is None:
        return []
    return [p for p in gen.plugins if getattr(p, "name", "") == name]


@admin_route
async def list_upstreams(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    gen = daemon.gateway.current if daemon.gateway is not None else None
    now = time.monotonic()
    breakers: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for plugin in _plugins(request, "circuit_breaker"):
        for b in plugin.breakers():
            snap = b.snapshot(now)
            snap["route"] = plugin.context.route
            breakers.setdefault((b.upstream, b.target), []).append(snap)
    out = []
    for name, upstream in (gen.upstreams if gen is not None else {}).items():
        state = getattr(upstream, "state", None)
        cfg = upstream.config
        item: dict[str, Any] = {
            "name": name,
            "kind": "relay" if getattr(cfg, "relay", None) else "http",
            "balance": cfg.balance,
            "health_checks": cfg.health is not None,
            "retries": cfg.retries.attempts if cfg.retries else 0,
            "passive_ejection": cfg.passive is not None,
        }
        if state is not None:
            targets = state.snapshot()
            for t in targets:
                t["breakers"] = [
                    {k: v for k, v in s.items() if k not in ("upstream", "target")}
                    for s in breakers.get((name, t["url"]), [])
                ]
                if any(b["state"] == "open" for b in t["breakers"]):
                    t["available"] = False
            item["targets"] = targets
        out.append(item)
    return web.json_response({"upstreams": out})


@admin_route
async def purge_cache(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return admin_error(400, "bad_request", "expected a JSON body")
    if not isinstance(body, dict):
        return admin_error(400, "bad_request", "expected a JSON object")
    key, prefix, route = body.get("key"), body.get("prefix"), body.get("route")
    if (key is None) == (prefix is None) or not isinstance(key or prefix, str):
        return admin_error(400, "bad_request", "give exactly one of 'key' or 'prefix' (a string)")
    purged = 0
    caches = 0
    seen: set[int] = set()
    for plugin in _plugins(request, "cache"):
        if route is not None and plugin.context.route != route:
            continue
        if id(plugin.store) in seen:  # a global cache plugin is shared by every route's chain
            continue
        seen.add(id(plugin.store))
        caches += 1
        purged += await plugin.purge(key=key, prefix=prefix)
    return web.json_response({"purged": purged, "caches": caches})


def install(app: web.Application) -> None:
    app.router.add_get("/_admin/upstreams", list_upstreams)
    app.router.add_post("/_admin/cache/purge", purge_cache)
