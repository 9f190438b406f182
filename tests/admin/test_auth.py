"""Admin authentication (gatewayd/admin/auth.py, idp.py): identify() over config, stored and
JWT callers; admin JWTs from a real JWKS server on 127.0.0.1 (RS256 and ES256 keys, OIDC
discovery) against the real daemon, each failure with its status and error body."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from gatewayd.admin.app import DAEMON
from gatewayd.admin.auth import ADMIN_AUTH, AdminIdentity, identify, install
from gatewayd.admin.tokens import add_token, hash_token, token_path
from gatewayd.config.idp import AdminJwtConfig
from gatewayd.config.schema import GatewayConfig


class IdP:
    """A local identity provider: OIDC discovery and a JWKS with an RSA and an EC key."""

    def __init__(self) -> None:
        self.url = ""
        self.up = True
        self.fetches = 0
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.kids = {"RS256": "rsa-" + uuid.uuid4().hex[:6], "ES256": "ec-" + uuid.uuid4().hex[:6]}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks", self.jwks)
        return app

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response({"issuer": self.url, "jwks_uri": self.url + "/jwks"})

    async def jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if not self.up:
            return web.json_response({"error": "down"}, status=503)
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key()))
        rsa_jwk.update(kid=self.kids["RS256"], use="sig", alg="RS256")
        ec_jwk.update(kid=self.kids["ES256"], use="sig", alg="ES256")
        return web.json_response({"keys": [rsa_jwk, ec_jwk]})

    def token(self, alg: str = "RS256", key: Any = None, kid: str | None = None, **claims: Any):
        now = int(time.time())
        payload = {
            "iss": self.url,
            "aud": "gatewayd-admin",
            "sub": "alice@example.com",
            "gatewayd_role": "operator",
            "iat": now,
            "exp": now + 300,
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        if key is None:
            key = self.rsa if alg.startswith("RS") else self.ec
        return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid or self.kids[alg]})


@pytest.fixture
async def idp(backend) -> IdP:
    provider = IdP()
    server = await backend(provider.app())
    provider.url = f"http://127.0.0.1:{server.port}"
    return provider


def jwt_config(idp: IdP, **kw: Any) -> dict[str, Any]:
    return {
        "issuer": idp.url,
        "audience": "gatewayd-admin",
        "algorithms": ["RS256", "ES256"],
        "jwks_url": idp.url + "/jwks",
        "jwks_min_refresh": "100ms",
        **kw,
    }


async def call(gw: Any, token: str, method: str = "GET", path: str = "/_admin/config"):
    headers = {"Authorization": f"Bearer {token}", "X-Request-ID": "req-" + uuid.uuid4().hex}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, gw.admin_url + path, headers=headers) as r,
    ):
        body = await r.json()
        if r.status >= 400:  # the project's error body, with the caller's request id
            assert set(body) == {"error"}
            assert body["error"]["request_id"] == headers["X-Request-ID"]
        return r.status, body, r.headers


async def test_rs256_and_es256_admin_jwts_from_a_jwks(gateway, config, idp):
    gw = await gateway(config(admin={**config()["admin"], "jwt": jwt_config(idp)}))
    operator = idp.token("RS256")
    status, body, _ = await call(gw, operator, "POST", "/_admin/reload")
    assert status == 200 and body["reloaded"] is True
    viewer = idp.token("ES256", gatewayd_role="viewer", sub="bob")
    assert (await call(gw, viewer))[0] == 200
    status, body, _ = await call(gw, viewer, "POST", "/_admin/reload")
    assert status == 403 and "operator" in body["error"]["message"]
    fetches = idp.fetches
    for _ in range(5):
        assert (await call(gw, operator))[0] == 200
    assert idp.fetches == fetches  # the JWKS is cached
    assert operator not in gw.logs() and viewer not in gw.logs()


async def test_each_bad_jwt_is_refused_with_its_status(gateway, config, idp):
    gw = await gateway(config(admin={**config()["admin"], "jwt": jwt_config(idp)}))
    now = int(time.time())
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    hs = jwt.encode({"iss": idp.url, "exp": now + 60}, "x" * 32, algorithm="HS256")
    cases = [
        (idp.token(exp=now - 60, iat=now - 400), 401, "token_expired", "expired"),
        (idp.token(key=other_rsa), 403, "forbidden", "signature is invalid"),
        (idp.token(iss="https://evil.example.com"), 403, "forbidden", "issuer"),
        (idp.token(aud="someone-else"), 403, "forbidden", "audience"),
        (idp.token(exp=None), 403, "forbidden", "required claim"),
        (idp.token(gatewayd_role="admin"), 403, "forbidden", "'viewer' or 'operator'"),
        (idp.token(gatewayd_role=None), 403, "forbidden", "'viewer' or 'operator'"),
        (idp.token(gatewayd_role=["operator"]), 403, "forbidden", "'viewer' or 'operator'"),
        (idp.token(sub=None), 403, "forbidden", "no 'sub' claim"),
        (idp.token(kid="unknown-kid"), 403, "forbidden", "signing key is unknown"),
        (hs, 403, "forbidden", "algorithm is not allowed"),
        ("eyJub3QiOiJqc29u.x.y", 403, "forbidden", "malformed"),
    ]
    for token, status, code, message in cases:
        got, body, headers = await call(gw, token)
        assert (got, body["error"]["code"]) == (status, code), (message, body)
        assert message in body["error"]["message"]
        assert token not in json.dumps(body)
        if status == 401:
            assert headers["WWW-Authenticate"].startswith("Bearer")
    logs = gw.logs()
    assert "admin JWT refused" in logs
    assert not [t for t, *_ in cases if t in logs]  # never a token in the log


async def test_oidc_discovery_and_an_idp_that_is_down(gateway, config, idp):
    idp.up = False
    cfg = jwt_config(idp, jwks_url=None, oidc_issuer=idp.url, issuer=None)
    gw = await gateway(config(admin={**config()["admin"], "jwt": cfg}))
    status, body, _ = await call(gw, idp.token())
    assert status == 503 and body["error"]["code"] == "auth_unavailable"
    idp.up = True
    time_left = time.monotonic() + 5
    while time.monotonic() < time_left:  # the next refresh (after jwks_ttl or an unknown kid)
        status, body, _ = await call(gw, idp.token())
        if status == 200:
            break
    assert status == 200, body


@dataclass
class Runtime:
    """The one thing identify() reads of the daemon: its config."""

    config: GatewayConfig


async def test_identify_says_who_and_how(tmp_path: Path, idp: IdP) -> None:
    config_hash = hash_token("config-token", rounds=4)
    state = tmp_path / "state"
    add_token(token_path(state), "robot", "viewer", hash_token("stored-token", rounds=4))
    secret = "s" * 32
    config = GatewayConfig.model_validate(
        {
            "state": {"dir": str(state)},
            "admin": {
                "tokens": [{"id": "ops", "hash": config_hash, "role": "operator"}],
                "jwt": {"issuer": "idp", "algorithms": ["HS256"], "secret": secret},
            },
        }
    )
    app = web.Application()
    app[DAEMON] = Runtime(config)  # type: ignore[assignment]
    install(app)
    assert await identify(app, "config-token") == AdminIdentity("ops", "operator", "config")
    assert await identify(app, "stored-token") == AdminIdentity("robot", "viewer", "stored")
    good = {"iss": "idp", "sub": "carol", "gatewayd_role": "viewer", "exp": time.time() + 60}
    token = jwt.encode(good, secret, algorithm="HS256")
    assert await identify(app, token) == AdminIdentity("carol", "viewer", "jwt")
    assert await identify(app, jwt.encode(good, "t" * 32, algorithm="HS256")) is None
    assert await identify(app, "wrong") is None
    assert await identify(app, "") is None
    await app[ADMIN_AUTH].close()


def test_admin_jwt_config_is_checked() -> None:
    ok = {"issuer": "https://idp.example.com", "jwks_url": "https://idp.example.com/jwks"}
    assert AdminJwtConfig.model_validate(ok).role_claim == "gatewayd_role"
    bad = [
        ({**ok, "secret": "x"}, "exactly one of"),
        ({"issuer": "i", "algorithms": ["HS256"]}, "exactly one of"),
        ({**ok, "algorithms": ["none"]}, "not allowed"),
        ({**ok, "jwks_url": "http://idp.example.com/jwks"}, "must use https"),
        ({"jwks_url": "https://idp.example.com/jwks"}, "'issuer' is required"),
        ({"issuer": "i", "secret": "x", "algorithms": ["RS256"]}, "only used with HS"),
    ]
    for data, message in bad:
        with pytest.raises(ValidationError, match=message):
            AdminJwtConfig.model_validate(data)
