"""WebSockets through the relay, end to end: a client, the real daemon, a real `gatewayd peer`
process and the peer's WebSocket target (docs/relay-protocol.md, "A WebSocket stream")."""

from __future__ import annotations

import os
import signal
import time

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from relay_helpers import (
    lease_connections,
    make_key,
    relay_config,
    relay_stats,
    state_dir,
    upstream_url,
    wait_for,
)

MiB = 1024 * 1024


def ws_app(seen: dict[str, list]) -> web.Application:
    """``/ws``: echoes; ``close:<code>`` closes with that code; ``big:<n>`` sends n bytes.
    ``/refuse``: 403 to the handshake. Records how each socket ended in ``seen``."""

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(protocols=("chat", "json"), max_msg_size=64 * MiB)
        await sock.prepare(request)
        seen.setdefault("headers", []).append(dict(request.headers))
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                if msg.data.startswith("close:"):
                    await sock.close(code=int(msg.data[6:]), message=b"bye")
                    break
                if msg.data.startswith("big:"):
                    await sock.send_bytes(b"z" * int(msg.data[4:]))
                    continue
                await sock.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        seen.setdefault("closed", []).append(sock.close_code)
        return sock

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no")

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/refuse", refuse)
    return app


@pytest.fixture
async def tunnel(tmp_path, gateway, backend, config, peer_proc):
    seen: dict[str, list] = {}
    srv = await backend(ws_app(seen))
    cfg = relay_config(tmp_path, config)
    cfg["routes"][0]["websocket"] = {"max_message": "4MiB"}
    gw = await gateway(cfg)
    key, _ = await make_key(state_dir(gw), "relay:app")
    peer = await peer_proc(gw, "app", key, upstream_url(srv))
    return gw, seen, peer


async def test_websocket_echo_text_and_binary(tunnel):
    gw, seen, _peer = tunnel
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(gw.url + "/peer/app/ws", protocols=("json",)) as ws,
    ):
        assert ws.protocol == "json"  # the target's choice, passed on by the peer
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "hello"
        await ws.send_str("")
        assert await ws.receive_str(timeout=5) == ""
        # Several fragments, over the stream window (256 KiB) and over max_frame (1 MiB).
        for size in (1, 300 * 1024, 3 * MiB):
            data = os.urandom(size)
            await ws.send_bytes(data)
            assert await ws.receive_bytes(timeout=10) == data
        text = "é" * 100_000
        await ws.send_str(text)
        assert await ws.receive_str(timeout=5) == text
        conns = await lease_connections(gw, "app")
        assert conns[0]["in_flight"] == 1  # the WebSocket is one stream
    assert seen["headers"][0]["X-Forwarded-For"] == "127.0.0.1"

    async def released() -> bool:
        return (await relay_stats(gw))["in_flight"] == 0

    await wait_for(released, 5)
    assert seen["closed"] == [1000]


async def test_close_codes_pass_through_both_ways(tunnel):
    gw, seen, _peer = tunnel
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(gw.url + "/peer/app/ws") as ws:
            await ws.send_str("close:4001")  # the target closes
            msg = await ws.receive(timeout=5)
            assert msg.type == WSMsgType.CLOSE
            assert (msg.data, msg.extra) == (4001, "bye")
        async with s.ws_connect(gw.url + "/peer/app/ws") as ws:
            await ws.send_str("ping")
            assert await ws.receive_str(timeout=5) == "ping"
            await ws.close(code=4002, message=b"done")  # the client closes
            assert ws.close_code == 4002  # echoed

    async def target_saw_it() -> bool:
        return 4002 in seen.get("closed", [])

    await wait_for(target_saw_it, 5)

    async def released() -> bool:
        return (await relay_stats(gw))["in_flight"] == 0

    await wait_for(released, 5)


async def test_a_target_message_over_max_message_closes_1009(
    tmp_path, gateway, backend, config, peer_proc
):
    seen: dict[str, list] = {}
    srv = await backend(ws_app(seen))
    cfg = relay_config(tmp_path, config)
    cfg["routes"][0]["websocket"] = {"max_message": "64KiB"}
    gw = await gateway(cfg)
    key, _ = await make_key(state_dir(gw), "relay:app")
    await peer_proc(gw, "app", key, upstream_url(srv))
    async with aiohttp.ClientSession() as s, s.ws_connect(gw.url + "/peer/app/ws") as ws:
        await ws.send_str("big:1000")
        assert await ws.receive_bytes(timeout=5) == b"z" * 1000
        await ws.send_str(f"big:{100 * 1024}")
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 1009


async def test_a_target_that_refuses_the_upgrade_gives_502(tunnel):
    gw, _seen, _peer = tunnel
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(gw.url + "/peer/app/refuse")
        assert err.value.status == 502
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        }
        async with s.get(gw.url + "/peer/app/refuse", headers=headers) as r:
            assert r.status == 502
            assert (await r.json())["error"]["code"] == "websocket_refused"
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(gw.url + "/peer/nobody/ws")
        assert err.value.status == 503
    assert (await relay_stats(gw))["in_flight"] == 0
    # The relay connection is fine afterwards.
    async with aiohttp.ClientSession() as s, s.ws_connect(gw.url + "/peer/app/ws") as ws:
        await ws.send_str("still here")
        assert await ws.receive_str(timeout=5) == "still here"


async def test_client_disconnect_closes_the_targets_socket(tunnel):
    gw, seen, _peer = tunnel
    s = aiohttp.ClientSession()
    ws = await s.ws_connect(gw.url + "/peer/app/ws")
    await ws.send_str("hi")
    assert await ws.receive_str(timeout=5) == "hi"
    await s.close()  # the connection goes without a close handshake from the client

    async def target_closed() -> bool:
        return bool(seen.get("closed"))

    await wait_for(target_closed, 5)
    assert seen["closed"] == [1001]

    async def released() -> bool:
        return (await relay_stats(gw))["in_flight"] == 0

    await wait_for(released, 5)


async def test_the_peer_dying_closes_the_client_1011(tunnel):
    gw, _seen, peer = tunnel
    async with aiohttp.ClientSession() as s, s.ws_connect(gw.url + "/peer/app/ws") as ws:
        await ws.send_str("hi")
        assert await ws.receive_str(timeout=5) == "hi"
        peer.kill(signal.SIGKILL)  # the relay connection under the WebSocket ends
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 1011


async def test_a_leaving_peer_closes_its_websockets_1001(tunnel):
    """On SIGTERM the peer finishes its HTTP streams, but a WebSocket would never end on its
    own: it is closed with 1001 at once, and the peer exits without waiting for its drain."""
    gw, seen, peer = tunnel
    async with aiohttp.ClientSession() as s, s.ws_connect(gw.url + "/peer/app/ws") as ws:
        await ws.send_str("hi")
        assert await ws.receive_str(timeout=5) == "hi"
        started = time.monotonic()
        peer.kill(signal.SIGTERM)
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1001, "peer going away")
    assert await peer.wait(5) == 0
    assert time.monotonic() - started < 3.0
    assert seen["closed"] == [1001]
