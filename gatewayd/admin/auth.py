"""Admin bearer tokens, checked against the bcrypt hashes in ``admin.tokens``.

``Authorization: Bearer <token>``: no or malformed header -> 401 (with ``WWW-Authenticate``); a
token that matches no configured hash -> 403; no ``admin.tokens`` configured -> 403 (the admin
API is off). bcrypt runs off the event loop, two at a time; a token that matched is remembered
(keyed by a keyed digest, together with the hash it matched) so later calls cost no bcrypt,
and a reload that removes or changes the hash revokes it at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import bcrypt
from aiohttp import web

from gatewayd.admin.app import DAEMON

log = logging.getLogger("gatewayd.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_TOKEN = 512
NEGATIVE_TTL = 5.0
CACHE_SIZE = 1024
READ_METHODS = frozenset({"GET", "HEAD"})


def admin_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message, "request_id": uuid.uuid4().hex}}
    return web.json_response(body, status=status, headers=headers)


def _check(token: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(token.encode(), hashed.encode())
    except ValueError:
        log.warning("an admin.tokens hash is not a valid bcrypt hash")
        return False


class AdminAuth:
    """Token verification with a small cache; one per admin app."""

    def __init__(self) -> None:
        self._pepper = secrets.token_bytes(32)
        self._ok: OrderedDict[bytes, tuple[str, str]] = OrderedDict()  # digest -> (id, hash)
        self._failed: OrderedDict[bytes, float] = OrderedDict()
        self._bcrypt = asyncio.Semaphore(2)

    async def identify(self, token: str, tokens: list[Any]) -> str | None:
        """The id of the configured token that ``token`` is, or None."""
        digest = hashlib.blake2b(token.encode(), key=self._pepper, digest_size=20).digest()
        hit = self._ok.get(digest)
        if hit is not None and any(t.id == hit[0] and t.hash == hit[1] for t in tokens):
            return hit[0]
        now = time.monotonic()
        if self._failed.get(digest, 0.0) > now:
            return None
        async with self._bcrypt:
            for t in tokens:
                if await asyncio.to_thread(_check, token, t.hash):
                    self._ok[digest] = (t.id, t.hash)
                    while len(self._ok) > CACHE_SIZE:
                        self._ok.popitem(last=False)
                    return str(t.id)
        self._failed[digest] = now + NEGATIVE_TTL
        while len(self._failed) > CACHE_SIZE:
            self._failed.popitem(last=False)
        return None


ADMIN_AUTH: web.AppKey[AdminAuth] = web.AppKey("admin_auth", AdminAuth)


def install(app: web.Application) -> None:
    app[ADMIN_AUTH] = AdminAuth()


def has_role(request: web.Request, role: str) -> bool:
    """Whether the admin token of this (guarded) request may call a ``role`` endpoint:
    an ``operator`` token may call everything, a ``viewer`` token the ``viewer`` ones."""
    return role == "viewer" or request.get("admin_role") == "operator"


def admin_route(handler: Handler) -> Handler:
    """Wrap an admin handler: only callers with a configured admin token get through, and
    only ``operator`` tokens for anything but GET/HEAD (``viewer`` tokens read). The token's
    id is in ``request["admin_token"]``, its role in ``request["admin_role"]``."""
    return _guard(handler, writes_need_operator=True)


def admin_route_by_role(handler: Handler) -> Handler:
    """Like :func:`admin_route`, for handlers that check the role themselves (plugins'
    routes, which declare theirs): any configured admin token gets through."""
    return _guard(handler, writes_need_operator=False)


def _guard(handler: Handler, writes_need_operator: bool) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        daemon = request.app[DAEMON]
        tokens = list(daemon.config.admin.tokens) if daemon.config is not None else []
        challenge = {"WWW-Authenticate": 'Bearer realm="gatewayd-admin"'}
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN:
            return admin_error(401, "unauthorized", "an admin bearer token is required", challenge)
        if not tokens:
            return admin_error(403, "forbidden", "the admin API is disabled (no admin.tokens)")
        auth = request.app.get(ADMIN_AUTH) or AdminAuth()
        token_id = await auth.identify(token, tokens)
        if token_id is None:
            return admin_error(403, "forbidden", "this admin token is not accepted")
        request["admin_token"] = token_id
        request["admin_role"] = next((t.role for t in tokens if t.id == token_id), "viewer")
        writes = writes_need_operator and request.method not in READ_METHODS
        if writes and not has_role(request, "operator"):
            return admin_error(403, "forbidden", "this endpoint needs an operator admin token")
        return await handler(request)

    guarded.__name__ = getattr(handler, "__name__", "admin_handler")
    guarded.__doc__ = handler.__doc__
    return guarded
