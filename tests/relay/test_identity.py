"""Peer identities: a relay target is "<key id>/<peer name>", the same across reconnects."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from typing import Any

import aiohttp
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
from gatewayd.relay.protocol import FrameType


def app_() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text="broken")

    app = web.Application()
    app.router.add_get("/named/fail", fail)
    app.router.add_get("/{tail:.*}", ok)
    return app


async def relay_targets(gw: Any, name: str) -> dict[str, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.admin_url + "/_admin/upstreams", headers=ADMIN) as r,
    ):
        assert r.status == 200, await r.text()
        data = await r.json()
    for upstream in data["upstreams"]:
        if upstream["name"] == name:
            assert upstream["kind"] == "relay"
            return {t["id"]: t for t in upstream["targets"]}
    raise AssertionError(f"no upstream {name}: {data}")


def named_config(tmp_path: Any, config: Any, **route: Any) -> dict[str, Any]:
    cfg = relay_config(tmp_path, config)
    cfg["upstreams"] = {"named": {"relay": "app"}}
    cfg["routes"].append(
        {"name": "named", "match": {"path": "/named/"}, "upstream": "named", **route}
    )
    return cfg


async def test_one_target_per_key_and_name(tmp_path, gateway, backend, config, peer_proc):
    srv = await backend(app_())
    gw = await gateway(named_config(tmp_path, config))
    key, kid = await make_key(state_dir(gw), "relay:app")
    key2, kid2 = await make_key(state_dir(gw), "relay:app")
    url = upstream_url(srv)
    await peer_proc(gw, "app", key, url, connections=2, extra=["--name", "eu-1"])
    await peer_proc(gw, "app", key, url, extra=["--name", "eu-2"])
    await peer_proc(gw, "app", key2, url)
    want = {f"{kid}/eu-1", f"{kid}/eu-2", f"{kid2}/default"}
    peers = (await relay_stats(gw))["leases"]["app"]["peers"]
    assert set(peers) == want
    assert len(peers[f"{kid}/eu-1"]["connections"]) == 2
    conns = await lease_connections(gw, "app")
    assert sorted(c["identity"] for c in conns) == sorted(
        [f"{kid}/eu-1"] * 2 + sorted(want - {f"{kid}/eu-1"})
    )
    targets = await relay_targets(gw, "named")
    assert set(targets) == want
    assert targets[f"{kid}/eu-1"]["info"]["connections"] == 2
    assert targets[f"{kid}/eu-1"]["info"]["peer"] == "eu-1"
    async with aiohttp.ClientSession() as s:
        for i in range(30):
            async with s.get(gw.url + f"/named/{i}") as r:
                assert r.status == 200
    served = {c["id"]: c["streams_total"] for c in await lease_connections(gw, "app")}
    assert all(n > 0 for n in served.values()), served  # both connections of eu-1 too


async def test_the_breaker_of_a_peer_survives_its_reconnect(
    tmp_path, gateway, backend, config, peer_proc
):
    """The breaker is keyed by the peer's identity: a peer that fails, drops and comes back
    (a new connection) is still out until its breaker half-opens."""
    srv = await backend(app_())
    breaker = {"failure_ratio": 0.5, "min_requests": 2, "window": "30s", "open_for": "30s"}
    gw = await gateway(named_config(tmp_path, config, plugins=[{"circuit_breaker": breaker}]))
    key, kid = await make_key(state_dir(gw), "relay:app")
    peer = await peer_proc(gw, "app", key, upstream_url(srv), extra=["--name", "solo"])
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(gw.url + "/named/fail") as r:
                assert r.status == 500
        async with s.get(gw.url + "/named/x") as r:
            assert r.status == 503  # open: the only target is excluded
        before = [c["id"] for c in await lease_connections(gw, "app")]
        peer.kill(signal.SIGKILL)

        async def gone() -> bool:
            return await lease_connections(gw, "app") == []

        await wait_for(gone, 5)
        await peer_proc(gw, "app", key, upstream_url(srv), extra=["--name", "solo"])
        after = [c["id"] for c in await lease_connections(gw, "app")]
        assert after != before  # a new connection, the same identity
        async with s.get(gw.url + "/named/x") as r:
            assert r.status == 503, await r.text()
    targets = await relay_targets(gw, "named")
    assert list(targets) == [f"{kid}/solo"]
    assert targets[f"{kid}/solo"]["available"] is False


async def test_a_bad_peer_name_is_refused(tmp_path, gateway, config):
    gw = await gateway(relay_config(tmp_path, config))
    key, _ = await make_key(state_dir(gw), "relay:*")
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(
            relay_url(gw), protocols=(p.SUBPROTOCOL,), headers={"Authorization": f"Bearer {key}"}
        )
        hello = {"lease": "app", "version": 1, "peer": "../x"}
        await ws.send_bytes(p.encode_json(0, FrameType.HELLO, hello))
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4400
        assert msg.extra == "invalid peer name"
    # The CLI says so before dialling.
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "gatewayd",
            "peer",
            "--gateway",
            relay_url(gw),
            "--lease",
            "app",
            "--target",
            "http://127.0.0.1:9",
            "--key",
            key,
            "--name",
            "no spaces",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "--name must be" in proc.stderr
    assert "Traceback" not in proc.stderr
