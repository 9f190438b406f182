"""Plugins' own admin routes (see :mod:`gatewayd.chain.admin`), behind the admin tokens.

- ``GET /_admin/plugins``: the plugin types and the admin routes each contributes
- ``<METHOD> /_admin/plugins/<plugin name><path>``: a plugin's route; its handler gets the
  plugin's instances in the serving generation. A plugin with an ``admin_path``
  (``/_admin/llm``) has the same routes there too (see :mod:`gatewayd.chain.admin`). 404 for
  an unknown plugin or path, 405 for a known path with another method, 403 for an
  ``operator`` route called with a ``viewer`` token, 500 (logged, no traceback in the body)
  when the handler raises.

The plugin types are those installed when the admin API is first used plus those of the
serving generation's instances (a plugin pip-installed later has its routes once a reload uses
it). Deprecated paths of endpoints that moved into plugins are kept as aliases
(:data:`ALIASES`), answered with a ``Deprecation`` header and a ``Link`` to the new path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from gatewayd.admin.app import DAEMON
from gatewayd.admin.auth import admin_error, admin_route, admin_route_by_role, has_role
from gatewayd.chain import PluginError, Response
from gatewayd.chain.admin import AdminRequest, AdminRoute, admin_path_of, admin_routes_of
from gatewayd.chain.registry import PluginRegistry

log = logging.getLogger("gatewayd.admin")
PREFIX = "/_admin/plugins"
ALIASES = {"/_admin/cache/purge": ("cache", "/purge")}  # moved into the cache plugin (issue 10)


class PluginAdmin:
    """The plugin types with admin routes, their validated routes (cached per class)."""

    def __init__(self) -> None:
        self._installed: dict[str, type[Any]] | None = None
        self._routes: dict[type[Any], tuple[AdminRoute, ...] | str] = {}
        self._refused: set[str] = set()

    def types(self, instances: Sequence[Any]) -> dict[str, type[Any]]:
        if self._installed is None:
            self._installed = {n: t.cls for n, t in PluginRegistry.discover().types.items()}
        out = dict(self._installed)
        for p in instances:
            cls = type(p)
            name = getattr(cls, "name", "")
            if name and cls not in out.values():
                out.setdefault(name, cls)
        return out

    def routes(self, cls: type[Any]) -> tuple[AdminRoute, ...] | str:
        """The class's routes, or why they cannot be served (logged once)."""
        cached = self._routes.get(cls)
        if cached is None:
            try:
                cached = admin_routes_of(cls)
            except Exception as exc:
                cached = f"{type(exc).__name__}: {exc}"
                where = f"{cls.__module__}.{cls.__qualname__}"
                log.error("plugin admin routes refused", extra={"plugin": where, "error": cached})
            self._routes[cls] = cached
        return cached

    def mounts(self, instances: Sequence[Any]) -> dict[str, str]:
        """``admin_path`` -> plugin name, for the plugins that ask for one (a malformed,
        reserved or doubly claimed path is logged once and left out)."""
        out: dict[str, str] = {}
        claimed: dict[str, list[str]] = {}
        for name, cls in self.types(instances).items():
            try:
                path = admin_path_of(cls)
            except ValueError as exc:
                self._refuse_mount(cls, str(exc))
                continue
            if path is not None:
                claimed.setdefault(path, []).append(name)
        for path, names in claimed.items():
            if len(names) == 1:
                out[path] = names[0]
            else:
                for name in names:
                    self._refuse_mount(name, f"admin_path {path!r} is claimed by {sorted(names)}")
        return out

    def _refuse_mount(self, what: Any, why: str) -> None:
        key = f"{what}:{why}"
        if key not in self._refused:
            self._refused.add(key)
            log.error("plugin admin path refused", extra={"plugin": str(what), "error": why})


PLUGIN_ADMIN: web.AppKey[PluginAdmin] = web.AppKey("plugin_admin", PluginAdmin)


def _serving_plugins(request: web.Request) -> Sequence[Any]:
    daemon = request.app[DAEMON]
    gen = daemon.gateway.current if daemon.gateway is not None else None
    return gen.plugins if gen is not None else ()


@admin_route
async def list_plugins(request: web.Request) -> web.Response:
    admin = request.app[PLUGIN_ADMIN]
    out = []
    instances = _serving_plugins(request)
    mounted = {plugin: path for path, plugin in admin.mounts(instances).items()}
    for name, cls in sorted(admin.types(instances).items()):
        routes = admin.routes(cls)
        item: dict[str, Any] = {"name": name, "routes": []}
        if name in mounted:
            item["admin_path"] = mounted[name]
        if isinstance(routes, str):
            item["error"] = "its admin routes are malformed (see the log)"
        else:
            item["routes"] = [
                {"method": r.method, "path": f"{PREFIX}/{name}{r.path}", "role": r.role}
                | ({"summary": r.summary} if r.summary else {})
                for r in routes
            ]
        out.append(item)
    return web.json_response({"plugins": out})


@admin_route_by_role
async def plugin_route(request: web.Request) -> web.StreamResponse:
    return await _dispatch(request, request.match_info["plugin"], request.match_info["tail"])


@admin_route_by_role
async def mounted_route(request: web.Request) -> web.StreamResponse:
    admin = request.app[PLUGIN_ADMIN]
    prefix = "/_admin/" + request.match_info["segment"]
    plugin = admin.mounts(_serving_plugins(request)).get(prefix)
    if plugin is None:
        allowed = await _allowed_elsewhere(request)
        if allowed:  # an admin endpoint with other methods (this route matched any method)
            return admin_error(
                405, "method_not_allowed", "method not allowed", {"Allow": ", ".join(allowed)}
            )
        return admin_error(404, "not_found", f"no admin endpoint {request.path}")
    return await _dispatch(request, plugin, request.match_info["tail"])


async def _allowed_elsewhere(request: web.Request) -> list[str]:
    """The methods the other admin routes serve at this path (aiohttp would have answered
    405 with them, had this catch-all not matched after them)."""
    mine = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not mine:
            match, methods = await resource.resolve(request)
            if match is None:
                allowed |= methods
    return sorted(allowed)


@admin_route_by_role
async def alias_route(request: web.Request) -> web.StreamResponse:
    plugin, path = ALIASES[request.path]
    moved = {"Deprecation": "true", "Link": f'<{PREFIX}/{plugin}{path}>; rel="successor-version"'}
    return await _dispatch(request, plugin, path, moved)


async def _dispatch(
    request: web.Request, plugin: str, path: str, extra: dict[str, str] | None = None
) -> web.StreamResponse:
    extra = extra or {}
    response = await _route(request, plugin, path, extra)
    if not response.prepared:  # errors too (a streamed reply got them before it started)
        response.headers.update(extra)
    return response


async def _route(
    request: web.Request, plugin: str, path: str, extra: dict[str, str]
) -> web.StreamResponse:
    admin = request.app[PLUGIN_ADMIN]
    instances = _serving_plugins(request)
    cls = admin.types(instances).get(plugin)
    if cls is None:
        return admin_error(404, "not_found", f"no plugin '{plugin}' is installed")
    routes = admin.routes(cls)
    if isinstance(routes, str):
        return admin_error(500, "plugin_error", f"plugin '{plugin}' has malformed admin routes")
    allowed = []
    method = "GET" if request.method == "HEAD" else request.method  # aiohttp drops the body
    for route in routes:
        params = route.match(path)
        if params is None:
            continue
        if route.method != method:
            allowed.append(route.method)
            continue
        if not has_role(request, route.role):
            return admin_error(403, "forbidden", "this endpoint needs an operator admin token")
        body = await _json(request)
        if isinstance(body, web.Response):
            return body
        call = AdminRequest(
            method=method,
            path=path,
            params=params,
            query={k: request.query[k] for k in request.query},
            body=body,
            admin=request["admin_token"],
            role=request["admin_role"],
        )
        mine = [p for p in instances if type(p) is cls]
        return await _call(request, plugin, route, call, mine, extra)
    if allowed:
        return admin_error(
            405, "method_not_allowed", "method not allowed", {"Allow": ", ".join(allowed)}
        )
    return admin_error(404, "not_found", f"plugin '{plugin}' has no admin route {path or '/'}")


async def _json(request: web.Request) -> Any:
    if not request.body_exists:
        return None
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return admin_error(400, "bad_json", "the body is not JSON")


async def _call(
    request: web.Request,
    plugin: str,
    route: AdminRoute,
    call: AdminRequest,
    instances: list[Any],
    extra: dict[str, str],
) -> web.StreamResponse:
    try:
        reply = await route.handler(call, instances)
        if not isinstance(reply, Response):
            raise TypeError(f"the handler returned {type(reply).__name__}, not a Response")
        reply.headers.update(extra)
        if isinstance(reply.body, bytes):
            return web.Response(
                status=reply.status, reason=reply.reason, headers=reply.headers, body=reply.body
            )
    except PluginError as exc:
        return admin_error(exc.status, exc.code, exc.message, exc.headers)
    except Exception:
        log.exception(
            "plugin admin handler failed",
            extra={"plugin": plugin, "method": route.method, "path": route.path},
        )
        return admin_error(500, "plugin_error", f"plugin '{plugin}' failed to answer")
    out = web.StreamResponse(status=reply.status, reason=reply.reason, headers=reply.headers)
    await out.prepare(request)
    body = reply.body
    try:
        async for chunk in body:
            await out.write(chunk)
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
    await out.write_eof()
    return out


def install_mounts(app: web.Application) -> None:
    """The plugins' ``admin_path`` prefixes: added after every other admin route (the first
    route that matches serves, and this one matches any ``/_admin/<segment>...``)."""
    if PLUGIN_ADMIN not in app:
        return
    # [\s\S], not ".": a path may hold a newline (%0A) and still be a plugin's (a 404 of its own)
    tail = r"{tail:(/[\s\S]*)?}"
    app.router.add_route("*", "/_admin/{segment:[a-z][a-z0-9_-]*}" + tail, mounted_route)


def install(app: web.Application) -> None:
    app[PLUGIN_ADMIN] = PluginAdmin()
    app.router.add_get(PREFIX, list_plugins)
    app.router.add_route("*", PREFIX + r"/{plugin}{tail:[\s\S]*}", plugin_route)
    for path in ALIASES:
        app.router.add_route("*", path, alias_route)
