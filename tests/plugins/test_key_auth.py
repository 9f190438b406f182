"""``key_auth`` (gatewayd/plugins/key_auth.py): config, then requests."""

from __future__ import annotations

import pytest

from gatewayd.chain import Principal
from gatewayd.plugins.key_auth import KeyAuthPlugin
from gatewayd.testing import ConfigError, PluginHarness

# -- config ------------------------------------------------------------------------------------


def test_defaults():
    cfg = PluginHarness(KeyAuthPlugin).plugin.config
    assert cfg.header == "Authorization" and cfg.query is None
    assert cfg.hide_credentials and cfg.forward_headers and not cfg.optional


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"header": 5}, "plugins[0].key_auth.header"),
        ({"query": ["api_key"]}, "plugins[0].key_auth.query"),
        ({"optional": "perhaps"}, "plugins[0].key_auth.optional"),
        ({"hide": True}, "plugins[0].key_auth.hide"),
    ],
)
def test_invalid_configs_name_the_field(config, path):
    with pytest.raises(ConfigError) as err:
        PluginHarness(KeyAuthPlugin, config)
    assert [p.path for p in err.value.problems] == [path]


# -- requests ----------------------------------------------------------------------------------


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_good_key_authenticates_and_is_described_to_the_backend():
    async with PluginHarness(KeyAuthPlugin) as h:
        key = await h.create_key(tenant="acme", scopes=["write", "read"], key_id="ops-1")
        spoofed = {"X-Gateway-Tenant": "globex", "X-Gateway-Roles": "admin"}
        reply = await h.request(headers={**bearer(key), **spoofed})
        assert reply.status == 200
        p = h.last_context.principal
        assert p is not None and (p.kind, p.tenant, p.key_id) == ("key", "acme", "ops-1")
        seen = h.upstream_requests[-1].headers
        assert seen["X-Gateway-Auth"] == "key"
        assert seen["X-Gateway-Tenant"] == "acme"
        assert seen["X-Gateway-Key-Id"] == "ops-1"
        assert seen["X-Gateway-Scopes"] == "read write"
        assert "X-Gateway-Roles" not in seen  # the spoofed copy never reaches the backend
        assert "Authorization" not in seen  # hide_credentials


async def test_missing_and_bad_keys_are_401_with_a_challenge():
    async with PluginHarness(KeyAuthPlugin, {"realm": "api"}) as h:
        key = await h.create_key()
        missing = await h.request()
        assert missing.status == 401
        assert missing.headers["WWW-Authenticate"] == 'Bearer realm="api"'
        for presented in (key + "x", "not-a-key", "gw_" + "0" * 40):
            reply = await h.request(headers=bearer(presented))
            assert reply.status == 401, presented
            assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]
            assert presented.encode() not in reply.body  # never echoed
        assert (await h.request(headers={"Authorization": f"Basic {key}"})).status == 401
        assert h.upstream_requests == []


async def test_a_revoked_key_is_refused_at_once():
    async with PluginHarness(KeyAuthPlugin) as h:
        key = await h.create_key(key_id="old-1")
        assert (await h.request(headers=bearer(key))).status == 200
        await h.services.keys.revoke("old-1")
        assert (await h.request(headers=bearer(key))).status == 401


async def test_key_from_another_header_or_the_query_is_hidden_from_the_backend():
    async with PluginHarness(KeyAuthPlugin, {"header": "X-API-Key", "query": "api_key"}) as h:
        key = await h.create_key()
        assert (await h.request(headers={"X-API-Key": key})).status == 200
        assert "X-API-Key" not in h.upstream_requests[-1].headers
        reply = await h.request(query_string=f"a=1&api_key={key}&b=2")
        assert reply.status == 200
        assert h.upstream_requests[-1].query_string == "a=1&b=2"


async def test_hide_credentials_and_forward_headers_can_be_turned_off():
    config = {"hide_credentials": False, "forward_headers": False}
    async with PluginHarness(KeyAuthPlugin, config) as h:
        key = await h.create_key(tenant="acme")
        assert (await h.request(headers=bearer(key))).status == 200
        seen = h.upstream_requests[-1].headers
        assert seen["Authorization"] == f"Bearer {key}"
        assert not any(name.startswith("X-Gateway-") for name in seen)
        assert h.last_context.principal is not None  # still authenticated for later plugins


async def test_optional_goes_on_without_a_principal_but_a_wrong_key_is_401():
    async with PluginHarness(KeyAuthPlugin, {"optional": True}) as h:
        reply = await h.request()
        assert reply.status == 200 and h.last_context.principal is None
        assert (await h.request(headers=bearer("wrong"))).status == 401


async def test_an_authenticated_request_is_left_alone_but_its_key_is_still_hidden():
    """First authenticator wins (issue 10, defect 5): an earlier auth plugin's principal and
    headers stay; key_auth neither checks its own credential nor strips them."""
    async with PluginHarness(KeyAuthPlugin) as h:
        earlier = Principal("jwt", subject="user-7", tenant="acme", roles=frozenset({"dev"}))
        reply = await h.request(headers=bearer("not-even-a-key"), principal=earlier)
        assert reply.status == 200
        assert h.last_context.principal is earlier
        seen = h.upstream_requests[-1].headers
        assert seen["X-Gateway-Auth"] == "jwt" and seen["X-Gateway-Tenant"] == "acme"
        assert seen["X-Gateway-Roles"] == "dev"
        assert "Authorization" not in seen
