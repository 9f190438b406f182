"""The admin API in the audit log, and ``GET /_admin/audit`` (the dashboard's panel).

Every request to ``/_admin/*`` or ``/dashboard/*`` other than GET/HEAD/OPTIONS (the API's and
plugins' routes, ``/_admin/llm/...`` included; the dashboard's login and reload) is recorded once
answered: who (the admin token's id), from
where, method, path, status, the request's JSON body, ``before`` (the key record, for a key's
routes; the generation, for a reload) and ``after`` (the JSON reply; a body that is not JSON
is recorded by its size), secrets masked with the
rules of :func:`gatewayd.admin.api.redact` (and a ``key`` field, which holds a new key).
Key routes are typed ``key.create|revoke|rotate``, the rest ``admin.mutation``. 401/403
answers go to the authentication-failure aggregation instead.

With ``audit.fail_closed``, a mutation by an accepted bearer token first writes an
``admin.intent`` record and is refused with 503 when it cannot be written (the mutation does not
run); any other mutation (a dashboard session's) is refused while the log's last write failed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from gatewayd.admin.api import REDACTED, redact
from gatewayd.admin.app import DAEMON
from gatewayd.admin.auth import ADMIN_AUTH, admin_error, admin_route
from gatewayd.observability.audit import AuditLog, AuditUnavailable
from gatewayd.observability.audit_aggregate import DENIAL, FAILURE, AuthFailures

AUDIT: web.AppKey[AuditLog] = web.AppKey("audit", AuditLog)
AUTH_FAILURES: web.AppKey[AuthFailures] = web.AppKey("audit_auth_failures", AuthFailures)
READS = frozenset({"GET", "HEAD", "OPTIONS"})
AUDITED = ("/_admin/", "/dashboard/")  # the admin API (plugins' routes too) and the dashboard
NEW_KEY_FIELD = re.compile(r"^(api_)?key$|_key$", re.I)
KEY_PATH = re.compile(r"^/_admin/keys(?:/(?P<id>[^/]+)(?P<action>/revoke|/rotate)?)?$")
MAX_LIMIT = 200
MAX_BODY = 64 * 1024  # bigger bodies are recorded by their size


def mask(value: Any, name: str = "") -> Any:
    """:func:`redact`, and a field named ``key`` / ``*_key`` (a new key, a provider's key)."""
    if isinstance(value, dict):
        return {
            k: REDACTED if NEW_KEY_FIELD.search(str(k)) else mask(v, str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask(v, name) for v in value]
    return redact(value, name)


def _json(data: bytes | None) -> Any:
    """A body as masked JSON; a body that is not JSON, or is over :data:`MAX_BODY`, as its
    size only."""
    if not data:
        return None
    if len(data) > MAX_BODY:
        return {"bytes": len(data), "truncated": True}
    try:
        return mask(json.loads(data))
    except (ValueError, UnicodeDecodeError):
        return {"bytes": len(data)}


def record_type(method: str, path: str) -> str:
    m = KEY_PATH.match(path)
    if m is None:
        return "admin.mutation"
    if m.group("id") is None:
        return "key.create" if method == "POST" else "admin.mutation"
    action = m.group("action")
    if action == "/rotate":
        return "key.rotate"
    if method == "DELETE":
        return "key.delete"
    if action == "/revoke":
        return "key.revoke"
    return "admin.mutation"


async def _before(request: web.Request) -> Any:
    daemon = request.app[DAEMON]
    if request.path in ("/_admin/reload", "/dashboard/reload"):
        return {"generation": daemon.generation_number}
    m = KEY_PATH.match(request.path)
    keys = daemon.services.keys if daemon.services is not None else None
    if m is None or m.group("id") is None or keys is None:
        return None
    record = await keys.get(m.group("id"))
    return record.to_json() if record is not None else None


async def _operator(request: web.Request) -> str | None:
    """The id of the request's admin token when the admin API accepts it (cached lookups)."""
    config = request.app[DAEMON].config
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if config is None or scheme.lower() != "bearer" or not token.strip():
        return None
    auth = request.app.get(ADMIN_AUTH)
    return await auth.identify(token.strip(), list(config.admin.tokens)) if auth else None


@web.middleware
async def audit_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    audit = request.app.get(AUDIT)
    if audit is None or not request.path.startswith(AUDITED):
        response: web.StreamResponse = await handler(request)
        return response
    source = request.remote
    if request.method in READS:
        response = await handler(request)
        _auth_failure(request, response.status, source)
        return response
    body: Any = None
    if request.body_exists and request.content_type == "application/json":
        body = _json(await request.read())  # cached: the handler reads it again
    elif request.body_exists:  # a form or upload: left to the handler's parser, untouched
        body = {"bytes": request.content_length}
    what: dict[str, Any] = {"method": request.method, "path": request.path, "body": body}
    if audit.config.fail_closed:
        actor = await _operator(request)
        try:
            if actor is not None:
                await audit.write("admin.intent", actor, source, what)
            elif not request.path.startswith("/_admin/") and not audit.healthy:
                # A dashboard session (cookie): no intent record, but no mutation while the
                # log is failing. (An /_admin/ call without an accepted token is refused by
                # its handler.)
                raise AuditUnavailable("the audit log's last write failed")
        except AuditUnavailable:
            return admin_error(503, "audit_unavailable", "the audit log cannot be written")
    before = await _before(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _outcome(request, audit, what, before, exc.status, exc)
        raise
    except BaseException:
        _outcome(request, audit, what, before, 500, None)
        raise
    _outcome(request, audit, what, before, response.status, response)
    return response


def _outcome(
    request: web.Request,
    audit: AuditLog,
    what: dict[str, Any],
    before: Any,
    status: int,
    response: web.StreamResponse | None,
) -> None:
    actor = request.get("admin_token")
    if actor is None and status in (401, 403):
        _auth_failure(request, status, request.remote)
        return
    body = response.body if isinstance(response, web.Response) else None
    after = _json(bytes(body)) if isinstance(body, bytes | bytearray) else None
    what.update(status=status, before=before, after=after)
    audit.record(record_type(request.method, request.path), actor, request.remote, what)


def _auth_failure(request: web.Request, status: int, source: str | None) -> None:
    failures = request.app.get(AUTH_FAILURES)
    if failures is not None and status in (401, 403):
        kind = FAILURE if status == 401 else DENIAL
        failures.seen(kind, request.get("admin_token"), source, "_admin", status)


@admin_route
async def get_audit(request: web.Request) -> web.Response:
    """The last records (``limit``, default 50, at most 200) and the checkpoint's state."""
    audit = request.app.get(AUDIT)
    if audit is None:
        return web.json_response({"enabled": False, "records": []})
    try:
        limit = max(0, min(int(request.query.get("limit", "50")), MAX_LIMIT))
    except ValueError:
        return admin_error(400, "invalid_request", "limit: must be an integer")
    records = list(audit.recent)[-limit:] if limit else []
    cp = audit.last_checkpoint
    return web.json_response(
        {
            "enabled": True,
            "directory": str(audit.directory),
            "fail_closed": audit.config.fail_closed,
            "records": records[::-1],
            "checkpoint": {
                "last": {k: cp[k] for k in ("n", "seq", "time", "file")} if cp else None,
                "age_seconds": round(audit.checkpoint_age(), 3),
            },
        }
    )


def install(app: web.Application) -> None:
    app.middlewares.append(audit_middleware)
    app.router.add_get("/_admin/audit", get_audit)
