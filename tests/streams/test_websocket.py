"""WebSocket pass-through through the real daemon, with aiohttp's WebSocket client."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from streams_support import upstream_url


class WsBackend:
    """An echo WebSocket server that records what it saw."""

    def __init__(self) -> None:
        self.closes: list[tuple[int | None, str]] = []
        self.headers: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_get("/ws", self.echo)
        self.app.router.add_get("/drop", self.drop)
        self.app.router.add_get("/refuse", self.refuse)

    async def echo(self, request: web.Request) -> web.WebSocketResponse:
        self.headers.append(dict(request.headers))
        ws = web.WebSocketResponse(protocols=("chat.v2",), max_msg_size=64 * 1024 * 1024)
        await ws.prepare(request)
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.CLOSE:
                self.closes.append((msg.data, msg.extra or ""))
                break
            if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                self.closes.append((ws.close_code, ""))
                break
            if msg.type is WSMsgType.TEXT:
                if msg.data.startswith("close:"):
                    _, code, reason = msg.data.split(":", 2)
                    await ws.close(code=int(code), message=reason.encode())
                    return ws
                if msg.data == "big":
                    await ws.send_bytes(b"\0" * 4096)
                    continue
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def drop(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        assert request.transport is not None
        request.transport.abort()  # no close frame: the connection just dies
        return ws

    async def refuse(self, request: web.Request) -> web.Response:
        return web.json_response({"nope": True}, status=403)


def closed_generation(logs: str, number: int) -> bool:
    return any(
        '"generation closed"' in line and f'"generation": {number}' in line
        for line in logs.splitlines()
    )


def ws_config(config: Any, srv: Any, **route: Any) -> dict[str, Any]:
    return config(
        upstreams={"ws": {"targets": [upstream_url(srv)]}},
        routes=[{"name": "ws", "match": {"path": "/"}, "upstream": "ws", **route}],
    )


@pytest.fixture
async def wsb(backend):
    b = WsBackend()
    b.server = await backend(b.app)
    return b


async def test_text_binary_and_a_4mib_message_pass_intact(gateway, config, wsb):
    gw = await gateway(ws_config(config, wsb.server))
    big = os.urandom(4 * 1024 * 1024)
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(gw.url + "/ws", protocols=("chat.v1", "chat.v2"), max_msg_size=0) as ws,
    ):
        assert ws.protocol == "chat.v2"
        await ws.send_str("héllo ✓")
        assert await ws.receive_str(timeout=5) == "héllo ✓"
        await ws.send_bytes(bytes(range(256)))
        assert await ws.receive_bytes(timeout=5) == bytes(range(256))
        await ws.send_bytes(big)
        msg = await ws.receive(timeout=20)
        assert msg.type is WSMsgType.BINARY and msg.data == big
        await ws.send_str("")
        assert await ws.receive_str(timeout=5) == ""
    seen = wsb.headers[0]
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert "X-Request-ID" in seen
    for _ in range(50):  # counted when the relay has finished closing
        if await gw.metric("gatewayd_requests_total", route="ws", status="101") == 1:
            break
        await asyncio.sleep(0.05)
    assert await gw.metric("gatewayd_requests_total", route="ws", status="101") == 1


async def test_close_code_and_reason_propagate_both_ways(gateway, config, wsb):
    gw = await gateway(ws_config(config, wsb.server))
    async with aiohttp.ClientSession() as s:
        # client -> upstream
        ws = await s.ws_connect(gw.url + "/ws")
        await ws.send_str("ping?")
        assert await ws.receive_str(timeout=5) == "ping?"
        await ws.close(code=4001, message=b"client says bye")
        assert ws.close_code == 4001  # the gateway echoed the client's code
        for _ in range(50):
            if wsb.closes:
                break
            await asyncio.sleep(0.05)
        assert wsb.closes == [(4001, "client says bye")]
        # upstream -> client
        ws = await s.ws_connect(gw.url + "/ws", autoclose=False)
        await ws.send_str("close:4002:upstream done")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (4002, "upstream done")
        await ws.close()


async def test_pings_are_answered(gateway, config, wsb):
    gw = await gateway(ws_config(config, wsb.server))
    async with aiohttp.ClientSession() as s, s.ws_connect(gw.url + "/ws", autoping=False) as ws:
        await ws.ping(b"are you there")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"are you there")


async def test_refused_upgrade_is_502_and_unreachable_is_502(gateway, config, wsb):
    cfg = ws_config(config, wsb.server)
    cfg["upstreams"]["dead"] = {"targets": ["http://127.0.0.1:1"]}
    cfg["routes"].append({"name": "dead", "match": {"path": "/dead"}, "upstream": "dead"})
    gw = await gateway(cfg)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await s.ws_connect(gw.url + "/refuse")
        assert exc.value.status == 502
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        }
        async with s.get(gw.url + "/refuse", headers=headers) as r:
            assert r.status == 502
            body = await r.json()
        assert body["error"]["code"] == "websocket_refused"
        assert "403" in body["error"]["message"] and body["error"]["request_id"]
        async with s.get(gw.url + "/dead/x", headers=headers) as r:
            assert r.status == 502
            assert (await r.json())["error"]["code"] == "upstream_unreachable"


async def test_upstream_failure_after_upgrade_closes_with_1011(gateway, config, wsb):
    gw = await gateway(ws_config(config, wsb.server))
    async with aiohttp.ClientSession() as s, s.ws_connect(gw.url + "/drop") as ws:
        await ws.send_str("die")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE and msg.data == 1011


async def test_idle_timeout_closes_both_sides_with_1001(gateway, config, wsb):
    gw = await gateway(ws_config(config, wsb.server, websocket={"idle_timeout": "600ms"}))
    async with aiohttp.ClientSession() as s, s.ws_connect(gw.url + "/ws") as ws:
        for _ in range(4):  # activity keeps it open past the timeout
            await asyncio.sleep(0.3)
            await ws.send_str("still here")
            assert await ws.receive_str(timeout=5) == "still here"
        started = time.monotonic()
        msg = await ws.receive(timeout=5)
        waited = time.monotonic() - started
    assert msg.type is WSMsgType.CLOSE and (msg.data, msg.extra) == (1001, "idle timeout")
    assert 0.4 < waited < 2.0
    await asyncio.sleep(0.2)
    assert wsb.closes and wsb.closes[0][0] == 1001


async def test_a_message_over_max_message_closes_with_1009(gateway, config, wsb):
    gw = await gateway(ws_config(config, wsb.server, websocket={"max_message": "1KiB"}))
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(gw.url + "/ws") as ws:
            await ws.send_bytes(b"x" * 1000)
            assert len(await ws.receive_bytes(timeout=5)) == 1000
            await ws.send_bytes(b"x" * 2048)
            msg = await ws.receive(timeout=5)
            assert msg.type is WSMsgType.CLOSE and msg.data == 1009
        async with s.ws_connect(gw.url + "/ws") as ws:
            await ws.send_str("big")  # the upstream answers with 4 KiB
            msg = await ws.receive(timeout=5)
            assert msg.type is WSMsgType.CLOSE and msg.data == 1009


async def test_the_chain_runs_on_the_handshake(gateway, config, wsb):
    gw = await gateway(ws_config(config, wsb.server, plugins=[{"key_auth": {}}]))
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await s.ws_connect(gw.url + "/ws")
    assert exc.value.status == 401
    assert not wsb.headers  # the upstream never saw it


async def test_a_websocket_stays_open_across_a_reload(gateway, config, wsb):
    cfg = ws_config(config, wsb.server)
    gw = await gateway(cfg)
    async with aiohttp.ClientSession() as s, s.ws_connect(gw.url + "/ws") as ws:
        await ws.send_str("before")
        assert await ws.receive_str(timeout=5) == "before"
        cfg["routes"].append({"name": "other", "match": {"path": "/other"}, "upstream": "ws"})
        gw.write_config(cfg)
        await gw.reload()
        assert await gw.generation() == 2
        await asyncio.sleep(0.3)  # the old generation would have closed by now if unpinned
        for i in range(5):
            await ws.send_str(f"after {i}")
            assert await ws.receive_str(timeout=5) == f"after {i}"
        async with s.ws_connect(gw.url + "/ws") as ws2:  # new ones go to the new generation
            await ws2.send_bytes(b"new")
            assert await ws2.receive_bytes(timeout=5) == b"new"
        await gw.reload()  # and again: the first one is now two generations old
        await ws.send_str("still")
        assert await ws.receive_str(timeout=5) == "still"
        assert not closed_generation(gw.logs(), 1)
    for _ in range(50):  # once it is closed, its generation drains and closes
        if closed_generation(gw.logs(), 1):
            break
        await asyncio.sleep(0.05)
    assert closed_generation(gw.logs(), 1)


@pytest.mark.slow
async def test_sigterm_closes_websockets_with_1001_after_the_grace_period(gateway, config, wsb):
    cfg = ws_config(config, wsb.server)
    cfg["server"] = {"drain_timeout": "1500ms"}
    gw = await gateway(cfg)
    async with aiohttp.ClientSession() as s, s.ws_connect(gw.url + "/ws") as ws:
        gw.signal(signal.SIGTERM)
        stopped = time.monotonic()
        await asyncio.sleep(0.3)
        await ws.send_str("during the grace period")
        assert await ws.receive_str(timeout=5) == "during the grace period"
        msg = await ws.receive(timeout=10)
        waited = time.monotonic() - stopped
        assert msg.type is WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (1001, "server shutting down")
        assert 1.3 < waited < 5
    assert await gw.wait_exit(10) == 0
    assert wsb.closes and wsb.closes[0][0] == 1001
