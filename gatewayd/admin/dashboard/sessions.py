"""Dashboard sessions: an admin token, checked once at login, becomes a session cookie.

- The cookie holds a random id (``secrets.token_urlsafe``), nothing else; it is ``HttpOnly``,
  ``SameSite=Strict``, scoped to ``/dashboard/`` (``Secure`` when the admin listener is TLS).
- The store is in memory, bounded (:data:`MAX_SESSIONS`, the least recently used one goes), and
  a session ends after :data:`IDLE` seconds unused or :data:`LIFETIME` seconds in all.
- A session remembers the id and the bcrypt hash of the admin token it was opened with: a
  reload or a revocation that removes or changes that token ends it, and its role is read
  again on every request (a token turned ``viewer`` is a viewer at once). A session opened
  with an IdP's JWT keeps the JWT's role and lasts while ``admin.jwt`` is configured.
- Every POST carries the session's CSRF token (a form field), compared in constant time. The
  login form, before there is a session, carries a token bound to a random cookie by an HMAC
  under a per-process key (double submit, nothing stored).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from aiohttp import web

from gatewayd.admin import auth
from gatewayd.admin.app import DAEMON
from gatewayd.admin.auth import MAX_TOKEN, AdminAuth

COOKIE = "gatewayd_session"
LOGIN_COOKIE = "gatewayd_login"
PATH = "/dashboard/"
MAX_SESSIONS = 256
IDLE = 30 * 60.0
LIFETIME = 8 * 3600.0


@dataclass(slots=True)
class Session:
    id: str
    token_id: str
    token_hash: str
    csrf: str
    created: float
    used: float
    role: str = "viewer"  # refreshed from the config on every request
    how: str = "config"  # where the token was found: config, stored, jwt


@dataclass(slots=True)
class SessionStore:
    """The sessions of one admin app (one per process)."""

    limit: int = MAX_SESSIONS
    idle: float = IDLE
    lifetime: float = LIFETIME
    sessions: OrderedDict[str, Session] = field(default_factory=OrderedDict)
    login_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def open(
        self,
        token_id: str,
        token_hash: str,
        now: float | None = None,
        role: str = "viewer",
        how: str = "config",
    ) -> Session:
        now = time.monotonic() if now is None else now
        sid = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        session = Session(sid, token_id, token_hash, csrf, now, now, role, how)
        self.sessions[sid] = session
        while len(self.sessions) > self.limit:
            self.sessions.popitem(last=False)
        return session

    def get(self, sid: str, now: float | None = None) -> Session | None:
        now = time.monotonic() if now is None else now
        session = self.sessions.get(sid)
        if session is None:
            return None
        if now - session.used > self.idle or now - session.created > self.lifetime:
            del self.sessions[sid]
            return None
        session.used = now
        self.sessions.move_to_end(sid)
        return session

    def close(self, sid: str) -> None:
        self.sessions.pop(sid, None)

    def login_token(self, nonce: str) -> str:
        """The login form's CSRF token for the login cookie ``nonce``."""
        return hmac.new(self.login_key, nonce.encode(), hashlib.sha256).hexdigest()


SESSIONS: web.AppKey[SessionStore] = web.AppKey("dashboard_sessions", SessionStore)
# The dashboard's view of the admin tokens (hashed_tokens: the config's and the token file's).
LOGIN_AUTH: web.AppKey[AdminAuth] = web.AppKey("dashboard_auth", AdminAuth)


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two tokens."""
    return hmac.compare_digest(a.encode(), b.encode())


async def identify(request: web.Request, token: str) -> tuple[str, str, str, str] | None:
    """``token`` -> (id, role, how, the hash it matched), or None: through
    :func:`gatewayd.admin.auth.identify`, as the admin API's bearer tokens are checked
    (``admin.tokens``, stored admin tokens, an IdP's JWTs). A JWT has no hash: its session
    lasts while ``admin.jwt`` stays configured, with the role it had at login."""
    token = token.strip()
    if not token or len(token) > MAX_TOKEN:
        return None
    found = await auth.identify(request, token)
    if found is None:
        return None
    if found.how == "jwt":
        return found.id, found.role, found.how, ""
    match = _token(request, found.id, found.how)
    if match is None:
        return None
    return found.id, found.role, found.how, match.hash


def _token(request: web.Request, token_id: str, how: str) -> auth.HashedToken | None:
    config = request.app[DAEMON].config
    if config is None:
        return None
    tokens = request.app[LOGIN_AUTH].hashed_tokens(config)
    return next((t for t in tokens if t.id == token_id and t.how == how), None)


def current(request: web.Request) -> Session | None:
    """The request's session, when its cookie names one that is still valid and its admin
    token is still there, unchanged (its role is the token's role now); a JWT's session,
    while ``admin.jwt`` is configured."""
    sid = request.cookies.get(COOKIE)
    if not sid:
        return None
    store = request.app[SESSIONS]
    session = store.get(sid)
    if session is None:
        return None
    if session.how == "jwt":
        config = request.app[DAEMON].config
        if config is None or config.admin.jwt is None:
            store.close(sid)
            return None
        return session
    token = _token(request, session.token_id, session.how)
    if token is None or not same(token.hash, session.token_hash):
        store.close(sid)
        return None
    session.role = token.role
    return session


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path=PATH,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=PATH)
