"""Races between a stream's answer and its request going away: the tunnel must survive them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from relay_helpers import make_key, relay_config, relay_stats, relay_url, state_dir, wait_for

from gatewayd.relay import protocol as p
from gatewayd.relay.protocol import FrameType

ROUNDS = 3
STREAMS = 16
TOTAL = 0.5  # the route's total timeout (s)


async def next_frame(ws: aiohttp.ClientWebSocketResponse) -> p.Frame:
    msg = await ws.receive()
    if msg.type != aiohttp.WSMsgType.BINARY:
        raise AssertionError(f"relay connection ended: {ws.close_code} {msg.extra!r}")
    return p.decode(msg.data, 1 << 20)


async def test_answers_racing_the_request_timeout_keep_the_connection(tmp_path, gateway, config):
    """Requests time out just as the peer's response HEADERS arrive. The timeout cancels the
    wait for the head at once, but the request's cleanup (forget the stream, reset it) runs a
    moment later: HEADERS read in between belong to a stream being reset, a normal race, and
    must be ignored. They closed the relay connection (4400 "second HEADERS on a stream")."""
    cfg = relay_config(tmp_path, config, heartbeat={"interval": "5s", "timeout": "10s"})
    cfg["routes"][0]["timeouts"] = {"total": f"{int(TOTAL * 1000)}ms"}
    gw = await gateway(cfg)
    key, _ = await make_key(state_dir(gw), "relay:*")
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    answer = {"status": 200, "reason": "OK", "headers": [["Content-Length", "0"]]}
    # A response head that keeps the gateway busy for a while (~0.1 s of parsing and checking).
    busy = {"status": 200, "reason": "OK", "headers": [["a", "b"]] * 90_000}
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(
            relay_url(gw), protocols=(p.SUBPROTOCOL,), headers={"Authorization": f"Bearer {key}"}
        )
        await ws.send_bytes(p.encode_json(0, FrameType.HELLO, {"lease": "app", "version": 1}))
        assert (await next_frame(ws)).type == FrameType.HELLO_ACK
        for _round in range(ROUNDS):
            clients: list[Any] = []
            for i in range(STREAMS):
                _reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(f"GET /peer/app/{i} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                clients.append(writer)
            sids: list[int] = []
            async with asyncio.timeout(10):
                while len(sids) < STREAMS:  # every request is waiting for its response head
                    frame = await next_frame(ws)
                    if frame.type == FrameType.HEADERS:
                        sids.append(frame.stream)
                        if len(sids) == 2:
                            deadline = time.monotonic() + TOTAL  # when the 2nd request times out
            # Keep the gateway busy across the requests' deadlines with a huge head for the
            # first stream, and answer the others meanwhile: once free, the gateway reads the
            # answers, then its timers fire, then its tasks run (the waits time out first).
            await asyncio.sleep(max(0.0, deadline - time.monotonic() - 0.03))
            await ws.send_bytes(p.encode_json(sids[0], FrameType.HEADERS, busy))
            await asyncio.sleep(0.01)
            for sid in sids[1:]:
                await ws.send_bytes(p.encode_json(sid, FrameType.HEADERS, answer))
                await ws.send_bytes(p.encode(sid, FrameType.END))
            await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 0.1)
            await ws.send_bytes(p.encode(0, FrameType.PING, b"12345678"))
            async with asyncio.timeout(10):
                while True:  # RESETs for the abandoned streams may come first: then our ACK
                    frame = await next_frame(ws)
                    if frame.type == FrameType.PING and frame.flags & p.FLAG_ACK:
                        break
            for writer in clients:
                writer.close()

        async def nothing_in_flight() -> bool:
            return (await relay_stats(gw))["in_flight"] == 0

        await wait_for(nothing_in_flight, 5)
        stats = await relay_stats(gw)
        assert stats["connects"] == 1 and stats["disconnects"] == 0, stats
        await ws.close()
