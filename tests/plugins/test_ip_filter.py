"""``ip_filter`` (gatewayd/plugins/ip_filter.py): config, then requests. The client IP is the
one the core worked out (``ctx.request.client_ip``; trusted proxies are the listener's, see
tests/identity/test_client_ip.py), given here as the harness's ``client_ip``."""

from __future__ import annotations

import pytest

from gatewayd.plugins.ip_filter import IpFilterPlugin
from gatewayd.testing import ConfigError, PluginHarness

# -- config ------------------------------------------------------------------------------------


def test_addresses_and_cidrs_of_both_families_are_accepted():
    config = {"allow": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"], "deny": ["10.6.6.1/24"]}
    assert PluginHarness(IpFilterPlugin, config).plugin.config.deny == ["10.6.6.1/24"]


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"allow": ["10.0.0.0/33"]}, "plugins[0].ip_filter.allow"),
        ({"deny": ["proxy.example.com"]}, "plugins[0].ip_filter.deny"),
        ({"deny": "10.0.0.0/8"}, "plugins[0].ip_filter.deny"),
        ({"alow": []}, "plugins[0].ip_filter.alow"),
    ],
)
def test_invalid_configs_name_the_field(config, path):
    with pytest.raises(ConfigError) as err:
        PluginHarness(IpFilterPlugin, config)
    assert [p.path for p in err.value.problems] == [path]


def test_trusted_proxies_moved_to_the_listener():
    with pytest.raises(ConfigError) as err:
        PluginHarness(IpFilterPlugin, {"allow": ["10.0.0.0/8"], "trusted_proxies": ["127.0.0.1"]})
    (problem,) = err.value.problems
    assert problem.path == "plugins[0].ip_filter"
    assert "listen[].trusted_proxies" in problem.message


# -- requests ----------------------------------------------------------------------------------


async def status(h: PluginHarness, client_ip: str, **kw) -> int:
    return (await h.request(client_ip=client_ip, **kw)).status


async def test_allow_list_and_deny_wins():
    config = {"allow": ["203.0.113.0/24", "2001:db8::/32"], "deny": ["203.0.113.66"]}
    async with PluginHarness(IpFilterPlugin, config) as h:
        assert await status(h, "203.0.113.9") == 200
        assert await status(h, "2001:db8::1") == 200
        assert await status(h, "203.0.113.66") == 403  # deny wins over allow
        assert await status(h, "198.51.100.1") == 403
        assert await status(h, "2001:db9::1") == 403
        reply = await h.request(client_ip="198.51.100.1")
        assert b'"code":"forbidden"' in reply.body and b"198.51.100.1" not in reply.body
        assert len(h.upstream_requests) == 2


async def test_deny_only_lets_everything_else_through():
    async with PluginHarness(IpFilterPlugin, {"deny": ["10.0.0.0/8", "::1/128"]}) as h:
        assert await status(h, "10.1.2.3") == 403
        assert await status(h, "::1") == 403
        assert await status(h, "192.0.2.1") == 200


async def test_ipv4_mapped_addresses_match_ipv4_rules():
    async with PluginHarness(IpFilterPlugin, {"deny": ["10.0.0.0/8"]}) as h:
        assert await status(h, "::ffff:10.1.2.3") == 403
        assert await status(h, "::ffff:192.0.2.1") == 200


async def test_a_client_ip_that_is_no_address_is_refused():
    async with PluginHarness(IpFilterPlugin, {"deny": ["10.0.0.0/8"]}) as h:
        assert await status(h, "") == 403
        assert await status(h, "unix-socket") == 403


async def test_x_forwarded_for_is_not_the_plugins_business():
    """Only the listener decides whom to believe: a header the client wrote changes nothing."""
    async with PluginHarness(IpFilterPlugin, {"allow": ["203.0.113.0/24"]}) as h:
        spoofed = {"X-Forwarded-For": "203.0.113.9"}
        assert await status(h, "127.0.0.1", headers=spoofed) == 403
