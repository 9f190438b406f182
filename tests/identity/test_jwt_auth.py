"""jwt_auth against a real local OIDC issuer (discovery + JWKS that rotates) and hostile tokens."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import jwt
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .identity_support import ec_key, echo_app, route, upstream_url

HS_SECRET = "hs-secret-for-tests-0123456789abcdef"


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def start(gateway, backend, config, issuer, ec_pub_pem: str = ""):
    srv = await backend(echo_app())
    plugins_oidc = {
        "jwt_auth": {
            "algorithms": ["RS256"],
            "oidc_issuer": issuer.url,
            "audience": "api",
            "jwks_min_refresh": "200ms",
            "claims": {"tenant": "org_id", "roles": "roles", "scopes": "scope"},
        }
    }
    routes = [
        route("oidc", "api", "/oidc/", [plugins_oidc, {"acl": {"allow": ["role:admin"]}}]),
        route(
            "hs",
            "api",
            "/hs/",
            [{"jwt_auth": {"algorithms": ["HS256"], "secret": HS_SECRET, "issuer": "acme-idp"}}],
        ),
        route(
            "intro",
            "api",
            "/intro/",
            [
                {
                    "jwt_auth": {
                        "algorithms": [],
                        "introspection": {
                            "url": issuer.url + "/introspect",
                            "client_id": "gw",
                            "client_secret": "s3cret",
                        },
                        "claims": {"tenant": "tenant"},
                    }
                }
            ],
        ),
    ]
    if ec_pub_pem:
        routes.append(
            route(
                "es",
                "api",
                "/es/",
                [{"jwt_auth": {"algorithms": ["ES256"], "public_keys": [ec_pub_pem]}}],
            )
        )
    cfg = config(
        upstreams={"api": {"targets": [upstream_url(srv)]}},
        routes=routes,
        server={"drain_timeout": "5s", "max_header_size": "64KiB"},
    )
    return await gateway(cfg)


async def get(s, url, token=None, headers=None):
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    async with s.get(url, headers=h) as r:
        return r.status, await r.json(), r.headers


async def test_oidc_tokens_and_key_rotation(gateway, backend, config, issuer):
    gw = await start(gateway, backend, config, issuer)
    async with aiohttp.ClientSession() as s:
        tok = issuer.token(org_id="acme", roles=["admin", "dev"], scope="api:read api:write")
        status, body, _ = await get(s, gw.url + "/oidc/x", tok, {"X-Gateway-Tenant": "evil"})
        assert status == 200
        h = body["headers"]
        assert h["X-Gateway-Subject"] == "user-1" and h["X-Gateway-Tenant"] == "acme"
        assert h["X-Gateway-Roles"] == "admin dev"
        assert h["X-Gateway-Scopes"] == "api:read api:write"
        fetches = issuer.jwks_fetches
        # The issuer rotates: a token with the new kid makes the gateway refresh its JWKS.
        old_kid = issuer.keys[-1][0]
        old_token = tok
        issuer.rotate()
        await asyncio.sleep(0.25)  # past jwks_min_refresh since the start-up fetch
        new_token = issuer.token(org_id="acme", roles=["admin"])
        status, _, _ = await get(s, gw.url + "/oidc/x", new_token)
        assert status == 200
        assert issuer.jwks_fetches == fetches + 1
        # The old key is gone from the JWKS: its tokens no longer pass (after a refresh).
        await asyncio.sleep(0.25)
        status, body, _ = await get(s, gw.url + "/oidc/x", issuer_token_with(old_token, old_kid))
        assert status == 401
        # acl on roles from the token
        status, _, _ = await get(s, gw.url + "/oidc/x", issuer.token(roles=["dev"]))
        assert status == 403


def issuer_token_with(token: str, kid: str) -> str:
    assert jwt.get_unverified_header(token)["kid"] == kid
    return token


async def test_unknown_kid_refresh_is_rate_limited(gateway, backend, config, issuer):
    gw = await start(gateway, backend, config, issuer)
    async with aiohttp.ClientSession() as s:
        before = issuer.jwks_fetches
        for i in range(20):
            forged = issuer.token()
            header, rest = forged.split(".", 1)
            h = json.loads(base64.urlsafe_b64decode(header + "=="))
            h["kid"] = f"junk-{i}"
            status, _, _ = await get(s, gw.url + "/oidc/x", b64(h) + "." + rest)
            assert status == 401
        assert issuer.jwks_fetches - before <= 2  # 200 ms floor, not one fetch per junk kid


async def test_hostile_tokens_are_401(gateway, backend, config, issuer):
    priv = ec_key()
    pem = priv.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    gw = await start(gateway, backend, config, issuer, pem)
    rs_public_pem = (
        issuer.keys[-1][1]
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    now = int(time.time())
    good_claims = {"iss": issuer.url, "aud": "api", "sub": "u", "exp": now + 300}
    unsigned = b64({"alg": "none", "typ": "JWT"}) + "." + b64(good_claims) + "."
    # HS256 "signed" with the RS256 public key (the classic confusion attack)
    import hashlib
    import hmac

    hs_head = b64({"alg": "HS256", "typ": "JWT", "kid": issuer.keys[-1][0]})
    signing_input = f"{hs_head}.{b64(good_claims)}"
    sig = hmac.new(rs_public_pem, signing_input.encode(), hashlib.sha256).digest()
    confused = signing_input + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    hostile = {
        "alg none": unsigned,
        "HS256 with RS public key": confused,
        "expired": issuer.token(exp=now - 60),
        "not yet valid": issuer.token(nbf=now + 600),
        "wrong iss": issuer.token(iss="https://evil.example.com"),
        "wrong aud": issuer.token(aud="other"),
        "no exp": issuer.token(exp=None),
        "bad base64": "e$$$.e%%%.s^^^",
        "bad json": b64({"alg": "RS256"})[:-2] + "." + b64(good_claims) + ".abc",
        "16 KiB": issuer.token(pad="x" * 16384),
        "wrong signature": issuer.token()[:-6] + "AAAAAA",
        "empty": "",
    }
    async with aiohttp.ClientSession() as s:
        for name, token in hostile.items():
            started = time.monotonic()
            status, body, headers = await get(s, gw.url + "/oidc/x", token)
            assert status == 401, (name, status, body)
            assert "WWW-Authenticate" in headers, name
            assert time.monotonic() - started < 2, name
        # the confused token also fails where HS256 is allowed (other secret)
        status, _, _ = await get(s, gw.url + "/hs/x", confused)
        assert status == 401
        # HS256 and ES256 good paths
        hs = jwt.encode({"iss": "acme-idp", "sub": "svc", "exp": now + 60}, HS_SECRET, "HS256")
        status, body, _ = await get(s, gw.url + "/hs/x", hs)
        assert status == 200 and body["headers"]["X-Gateway-Subject"] == "svc"
        es = jwt.encode({"sub": "edge", "exp": now + 60}, priv, "ES256")
        status, _, _ = await get(s, gw.url + "/es/x", es)
        assert status == 200
        # an RS256 token where only ES256 is allowed
        status, _, _ = await get(s, gw.url + "/es/x", issuer.token())
        assert status == 401


async def test_introspection_with_cache(gateway, backend, config, issuer):
    gw = await start(gateway, backend, config, issuer)
    issuer.active_tokens["opaque-good"] = {"sub": "bob", "tenant": "acme", "exp": time.time() + 60}
    async with aiohttp.ClientSession() as s:
        for _ in range(5):
            status, body, _ = await get(s, gw.url + "/intro/x", "opaque-good")
            assert status == 200
            assert body["headers"]["X-Gateway-Tenant"] == "acme"
            assert body["headers"]["X-Gateway-Auth"] == "introspection"
        assert issuer.introspections == 1
        status, _, _ = await get(s, gw.url + "/intro/x", "opaque-bad")
        assert status == 401
