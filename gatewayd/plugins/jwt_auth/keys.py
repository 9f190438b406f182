"""Verification keys: the HMAC secret, PEM keys from config, or a JWKS (URL or OIDC discovery).

The key sources live in ``gatewayd.chain.jwks`` (the admin API's ``admin.jwt`` uses them too).
"""

from __future__ import annotations

from gatewayd.chain.jwks import (
    JwksSource,
    KeySourceError,
    VerifyKey,
    decode_token,
    family,
    key_family,
    load_public_keys,
    parse_jwks,
)

__all__ = [
    "JwksSource",
    "KeySourceError",
    "VerifyKey",
    "decode_token",
    "family",
    "key_family",
    "load_public_keys",
    "parse_jwks",
]
