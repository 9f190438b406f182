"""RelayLeaseUpstream (the relay's upstream kind) driven directly: a real relay endpoint on
127.0.0.1 with a real key store, real peers (gatewayd.relay.peer.Peer) and real targets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gatewayd.chain import UpstreamKind, WebSocketChannel
from gatewayd.chain.api import Attempt, Request, RequestContext, RouteInfo
from gatewayd.chain.upstream import UpstreamConnectError, UpstreamError
from gatewayd.config.schema import RelayConfig, StateConfig, TimeoutsConfig
from gatewayd.relay.peer import Peer
from gatewayd.relay.registry import MAX_IDLE_LEASES, RelayRegistry
from gatewayd.stores.keys import KeyStoreSettings, open_key_store

TIMEOUTS = TimeoutsConfig(connect=2, read=5, total=5)


class Relay:
    def __init__(self, registry: RelayRegistry, url: str, key: str, key_id: str) -> None:
        self.registry = registry
        self.url = url
        self.key = key
        self.key_id = key_id


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    store = await open_key_store(
        StateConfig(dir=tmp_path), settings=KeyStoreSettings(bcrypt_rounds=4)
    )
    key, record = await store.create("acme", scopes=["relay:*"])
    registry = RelayRegistry(store)
    config = RelayConfig(connect_rate="1000/s")  # type: ignore[arg-type]
    app = web.Application()
    endpoint = registry.endpoint(config)

    async def serve(request: web.Request) -> web.StreamResponse:
        return await endpoint(request, request.remote or "")  # the socket peer is the client

    app.router.add_get(config.path, serve)
    server = TestServer(app)
    await server.start_server()
    try:
        yield Relay(registry, f"ws://127.0.0.1:{server.port}{config.path}", key, record.key_id)
    finally:
        await registry.close()
        await server.close()
        await store.close()


@pytest.fixture
async def target() -> AsyncIterator[str]:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text=f"ok {request.path}")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(protocols=("chat",))
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(msg.data.upper())
        return sock

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/{tail:.*}", ok)
    server = TestServer(app)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


def context(path: str = "/x") -> RequestContext:
    request = Request("GET", path, "", CIMultiDict(), "", "http", "127.0.0.1", None, None)
    return RequestContext(request, "test", RouteInfo("test", None, ""))


async def body_of(reply: Any) -> bytes:
    if isinstance(reply.body, bytes):
        return reply.body
    return b"".join([chunk async for chunk in reply.body])


async def test_targets_are_the_same_objects_across_calls_and_reconnects(relay, target):
    up = relay.registry.lease_upstream("app")
    assert isinstance(up, UpstreamKind) and up.kind == "relay"
    assert up.targets() == ()
    async with Peer(relay.url, "app", relay.key, target, name="eu-1") as peer:
        await peer.wait_connected()
        (t,) = up.targets()
        assert t.id == f"{relay.key_id}/eu-1"
        assert up.targets()[0] is t
        assert t.info["connections"] == 1 and t.info["client_ip"] == "127.0.0.1"
        cached = relay.registry.lease_upstream("app")  # cached once the lease has peers
        assert relay.registry.lease_upstream("app") is cached and cached.targets()[0] is t
        attempt = Attempt(t.id)
        reply = await up.send(t, attempt, context("/hello"), "/hello", CIMultiDict(), TIMEOUTS)
        assert reply.status == 200 and attempt.status == 200
        assert await body_of(reply) == b"ok /hello"
        first = t.info["connection_ids"]
        await peer.links[0].ws.close()  # the peer reconnects: a new connection, one identity
        while not up.targets() or up.targets()[0].info["connection_ids"] == first:
            await peer.wait_connected()
            await asyncio.sleep(0.02)
        assert up.targets()[0] is t
    assert up.targets() == ()  # gone, but kept: it comes back as the same object
    async with Peer(relay.url, "app", relay.key, target, name="eu-1") as peer:
        await peer.wait_connected()
        assert up.targets()[0] is t


async def test_a_flood_of_lease_names_keeps_nothing(relay):
    for i in range(5000):
        up = relay.registry.lease_upstream(f"lease-{i}")
        assert up.targets() == ()
    assert not relay.registry.leases and not relay.registry.idle
    for i in range(MAX_IDLE_LEASES + 500):  # events for leases nobody holds: bounded records
        assert relay.registry.push_event(f"lease-{i}", "t", None, "c", 1 << 20) is None
    assert len(relay.registry.idle) == MAX_IDLE_LEASES


async def test_a_refused_stream_is_a_connect_error(relay, target):
    up = relay.registry.lease_upstream("app")
    async with Peer(relay.url, "app", relay.key, target) as peer:
        await peer.wait_connected()
        peer.stopping = True  # it refuses new streams (as while leaving)
        (t,) = up.targets()
        attempt = Attempt(t.id)
        with pytest.raises(UpstreamConnectError):
            await up.send(t, attempt, context(), "/x", CIMultiDict(), TIMEOUTS)
        assert attempt.error == "connect"
        peer.stopping = False


async def test_upgrade_gives_a_websocket_channel(relay, target):
    up = relay.registry.lease_upstream("app")
    async with Peer(relay.url, "app", relay.key, target) as peer:
        await peer.wait_connected()
        (t,) = up.targets()
        attempt = Attempt(t.id)
        channel = await up.upgrade(
            t, attempt, context("/ws"), "/ws", CIMultiDict(), TIMEOUTS, ["x", "chat"], 1 << 20
        )
        assert isinstance(channel, WebSocketChannel)
        assert channel.protocol == "chat" and attempt.status == 101
        await channel.send_str("hello")
        msg = await channel.receive()
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "HELLO")
        assert await channel.close(code=1000) is True
        assert t.info["connections"] == 1
        assert relay.registry.connections[t.info["connection_ids"][0]].inflight == 0
        attempt = Attempt(t.id)
        with pytest.raises(UpstreamError) as err:
            await up.upgrade(
                t, attempt, context("/plain"), "/plain", CIMultiDict(), TIMEOUTS, [], 1 << 20
            )
        assert err.value.code == "websocket_refused" and attempt.status == 200
