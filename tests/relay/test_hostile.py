"""Hostile and unlucky peers: each gets its close code or bounded treatment; the daemon lives."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
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
    revoke_key,
    state_dir,
    upstream_url,
    wait_for,
)
from support import rss_bytes

from gatewayd.relay import protocol as p
from gatewayd.relay.protocol import FrameType


async def dial(gw: Any, key: str | None, lease: str | None = "app", **kw: Any) -> Any:
    """A raw relay WebSocket (optionally with HELLO sent); returns (session, ws)."""
    s = aiohttp.ClientSession()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    ws = await s.ws_connect(relay_url(gw), protocols=(p.SUBPROTOCOL,), headers=headers, **kw)
    if lease is not None:
        await ws.send_bytes(p.encode_json(0, FrameType.HELLO, {"lease": lease, "version": 1}))
    return s, ws


async def close_code(gw: Any, key: str | None, lease: str | None = "app") -> int | None:
    s, ws = await dial(gw, key, lease)
    try:
        async with asyncio.timeout(5):
            while True:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    return ws.close_code
    finally:
        await ws.close()
        await s.close()


async def alive(gw: Any) -> bool:
    async with aiohttp.ClientSession() as s, s.get(gw.admin_url + "/_health") as r:
        return r.status == 200


async def test_wrong_key_4401_and_lease_outside_scope_4403(tmp_path, gateway, config, peer_proc):
    gw = await gateway(relay_config(tmp_path, config))
    key, _ = await make_key(state_dir(gw), "relay:other-*", "read")
    assert await close_code(gw, None) == 4401
    assert await close_code(gw, "gwd_nope_notasecret") == 4401
    assert await close_code(gw, key + "x") == 4401
    assert await close_code(gw, key, "app") == 4403
    assert await close_code(gw, key, "../etc") == 4400
    plain = relay_url(gw).replace("ws://", "http://")
    async with aiohttp.ClientSession() as s, s.get(plain) as r:  # a plain GET: upgrade first
        assert r.status == 426
    logs = gw.logs()
    assert "relay connection refused" in logs
    secret = key.split("_", 2)[2]  # gwd_<id>_<secret>: the secret may contain "_" itself
    assert len(secret) >= 16 and secret not in logs  # never the secret
    # The CLI gives up at once on a refusal (exit status 2), rather than retrying forever.
    peer = await peer_proc(gw, "app", key, "http://127.0.0.1:9", wait=False)
    assert await peer.wait(10) == 2
    assert "4403" in peer.logs()
    assert await alive(gw)


async def test_protocol_abuse_is_bounded(tmp_path, gateway, config, backend):
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    await backend(app)
    gw = await gateway(relay_config(tmp_path, config, max_frame="64KiB"))
    key, _ = await make_key(state_dir(gw), "relay:*")

    # Oversized frame: closed with 1009 (message too big).
    s, ws = await dial(gw, key)
    await ws.receive()  # HELLO_ACK
    await ws.send_bytes(p.encode(1, FrameType.DATA, b"x" * (128 * 1024)))
    msg = await ws.receive()
    while msg.type == aiohttp.WSMsgType.BINARY:
        msg = await ws.receive()
    assert ws.close_code == 1009
    await s.close()

    # Frames for streams that do not exist: ignored and counted; the connection stays.
    s, ws = await dial(gw, key)
    await ws.receive()
    for sid in (7, 99, 2**31):
        await ws.send_bytes(p.encode(sid, FrameType.DATA, b"junk"))
        await ws.send_bytes(p.encode(sid, FrameType.END))
        await ws.send_bytes(p.window_update(sid, 1000))
        await ws.send_bytes(p.reset(sid, "cancel"))
    await ws.send_bytes(p.encode(0, FrameType.PING, b"12345678"))
    pong = p.decode((await ws.receive()).data, 1 << 20)
    assert pong.type == FrameType.PING and pong.flags & p.FLAG_ACK

    async def counted() -> bool:
        conns = await lease_connections(gw, "app")
        return bool(conns) and conns[0]["unknown_stream_frames"] == 12

    await wait_for(counted, 3)
    # Garbage (shorter than a header, a text message) closes with 4400.
    await ws.send_bytes(b"\x00\x01")
    while (await ws.receive()).type == aiohttp.WSMsgType.BINARY:
        pass
    assert ws.close_code == 4400
    await s.close()
    s, ws = await dial(gw, key)
    await ws.receive()
    await ws.send_str("hello")
    while (await ws.receive()).type == aiohttp.WSMsgType.BINARY:
        pass
    assert ws.close_code == 4400
    await s.close()
    # No HELLO but a request frame first: 4400.
    s, ws = await dial(gw, key, lease=None)
    await ws.send_bytes(p.encode(1, FrameType.HEADERS, b"{}"))
    while (await ws.receive()).type == aiohttp.WSMsgType.BINARY:
        pass
    assert ws.close_code == 4400
    await s.close()

    async def forgotten() -> bool:
        return (await relay_stats(gw))["connections"] == 0

    await wait_for(forgotten, 3)
    assert await alive(gw)


async def test_connect_flood_from_one_ip_gets_4429(tmp_path, gateway, config):
    gw = await gateway(relay_config(tmp_path, config, connect_rate="5/min", max_connections=3))
    codes = await asyncio.gather(*(close_code(gw, "gwd_x_y") for _ in range(50)))
    assert codes.count(4401) == 5  # the first five got as far as the key check
    assert codes.count(4429) == 45
    stats = await relay_stats(gw)
    assert stats["refused"] == 50 and stats["connections"] == 0
    assert await alive(gw)


async def test_connect_rate_is_per_real_client_behind_trusted_proxies(tmp_path, gateway, config):
    """Behind a trusted load balancer every peer comes from its address: the connect rate must
    count the forwarded client, not the balancer (which would share one bucket)."""
    cfg = relay_config(tmp_path, config, connect_rate="2/min")
    cfg["listen"][0]["trusted_proxies"] = ["127.0.0.1/32"]
    gw = await gateway(cfg)

    async def code(client: str) -> int | None:
        s = aiohttp.ClientSession()
        headers = {"Authorization": "Bearer gwd_x_y", "X-Forwarded-For": client}
        ws = await s.ws_connect(relay_url(gw), protocols=(p.SUBPROTOCOL,), headers=headers)
        await ws.send_bytes(p.encode_json(0, FrameType.HELLO, {"lease": "app", "version": 1}))
        try:
            async with asyncio.timeout(5):
                while True:
                    msg = await ws.receive()
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                        return ws.close_code
        finally:
            await ws.close()
            await s.close()

    assert [await code("203.0.113.7") for _ in range(3)] == [4401, 4401, 4429]
    assert await code("203.0.113.8") == 4401  # another client has its own bucket
    assert "203.0.113.7" in gw.logs()  # refusals are logged with the real client


async def test_max_connections_4503(tmp_path, gateway, config):
    gw = await gateway(relay_config(tmp_path, config, max_connections=2))
    key, _ = await make_key(state_dir(gw), "relay:*")
    held = [await dial(gw, key) for _ in range(2)]
    for _, ws in held:
        await ws.receive()
    assert await close_code(gw, key) == 4503
    for s, ws in held:
        await ws.close()
        await s.close()


async def test_revoked_key_closes_its_tunnel_within_a_second(
    tmp_path, gateway, config, backend, peer_proc
):
    app = web.Application()
    app.router.add_get("/{tail:.*}", lambda r: web.Response(text="ok"))
    srv = await backend(app)
    gw = await gateway(relay_config(tmp_path, config))
    key, key_id = await make_key(state_dir(gw), "relay:app")
    other, _ = await make_key(state_dir(gw), "relay:app")
    peer = await peer_proc(gw, "app", key, upstream_url(srv), connections=2)
    keeper = await peer_proc(gw, "app", other, upstream_url(srv))
    assert len(await lease_connections(gw, "app")) == 3
    started = time.monotonic()
    await revoke_key(state_dir(gw), key_id)

    async def only_keeper() -> bool:
        return len(await lease_connections(gw, "app")) == 1

    await wait_for(only_keeper, 2)
    assert time.monotonic() - started < 1.0
    assert await peer.wait(5) == 2  # 4401: the CLI stops for good
    assert keeper.proc.poll() is None
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/peer/app/x") as r:
        assert r.status == 200


def _masked(payload: bytes, opcode: int = 2) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


async def test_a_peer_that_stops_reading_is_dropped(tmp_path, gateway, config):
    """The peer says hello and then never reads: events pile up at the gateway only to a bound,
    and the connection is dropped after the heartbeat timeout."""
    gw = await gateway(relay_config(tmp_path, config, max_event_bytes="512KiB"))
    key, _ = await make_key(state_dir(gw), "relay:*")
    host, port = gw.config["listen"][0]["address"].split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        (
            "GET /_relay/connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {p.SUBPROTOCOL}\r\n"
            f"Authorization: Bearer {key}\r\n\r\n"
        ).encode()
    )
    assert b"101" in sock.recv(1024)
    sock.sendall(_masked(p.encode_json(0, FrameType.HELLO, {"lease": "app", "version": 1})))
    try:

        async def connected() -> bool:
            return len(await lease_connections(gw, "app")) == 1

        await wait_for(connected, 3)
        before = rss_bytes(gw.pid)
        payload = "x" * (500 * 1024)
        async with aiohttp.ClientSession() as s:
            for _ in range(100):  # 50 MB of events towards a peer that reads nothing
                async with s.post(
                    gw.admin_url + "/_admin/relay/leases/app/events",
                    json={"type": "api.deployed", "payload": payload},
                    headers=ADMIN,
                ) as r:
                    assert r.status in (202, 404)

        async def dropped() -> bool:
            return (await relay_stats(gw))["connections"] == 0

        await wait_for(dropped, 5)
        grown = rss_bytes(gw.pid) - before
        assert grown < 80 * 1024 * 1024, grown
        assert await alive(gw)
    finally:
        sock.close()


async def test_streams_a_leaving_peer_never_read_are_retried_at_once(
    tmp_path, gateway, config, backend, peer_proc
):
    """A peer says "going away" and closes 1000 while HEADERS it will never read are in flight:
    those requests go to the lease's other connection at once (not a 504 after the timeout)."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    srv = await backend(app)
    cfg = relay_config(tmp_path, config)
    cfg["routes"][0]["timeouts"] = {"total": "10s"}  # a stuck stream fails in 10 s, not 60
    gw = await gateway(cfg)
    key, _ = await make_key(state_dir(gw), "relay:*")
    for _round in range(5):
        s, ws = await dial(gw, key)
        await ws.receive()  # HELLO_ACK
        async with aiohttp.ClientSession() as client:
            pending = [asyncio.create_task(client.get(gw.url + f"/peer/app/{i}")) for i in range(4)]
            seen = 0
            while seen < len(pending):  # the fake peer takes every stream and answers none
                frame = p.decode((await ws.receive()).data, 1 << 20)
                seen += frame.type == FrameType.HEADERS
            peer = await peer_proc(gw, "app", key, upstream_url(srv))
            started = time.monotonic()
            await ws.send_bytes(p.reset(0, "going_away", "peer is leaving"))
            await ws.close(code=1000, message=b"peer stopped")
            await s.close()
            for task in pending:
                async with await task as r:
                    assert r.status == 200, await r.text()
            assert time.monotonic() - started < 3.0
        peer.kill()
        await peer.wait(5)

        async def forgotten() -> bool:
            return (await relay_stats(gw))["connections"] == 0

        await wait_for(forgotten, 3)


async def test_a_hostile_peer_cannot_break_a_relayed_websocket(tmp_path, gateway, config):
    """A peer that overruns a WebSocket stream's window, or sends a message over max_message,
    gets that WebSocket closed (1011, 1009); its relay connection and the gateway carry on."""
    cfg = relay_config(tmp_path, config)
    cfg["routes"][0]["websocket"] = {"max_message": "64KiB"}
    gw = await gateway(cfg)
    key, _ = await make_key(state_dir(gw), "relay:*")
    s, ws = await dial(gw, key)
    await ws.receive()  # HELLO_ACK

    async def next_of(type_: int) -> p.Frame:
        while True:
            frame = p.decode((await ws.receive()).data, 1 << 24)
            if frame.type == type_:
                return frame

    async def upgraded(client: aiohttp.ClientSession) -> tuple[Any, int]:
        pending = asyncio.create_task(
            client.ws_connect(gw.url + "/peer/app/ws", protocols=("chat",))
        )
        head = await next_of(FrameType.HEADERS)
        request = head.json()
        assert request["upgrade"] == "websocket" and request["protocols"] == ["chat"]
        assert request["max_message"] == 64 * 1024
        answer = {"status": 101, "reason": "Switching Protocols", "headers": [], "protocol": "chat"}
        await ws.send_bytes(p.encode_json(head.stream, FrameType.HEADERS, answer))
        sock = await pending
        assert sock.protocol == "chat"
        return sock, head.stream

    try:
        async with aiohttp.ClientSession() as client:
            sock, sid = await upgraded(client)
            await ws.send_bytes(p.encode(sid, FrameType.WS_MESSAGE, b"hi", p.FLAG_TEXT))
            assert await sock.receive_str(timeout=5) == "hi"
            # Past the window (256 KiB): the stream is reset, the client closed with 1011.
            await ws.send_bytes(p.encode(sid, FrameType.WS_MESSAGE, b"x" * (300 * 1024)))
            msg = await sock.receive(timeout=5)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1011)
            reset = await next_of(FrameType.RESET)
            assert reset.stream == sid and reset.json()["code"] == "flow_control"

            # Fragments within the window, but a message over max_message: 1009 both ways.
            sock, sid = await upgraded(client)
            more = p.FLAG_MORE
            await ws.send_bytes(p.encode(sid, FrameType.WS_MESSAGE, b"y" * 40_000, more))
            await ws.send_bytes(p.encode(sid, FrameType.WS_MESSAGE, b"y" * 40_000))
            msg = await sock.receive(timeout=5)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1009)
            close = await next_of(FrameType.WS_CLOSE)
            assert close.stream == sid and close.json()["code"] == 1009

        await ws.send_bytes(p.encode(0, FrameType.PING, b"12345678"))
        pong = await next_of(FrameType.PING)
        assert pong.flags & p.FLAG_ACK
        stats = await relay_stats(gw)
        assert stats["connects"] == 1 and stats["disconnects"] == 0
        assert await alive(gw)
    finally:
        await ws.close()
        await s.close()
