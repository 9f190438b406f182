"""Who is calling the admin API: admin tokens (bcrypt hashes in ``admin.tokens`` or stored
by ``gatewayd admin token create --store`` in ``<state.dir>/admin_tokens.json``) and JWTs from
an identity provider (``admin.jwt``), each with a role, ``viewer`` (read-only) or ``operator``.

``Authorization: Bearer <token>``: no or malformed header -> 401 (with ``WWW-Authenticate``); a
token that matches no hash -> 403; an expired JWT -> 401; a JWT with a bad signature, issuer or
audience, or a role claim that is not ``viewer``/``operator`` -> 403; no way to authenticate
configured -> 403 (the admin API is off). bcrypt runs off the event loop, two at a time; a token
that matched is remembered (keyed by a keyed digest, together with the hash it matched) so later
calls cost no bcrypt, and a reload or a revocation that removes or changes the hash revokes it at
once. Tokens are never logged.

Other admin code (the dashboard's login) calls :func:`identify`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import bcrypt
from aiohttp import web

from gatewayd.admin.app import DAEMON
from gatewayd.admin.idp import AdminJwtVerifier, JwtRefused, looks_like_jwt
from gatewayd.admin.tokens import TokenFile, token_path
from gatewayd.config.idp import AdminJwtConfig
from gatewayd.config.schema import GatewayConfig

log = logging.getLogger("gatewayd.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Role = Literal["viewer", "operator"]
How = Literal["config", "stored", "jwt"]
ROLES: frozenset[str] = frozenset({"viewer", "operator"})
MAX_TOKEN = 8192  # JWTs from an IdP can be a few KiB
NEGATIVE_TTL = 5.0
CACHE_SIZE = 1024
READ_METHODS = frozenset({"GET", "HEAD"})
DISABLED = "the admin API is disabled (no admin.tokens, stored admin tokens or admin.jwt)"


@dataclass(frozen=True, slots=True)
class AdminIdentity:
    """An authenticated admin caller: the token's (or the JWT subject's) id, its role and
    where it was found: ``config`` (admin.tokens), ``stored`` (admin_tokens.json), ``jwt``."""

    id: str
    role: Role
    how: How


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a token was not accepted: the status and the error body's code and message."""

    status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class HashedToken:
    """One admin token a bcrypt hash stands for (from the config or the token file)."""

    id: str
    role: Role
    hash: str = field(repr=False)
    how: How = "config"


def admin_error(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> web.Response:
    body = {"error": {"code": code, "message": message, "request_id": request_id or _new_id()}}
    return web.json_response(body, status=status, headers=headers)


def _new_id() -> str:
    return uuid.uuid4().hex


def _check(token: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(token.encode(), hashed.encode())
    except ValueError:
        log.warning("an admin token hash is not a valid bcrypt hash")
        return False


class AdminAuth:
    """Token verification with a small cache; one per admin app."""

    def __init__(self) -> None:
        self._pepper = secrets.token_bytes(32)
        self._ok: OrderedDict[bytes, HashedToken] = OrderedDict()
        self._failed: OrderedDict[bytes, float] = OrderedDict()
        self._bcrypt = asyncio.Semaphore(2)
        self._file: TokenFile | None = None
        self._verifier: AdminJwtVerifier | None = None
        self._shadowed: set[str] = set()
        self._closing: set[asyncio.Future[None]] = set()

    async def match(self, token: str, tokens: Sequence[HashedToken]) -> HashedToken | None:
        """The admin token of ``tokens`` that ``token`` is, or None."""
        digest = hashlib.blake2b(token.encode(), key=self._pepper, digest_size=20).digest()
        hit = self._ok.get(digest)
        if hit is not None and hit in tokens:
            return hit
        now = time.monotonic()
        if self._failed.get(digest, 0.0) > now:
            return None
        async with self._bcrypt:
            for t in tokens:
                if await asyncio.to_thread(_check, token, t.hash):
                    self._ok[digest] = t
                    while len(self._ok) > CACHE_SIZE:
                        self._ok.popitem(last=False)
                    return t
        self._failed[digest] = now + NEGATIVE_TTL
        while len(self._failed) > CACHE_SIZE:
            self._failed.popitem(last=False)
        return None

    def hashed_tokens(self, config: GatewayConfig) -> list[HashedToken]:
        """The admin tokens that count now: the config's, then the token file's (re-read when
        it changed). A stored id that the config has too is left out, with a warning."""
        out = [HashedToken(t.id, t.role, t.hash, "config") for t in config.admin.tokens]
        path = token_path(config.state.dir)
        if self._file is None or self._file.path != path:
            self._file = TokenFile(path)
        ids = {t.id for t in out}
        for t in self._file.tokens():
            if t.id in ids:
                if t.id not in self._shadowed:
                    self._shadowed.add(t.id)
                    log.warning(
                        "a stored admin token has the id of a configured one; only the "
                        "configured one counts",
                        extra={"token_id": t.id, "file": str(path)},
                    )
                continue
            out.append(HashedToken(t.id, t.role, t.hash, "stored"))
        return out

    def verifier(self, config: AdminJwtConfig) -> AdminJwtVerifier:
        """The JWT verifier of this ``admin.jwt`` (a new one when a reload changed it)."""
        old = self._verifier
        if old is None or old.config != config:
            self._verifier = AdminJwtVerifier(config)
            if old is not None:
                closing = asyncio.ensure_future(old.close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
        assert self._verifier is not None
        return self._verifier

    async def close(self) -> None:
        if self._verifier is not None:
            await self._verifier.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def identify(self, token: str, tokens: Sequence[Any]) -> str | None:
        """The id of the configured token (an ``admin.tokens`` entry) that ``token`` is, or
        None. Prefer the module's :func:`identify`: it knows stored tokens and JWTs too."""
        found = await self.match(
            token, [HashedToken(t.id, t.role, t.hash, "config") for t in tokens]
        )
        return None if found is None else found.id


ADMIN_AUTH: web.AppKey[AdminAuth] = web.AppKey("admin_auth", AdminAuth)


def install(app: web.Application) -> None:
    if ADMIN_AUTH in app:
        return
    app[ADMIN_AUTH] = AdminAuth()

    async def close(app: web.Application) -> None:
        await app[ADMIN_AUTH].close()

    app.on_cleanup.append(close)


def _app_of(request_or_app: web.Request | web.Application) -> web.Application:
    if isinstance(request_or_app, web.Request):
        return request_or_app.app
    return request_or_app


async def authenticate(
    request_or_app: web.Request | web.Application, token: str
) -> AdminIdentity | Refusal:
    """The admin identity ``token`` stands for, or why it is refused."""
    app = _app_of(request_or_app)
    config = app[DAEMON].config
    if config is None:
        return Refusal(503, "not_ready", "no config loaded")
    if not token or len(token) > MAX_TOKEN:
        return Refusal(403, "forbidden", "this admin token is not accepted")
    auth = app.get(ADMIN_AUTH) or AdminAuth()
    jwt_config = config.admin.jwt
    if jwt_config is not None and looks_like_jwt(token):
        try:
            subject, role = await auth.verifier(jwt_config).verify(token)
        except JwtRefused as exc:
            return Refusal(exc.status, exc.code, exc.message)
        return AdminIdentity(subject, "operator" if role == "operator" else "viewer", "jwt")
    tokens = auth.hashed_tokens(config)
    if not tokens and jwt_config is None:
        return Refusal(403, "forbidden", DISABLED)
    hit = await auth.match(token, tokens)
    if hit is None:
        return Refusal(403, "forbidden", "this admin token is not accepted")
    return AdminIdentity(hit.id, hit.role, hit.how)


async def identify(
    request_or_app: web.Request | web.Application, token: str
) -> AdminIdentity | None:
    """Who ``token`` (an admin token or an IdP's JWT, without ``Bearer``) is, or None when it
    is not accepted. For admin code that authenticates by other means than the
    ``Authorization`` header (the dashboard's login form)."""
    found = await authenticate(request_or_app, token)
    return found if isinstance(found, AdminIdentity) else None


def has_role(request: web.Request, role: str) -> bool:
    """Whether the admin caller of this (guarded) request may call a ``role`` endpoint:
    an ``operator`` may call everything, a ``viewer`` the ``viewer`` ones."""
    return role == "viewer" or request.get("admin_role") == "operator"


def admin_route(handler: Handler) -> Handler:
    """Wrap an admin handler: only authenticated admin callers get through, and only
    ``operator`` ones for anything but GET/HEAD (``viewer`` ones read). The caller's id is in
    ``request["admin_token"]``, its role in ``request["admin_role"]``, the whole
    :class:`AdminIdentity` in ``request["admin_identity"]``."""
    return _guard(handler, writes_need_operator=True)


def admin_route_by_role(handler: Handler) -> Handler:
    """Like :func:`admin_route`, for handlers that check the role themselves (plugins'
    routes, which declare theirs): any authenticated admin caller gets through."""
    return _guard(handler, writes_need_operator=False)


def _guard(handler: Handler, writes_need_operator: bool) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        challenge = {"WWW-Authenticate": 'Bearer realm="gatewayd-admin"'}
        request_id = request.headers.get("X-Request-ID", "")[:128] or _new_id()
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN:
            return admin_error(
                401, "unauthorized", "an admin bearer token is required", challenge, request_id
            )
        found = await authenticate(request, token)
        if isinstance(found, Refusal):
            headers = challenge if found.status == 401 else None
            return admin_error(found.status, found.code, found.message, headers, request_id)
        request["admin_identity"] = found
        request["admin_token"] = found.id
        request["admin_role"] = found.role
        writes = writes_need_operator and request.method not in READ_METHODS
        if writes and not has_role(request, "operator"):
            return admin_error(
                403, "forbidden", "this endpoint needs an operator admin token", None, request_id
            )
        return await handler(request)

    guarded.__name__ = getattr(handler, "__name__", "admin_handler")
    guarded.__doc__ = handler.__doc__
    return guarded
