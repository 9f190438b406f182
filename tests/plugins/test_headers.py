"""``headers`` (gatewayd/plugins/headers.py): config, then requests."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gatewayd.chain import RequestContext, Response
from gatewayd.plugins.headers import HeadersPlugin
from gatewayd.testing import ConfigError, PluginHarness

# -- config ------------------------------------------------------------------------------------


def test_the_contract_spelling_is_valid():
    config = {
        "request": {"set": {"X-Env": "prod"}, "remove": ["X-Debug"]},
        "response": {"add": {"X-Served-By": "gatewayd"}},
    }
    h = PluginHarness(HeadersPlugin, config)
    assert h.plugin.config.request.set == {"X-Env": "prod"}


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({"request": {"set": {"Bad Name": "x"}}}, "plugins[0].headers.request.set", "invalid"),
        (
            {"response": {"add": {"X-A": "a\r\nInjected: 1"}}},
            "plugins[0].headers.response.add",
            "control character",
        ),
        ({"request": {"remove": ["Content-Length"]}}, "plugins[0].headers.request.remove", "proxy"),
        ({"request": {"rename": {"Host": "X-Host"}}}, "plugins[0].headers.request.rename", "proxy"),
        ({"request": {"delete": ["X-A"]}}, "plugins[0].headers.request.delete", "unknown field"),
        ({"body": {}}, "plugins[0].headers.body", "unknown field"),
    ],
)
def test_invalid_configs_name_the_field(config, path, message):
    with pytest.raises(ConfigError) as err:
        PluginHarness(HeadersPlugin, config)
    assert [p.path for p in err.value.problems] == [path]
    assert message in err.value.problems[0].message


# -- requests ----------------------------------------------------------------------------------


async def test_request_headers_are_renamed_removed_set_and_added_before_the_backend():
    config = {
        "request": {
            "rename": {"X-Old": "X-New"},
            "remove": ["X-Debug"],
            "set": {"X-Env": "prod"},
            "add": {"X-Tag": "gw"},
        }
    }
    async with PluginHarness(HeadersPlugin, config) as h:
        incoming = CIMultiDict(
            [("X-Old", "1"), ("X-Old", "2"), ("X-Debug", "yes"), ("X-Env", "dev"), ("X-Tag", "c")]
        )
        await h.request(headers=incoming)
        seen = h.upstream_requests[-1].headers
        assert seen.getall("X-New") == ["1", "2"] and "X-Old" not in seen
        assert "X-Debug" not in seen
        assert seen.getall("X-Env") == ["prod"]
        assert seen.getall("X-Tag") == ["c", "gw"]


async def test_response_headers_are_changed_on_the_way_back():
    async def backend(ctx: RequestContext) -> Response:
        return Response(200, {"Server": "secret/1.2", "X-Powered-By": "php"}, b"ok")

    config = {
        "response": {
            "remove": ["Server"],
            "rename": {"X-Powered-By": "X-Was-Powered-By"},
            "add": {"X-Served-By": "gatewayd"},
        }
    }
    async with PluginHarness(HeadersPlugin, config, upstream=backend) as h:
        reply = await h.request()
        assert "Server" not in reply.headers
        assert reply.headers["X-Was-Powered-By"] == "php"
        assert reply.headers["X-Served-By"] == "gatewayd"


async def test_a_reply_from_an_earlier_plugin_skips_the_response_headers():
    from gatewayd.plugins.cors import CorsPlugin

    # cors (2100) runs before headers (800): a refused preflight never reaches headers
    config = {"response": {"add": {"X-Served-By": "gatewayd"}}}
    async with PluginHarness(HeadersPlugin, config, plugins=[(CorsPlugin, {"origins": []})]) as h:
        refused = await h.request(
            "OPTIONS", "/", headers={"Origin": "https://x", "Access-Control-Request-Method": "GET"}
        )
        assert refused.status == 403 and "X-Served-By" not in refused.headers
        assert "X-Served-By" in (await h.request()).headers
