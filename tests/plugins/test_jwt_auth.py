"""``jwt_auth`` (gatewayd/plugins/jwt_auth/): config, then requests (local keys; the JWKS, OIDC
discovery and introspection paths run against a real issuer in tests/identity/test_jwt_auth.py)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gatewayd.chain import Principal
from gatewayd.plugins.jwt_auth import JwtAuthPlugin
from gatewayd.plugins.key_auth import KeyAuthPlugin
from gatewayd.testing import ConfigError, PluginHarness

SECRET = "test-secret-" + "0123456789abcdef" * 4  # 75 bytes: long enough for HS512 too
HS = {"algorithms": ["HS256"], "secret": SECRET}

# -- config ------------------------------------------------------------------------------------


def test_a_valid_config_parses_durations_and_sizes():
    h = PluginHarness(JwtAuthPlugin, {**HS, "leeway": "30s", "max_token_size": "4KiB"})
    assert h.plugin.config.leeway == 30.0 and h.plugin.config.max_token_size == 4096
    assert SECRET not in repr(h.plugin.config)  # secrets stay out of reprs and logs


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({"algorithms": ["none"]}, "plugins[0].jwt_auth", "never 'none'"),
        ({"algorithms": ["HS256"]}, "plugins[0].jwt_auth", "HS* algorithms need 'secret'"),
        ({"algorithms": ["RS256"]}, "plugins[0].jwt_auth", "need 'public_keys', 'jwks_url'"),
        ({**HS, "leeway": "soon"}, "plugins[0].jwt_auth.leeway", "invalid duration"),
        ({"jwks_url": "http://idp.example/jwks"}, "plugins[0].jwt_auth", "must use https"),
        (
            {"introspection": {"url": "https://idp.example/i"}},
            "plugins[0].jwt_auth.introspection.client_id",
            "Field required",
        ),
        ({**HS, "claim": {}}, "plugins[0].jwt_auth.claim", "unknown field"),
    ],
)
def test_invalid_configs_name_the_field(config, path, message):
    with pytest.raises(ConfigError) as err:
        PluginHarness(JwtAuthPlugin, config)
    problem = err.value.problems[0]
    assert problem.path == path and message in problem.message
    assert SECRET not in str(err.value)


# -- requests ----------------------------------------------------------------------------------


def hs256(secret: str = SECRET, alg: str = "HS256", **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": "user-7", "org": "acme", "roles": "dev admin", "exp": now + 300, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm=alg)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


CLAIMS = {**HS, "claims": {"tenant": "org", "roles": "roles"}}


async def test_a_good_token_authenticates_with_its_claims_mapped():
    async with PluginHarness(JwtAuthPlugin, CLAIMS) as h:
        reply = await h.request(headers={**bearer(hs256()), "X-Gateway-Tenant": "globex"})
        assert reply.status == 200
        p = h.last_context.principal
        assert p is not None and (p.kind, p.subject, p.tenant) == ("jwt", "user-7", "acme")
        assert p.roles == frozenset({"dev", "admin"}) and p.claims["org"] == "acme"
        seen = h.upstream_requests[-1].headers
        assert seen["X-Gateway-Auth"] == "jwt" and seen["X-Gateway-Tenant"] == "acme"
        assert seen["X-Gateway-Roles"] == "admin dev"
        assert seen["Authorization"].startswith("Bearer ")  # hide_credentials is off by default


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (hs256(exp=int(time.time()) - 60), "token has expired"),
        (hs256(secret="another-" + "0123456789abcdef" * 4), "token signature is invalid"),
        (hs256(alg="HS512"), "token algorithm is not allowed"),
        (hs256(exp=None), "token lacks a required claim"),
        ("not.a.jwt", "malformed token"),
    ],
)
async def test_bad_tokens_are_401_saying_why(token, message):
    async with PluginHarness(JwtAuthPlugin, HS) as h:
        reply = await h.request(headers=bearer(token))
        assert reply.status == 401
        assert message.encode() in reply.body
        assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]
        assert h.upstream_requests == []


async def test_missing_and_oversized_tokens():
    async with PluginHarness(JwtAuthPlugin, {**HS, "max_token_size": 64}) as h:
        missing = await h.request()
        assert missing.status == 401 and "error=" not in missing.headers["WWW-Authenticate"]
        big = await h.request(headers=bearer(hs256(pad="x" * 200)))
        assert big.status == 401 and b"token too large" in big.body


async def test_issuer_audience_and_leeway():
    config = {**HS, "issuer": "acme-idp", "audience": "api", "leeway": "30s"}
    async with PluginHarness(JwtAuthPlugin, config) as h:
        good = hs256(iss="acme-idp", aud="api", exp=int(time.time()) - 10)  # within leeway
        assert (await h.request(headers=bearer(good))).status == 200
        for token in (hs256(iss="other", aud="api"), hs256(iss="acme-idp", aud="web")):
            assert (await h.request(headers=bearer(token))).status == 401


async def test_static_public_keys():
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    config = {"algorithms": ["ES256"], "public_keys": [pem.decode()]}
    async with PluginHarness(JwtAuthPlugin, config) as h:
        token = jwt.encode({"sub": "svc", "exp": int(time.time()) + 60}, key, algorithm="ES256")
        assert (await h.request(headers=bearer(token))).status == 200
        other = ec.generate_private_key(ec.SECP256R1())
        forged = jwt.encode({"sub": "svc", "exp": int(time.time()) + 60}, other, algorithm="ES256")
        assert (await h.request(headers=bearer(forged))).status == 401


async def test_hide_credentials_and_query_tokens():
    async with PluginHarness(
        JwtAuthPlugin, {**HS, "query": "token", "hide_credentials": True}
    ) as h:
        assert (await h.request(headers=bearer(hs256()))).status == 200
        assert "Authorization" not in h.upstream_requests[-1].headers
        assert (await h.request(query_string=f"token={hs256()}&x=1")).status == 200
        assert h.upstream_requests[-1].query_string == "x=1"


async def test_first_authenticator_wins_on_a_chain_with_key_auth():
    """Issue 10, defect 5: jwt_auth (1450) then key_auth (1250), both optional: the JWT's
    principal and X-Gateway-* headers reach the backend; a key alone works too."""
    chain = [(KeyAuthPlugin, {"header": "X-API-Key", "optional": True})]
    async with PluginHarness(JwtAuthPlugin, {**CLAIMS, "optional": True}, plugins=chain) as h:
        key = await h.create_key(tenant="initech", key_id="k-1")
        assert (await h.request(headers={**bearer(hs256()), "X-API-Key": key})).status == 200
        seen = h.upstream_requests[-1].headers
        assert seen["X-Gateway-Auth"] == "jwt" and seen["X-Gateway-Tenant"] == "acme"
        assert "X-Gateway-Key-Id" not in seen and "X-API-Key" not in seen
        assert (await h.request(headers={"X-API-Key": key})).status == 200
        seen = h.upstream_requests[-1].headers
        assert seen["X-Gateway-Auth"] == "key" and seen["X-Gateway-Key-Id"] == "k-1"
        assert (await h.request()).status == 200 and h.last_context.principal is None


async def test_an_authenticated_request_is_left_alone():
    async with PluginHarness(JwtAuthPlugin, HS) as h:
        earlier = Principal("key", subject="k-9", tenant="initech", key_id="k-9")
        reply = await h.request(headers=bearer("garbage"), principal=earlier)
        assert reply.status == 200 and h.last_context.principal is earlier
        assert h.upstream_requests[-1].headers["X-Gateway-Key-Id"] == "k-9"
