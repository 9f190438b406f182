"""Helpers for the identity tests: keys in a state dir, an echo backend, an OIDC issuer."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import bcrypt
import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gatewayd.stores.keys import KeyRecord, KeyStore, KeyStoreSettings
from gatewayd.stores.keys_sqlite import SQLiteKeyBackend

ADMIN_TOKEN = "admin-test-token-0123456789"
ADMIN_HASH = bcrypt.hashpw(ADMIN_TOKEN.encode(), bcrypt.gensalt(4)).decode()


def upstream_url(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def sqlite_store(state_dir: Path, **settings: Any) -> KeyStore:
    return KeyStore(SQLiteKeyBackend(state_dir / "keys.sqlite3"), KeyStoreSettings(**settings))


async def make_key(state_dir: Path, tenant: str = "acme", **kw: Any) -> tuple[str, KeyRecord]:
    """Create a key directly in a gateway's state dir (as ``gatewayd keys create`` does)."""
    store = sqlite_store(state_dir)
    try:
        return await store.create(tenant, **kw)
    finally:
        await store.close()


def echo_app(seen: list[dict[str, Any]] | None = None) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        record = {
            "path": request.raw_path,
            "headers": dict(request.headers),
            "body": base64.b64encode(body).decode(),
        }
        if seen is not None:
            seen.append(record)
        return web.json_response(record)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def route(name: str, upstream: str, path: str, plugins: list[Any]) -> dict[str, Any]:
    return {"name": name, "match": {"path": path}, "upstream": upstream, "plugins": plugins}


class Issuer:
    """A local OIDC issuer: discovery, JWKS (with key rotation) and token introspection."""

    def __init__(self) -> None:
        self.url = ""
        self.keys: list[tuple[str, Any]] = []  # (kid, private key), newest last
        self.jwks_fetches = 0
        self.introspections = 0
        self.active_tokens: dict[str, dict[str, Any]] = {}
        self.rotate()

    def rotate(self, keep_old: bool = False) -> str:
        kid = uuid.uuid4().hex[:12]
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys = ([*self.keys] if keep_old else []) + [(kid, key)]
        return kid

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_post("/introspect", self.introspect)
        return app

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.url,
                "jwks_uri": self.url + "/jwks",
                "introspection_endpoint": self.url + "/introspect",
            }
        )

    async def jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        keys = []
        for kid, key in self.keys:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            jwk.update(kid=kid, use="sig", alg="RS256")
            keys.append(jwk)
        return web.json_response({"keys": keys})

    async def introspect(self, request: web.Request) -> web.Response:
        self.introspections += 1
        if (
            request.headers.get("Authorization")
            != "Basic " + base64.b64encode(b"gw:s3cret").decode()
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        form = await request.post()
        claims = self.active_tokens.get(str(form.get("token")))
        return web.json_response({"active": True, **claims} if claims else {"active": False})

    def token(self, kid: str | None = None, **claims: Any) -> str:
        kid = kid or self.keys[-1][0]
        key = dict(self.keys)[kid]
        now = int(time.time())
        payload = {"iss": self.url, "aud": "api", "sub": "user-1", "iat": now, "exp": now + 300}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())
