"""Events pushed to a lease: in order on every connection, with stats that agree."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from relay_helpers import (
    ADMIN,
    lease_connections,
    make_key,
    relay_config,
    relay_stats,
    relay_url,
    state_dir,
    upstream_url,
    wait_for,
)

from gatewayd.relay.peer import Peer


async def push(s: aiohttp.ClientSession, gw: Any, lease: str, body: Any) -> aiohttp.ClientResponse:
    async with s.post(
        gw.admin_url + f"/_admin/relay/leases/{lease}/events", json=body, headers=ADMIN
    ) as r:
        await r.read()
        return r


async def test_event_validation_and_no_peer(tmp_path, gateway, config):
    gw = await gateway(relay_config(tmp_path, config, max_event_bytes="1KiB"))
    async with aiohttp.ClientSession() as s:
        r = await push(s, gw, "app", {"type": "api.deployed", "payload": {"v": 1}})
        assert r.status == 404
        r = await push(s, gw, "app", {"type": "not.allowed", "payload": {}})
        assert r.status == 400
        r = await push(s, gw, "app", {"type": "api.deployed", "payload": "x" * 2000})
        assert r.status == 413
        async with s.post(gw.admin_url + "/_admin/relay/leases/app/events", data=b"{") as r:
            assert r.status == 401  # admin token required
    stats = await relay_stats(gw)
    assert stats["leases"]["app"]["events_failed_no_peer"] == 1
    assert stats["leases"]["app"]["last_failure_reason"] == "no_peer"


@pytest.mark.slow
async def test_10000_events_arrive_in_order_on_both_connections(tmp_path, gateway, config):
    gw = await gateway(relay_config(tmp_path, config))
    key, _ = await make_key(state_dir(gw), "relay:app")
    seen: list[list[int]] = [[], []]
    peers = [
        Peer(
            relay_url(gw),
            "app",
            key,
            "http://127.0.0.1:9",
            on_event=lambda e, i=i: seen[i].append(e["seq"]),
        )
        for i in range(2)
    ]
    async with peers[0], peers[1]:
        await asyncio.gather(*(p.wait_connected() for p in peers))
        n = 10_000
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)
        accepted: list[int] = []

        async def pusher(s: aiohttp.ClientSession) -> None:
            while not queue.empty():
                i = queue.get_nowait()
                body = {"type": "api.deployed", "payload": {"n": i}}
                async with s.post(
                    gw.admin_url + "/_admin/relay/leases/app/events", json=body, headers=ADMIN
                ) as r:
                    assert r.status == 202, await r.text()
                    data = await r.json()
                    assert data["connections"] == 2 and data["queued"] == 2
                    accepted.append(data["seq"])

        async with aiohttp.ClientSession() as s:
            await asyncio.gather(*(pusher(s) for _ in range(16)))

        async def all_in() -> bool:
            return all(len(x) == n for x in seen)

        await wait_for(all_in, 20)
        assert seen[0] == list(range(1, n + 1))
        assert seen[1] == list(range(1, n + 1))
        assert sorted(accepted) == list(range(1, n + 1))

        async def acked() -> bool:
            conns = await lease_connections(gw, "app")
            return all(c["events_acked"] == n for c in conns)

        await wait_for(acked, 5)
        conns = await lease_connections(gw, "app")
        assert len(conns) == 2
        for c in conns:
            assert c["events_sent"] == n
            assert c["events_failed"] == 0
            assert c["events_queued"] == 0
        assert [p.events_received for p in peers] == [n, n]


async def test_peer_cli_posts_events_to_a_url(tmp_path, gateway, config, backend, peer_proc):
    got: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/events", receive)
    srv = await backend(app)
    gw = await gateway(relay_config(tmp_path, config))
    key, _ = await make_key(state_dir(gw), "relay:*")
    await peer_proc(
        gw, "app", key, upstream_url(srv), extra=["--events-to", upstream_url(srv) + "/events"]
    )
    async with aiohttp.ClientSession() as s:
        for i in range(5):
            body = {
                "type": "gateway.config.updated",
                "payload": {"i": i},
                "correlation_id": f"c{i}",
            }
            r = await push(s, gw, "app", body)
            assert r.status == 202

    async def five() -> bool:
        return len(got) == 5

    await wait_for(five, 5)
    assert [e["payload"]["i"] for e in got] == list(range(5))
    assert [e["correlation_id"] for e in got] == [f"c{i}" for i in range(5)]
    assert all(e["type"] == "gateway.config.updated" and e["id"] and e["time"] for e in got)


async def test_peer_connects_and_disconnects_are_on_the_event_bus(tmp_path, gateway, config):
    gw = await gateway(relay_config(tmp_path, config))
    key, _ = await make_key(state_dir(gw), "relay:app")
    seen: list[str] = []
    async with aiohttp.ClientSession() as s:
        url = gw.admin_url + "/_admin/events?types=relay.*"
        async with s.get(url, headers=ADMIN) as stream:
            assert stream.status == 200
            async with Peer(relay_url(gw), "app", key, "http://127.0.0.1:9") as peer:
                await peer.wait_connected()
            async with asyncio.timeout(5):
                async for line in stream.content:
                    if line.startswith(b"event: "):
                        seen.append(line[7:].strip().decode())
                    if "relay.peer.disconnected" in seen:
                        break
    assert seen == ["relay.peer.connected", "relay.peer.disconnected"]
