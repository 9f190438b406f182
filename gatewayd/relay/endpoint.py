"""The WebSocket endpoint at ``relay.path``: admit, authenticate, hello, then serve the peer."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from gatewayd.config.schema import RelayConfig
from gatewayd.relay import protocol as p
from gatewayd.relay.connection import PeerConnection
from gatewayd.relay.peers import DEFAULT_PEER
from gatewayd.relay.protocol import Close, FrameType, ProtocolError
from gatewayd.relay.registry import valid_lease

if TYPE_CHECKING:
    from gatewayd.relay.registry import RelayRegistry

log = logging.getLogger("gatewayd.relay")
HELLO_TIMEOUT = 10.0


def lease_allowed(scopes: frozenset[str], lease: str) -> bool:
    return any(
        s.startswith("relay:") and fnmatch.fnmatchcase(lease, s[6:]) for s in scopes if len(s) > 6
    )


class RelayEndpoint:
    def __init__(self, registry: RelayRegistry, config: RelayConfig) -> None:
        self.registry = registry
        self.config = config

    async def refuse(
        self, ws: web.WebSocketResponse, code: int, reason: str, ip: str, **extra: Any
    ) -> web.WebSocketResponse:
        self.registry.counters["refused"] += 1
        log.warning(
            "relay connection refused",
            extra={"client_ip": ip, "close_code": code, "reason": reason, **extra},
        )
        await ws.close(code=code, message=reason.encode())
        return ws

    async def handle(self, raw: web.BaseRequest, ip: str) -> web.StreamResponse:
        """Serve one peer connection; ``ip`` is the real client IP (the socket peer, or from
        X-Forwarded-For behind the listener's trusted proxies): ``connect_rate`` is per IP."""
        config = self.config
        ws = web.WebSocketResponse(
            protocols=(p.SUBPROTOCOL,),
            max_msg_size=config.max_frame + p.HEADER_SIZE,
            autoping=True,
            compress=False,
        )
        if not ws.can_prepare(raw).ok:
            return web.json_response(
                {"error": {"code": "upgrade_required", "message": "relay peers use WebSocket"}},
                status=426,
                headers={"Upgrade": "websocket"},
            )
        await ws.prepare(raw)
        refusal = self.registry.admit(ip, config)
        if refusal is not None:
            reason = {
                Close.RATE_EXCEEDED: "connect rate exceeded",
                Close.AT_CAPACITY: "relay at capacity",
            }.get(refusal, "going away")
            return await self.refuse(ws, refusal, reason, ip)
        if ws.ws_protocol != p.SUBPROTOCOL:
            return await self.refuse(
                ws, Close.PROTOCOL, f"subprotocol {p.SUBPROTOCOL} required", ip
            )
        record = await self.authenticate(raw)
        if record is None:
            return await self.refuse(ws, Close.UNAUTHORISED, "unauthorised", ip)
        try:
            hello = await self.read_hello(ws)
        except (ProtocolError, TimeoutError) as exc:
            return await self.refuse(ws, Close.PROTOCOL, str(exc) or "no HELLO", ip)
        lease = hello.get("lease")
        if not isinstance(lease, str) or not valid_lease(lease):
            return await self.refuse(ws, Close.PROTOCOL, "invalid lease name", ip)
        name = hello.get("peer", DEFAULT_PEER)
        if not isinstance(name, str) or not valid_lease(name):
            return await self.refuse(ws, Close.PROTOCOL, "invalid peer name", ip)
        if not lease_allowed(record.scopes, lease):
            return await self.refuse(
                ws, Close.FORBIDDEN_LEASE, "lease not allowed", ip, key_id=record.key_id
            )
        if self.registry.closing:
            return await self.refuse(ws, Close.GOING_AWAY, "going away", ip)
        conn = PeerConnection(
            ws,
            raw.transport,
            self.registry.new_id(),
            lease,
            record.key_id,
            getattr(record, "tenant", None),
            ip,
            config,
            name,
        )
        ack = {
            "connection_id": conn.id,
            "lease": lease,
            "peer": name,
            "heartbeat_interval": config.heartbeat.interval,
            "heartbeat_timeout": config.heartbeat.timeout,
            "max_frame": config.max_frame,
            "stream_window": config.stream_window,
            "max_streams": config.max_streams,
        }
        await ws.send_bytes(p.encode_json(0, FrameType.HELLO_ACK, ack))
        self.registry.add(conn)
        try:
            await conn.run()
        finally:
            self.registry.remove(conn)
        return ws

    async def authenticate(self, raw: web.BaseRequest) -> Any:
        keys = self.registry.keys
        header = raw.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if keys is None or scheme.lower() != "bearer" or not presented.strip():
            return None
        try:
            record = await keys.verify(presented.strip())
        except Exception:  # a busy or broken key store refuses, never admits
            log.exception("relay key check failed")
            return None
        return record

    async def read_hello(self, ws: web.WebSocketResponse) -> dict[str, Any]:
        async with asyncio.timeout(HELLO_TIMEOUT):
            msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise ProtocolError("expected a binary HELLO frame")
        frame = p.decode(msg.data, self.config.max_frame)
        if frame.type != FrameType.HELLO or frame.stream != 0:
            raise ProtocolError("the first frame must be HELLO")
        hello = frame.json()
        if not isinstance(hello, dict):
            raise ProtocolError("HELLO payload must be an object")
        return hello
