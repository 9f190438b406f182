"""Tokens from an identity provider: the JWT algorithms gatewayd accepts, the rule for the URLs
keys are fetched from, and ``admin.jwt`` (JWTs that authenticate admin API callers). The
``jwt_auth`` plugin uses the same algorithms and URL rule (through ``gatewayd.chain.jwks``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gatewayd.config.units import Duration

HMAC_ALGS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def check_url(url: str, allow_insecure_http: bool, what: str) -> None:
    """https, or http to a loopback address, or any http with ``allow_insecure_http``."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname:
        if parts.hostname in LOOPBACK or allow_insecure_http:
            return
        raise ValueError(
            f"{what} must use https (http is only allowed to 127.0.0.1/::1/localhost, "
            "or with allow_insecure_http: true)"
        )
    raise ValueError(f"{what} is not an http(s) URL: {url!r}")


def check_algorithms(algorithms: list[str]) -> None:
    bad = set(algorithms) - HMAC_ALGS - ASYMMETRIC_ALGS
    if bad:
        raise ValueError(
            f"algorithm(s) not allowed: {', '.join(sorted(bad))} (allowed: "
            f"{', '.join(sorted(HMAC_ALGS | ASYMMETRIC_ALGS))}; never 'none')"
        )


class AdminJwtConfig(BaseModel):
    """``admin.jwt``: admin API callers may send a JWT from an IdP instead of an admin token.
    Its signature (``secret`` for HS*, else the JWKS at ``jwks_url`` or found through
    ``oidc_issuer``'s discovery document), ``exp``, issuer and audience are checked; the role is
    the ``role_claim`` (``viewer`` or ``operator``, anything else is refused), the caller's id
    the ``id_claim``."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
    issuer: str | None = None  # default: oidc_issuer
    audience: str | list[str] | None = None
    algorithms: list[str] = Field(["RS256"], min_length=1)
    jwks_url: str | None = None
    secret: str | None = Field(None, repr=False)
    oidc_issuer: str | None = None
    role_claim: str = "gatewayd_role"  # dotted paths reach into objects (realm_access.role)
    id_claim: str = "sub"
    leeway: Duration = 0.0
    required_claims: list[str] = ["exp"]
    jwks_ttl: Duration = 300.0
    jwks_min_refresh: Duration = 10.0  # at most one refresh this often on an unknown kid
    http_timeout: Duration = 5.0
    allow_insecure_http: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> AdminJwtConfig:
        algs = set(self.algorithms)
        check_algorithms(self.algorithms)
        if algs & HMAC_ALGS and algs & ASYMMETRIC_ALGS:
            raise ValueError("use HS* algorithms or asymmetric ones, not both")
        sources = [k for k in ("secret", "jwks_url", "oidc_issuer") if getattr(self, k)]
        if len(sources) != 1:
            raise ValueError("give exactly one of 'secret' (HS*), 'jwks_url' or 'oidc_issuer'")
        if self.secret and not algs <= HMAC_ALGS:
            raise ValueError("'secret' is only used with HS* algorithms")
        if not self.secret and algs & HMAC_ALGS:
            raise ValueError("HS* algorithms need 'secret'")
        if self.jwks_url:
            check_url(self.jwks_url, self.allow_insecure_http, "jwks_url")
        if self.oidc_issuer:
            check_url(self.oidc_issuer, self.allow_insecure_http, "oidc_issuer")
        if not self.issuer and not self.oidc_issuer:
            raise ValueError("'issuer' is required (the IdP's iss claim)")
        return self

    @property
    def expected_issuer(self) -> str | None:
        return self.issuer or self.oidc_issuer
