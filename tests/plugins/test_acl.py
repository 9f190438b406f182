"""``acl`` (gatewayd/plugins/acl.py): config, then requests."""

from __future__ import annotations

import pytest

from gatewayd.chain import Principal
from gatewayd.plugins.acl import AclPlugin
from gatewayd.plugins.key_auth import KeyAuthPlugin
from gatewayd.testing import ConfigError, PluginHarness

# -- config ------------------------------------------------------------------------------------


def test_rules_of_every_kind_are_accepted():
    rules = ["key:ops-*", "tenant:acme", "sub:user-?", "role:admin", "scope:api:*"]
    h = PluginHarness(AclPlugin, {"allow": rules, "deny": ["tenant:globex"]})
    assert h.plugin.config.allow == rules and not h.plugin.config.allow_anonymous


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"allow": ["team:x"]}, "plugins[0].acl.allow"),
        ({"deny": ["tenant:"]}, "plugins[0].acl.deny"),
        ({"deny": "tenant:x"}, "plugins[0].acl.deny"),
        ({"allow_anonymous": "maybe"}, "plugins[0].acl.allow_anonymous"),
        ({"alow": []}, "plugins[0].acl.alow"),
    ],
)
def test_invalid_configs_name_the_field(config, path):
    with pytest.raises(ConfigError) as err:
        PluginHarness(AclPlugin, config)
    assert [p.path for p in err.value.problems] == [path]


def test_a_bad_rule_says_what_is_expected():
    with pytest.raises(ConfigError) as err:
        PluginHarness(AclPlugin, {"allow": ["team:x"]})
    assert "expected one of key:<glob>, tenant:<glob>" in err.value.problems[0].message


# -- requests ----------------------------------------------------------------------------------

ACME = Principal("key", subject="ops-1", tenant="acme", key_id="ops-1")


def who(**kw) -> Principal:
    return Principal(kw.pop("kind", "jwt"), **kw)


async def test_no_principal_is_401_unless_anonymous_callers_are_allowed():
    async with PluginHarness(AclPlugin, {"deny": ["tenant:globex"]}) as h:
        reply = await h.request()
        assert reply.status == 401 and reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert h.upstream_requests == []
    async with PluginHarness(AclPlugin, {"allow_anonymous": True}) as h:
        assert (await h.request()).status == 200
    async with PluginHarness(AclPlugin, {"allow_anonymous": True, "allow": ["tenant:*"]}) as h:
        assert (await h.request()).status == 401  # an allow list no anonymous caller can match


async def test_allow_and_deny_with_deny_winning():
    config = {"allow": ["tenant:acme", "key:ops-*"], "deny": ["key:ops-old*"]}
    async with PluginHarness(AclPlugin, config) as h:
        assert (await h.request(principal=ACME)).status == 200
        other = who(kind="key", tenant="initech", key_id="ops-2")
        assert (await h.request(principal=other)).status == 200  # allowed by key glob
        old = who(kind="key", tenant="acme", key_id="ops-old-3")
        denied = await h.request(principal=old)
        assert denied.status == 403 and b'"code":"forbidden"' in denied.body
        assert (await h.request(principal=who(tenant="globex"))).status == 403  # not allowed
        assert len(h.upstream_requests) == 2


async def test_roles_scopes_and_subjects():
    config = {"allow": ["role:admin", "scope:billing:*", "sub:svc-?"]}
    async with PluginHarness(AclPlugin, config) as h:
        ok = [
            who(roles=frozenset({"dev", "admin"})),
            who(scopes=frozenset({"billing:read"})),
            who(subject="svc-a"),
        ]
        for p in ok:
            assert (await h.request(principal=p)).status == 200, p
        for p in (who(roles=frozenset({"Admin"})), who(subject="svc-ab"), who(tenant="acme")):
            assert (await h.request(principal=p)).status == 403, p  # globs are case-sensitive


async def test_behind_key_auth_on_one_chain():
    async with PluginHarness(
        AclPlugin, {"allow": ["tenant:acme"]}, plugins=[(KeyAuthPlugin, {"optional": True})]
    ) as h:
        acme = await h.create_key(tenant="acme")
        globex = await h.create_key(tenant="globex")
        assert (await h.request(headers={"Authorization": f"Bearer {acme}"})).status == 200
        assert (await h.request(headers={"Authorization": f"Bearer {globex}"})).status == 403
        assert (await h.request()).status == 401  # key_auth optional found nothing
