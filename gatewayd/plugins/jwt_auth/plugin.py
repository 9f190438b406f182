"""The ``jwt_auth`` plugin: bearer JWTs verified locally, opaque tokens introspected."""

from __future__ import annotations

from typing import Any

import jwt

from gatewayd.chain import Plugin, PluginContext, Principal, RequestContext, Response
from gatewayd.plugins.identity import take_credential, unauthorized
from gatewayd.plugins.jwt_auth.config import HMAC_ALGS, ClaimsMap, JwtAuthConfig
from gatewayd.plugins.jwt_auth.introspection import IntrospectionUnavailable, Introspector
from gatewayd.plugins.jwt_auth.keys import JwksSource, decode_token, family, load_public_keys

ERRORS: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "token has expired"),
    (jwt.ImmatureSignatureError, "token is not yet valid"),
    (jwt.InvalidIssuerError, "token issuer is not accepted"),
    (jwt.InvalidAudienceError, "token audience is not accepted"),
    (jwt.MissingRequiredClaimError, "token lacks a required claim"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.DecodeError, "malformed token"),
]


class TokenRejected(Exception):
    pass


def claim(claims: dict[str, Any], path: str | None) -> Any:
    if not path:
        return None
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def names(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(v for v in value.replace(",", " ").split() if v)
    if isinstance(value, list | tuple):
        return frozenset(str(v) for v in value if isinstance(v, str | int))
    return frozenset()


def principal_from(kind: str, claims: dict[str, Any], m: ClaimsMap) -> Principal:
    subject = claim(claims, m.subject)
    tenant = claim(claims, m.tenant)
    return Principal(
        kind=kind,
        subject=str(subject) if isinstance(subject, str | int) else None,
        tenant=str(tenant) if isinstance(tenant, str | int) else None,
        roles=names(claim(claims, m.roles)),
        scopes=names(claim(claims, m.scopes)),
        claims=claims,
    )


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


class JwtAuthPlugin(Plugin):
    name = "jwt_auth"
    Config = JwtAuthConfig
    priority = 1450  # as Kong's jwt: before key_auth (1250)

    def __init__(self, config: JwtAuthConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.allowed = frozenset(config.algorithms)
        self.static_keys = load_public_keys(config.public_keys)
        self.jwks: JwksSource | None = None
        if config.jwks_url or config.oidc_issuer:
            self.jwks = context.keep("jwks", lambda: JwksSource(config))
        self.introspector: Introspector | None = None
        if config.introspection is not None:
            intro = config.introspection
            self.introspector = context.keep("introspection", lambda: Introspector(intro))

    async def start(self) -> None:
        if self.jwks is not None and not self.jwks.keys:
            await self.jwks.refresh()  # a failure is logged; tokens fail closed until it works

    def _token(self, ctx: RequestContext) -> str | None:
        cfg = self.config
        return take_credential(ctx.request, cfg.header, cfg.query, cfg.hide_credentials)

    async def on_request(self, ctx: RequestContext) -> Response | None:
        cfg: JwtAuthConfig = self.config
        if ctx.principal is not None:  # first authenticator wins: leave this request alone
            if cfg.hide_credentials:
                self._token(ctx)  # ... but the token is still not forwarded
            return None
        token = self._token(ctx)
        if token is None:
            if cfg.optional:
                return None
            return unauthorized(ctx, cfg.realm, "a bearer token is required", error=None)
        if len(token) > cfg.max_token_size:
            return unauthorized(ctx, cfg.realm, "token too large")
        try:
            if self.allowed and (_looks_like_jwt(token) or self.introspector is None):
                claims = await self.verify_jwt(token)
                kind = "jwt"
            else:
                assert self.introspector is not None
                found = await self.introspector.introspect(token)
                if found is None:
                    raise TokenRejected("token is not active")
                claims, kind = found, "introspection"
        except TokenRejected as exc:
            return unauthorized(ctx, cfg.realm, str(exc))
        except IntrospectionUnavailable as exc:
            self.context.logger.warning("introspection unavailable", extra={"error": str(exc)})
            return ctx.error_response(
                503, "auth_unavailable", "token introspection is unavailable", {"Retry-After": "1"}
            )
        ctx.authenticate(principal_from(kind, claims, cfg.claims), cfg.forward_headers)
        return None

    async def verify_jwt(self, token: str) -> dict[str, Any]:
        cfg: JwtAuthConfig = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.allowed:
            raise TokenRejected("token algorithm is not allowed")
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else None
        if alg in HMAC_ALGS:
            assert cfg.secret is not None
            keys: list[Any] = [cfg.secret.encode()]
        else:
            fam = family(alg)
            keys = [k.key for k in self.static_keys if k.family == fam]
            if self.jwks is not None:
                keys += [k.key for k in await self.jwks.candidates(kid, fam)]
            if not keys:
                raise TokenRejected("token signing key is unknown")
        try:
            return decode_token(token, keys, alg, cfg)
        except jwt.PyJWTError as exc:
            raise TokenRejected(_message(exc)) from None


def _message(exc: Exception) -> str:
    for cls, message in ERRORS:
        if isinstance(exc, cls):
            return message
    return "invalid token"
