"""What the authentication plugins share: taking the credential and the 401 reply.

An auth plugin that recognises the caller calls ``ctx.authenticate(principal, forward_headers)``,
the only writer of ``ctx.principal`` and of the headers that describe it to the backend
(``forward_headers: true``, the default):

- ``X-Gateway-Auth``: how the caller was authenticated (``key``, ``jwt``, ``introspection``)
- ``X-Gateway-Subject``, ``X-Gateway-Tenant``, ``X-Gateway-Key-Id``
- ``X-Gateway-Roles``, ``X-Gateway-Scopes``: space-separated, sorted

Incoming copies of these headers are removed once, by the core, before any plugin runs, so a
client can never spoof them. The first authenticator wins: an auth plugin on a request that is
already authenticated leaves it alone (it neither looks at its own credential nor touches the
principal or the headers).
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from gatewayd.chain import Request, RequestContext, Response


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
