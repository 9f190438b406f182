"""The relay's metrics (gatewayd/relay/metrics.py) on the real daemon with a real `gatewayd peer`:
peers per lease (0 once the lease lost them), connections, tunnel streams, bytes and events, all
still counted after the connection is gone."""

from __future__ import annotations

import signal

import aiohttp
from aiohttp import web
from relay_helpers import ADMIN, make_key, relay_config, state_dir, upstream_url, wait_for


def echo() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=await request.read() or b"hello")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def test_peers_streams_bytes_and_events(tmp_path, gateway, backend, config, peer_proc):
    srv = await backend(echo())
    gw = await gateway(relay_config(tmp_path, config))
    key, _ = await make_key(state_dir(gw), "relay:app")
    peer = await peer_proc(gw, "app", key, upstream_url(srv))
    metric = gw.metric
    assert await metric("gatewayd_relay_peers", lease="app") == 1
    assert await metric("gatewayd_relay_connections") == 1
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.post(gw.url + "/peer/app/x", data=b"z" * 10_000) as r:
                assert r.status == 200
                assert len(await r.read()) == 10_000
        assert await metric("gatewayd_relay_streams_total") == 2
        assert await metric("gatewayd_relay_streams_open") == 0
        sent_out = await metric("gatewayd_relay_bytes_total", direction="out")
        sent_in = await metric("gatewayd_relay_bytes_total", direction="in")
        assert sent_out > 20_000 and sent_in > 20_000
        url = gw.admin_url + "/_admin/relay/leases/app/events"
        body = {"type": "api.deployed", "payload": {"v": 1}}
        async with s.post(url, json=body, headers=ADMIN) as r:
            assert r.status == 202

        async def acked() -> bool:
            return await metric("gatewayd_relay_events_total", result="acked") == 1

        await wait_for(acked, 5)
        assert await metric("gatewayd_relay_events_total", result="sent") == 1
        peer.kill(signal.SIGKILL)

        async def gone() -> bool:
            return await metric("gatewayd_relay_connections") == 0

        await wait_for(gone, 10)
        assert await metric("gatewayd_relay_peers", lease="app") == 0  # the lease lost its peer
        async with s.post(url, json=body, headers=ADMIN) as r:
            assert r.status == 404  # no peer: a failed delivery
    # what the connection did is still counted after it is gone
    assert await metric("gatewayd_relay_streams_total") == 2
    assert await metric("gatewayd_relay_bytes_total", direction="out") >= sent_out
    assert await metric("gatewayd_relay_events_total", result="sent") == 1
    assert await metric("gatewayd_relay_events_total", result="failed") == 1
