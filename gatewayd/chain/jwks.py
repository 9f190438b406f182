"""Verification keys for JWTs: from a JWKS (a URL, or found through an OIDC issuer's discovery
document) or PEM public keys. Shared by the ``jwt_auth`` plugin and the admin API's ``admin.jwt``.

The JWKS is cached for ``jwks_ttl`` and refreshed when stale; a token with an unknown ``kid``
triggers a refresh, at most once per ``jwks_min_refresh`` (so junk kids cannot make the gateway
hammer the IdP). Refreshes are single-flight; a failed refresh keeps the old keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gatewayd.config.idp import ASYMMETRIC_ALGS, HMAC_ALGS, check_algorithms, check_url

__all__ = [
    "ASYMMETRIC_ALGS",
    "HMAC_ALGS",
    "JwksSettings",
    "JwksSource",
    "KeySourceError",
    "VerifyKey",
    "check_algorithms",
    "check_url",
    "decode_token",
    "family",
    "key_family",
    "load_public_keys",
    "parse_jwks",
]


class JwksSettings(Protocol):
    """Where a :class:`JwksSource` finds its keys and how often it asks (a plugin's or
    ``admin.jwt``'s config)."""

    @property
    def jwks_url(self) -> str | None: ...

    @property
    def oidc_issuer(self) -> str | None: ...

    @property
    def allow_insecure_http(self) -> bool: ...

    @property
    def http_timeout(self) -> float: ...

    @property
    def jwks_ttl(self) -> float: ...

    @property
    def jwks_min_refresh(self) -> float: ...


log = logging.getLogger("gatewayd.jwks")


def family(alg: str) -> str:
    """The key type an algorithm needs: RSA, EC or OKP."""
    if alg.startswith(("RS", "PS")):
        return "RSA"
    if alg.startswith("ES"):
        return "EC"
    return "OKP"


def key_family(key: Any) -> str | None:
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "OKP"
    return None


@dataclass(frozen=True, slots=True)
class VerifyKey:
    kid: str | None
    family: str
    key: Any


class KeySourceError(Exception):
    pass


class JwksSource:
    """Keys from a JWKS URL, or from the ``jwks_uri`` of an OIDC issuer's discovery document."""

    def __init__(self, config: JwksSettings) -> None:
        self.config = config
        self.keys: list[VerifyKey] = []
        self.fetched_at = 0.0
        self.attempted_at = 0.0
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.config.http_timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _get_json(self, url: str) -> Any:
        async with self.session().get(url, headers={"Accept": "application/json"}) as r:
            if r.status != 200:
                raise KeySourceError(f"GET {url}: HTTP {r.status}")
            text = await r.text()
        if len(text) > 1024 * 1024:
            raise KeySourceError(f"GET {url}: document too large")
        return json.loads(text)

    async def _jwks_url(self) -> str:
        cfg = self.config
        if cfg.jwks_url:
            return cfg.jwks_url
        assert cfg.oidc_issuer is not None
        issuer = cfg.oidc_issuer.rstrip("/")
        doc = await self._get_json(issuer + "/.well-known/openid-configuration")
        if not isinstance(doc, dict) or str(doc.get("issuer", "")).rstrip("/") != issuer:
            raise KeySourceError("discovery document names a different issuer")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str):
            raise KeySourceError("discovery document has no jwks_uri")
        check_url(uri, cfg.allow_insecure_http, "jwks_uri")
        return uri

    async def refresh(self, only_if_older_than: float | None = None) -> None:
        async with self._lock:
            if only_if_older_than is not None and self.attempted_at > only_if_older_than:
                return  # another request refreshed while we waited
            self.attempted_at = time.monotonic()
            try:
                doc = await self._get_json(await self._jwks_url())
                self.keys = parse_jwks(doc)
                self.fetched_at = time.monotonic()
                log.info("JWKS loaded", extra={"keys": len(self.keys)})
            except (aiohttp.ClientError, TimeoutError, ValueError, KeySourceError) as exc:
                log.warning("JWKS refresh failed; keeping old keys", extra={"error": str(exc)})

    async def candidates(self, kid: str | None, fam: str) -> list[VerifyKey]:
        now = time.monotonic()
        if now - self.fetched_at > self.config.jwks_ttl and now - self.attempted_at > 1.0:
            await self.refresh(only_if_older_than=now - 1.0)
        found = _match(self.keys, kid, fam)
        stale = time.monotonic() - self.attempted_at >= self.config.jwks_min_refresh
        if not found and kid is not None and stale:
            await self.refresh(only_if_older_than=time.monotonic() - 0.001)
            found = _match(self.keys, kid, fam)
        return found


def _match(keys: list[VerifyKey], kid: str | None, fam: str) -> list[VerifyKey]:
    if kid is not None:
        return [k for k in keys if k.kid == kid and k.family == fam]
    return [k for k in keys if k.family == fam]


def parse_jwks(doc: Any) -> list[VerifyKey]:
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeySourceError("not a JWKS document")
    out = []
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(jwk).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        fam = key_family(key)
        if fam is not None:
            out.append(VerifyKey(jwk.get("kid"), fam, key))
    return out


def load_public_keys(pems: list[str]) -> list[VerifyKey]:
    out = []
    for i, pem in enumerate(pems):
        try:
            key = load_pem_public_key(pem.encode())
        except ValueError:
            raise ValueError(f"public_keys[{i}] is not a PEM public key") from None
        fam = key_family(key)
        if fam is None:
            raise ValueError(f"public_keys[{i}]: unsupported key type")
        out.append(VerifyKey(None, fam, key))
    return out


class DecodeSettings(Protocol):
    """What :func:`decode_token` checks besides the signature (a plugin's or ``admin.jwt``'s
    config)."""

    @property
    def audience(self) -> str | list[str] | None: ...

    @property
    def expected_issuer(self) -> str | None: ...

    @property
    def leeway(self) -> float: ...

    @property
    def required_claims(self) -> Any: ...


MAX_KEYS_TRIED = 8


def decode_token(token: str, keys: list[Any], alg: str, settings: DecodeSettings) -> dict[str, Any]:
    """The claims of ``token`` signed with ``alg`` by one of ``keys`` (tried in turn, at most
    ``MAX_KEYS_TRIED``: a token without a ``kid`` may match any), with its audience, issuer,
    times (``leeway``) and required claims checked. Raises ``jwt.PyJWTError``:
    ``InvalidSignatureError`` when no key matched, the first other error at once."""
    last: jwt.PyJWTError = jwt.InvalidSignatureError()
    for key in keys[:MAX_KEYS_TRIED]:
        try:
            return dict(
                jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    audience=settings.audience,
                    issuer=settings.expected_issuer,
                    leeway=settings.leeway,
                    options={
                        "require": list(settings.required_claims),
                        "verify_aud": settings.audience is not None,
                    },
                )
            )
        except jwt.InvalidSignatureError as exc:
            last = exc  # maybe another key: try the next
    raise last
