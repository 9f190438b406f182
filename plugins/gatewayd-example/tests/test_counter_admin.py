"""request_counter's admin route, called as the admin API calls it."""

from __future__ import annotations

import json

from gatewayd_example.plugin import RequestCounterPlugin, counts

from gatewayd.chain import AdminRequest
from gatewayd.chain.admin import admin_routes_of
from gatewayd.testing import PluginHarness


def test_declares_a_viewer_route() -> None:
    (route,) = admin_routes_of(RequestCounterPlugin)
    assert (route.method, route.path, route.role) == ("GET", "/counts", "viewer")
    assert route.handler is counts


async def test_counts_are_those_of_the_instances_it_is_given() -> None:
    async with PluginHarness(RequestCounterPlugin, {}) as h:
        for _ in range(3):
            await h.request("GET", "/x")
        call = AdminRequest("GET", "/counts", {}, {}, None, "ops", "viewer")
        reply = await counts(call, h.plugins)
        assert reply.status == 200
        (entry,) = json.loads(reply.body)["counts"]  # type: ignore[arg-type]
        assert (entry["served"], entry["done"]) == (3, 3)
        empty = await counts(call, [])
        assert json.loads(empty.body) == {"counts": []}  # type: ignore[arg-type]
