"""Events pushed to a lease: in order on every connection, with stats that agree."""

from __future__ import annotations

import asyncio
import json
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

from gatewayd.relay import protocol as p
from gatewayd.relay.peer import Peer
from gatewayd.relay.protocol import FrameType


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


async def test_an_event_whose_frame_is_over_max_frame_is_refused_413(tmp_path, gateway, config):
    """An event just under relay.max_event_bytes needs a frame over max_frame: refused (413),
    never sent (the peers used to close with 4400, reconnect, and the event was lost)."""
    gw = await gateway(relay_config(tmp_path, config, max_frame="64KiB", max_event_bytes="64KiB"))
    key, _ = await make_key(state_dir(gw), "relay:app")
    got: list[dict[str, Any]] = []
    async with Peer(relay_url(gw), "app", key, "http://127.0.0.1:9", on_event=got.append) as peer:
        await peer.wait_connected()
        async with aiohttp.ClientSession() as s:
            payload = "x" * (64 * 1024 - 10)  # its JSON is 10 bytes under max_event_bytes
            async with s.post(
                gw.admin_url + "/_admin/relay/leases/app/events",
                json={"type": "api.deployed", "payload": payload},
                headers=ADMIN,
            ) as r:
                assert r.status == 413
                error = (await r.json())["error"]
            assert error["code"] == "event_too_large"
            assert "relay.max_frame" in error["message"]
            r = await push(s, gw, "app", {"type": "api.deployed", "payload": "x" * 60_000})
            assert r.status == 202

        async def delivered() -> bool:
            return len(got) == 1

        await wait_for(delivered, 5)
        assert got[0]["seq"] == 1  # the refused event took no sequence number
        stats = await relay_stats(gw)
        assert stats["connects"] == 1 and stats["disconnects"] == 0  # nobody was dropped
        (conn,) = stats["leases"]["app"]["connections"]
        assert conn["events_failed"] == 0


async def test_delivery_stats_per_identity_survive_a_reconnect(tmp_path, gateway, config):
    gw = await gateway(relay_config(tmp_path, config))
    key, kid = await make_key(state_dir(gw), "relay:app")
    identity = f"{kid}/worker"
    got: list[int] = []
    peer = Peer(
        relay_url(gw),
        "app",
        key,
        "http://127.0.0.1:9",
        on_event=lambda e: got.append(e["seq"]),
        name="worker",
    )

    async def acked(n: int) -> bool:
        peers = (await relay_stats(gw))["leases"]["app"]["peers"]
        return peers[identity]["events_acked"] == n

    async with peer, aiohttp.ClientSession() as s:
        await peer.wait_connected()
        for i in range(3):
            assert (await push(s, gw, "app", {"type": "api.deployed", "payload": i})).status == 202
        await wait_for(lambda: acked(3), 5)
        first = (await lease_connections(gw, "app"))[0]["id"]
        await peer.links[0].ws.close()  # the peer reconnects

        async def reconnected() -> bool:
            conns = await lease_connections(gw, "app")
            return len(conns) == 1 and conns[0]["id"] != first

        await wait_for(reconnected, 5)
        for i in range(2):
            assert (await push(s, gw, "app", {"type": "api.deployed", "payload": i})).status == 202
        await wait_for(lambda: acked(5), 5)
    stats = (await relay_stats(gw))["leases"]["app"]
    assert stats["peers"][identity]["events_sent"] == 5
    assert stats["peers"][identity]["events_failed"] == 0
    assert got == [1, 2, 3, 4, 5]


async def test_failed_deliveries_are_counted_and_logged(tmp_path, gateway, config):
    """Events sent to a peer that never acknowledges them fail with "disconnected" when it goes:
    counted on its identity and logged at WARNING with the lease, peer, event id and reason."""
    gw = await gateway(relay_config(tmp_path, config))
    key, kid = await make_key(state_dir(gw), "relay:app")
    identity = f"{kid}/mute"
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(
            relay_url(gw), protocols=(p.SUBPROTOCOL,), headers={"Authorization": f"Bearer {key}"}
        )
        hello = {"lease": "app", "version": 1, "peer": "mute"}
        await ws.send_bytes(p.encode_json(0, FrameType.HELLO, hello))
        assert p.decode((await ws.receive()).data, 1 << 20).type == FrameType.HELLO_ACK
        async with s.post(
            gw.admin_url + "/_admin/relay/leases/app/events",
            json={"type": "api.deployed", "payload": {"v": 1}},
            headers=ADMIN,
        ) as r:
            assert r.status == 202
            event_id = (await r.json())["id"]
        while True:  # the event arrives; we never acknowledge it
            frame = p.decode((await ws.receive()).data, 1 << 20)
            if frame.type == FrameType.EVENT:
                assert frame.json()["id"] == event_id
                break
        await ws.close()

        async def failed() -> bool:
            peers = (await relay_stats(gw))["leases"]["app"]["peers"]
            return peers[identity]["events_failed"] == 1

        await wait_for(failed, 5)
        r = await push(s, gw, "app", {"type": "api.deployed", "payload": {"v": 2}})
        assert r.status == 404  # no peer now: failed as well
    entry = (await relay_stats(gw))["leases"]["app"]
    assert entry["peers"][identity]["last_failure_reason"] == "disconnected"
    assert entry["peers"][identity]["events_sent"] == 1
    assert entry["events_failed_no_peer"] == 1
    records = [json.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]
    failures = [r for r in records if r.get("message") == "relay event delivery failed"]
    assert failures[0]["level"] == "WARNING"
    assert (failures[0]["lease"], failures[0]["peer"]) == ("app", identity)
    assert (failures[0]["event_id"], failures[0]["reason"]) == (event_id, "disconnected")
    assert failures[1]["reason"] == "no_peer" and failures[1]["lease"] == "app"
