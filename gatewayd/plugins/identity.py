"""What the authentication plugins share: principal headers and the 401 reply.

An auth plugin that establishes a principal may forward it to the backend as headers
(``forward_headers: true``, the default):

- ``X-Gateway-Auth``: how the caller was authenticated (``key``, ``jwt``, ``introspection``)
- ``X-Gateway-Subject``, ``X-Gateway-Tenant``, ``X-Gateway-Key-Id``
- ``X-Gateway-Roles``, ``X-Gateway-Scopes``: space-separated, sorted

Incoming copies of these headers are always removed (by the core before any plugin runs, and
again by every auth plugin), so a client can never spoof them.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote_plus

from multidict import CIMultiDict

from gatewayd.chain import PRINCIPAL_HEADERS, Principal, Request, RequestContext, Response

_SAFE_VALUE = re.compile(r"[^\x20-\x7e]")


def strip_principal_headers(headers: CIMultiDict[str]) -> None:
    for name in PRINCIPAL_HEADERS:
        if name in headers:
            del headers[name]


def _clean(value: str) -> str:
    return _SAFE_VALUE.sub("", value)[:1024]


def forward_principal(headers: CIMultiDict[str], principal: Principal) -> None:
    """Set the X-Gateway-* headers that tell the backend who is calling."""
    for name, value in _principal_headers(
        principal.kind,
        principal.subject,
        principal.tenant,
        principal.key_id,
        principal.roles,
        principal.scopes,
    ):
        headers[name] = value


@functools.lru_cache(maxsize=4096)
def _principal_headers(
    kind: str,
    subject: str | None,
    tenant: str | None,
    key_id: str | None,
    roles: frozenset[str],
    scopes: frozenset[str],
) -> tuple[tuple[str, str], ...]:
    """The header values for one caller, cleaned once (the same key calls again and again)."""
    out = [("X-Gateway-Auth", kind)]
    if subject:
        out.append(("X-Gateway-Subject", _clean(subject)))
    if tenant:
        out.append(("X-Gateway-Tenant", _clean(tenant)))
    if key_id:
        out.append(("X-Gateway-Key-Id", _clean(key_id)))
    if roles:
        out.append(("X-Gateway-Roles", _clean(" ".join(sorted(roles)))))
    if scopes:
        out.append(("X-Gateway-Scopes", _clean(" ".join(sorted(scopes)))))
    return tuple(out)


def unauthorized(
    ctx: RequestContext, realm: str, message: str, error: str | None = "invalid_token"
) -> Response:
    """401 with ``WWW-Authenticate: Bearer`` (RFC 6750) and the standard JSON error body."""
    challenge = f'Bearer realm="{realm}"'
    if error:
        challenge += f', error="{error}", error_description="{message}"'
    return ctx.error_response(401, "unauthorized", message, {"WWW-Authenticate": challenge})


def take_credential(req: Request, header: str, query: str | None, hide: bool) -> str | None:
    """The credential a client presented: ``<header>: Bearer <value>`` (or the bare value in a
    header other than Authorization), else the ``query`` parameter. With ``hide`` it is removed
    from what is forwarded; a header that is not ours (``Authorization: Basic``) is left alone."""
    value = req.headers.get(header)
    if value is not None:
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            found: str | None = rest.strip()
        elif header.lower() != "authorization" and value.strip():
            found = value.strip()
        else:
            found = None
        if found:
            if hide:
                del req.headers[header]
            return found
    if query:
        taken, rest_query = take_query_param(req.query_string, query)
        if taken:
            if hide:
                req.query_string = rest_query
            return taken
    return None


def take_query_param(query: str, name: str) -> tuple[str | None, str]:
    """The first value of ``name`` in a raw query string, and the query without it."""
    value: str | None = None
    kept = []
    for part in query.split("&") if query else ():
        key, _, raw = part.partition("=")
        if unquote_plus(key) == name:
            if value is None:
                value = unquote_plus(raw)
            continue
        kept.append(part)
    return value, "&".join(kept)
