"""``jwt_auth``: JWT bearer tokens (HS/RS/PS/ES/EdDSA; keys from config, JWKS or OIDC
discovery) and opaque tokens through OAuth2 introspection. See docs/identity.md."""

from gatewayd.plugins.jwt_auth.config import JwtAuthConfig
from gatewayd.plugins.jwt_auth.plugin import JwtAuthPlugin

__all__ = ["JwtAuthConfig", "JwtAuthPlugin"]
