"""The admin API (on the admin listener, behind admin tokens): config, routes, keys, reload.

- ``GET /_admin/config``: the serving config, secrets redacted
- ``GET /_admin/routes``: routes in match order, with their upstream and plugin chain
- ``GET /_admin/keys[?tenant=]``, ``GET /_admin/keys/{id}``: key records (never secrets)
- ``POST /_admin/keys`` ``{tenant, scopes, description, expires, key_id, prefix}``: 201 with the
  key (shown once)
- ``POST /_admin/keys/{id}/revoke``: the key stops working at once and stays listed (revoked)
- ``DELETE /_admin/keys/{id}``: revoked, then its record is removed (204; then 404)
- ``POST /_admin/keys/{id}/rotate`` ``{grace}``: a new secret; the old one works for ``grace``
- ``POST /_admin/reload``: like SIGHUP; 200 when the new config serves, 422 when it was refused
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from gatewayd.admin.app import DAEMON
from gatewayd.admin.auth import admin_error, admin_route
from gatewayd.admin.auth import install as install_auth
from gatewayd.config.units import Duration
from gatewayd.stores.keys import KeyNotFound, KeyStoreError

SECRET_NAME = re.compile(r"secret|password|passwd|token|hash|private|credential", re.I)
REDACTED = "***"
JSON = "application/json"
# The scheme is bounded (RFC 3986 schemes are short): unbounded, a long run of letters without
# "://" made every start position scan to its end, quadratic (64 KiB of "x" took 30 s).
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]{0,31}://)(?P<user>[^:@/]*):[^@/]*@", re.I)


def redact(value: Any, name: str = "") -> Any:
    """A copy of a config tree with secret-looking string values replaced."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, name) for v in value]
    if isinstance(value, str):
        if SECRET_NAME.search(name):
            return REDACTED
        if "://" not in value:
            return value
        return _URL_PASSWORD.sub(rf"\g<scheme>\g<user>:{REDACTED}@", value)
    return value


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str
    scopes: list[str] = []
    description: str = ""
    expires: Duration | None = None
    key_id: str | None = None
    prefix: str = "gwd"


class Rotation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace: Duration = 3600.0


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.body_exists:
        return {}
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            text=_error_text("bad_json", "body is not JSON"), content_type=JSON
        ) from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(
            text=_error_text("bad_json", "expected an object"), content_type=JSON
        )
    return data


def _error_text(code: str, message: str) -> str:
    """The JSON error body (with a request id) of a raised ``web.HTTPException``."""
    return json.dumps({"error": {"code": code, "message": message, "request_id": uuid.uuid4().hex}})


def _invalid(exc: ValidationError) -> web.Response:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return admin_error(400, "invalid_request", f"{where}: {first['msg']}")


def _keys(request: web.Request) -> Any:
    daemon = request.app[DAEMON]
    keys = daemon.services.keys if daemon.services is not None else None
    if keys is None:
        raise web.HTTPServiceUnavailable(
            text=_error_text("unavailable", "no key store"), content_type=JSON
        )
    return keys


@admin_route
async def get_config(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    if daemon.config is None:
        return admin_error(503, "not_ready", "no config loaded")
    data = daemon.config.model_dump(mode="json")
    return web.json_response(
        {
            "generation": daemon.generation_number,
            "path": str(daemon.config_path),
            "config": redact(data),
        }
    )


@admin_route
async def get_routes(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    gen = daemon.gateway.current if daemon.gateway is not None else None
    if gen is None:
        return admin_error(503, "not_ready", "no generation serving")
    routes = []
    for route in gen.dispatcher.table.routes:
        rc = route.config
        routes.append(
            {
                "name": route.name,
                "match": rc.match.model_dump(mode="json"),
                "upstream": rc.upstream,
                "relay": rc.relay,
                "strip_prefix": rc.strip_prefix,
                "plugins": list(route.chain.names),
            }
        )
    return web.json_response({"generation": gen.number, "routes": routes})


@admin_route
async def list_keys(request: web.Request) -> web.Response:
    records = await _keys(request).list(request.query.get("tenant") or None)
    return web.json_response({"keys": [r.to_json() for r in records]})


@admin_route
async def get_key(request: web.Request) -> web.Response:
    record = await _keys(request).get(request.match_info["key_id"])
    if record is None:
        return admin_error(404, "not_found", "no such key")
    return web.json_response(record.to_json())


@admin_route
async def create_key(request: web.Request) -> web.Response:
    try:
        spec = NewKey.model_validate(await _json_body(request))
    except ValidationError as exc:
        return _invalid(exc)
    try:
        key, record = await _keys(request).create(
            spec.tenant,
            frozenset(spec.scopes),
            spec.description,
            spec.expires,
            spec.key_id,
            spec.prefix,
        )
    except KeyStoreError as exc:
        return admin_error(409 if "exists" in str(exc) else 400, "invalid_request", str(exc))
    return web.json_response({"key": key, "record": record.to_json()}, status=201)


@admin_route
async def revoke_key(request: web.Request) -> web.Response:
    try:
        record = await _keys(request).revoke(request.match_info["key_id"])
    except KeyNotFound:
        return admin_error(404, "not_found", "no such key")
    return web.json_response(record.to_json())


@admin_route
async def delete_key(request: web.Request) -> web.Response:
    try:
        await _keys(request).delete(request.match_info["key_id"])
    except KeyNotFound:
        return admin_error(404, "not_found", "no such key")
    return web.Response(status=204)


@admin_route
async def rotate_key(request: web.Request) -> web.Response:
    try:
        spec = Rotation.model_validate(await _json_body(request))
    except ValidationError as exc:
        return _invalid(exc)
    try:
        key, record = await _keys(request).rotate(request.match_info["key_id"], spec.grace)
    except KeyNotFound:
        return admin_error(404, "not_found", "no such key")
    except KeyStoreError as exc:
        return admin_error(409, "conflict", str(exc))
    return web.json_response({"key": key, "record": record.to_json(), "grace": spec.grace})


@admin_route
async def reload(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    ok = await daemon.reload()
    if not ok:
        return admin_error(
            422,
            "config_rejected",
            "the new config was refused; the old one keeps serving (see the log)",
        )
    return web.json_response({"reloaded": True, "generation": daemon.generation_number})


def install(app: web.Application) -> None:
    install_auth(app)
    r = app.router
    r.add_get("/_admin/config", get_config)
    r.add_get("/_admin/routes", get_routes)
    r.add_get("/_admin/keys", list_keys)
    r.add_post("/_admin/keys", create_key)
    r.add_get("/_admin/keys/{key_id}", get_key)
    r.add_delete("/_admin/keys/{key_id}", delete_key)
    r.add_post("/_admin/keys/{key_id}/revoke", revoke_key)
    r.add_post("/_admin/keys/{key_id}/rotate", rotate_key)
    r.add_post("/_admin/reload", reload)
