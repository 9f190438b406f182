"""``cors`` (gatewayd/plugins/cors.py): config, then requests."""

from __future__ import annotations

import pytest

from gatewayd.plugins.cors import CorsPlugin
from gatewayd.testing import ConfigError, PluginHarness

# -- config ------------------------------------------------------------------------------------


def test_defaults_allow_any_origin():
    h = PluginHarness(CorsPlugin)
    assert h.plugin.config.origins == ["*"] and h.plugin.config.max_age == 600.0


def test_methods_are_upper_cased_and_durations_parsed():
    h = PluginHarness(CorsPlugin, {"methods": ["get", "Post"], "max_age": "1m"})
    assert h.plugin.config.methods == ["GET", "POST"] and h.plugin.config.max_age == 60.0


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"origins": "https://a.example"}, "plugins[0].cors.origins"),
        ({"credentials": "sometimes"}, "plugins[0].cors.credentials"),
        ({"max_age": "forever"}, "plugins[0].cors.max_age"),
        ({"expose_headers": [1]}, "plugins[0].cors.expose_headers[0]"),
        ({"allow_origins": ["*"]}, "plugins[0].cors.allow_origins"),
    ],
)
def test_invalid_configs_name_the_field(config, path):
    with pytest.raises(ConfigError) as err:
        PluginHarness(CorsPlugin, config)
    assert [p.path for p in err.value.problems] == [path]


# -- requests ----------------------------------------------------------------------------------

SITE = {"origins": ["https://app.example.com", "https://*.example.org"]}


def preflight(origin: str, method: str = "PUT", asked: str | None = None) -> dict[str, str]:
    headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if asked is not None:
        headers["Access-Control-Request-Headers"] = asked
    return headers


async def test_a_preflight_is_answered_at_the_gateway():
    async with PluginHarness(CorsPlugin, {**SITE, "max_age": "2m"}) as h:
        reply = await h.request(
            "OPTIONS",
            "/x",
            headers=preflight("https://app.example.com", asked="X-A"),
        )
        assert reply.status == 204
        assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert "PUT" in reply.headers["Access-Control-Allow-Methods"]
        assert reply.headers["Access-Control-Allow-Headers"] == "X-A"
        assert reply.headers["Access-Control-Max-Age"] == "120"
        assert "Origin" in reply.headers["Vary"]
        assert h.upstream_requests == []


async def test_a_preflight_from_another_origin_or_for_another_method_is_refused():
    async with PluginHarness(CorsPlugin, {**SITE, "methods": ["GET"]}) as h:
        reply = await h.request("OPTIONS", "/", headers=preflight("https://evil.example"))
        assert reply.status == 403 and b"cors_denied" in reply.body
        reply = await h.request("OPTIONS", "/", headers=preflight("https://app.example.com"))
        assert reply.status == 403 and b"method PUT not allowed" in reply.body
        assert h.upstream_requests == []


async def test_globs_match_host_characters_only():
    async with PluginHarness(CorsPlugin, SITE) as h:
        ok = await h.request(headers={"Origin": "https://api.example.org"})
        assert ok.headers["Access-Control-Allow-Origin"] == "https://api.example.org"
        sneaky = await h.request(headers={"Origin": "https://evil.com/x.example.org"})
        assert "Access-Control-Allow-Origin" not in sneaky.headers
        assert sneaky.status == 200  # not a preflight: the backend still answers


async def test_replies_to_allowed_origins_get_the_headers():
    config = {**SITE, "credentials": True, "expose_headers": ["X-Total"]}

    async def varies(ctx):
        from gatewayd.chain import Response

        return Response(200, {"Vary": "Accept"}, b"ok")

    async with PluginHarness(CorsPlugin, config, upstream=varies) as h:
        reply = await h.request(headers={"Origin": "https://app.example.com"})
        assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert reply.headers["Access-Control-Allow-Credentials"] == "true"
        assert reply.headers["Access-Control-Expose-Headers"] == "X-Total"
        assert reply.headers["Vary"] == "Accept, Origin"
        plain = await h.request()
        assert "Access-Control-Allow-Origin" not in plain.headers


async def test_any_origin_is_a_star_unless_credentials_are_allowed():
    async with PluginHarness(CorsPlugin) as h:
        reply = await h.request(headers={"Origin": "https://x.test"})
        assert reply.headers["Access-Control-Allow-Origin"] == "*"
    async with PluginHarness(CorsPlugin, {"credentials": True}) as h:
        reply = await h.request(headers={"Origin": "https://x.test"})
        assert reply.headers["Access-Control-Allow-Origin"] == "https://x.test"
