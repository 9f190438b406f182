"""The cache's admin route: ``POST /_admin/plugins/cache/purge`` (operator), and its
dashboard panel (per route: the store, its entries and size, hits and misses).

Body: ``{"key": "/path?query"}`` (every variant of that request target) or ``{"prefix":
"/v1/"}``, optionally ``"route": name`` to purge one route's cache only. Answers
``{"purged": n, "caches": m}``: entries dropped, and how many distinct caches were asked (a
global ``cache`` plugin is one cache shared by every route).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gatewayd.chain import AdminRequest, PanelView, PluginError, Response


async def purge(request: AdminRequest, instances: Sequence[Any]) -> Response:
    body = request.body
    if not isinstance(body, dict):
        raise PluginError(400, "bad_request", "expected a JSON object")
    key, prefix, route = body.get("key"), body.get("prefix"), body.get("route")
    if (key is None) == (prefix is None) or not isinstance(key or prefix, str):
        raise PluginError(400, "bad_request", "give exactly one of 'key' or 'prefix' (a string)")
    if route is not None and not isinstance(route, str):
        raise PluginError(400, "bad_request", "'route' must be a route name")
    purged = 0
    seen: set[int] = set()
    for plugin in instances:
        if route is not None and plugin.context.route != route:
            continue
        if id(plugin.store) in seen:  # one store kept across reloads, or shared by routes
            continue
        seen.add(id(plugin.store))
        purged += await plugin.purge(key=key, prefix=prefix)
    return Response.json({"purged": purged, "caches": len(seen)})


async def panel(instances: Sequence[Any]) -> PanelView:
    """The dashboard's "Cache" panel: one row per route with a cache."""
    rows = []
    for plugin in instances:
        store = plugin.store
        memory = not store.is_async
        c = plugin.counts
        rows.append(
            (
                plugin.context.route or "(global)",
                "memory" if memory else "redis",
                len(store) if memory else None,
                store.bytes if memory else None,
                c["HIT"],
                c["STALE"],
                c["MISS"],
                c["BYPASS"],
            )
        )
    columns = ("route", "store", "entries", "bytes", "hits", "stale", "misses", "bypass")
    note = "" if rows else "no route of the serving config has a cache"
    return PanelView(columns, sorted(rows, key=lambda r: str(r[0])), note)
