"""The ``jwt_auth`` config: algorithms, where keys come from, what is checked, claim mapping."""

from __future__ import annotations

from pydantic import Field, model_validator

from gatewayd.chain import Duration, PluginConfig, Size
from gatewayd.chain.jwks import ASYMMETRIC_ALGS, HMAC_ALGS, check_algorithms, check_url

__all__ = ["ASYMMETRIC_ALGS", "HMAC_ALGS", "check_url"]


class ClaimsMap(PluginConfig):
    """Which claims become the principal. Dotted paths reach into objects
    (``realm_access.roles``). Roles and scopes may be a list or a space-separated string."""

    subject: str = "sub"
    tenant: str | None = None
    roles: str | None = None
    scopes: str | None = "scope"


class IntrospectionConfig(PluginConfig):
    """OAuth2 token introspection (RFC 7662) for opaque tokens."""

    url: str
    client_id: str
    client_secret: str = Field(repr=False)
    cache_ttl: Duration = 60.0  # never beyond the token's own exp
    negative_ttl: Duration = 10.0
    timeout: Duration = 5.0
    max_concurrency: int = Field(32, ge=1)


class JwtAuthConfig(PluginConfig):
    algorithms: list[str] = ["RS256"]
    secret: str | None = Field(None, repr=False)  # HS*
    public_keys: list[str] = []  # PEM public keys (RS/PS/ES/EdDSA)
    jwks_url: str | None = None
    oidc_issuer: str | None = None
    issuer: str | None = None  # default: oidc_issuer
    audience: str | list[str] | None = None
    leeway: Duration = 0.0
    required_claims: list[str] = ["exp"]
    claims: ClaimsMap = ClaimsMap()
    introspection: IntrospectionConfig | None = None
    header: str = "Authorization"
    query: str | None = None
    realm: str = "gatewayd"
    max_token_size: Size = 8192
    jwks_ttl: Duration = 300.0
    jwks_min_refresh: Duration = 10.0  # at most one refresh this often on an unknown kid
    http_timeout: Duration = 5.0
    allow_insecure_http: bool = False
    forward_headers: bool = True
    hide_credentials: bool = False
    optional: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> JwtAuthConfig:
        algs = set(self.algorithms)
        if not algs and self.introspection is None:
            raise ValueError("'algorithms' must list at least one algorithm")
        check_algorithms(self.algorithms)
        if algs & HMAC_ALGS and not self.secret:
            raise ValueError("HS* algorithms need 'secret'")
        if self.secret and not algs & HMAC_ALGS:
            raise ValueError("'secret' is only used with HS* algorithms")
        sources = bool(self.public_keys or self.jwks_url or self.oidc_issuer)
        if algs & ASYMMETRIC_ALGS and not sources:
            raise ValueError(
                "RS/PS/ES/EdDSA algorithms need 'public_keys', 'jwks_url' or 'oidc_issuer'"
            )
        if self.jwks_url and self.oidc_issuer:
            raise ValueError("use either 'jwks_url' or 'oidc_issuer' (it finds the JWKS)")
        if self.jwks_url:
            check_url(self.jwks_url, self.allow_insecure_http, "jwks_url")
        if self.oidc_issuer:
            check_url(self.oidc_issuer, self.allow_insecure_http, "oidc_issuer")
        if self.introspection is not None:
            check_url(self.introspection.url, self.allow_insecure_http, "introspection.url")
        return self

    @property
    def expected_issuer(self) -> str | None:
        return self.issuer or self.oidc_issuer
