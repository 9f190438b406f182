"""The event bus on its own: filters, ring-buffer resume, bounded queues with gaps."""

from __future__ import annotations

import asyncio

import pytest

from gatewayd.events import EventBus, EventFilter, Gap
from gatewayd.events.sse import encode, parse_filter, parse_last_event_id


def drain(sub) -> list:
    out = []
    while (item := sub.get_nowait()) is not None:
        out.append(item)
    return out


async def test_publish_returns_an_event_with_increasing_ids():
    bus = EventBus()
    a = bus.publish("config.reloaded", {"generation": 2})
    b = bus.publish("key.revoked", {"key_id": "k1"}, tenant="acme")
    assert b.id == a.id + 1
    assert (b.type, b.tenant, b.payload) == ("key.revoked", "acme", {"key_id": "k1"})
    doc = b.as_dict()
    assert doc["id"] == b.id and doc["tenant"] == "acme" and doc["time"].endswith("Z")
    assert abs(b.time - a.time) < 1


async def test_publish_never_raises_on_odd_payloads():
    bus = EventBus()
    event = bus.publish("x.y", {"obj": object(), "set": {1}})
    assert "object" in event.data


async def test_type_globs_and_tenant_filter():
    bus = EventBus()
    breakers = bus.subscribe(parse_filter("breaker.*,config.reloaded", None))
    acme = bus.subscribe(parse_filter(None, "acme"))
    bus.publish("breaker.opened", {}, "acme")
    bus.publish("config.reloaded", {})
    bus.publish("config.rejected", {})
    bus.publish("key.revoked", {}, "globex")
    bus.publish("key.created", {}, "acme")
    assert [e.type for e in drain(breakers)] == ["breaker.opened", "config.reloaded"]
    assert [e.type for e in drain(acme)] == ["breaker.opened", "key.created"]


def test_bad_filters_are_refused():
    with pytest.raises(ValueError):
        parse_filter("breaker.*,<script>", None)
    with pytest.raises(ValueError):
        parse_last_event_id("12; drop")
    assert parse_last_event_id(" 42 ") == 42
    assert parse_last_event_id("") is None


async def test_resume_delivers_exactly_the_missed_events():
    bus = EventBus(buffer=64)
    ids = [bus.publish("t.a" if i % 2 else "t.b", {"i": i}).id for i in range(20)]
    sub = bus.subscribe(parse_filter("t.a", None), last_event_id=ids[9])
    got = drain(sub)
    assert [e.id for e in got] == [i for n, i in enumerate(ids) if n > 9 and n % 2]
    nothing = bus.subscribe(last_event_id=ids[-1])
    assert drain(nothing) == []


async def test_resume_beyond_the_buffer_says_gap_then_replays_what_is_left():
    bus = EventBus(buffer=16)
    ids = [bus.publish("t", {"i": i}).id for i in range(40)]
    sub = bus.subscribe(last_event_id=ids[2])
    got = drain(sub)
    assert isinstance(got[0], Gap) and got[0].reason == "resume"
    assert (got[0].first_id, got[0].last_id) == (ids[3], ids[23])
    assert [e.id for e in got[1:]] == ids[24:]
    # An id this run never issued (e.g. from before a restart): a gap, then the buffer.
    unknown = drain(bus.subscribe(last_event_id=ids[-1] + 1000))
    assert isinstance(unknown[0], Gap) and len(unknown) == 17


async def test_slow_consumer_overflows_into_one_gap_and_others_get_everything():
    bus = EventBus(queue=10)
    slow = bus.subscribe()
    fast = bus.subscribe()
    got_fast = []
    ids = []
    for i in range(100):
        ids.append(bus.publish("t", {"i": i}).id)
        got_fast += drain(fast)
    assert [e.id for e in got_fast] == ids
    assert len(slow) == 11  # ten events and the gap standing for the rest
    items = drain(slow)
    assert [e.id for e in items[:10]] == ids[:10]
    gap = items[10]
    assert isinstance(gap, Gap) and gap.reason == "slow_consumer"
    assert (gap.missed, gap.first_id, gap.last_id) == (90, ids[10], ids[99])
    bus.publish("t", {})  # once it caught up, it is back in the stream
    assert len(drain(slow)) == 1


async def test_get_waits_and_times_out_and_close_ends_iteration():
    bus = EventBus()
    sub = bus.subscribe()
    assert await sub.get(0.05) is None
    asyncio.get_running_loop().call_later(0.05, bus.publish, "t", {})
    item = await sub.get(2)
    assert item is not None and item.type == "t"
    stream = bus.subscribe(stream=True)
    bus.end_streams()
    assert stream.closed and not sub.closed
    assert [x async for x in stream] == []
    assert bus.consumers == 1


def test_sse_encoding_has_id_for_events_and_none_for_gaps():
    bus = EventBus()
    event = bus.publish("breaker.opened", {"route": "api"}, "acme")
    text = encode(event)
    assert text.startswith(f"id: {event.id}\nevent: breaker.opened\ndata: {{")
    assert text.endswith("\n\n") and "\n" not in text[:-2].split("data: ", 1)[1]
    gap = encode(Gap("slow_consumer", 3, 1, 3))
    assert gap.startswith("event: gap\ndata: ") and "id:" not in gap


def test_filter_matches_everything_by_default():
    bus = EventBus()
    assert EventFilter().matches(bus.publish("anything", {}))
