from gatewayd_example.plugin import RequestCounterPlugin

from gatewayd.testing import PluginHarness


async def test_counts_and_limits():
    h = PluginHarness(RequestCounterPlugin, {"limit": 2})
    first = await h.request("GET", "/x")
    assert first.status == 200 and first.headers["X-Request-Count"] == "1"
    assert (await h.request("GET", "/x")).headers["X-Request-Count"] == "2"
    assert (await h.request("GET", "/x")).status == 429


async def test_state_survives_a_reload_with_the_same_config():
    h = PluginHarness(RequestCounterPlugin, {})
    await h.request("GET", "/")
    h2 = h.reload({})
    assert (await h2.request("GET", "/")).headers["X-Request-Count"] == "2"
    h3 = h.reload({"header": "X-N"})
    assert (await h3.request("GET", "/")).headers["X-N"] == "1"
