"""``request_counter``, tested the way a plugin author tests a plugin: with
``gatewayd.testing.PluginHarness`` (the daemon's chain runner, real in-memory services, no
daemon). Config cases first, then requests."""

import pytest
from gatewayd_example.plugin import RequestCounterPlugin

from gatewayd.chain import RequestContext, Response
from gatewayd.testing import ConfigError, PluginHarness

# -- config ------------------------------------------------------------------------------------


def test_defaults_are_valid():
    h = PluginHarness(RequestCounterPlugin)
    assert h.plugin.config.header == "X-Request-Count" and h.plugin.config.limit is None


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"limit": 0}, "plugins[0].request_counter.limit"),
        ({"limit": "lots"}, "plugins[0].request_counter.limit"),
        ({"headr": "X-N"}, "plugins[0].request_counter.headr"),
    ],
)
def test_invalid_configs_name_the_field(config, path):
    with pytest.raises(ConfigError) as err:
        PluginHarness(RequestCounterPlugin, config)
    assert [p.path for p in err.value.problems] == [path]


# -- requests ----------------------------------------------------------------------------------


async def test_counts_and_limits():
    async with PluginHarness(RequestCounterPlugin, {"limit": 2}) as h:
        first = await h.request("GET", "/x")
        assert first.status == 200 and first.body == b"ok"
        assert first.headers["X-Request-Count"] == "1"
        assert (await h.request("GET", "/x")).headers["X-Request-Count"] == "2"
        third = await h.request("GET", "/x")
        assert third.status == 429 and b"too_many" in third.body
        assert len(h.upstream_requests) == 2  # the local reply never reached the backend
        assert h.plugin.counter.done == 3  # on_done ran for every request


async def test_the_header_is_set_on_the_backends_reply():
    async def backend(ctx: RequestContext) -> Response:
        return Response(201, {"Content-Type": "application/json"}, b"{}")

    async with PluginHarness(RequestCounterPlugin, {"header": "X-N"}, upstream=backend) as h:
        reply = await h.request("POST", "/items", body=b'{"a": 1}')
        assert reply.status == 201 and reply.headers["X-N"] == "1"
        assert h.upstream_requests[-1].body == b'{"a": 1}'
        assert h.last_context.state["request_counter.n"] == 1


async def test_state_survives_a_reload_with_the_same_config():
    async with PluginHarness(RequestCounterPlugin) as h:
        await h.request("GET", "/")
        h2 = h.reload()  # the same config, as after `systemctl reload gatewayd`
        assert (await h2.request("GET", "/")).headers["X-Request-Count"] == "2"
        h3 = h.reload({"header": "X-N"})  # another config starts a new counter
        assert (await h3.request("GET", "/")).headers["X-N"] == "1"
