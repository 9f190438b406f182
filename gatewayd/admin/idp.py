"""Admin API callers authenticated by a JWT from an identity provider (``admin.jwt``).

The signature is checked with the HMAC secret or with keys from the IdP's JWKS (``jwks_url``, or
found through ``oidc_issuer``'s discovery document), fetched and cached by
:class:`gatewayd.chain.jwks.JwksSource` as the ``jwt_auth`` plugin does; then ``exp`` (and the
other ``required_claims``), the issuer and the audience. The role is the ``role_claim``: only
``viewer`` and ``operator`` are accepted. Expired -> 401; anything else wrong -> 403; no keys
could be fetched from the IdP yet -> 503. A refusal is logged with its reason, never the token.
"""

from __future__ import annotations

import logging
from typing import Any

import jwt

from gatewayd.chain.jwks import HMAC_ALGS, JwksSource, decode_token, family
from gatewayd.config.idp import AdminJwtConfig

log = logging.getLogger("gatewayd.admin")

ERRORS: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not yet valid"),
    (jwt.InvalidIssuerError, "the token's issuer is not accepted"),
    (jwt.InvalidAudienceError, "the token's audience is not accepted"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim"),
    (jwt.InvalidSignatureError, "the token's signature is invalid"),
    (jwt.DecodeError, "the token is malformed"),
]


class JwtRefused(Exception):
    """Why a JWT is not accepted: ``status`` (401, 403 or 503), ``code`` and the message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def looks_like_jwt(token: str) -> bool:
    """A compact JWS: three base64url parts, the first a JSON object (``eyJ``)."""
    return token.count(".") == 2 and token.startswith("eyJ")


def claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class AdminJwtVerifier:
    """Verifies admin JWTs for one ``admin.jwt`` config; the JWKS is cached across calls."""

    def __init__(self, config: AdminJwtConfig) -> None:
        self.config = config
        self.allowed = frozenset(config.algorithms)
        self.jwks = JwksSource(config) if (config.jwks_url or config.oidc_issuer) else None

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    async def verify(self, token: str) -> tuple[str, str]:
        """The caller's (id, role), or :class:`JwtRefused`."""
        try:
            claims = await self._claims(token)
        except JwtRefused as exc:
            log.info("admin JWT refused", extra={"reason": exc.message})
            raise
        cfg = self.config
        role = claim(claims, cfg.role_claim)
        if role not in ("viewer", "operator"):
            log.info("admin JWT refused", extra={"reason": "role claim not accepted"})
            raise JwtRefused(
                403,
                "forbidden",
                f"the token's {cfg.role_claim!r} claim must be 'viewer' or 'operator'",
            )
        subject = claim(claims, cfg.id_claim)
        if not isinstance(subject, str | int) or isinstance(subject, bool) or subject == "":
            raise JwtRefused(403, "forbidden", f"the token has no {cfg.id_claim!r} claim")
        return str(subject), str(role)

    async def _claims(self, token: str) -> dict[str, Any]:
        cfg = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise JwtRefused(403, "forbidden", "the token is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.allowed:
            raise JwtRefused(403, "forbidden", "the token's algorithm is not allowed")
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else None
        if alg in HMAC_ALGS:
            assert cfg.secret is not None
            keys: list[Any] = [cfg.secret.encode()]
        else:
            assert self.jwks is not None
            keys = [k.key for k in await self.jwks.candidates(kid, family(alg))]
            if not keys and not self.jwks.keys:
                raise JwtRefused(503, "auth_unavailable", "the IdP's signing keys are unavailable")
            if not keys:
                raise JwtRefused(403, "forbidden", "the token's signing key is unknown")
        try:
            return decode_token(token, keys, alg, cfg)
        except jwt.PyJWTError as exc:
            raise _refusal(exc) from None


def _refusal(exc: Exception) -> JwtRefused:
    message = next((m for cls, m in ERRORS if isinstance(exc, cls)), "the token is not accepted")
    if isinstance(exc, jwt.ExpiredSignatureError):
        return JwtRefused(401, "token_expired", message)
    return JwtRefused(403, "forbidden", message)
