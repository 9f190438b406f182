"""``events`` (gatewayd/plugins/events.py): config, then requests."""

from __future__ import annotations

import asyncio

import pytest

from gatewayd.chain import Principal
from gatewayd.plugins.events import EventsPlugin
from gatewayd.testing import ConfigError, PluginHarness

ACME = Principal("key", subject="k1", tenant="acme", key_id="k1")

# -- config ------------------------------------------------------------------------------------


def test_defaults_are_valid():
    h = PluginHarness(EventsPlugin)
    assert h.plugin.config.types == ["*"] and h.plugin.config.heartbeat == 15.0


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"types": []}, "plugins[0].events.types"),
        ({"queue": 0}, "plugins[0].events.queue"),
        ({"heartbeat": "often"}, "plugins[0].events.heartbeat"),
        ({"tenant": "acme"}, "plugins[0].events.tenant"),
    ],
)
def test_invalid_configs_name_the_field(config, path):
    with pytest.raises(ConfigError) as err:
        PluginHarness(EventsPlugin, config)
    assert [p.path for p in err.value.problems] == [path]


# -- requests ----------------------------------------------------------------------------------


async def next_chunk(body, timeout: float = 5.0) -> bytes:
    return await asyncio.wait_for(anext(body), timeout)


async def test_only_get_is_answered():
    async with PluginHarness(EventsPlugin) as h:
        reply = await h.request("POST", "/events", principal=ACME)
        assert reply.status == 405 and reply.headers["Allow"] == "GET, HEAD"
        assert h.upstream_requests == []


async def test_a_caller_without_a_tenant_is_refused():
    async with PluginHarness(EventsPlugin) as h:
        reply = await h.request("GET", "/events")
        assert reply.status == 403 and b"tenant_required" in reply.body


async def test_the_stream_carries_the_callers_tenant_events_only():
    async with PluginHarness(EventsPlugin) as h:
        bus = h.services.events
        async with h.stream("GET", "/events", query_string="tenant=globex", principal=ACME) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            assert b"connected" in await next_chunk(r.body)
            bus.publish("api.deployed", {"api": "theirs"}, tenant="globex")
            bus.publish("api.deployed", {"api": "ours"}, tenant="acme")
            chunk = await next_chunk(r.body)
            assert b'"api":"ours"' in chunk and b"theirs" not in chunk
        assert h.upstream_requests == []


async def test_types_narrow_within_the_routes_types():
    async with PluginHarness(EventsPlugin, {"types": ["key.*"]}) as h:
        bus = h.services.events
        query = "types=key.revoked"
        async with h.stream("GET", "/events", query_string=query, principal=ACME) as r:
            await next_chunk(r.body)
            bus.publish("key.created", {"n": 1}, tenant="acme")
            bus.publish("key.revoked", {"n": 2}, tenant="acme")
            chunk = await next_chunk(r.body)
            assert b"key.revoked" in chunk and b"key.created" not in chunk
        outside = await h.request("GET", "/events", query_string="types=breaker.*", principal=ACME)
        assert outside.status == 400


async def test_last_event_id_resumes():
    async with PluginHarness(EventsPlugin) as h:
        bus = h.services.events
        first = bus.publish("api.deployed", {"n": 1}, tenant="acme")
        bus.publish("api.deployed", {"n": 2}, tenant="acme")
        headers = {"Last-Event-ID": str(first.id)}  # type: ignore[attr-defined]
        async with h.stream("GET", "/events", headers=headers, principal=ACME) as r:
            chunks = b""
            while b'"n":2' not in chunks:
                chunks += await next_chunk(r.body)
            assert b'"n":1' not in chunks


async def test_a_bad_last_event_id_is_a_400():
    async with PluginHarness(EventsPlugin) as h:
        reply = await h.request(
            "GET", "/events", headers={"Last-Event-ID": "yesterday"}, principal=ACME
        )
        assert reply.status == 400
