"""The gateway's own event stream: /_admin/events and the route-mounted ``events`` plugin."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from streams_support import (
    ADMIN,
    ADMIN_HASH,
    SSEReader,
    open_sse,
    plugin_env,
    publish,
    upstream_url,
)
from support import rss_bytes


def events_config(config: Any, **extra: Any) -> dict[str, Any]:
    """Admin tokens, a publishing route (/publish), a tenant event stream (/v1/events) and a
    key-authenticated one (/k/events)."""
    cfg = config(
        routes=[
            {"name": "publish", "match": {"path": "/publish"}, "plugins": ["test_publish"]},
            {
                "name": "events",
                "match": {"path": "/v1/events"},
                "plugins": ["test_tenant", {"events": {"heartbeat": "250ms"}}],
            },
            {
                "name": "keyed",
                "match": {"path": "/k/events"},
                "plugins": [{"key_auth": {}}, "events"],
            },
        ],
        **extra,
    )
    cfg["admin"]["tokens"] = [{"id": "ops", "hash": ADMIN_HASH}]
    return cfg


async def start(gateway: Any, config: Any, tmp_path: Path, **extra: Any) -> Any:
    return await gateway(events_config(config, **extra), env=plugin_env(tmp_path))


async def test_admin_events_needs_an_admin_token(gateway, config, tmp_path):
    gw = await start(gateway, config, tmp_path)
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.admin_url + "/_admin/events") as r:
            assert r.status == 401
        bad = {"Authorization": "Bearer nope"}
        async with s.get(gw.admin_url + "/_admin/events", headers=bad) as r:
            assert r.status == 403
        async with s.get(gw.admin_url + "/_admin/events?types=a%3Cb", headers=ADMIN) as r:
            assert r.status == 400


async def test_reloads_and_rejections_appear(gateway, config, tmp_path):
    gw = await start(gateway, config, tmp_path)
    async with aiohttp.ClientSession() as s:
        _, reader = await open_sse(s, gw.admin_url + "/_admin/events?types=config.*", ADMIN)
        await gw.reload()
        msg = await reader.next()
        assert msg.event == "config.reloaded"
        doc = msg.json()
        assert doc["payload"]["generation"] == 2 and doc["tenant"] is None
        assert doc["id"] == int(msg.id) and doc["time"].endswith("Z")
        gw.write_config("routes: [oops")
        await gw.reload(expect_success=False)
        msg = await reader.next()
        assert msg.event == "config.rejected" and msg.json()["payload"]["error"]


async def test_a_breaker_opening_and_a_key_revocation_appear(gateway, backend, config, tmp_path):
    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get("/{tail:.*}", fail)
    srv = await backend(app)
    cfg = events_config(config)
    cfg["upstreams"] = {"flaky": {"targets": [upstream_url(srv)]}}
    cfg["routes"].append(
        {
            "name": "flaky",
            "match": {"path": "/flaky"},
            "upstream": "flaky",
            "plugins": [{"circuit_breaker": {"min_requests": 3, "open_for": "30s"}}],
        }
    )
    gw = await gateway(cfg, env=plugin_env(tmp_path))
    url = gw.admin_url + "/_admin/events?types=breaker.*,key.*"
    async with aiohttp.ClientSession() as s:
        _, reader = await open_sse(s, url, ADMIN)
        for _ in range(5):
            async with s.get(gw.url + "/flaky/x") as r:
                await r.read()
        msg = await reader.next()
        assert msg.event == "breaker.opened", msg
        async with s.post(
            gw.admin_url + "/_admin/keys", json={"tenant": "acme"}, headers=ADMIN
        ) as r:
            assert r.status == 201
            key_id = (await r.json())["record"]["key_id"]
        msg = await reader.next()
        assert msg.event == "key.created" and msg.json()["tenant"] == "acme"
        async with s.post(gw.admin_url + f"/_admin/keys/{key_id}/revoke", headers=ADMIN) as r:
            assert r.status == 200
        msg = await reader.next()
        assert msg.event == "key.revoked"
        assert msg.json()["tenant"] == "acme" and key_id in msg.data


async def test_a_tenant_sees_only_its_own_events(gateway, config, tmp_path):
    gw = await start(gateway, config, tmp_path)
    async with aiohttp.ClientSession() as s:
        acme = {"X-Test-Tenant": "acme"}
        # asking for another tenant's events (or all) changes nothing
        _, mine = await open_sse(s, gw.url + "/v1/events?tenant=globex", acme)
        _, all_ = await open_sse(s, gw.admin_url + "/_admin/events?types=test.*", ADMIN)
        _, globex = await open_sse(
            s, gw.admin_url + "/_admin/events?types=test.*&tenant=globex", ADMIN
        )
        for i, tenant in enumerate(["globex", "", "acme", "globex", "acme", "initech"]):
            await publish(s, gw.url, tenant=tenant, start=i)
        assert [m.json()["payload"]["seq"] for m in await mine.collect(2)] == [2, 4]
        assert await mine.nothing_within(0.5)
        assert [m.json()["tenant"] for m in await globex.collect(2)] == ["globex", "globex"]
        assert len(await all_.collect(6)) == 6
        async with s.get(gw.url + "/v1/events") as r:  # no tenant, no stream
            assert r.status == 403
        async with s.post(gw.url + "/v1/events", headers=acme) as r:
            assert r.status == 405


async def test_key_authenticated_tenant_stream(gateway, config, tmp_path):
    gw = await start(gateway, config, tmp_path)
    async with aiohttp.ClientSession() as s:
        keys = {}
        for tenant in ("acme", "globex"):
            body = {"tenant": tenant}
            async with s.post(gw.admin_url + "/_admin/keys", json=body, headers=ADMIN) as r:
                keys[tenant] = (await r.json())["key"]
        async with s.get(gw.url + "/k/events") as r:
            assert r.status == 401
        auth = {"Authorization": f"Bearer {keys['acme']}"}
        _, reader = await open_sse(s, gw.url + "/k/events?types=test.*", auth)
        await publish(s, gw.url, tenant="globex", start=1)
        await publish(s, gw.url, tenant="acme", start=2)
        msg = await reader.next()
        assert msg.json()["tenant"] == "acme" and msg.json()["payload"]["seq"] == 2


async def test_last_event_id_resumes_exactly(gateway, config, tmp_path):
    gw = await start(gateway, config, tmp_path, events={"buffer": 64, "heartbeat": "200ms"})
    async with aiohttp.ClientSession() as s:
        acme = {"X-Test-Tenant": "acme"}
        ids = []
        for i in range(10):
            ids.append((await publish(s, gw.url, tenant="acme" if i % 3 else "globex", start=i))[0])
        url = gw.url + "/v1/events?types=test.*"
        r, reader = await open_sse(s, url, {**acme, "Last-Event-ID": str(ids[4])})
        want = [i for i in range(5, 10) if i % 3]
        got = await reader.collect(len(want))
        assert [m.json()["payload"]["seq"] for m in got] == want
        assert [int(m.id) for m in got] == [ids[i] for i in want]
        assert await reader.nothing_within(0.6)
        assert reader.comments and reader.comments[-1] == "ping"  # heartbeats while idle
        r.close()
        # the admin stream resumes the same way, through the query string too
        url = gw.admin_url + f"/_admin/events?types=test.*&last_event_id={ids[6]}"
        _, reader = await open_sse(s, url, ADMIN)
        assert [m.json()["payload"]["seq"] for m in await reader.collect(3)] == [7, 8, 9]
        assert await reader.nothing_within(0.5)
        assert "ping" in reader.comments  # aiohttp-sse's heartbeat, every events.heartbeat
        # from before what the buffer holds: a gap, then what it has
        await publish(s, gw.url, tenant="acme", n=100, start=100)
        _, reader = await open_sse(s, url, ADMIN)
        gap = await reader.next()
        assert gap.event == "gap" and gap.id is None
        assert gap.json()["reason"] == "resume"
        rest = await reader.collect(64)
        assert [m.json()["payload"]["seq"] for m in rest] == list(range(136, 200))


async def _rss_settled(pid: int) -> int:
    await asyncio.sleep(0.2)
    return rss_bytes(pid)


@pytest.mark.slow
async def test_a_slow_consumer_is_bounded_and_does_not_slow_the_others(gateway, config, tmp_path):
    """One consumer reads nothing for 30 s while 10,000 events of 4 KiB are published: the
    daemon's RSS stays bounded (an unbounded queue would hold 10,000 x ~8 KiB), the other
    consumer gets every event on time, and the slow one gets a gap standing for what it lost."""
    stall = float(os.environ.get("GATEWAYD_TEST_STALL", "30"))
    gw = await start(gateway, config, tmp_path)
    total, batch = 10_000, 100
    async with aiohttp.ClientSession() as s:
        slow_resp = await s.get(gw.admin_url + "/_admin/events?types=test.*", headers=ADMIN)
        _, fast = await open_sse(s, gw.admin_url + "/_admin/events?types=test.*", ADMIN)
        rss_before = await _rss_settled(gw.pid)
        delays: list[float] = []

        async def consume() -> None:
            for seq in range(total):
                msg = await fast.next(timeout=10)
                doc = msg.json()
                assert msg.event != "gap", "the fast consumer got a gap"
                assert doc["payload"]["seq"] == seq
                delays.append(time.time() - doc["payload"]["emitted"])

        consumer = asyncio.create_task(consume())
        started = time.monotonic()
        pause = (stall - 2) / (total // batch)
        for start_at in range(0, total, batch):
            await publish(s, gw.url, n=batch, pad=4096, start=start_at)
            await asyncio.sleep(pause)
        await asyncio.wait_for(consumer, 20)
        rss_peak = rss_bytes(gw.pid)
        await asyncio.sleep(max(0.0, stall - (time.monotonic() - started)))
        # now the slow consumer reads: the events its queue held, one gap, nothing lost silently
        slow = SSEReader(slow_resp)
        seqs: list[int] = []
        gap: dict[str, Any] | None = None
        while len(seqs) + (gap["missed"] if gap else 0) < total:
            msg = await slow.next(timeout=10)
            if msg.event == "gap":
                assert gap is None, "one gap for one stall"
                gap = msg.json()
                assert gap["reason"] == "slow_consumer"
            else:
                seqs.append(msg.json()["payload"]["seq"])
        assert gap is not None and gap["missed"] > 0
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        slow_resp.close()
    growth = rss_peak - rss_before
    delays.sort()
    p99 = delays[int(len(delays) * 0.99)]
    print(
        f"slow consumer: RSS growth {growth / 2**20:.1f} MiB, fast consumer p99 "
        f"{p99 * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms, gap missed {gap['missed']}"
    )
    assert growth < 40 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert p99 < 0.25 and delays[-1] < 1.0


async def test_event_streams_end_at_shutdown_without_holding_the_drain(gateway, config, tmp_path):
    gw = await start(gateway, config, tmp_path, server={"drain_timeout": "10s"})
    async with aiohttp.ClientSession() as s:
        _, tenant = await open_sse(s, gw.url + "/v1/events", {"X-Test-Tenant": "acme"})
        _, admin = await open_sse(s, gw.admin_url + "/_admin/events", ADMIN)
        await publish(s, gw.url, tenant="acme")
        await tenant.next()
        await admin.next()
        started = time.monotonic()
        gw.signal(signal.SIGTERM)
        for reader in (tenant, admin):
            with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
                await reader.next(timeout=5)
    assert await gw.wait_exit(10) == 0
    assert time.monotonic() - started < 5
