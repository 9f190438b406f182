"""Admin API for upstreams: ``GET /_admin/upstreams`` (every kind: targets, health, ejection,
and what plugins such as the breaker say of each target). The cache purge moved into the
cache plugin (``POST /_admin/plugins/cache/purge``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gatewayd.admin.app import DAEMON
from gatewayd.admin.auth import admin_route
from gatewayd.admin.runtime import AdminRuntime


def upstream_views(daemon: AdminRuntime) -> list[dict[str, Any]]:
    """Every upstream of the serving generation, whatever its kind (HTTP, relay lease, a
    plugin's), with its targets. Plugins that implement ``describe_target(upstream, target)``
    (``circuit_breaker``) add what they know of a target under ``plugins.<name>`` (a list: one
    entry per instance, e.g. per route); one that says ``"available": false`` takes the target
    out of ``available``. Upstreams added at run time (``services.upstreams``) are listed too,
    with ``"source": "runtime"`` and their ``owner``. (The dashboard shows the same.)"""
    gen = daemon.gateway.current if daemon.gateway is not None else None
    if gen is None:
        return []
    describers = [p for p in gen.plugins if callable(getattr(p, "describe_target", None))]
    upstreams: list[Any] = list(gen.upstreams.values())
    if gen.dispatcher.leases is not None:
        upstreams += gen.dispatcher.leases.all()
    runtime = gen.dispatcher.runtime
    owners = daemon.services.upstreams.runtime() if daemon.services is not None else {}
    upstreams += [u for name, u in runtime.items() if name not in gen.upstreams]
    out = []
    for upstream in upstreams:
        item = upstream.snapshot()
        name: str = upstream.name
        if name in owners and runtime.get(name) is upstream:
            item["source"] = "runtime"
            item["owner"] = owners[name]
        for t in item["targets"]:
            notes: dict[str, list[Any]] = {}
            for plugin in describers:
                note = plugin.describe_target(name, t["id"])
                if note is not None:
                    plugin_name = getattr(plugin, "name", "") or type(plugin).__name__
                    notes.setdefault(plugin_name, []).append(note)
            if notes:
                t["plugins"] = notes
                if any(n.get("available") is False for ns in notes.values() for n in ns):
                    t["available"] = False
        out.append(item)
    return out


@admin_route
async def list_upstreams(request: web.Request) -> web.Response:
    """``GET /_admin/upstreams``: :func:`upstream_views`."""
    return web.json_response({"upstreams": upstream_views(request.app[DAEMON])})


def install(app: web.Application) -> None:
    app.router.add_get("/_admin/upstreams", list_upstreams)
