"""Helpers for the stream tests: a real SSE parser, a test plugin package, admin credentials."""

from __future__ import annotations

import asyncio
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
from aiohttp.test_utils import TestServer

ADMIN_TOKEN = "streams-admin-token-0123456789"
ADMIN_HASH = bcrypt.hashpw(ADMIN_TOKEN.encode(), bcrypt.gensalt(4)).decode()
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def upstream_url(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@dataclass
class SSEMessage:
    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SSEReader:
    """A Server-Sent Events parser (the WHATWG algorithm) over a streaming aiohttp response.
    Comments (``: ping``) are counted, not returned."""

    resp: aiohttp.ClientResponse
    comments: list[str] = field(default_factory=list)
    last_event_id: str | None = None

    async def next(self, timeout: float = 5.0) -> SSEMessage:
        async with asyncio.timeout(timeout):
            return await self._next()

    async def _next(self) -> SSEMessage:
        msg = SSEMessage()
        data: list[str] = []
        seen_field = False
        while True:
            raw = await self.resp.content.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode().rstrip("\r\n")
            if not line:
                if seen_field and data:
                    msg.data = "\n".join(data)
                    if msg.id is not None:
                        self.last_event_id = msg.id
                    return msg
                msg, data, seen_field = SSEMessage(), [], False
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            seen_field = True
            if name == "data":
                data.append(value)
            elif name == "event":
                msg.event = value
            elif name == "id" and "\0" not in value:
                msg.id = value

    async def collect(self, count: int, timeout: float = 5.0) -> list[SSEMessage]:
        return [await self.next(timeout) for _ in range(count)]

    async def nothing_within(self, seconds: float) -> bool:
        """True when no event arrives within ``seconds``."""
        try:
            await self.next(seconds)
        except TimeoutError:
            return True
        return False


PLUGIN_MODULE = textwrap.dedent(
    '''
    """Test-only plugins: a principal from a header, and a route that publishes events."""
    import time
    from urllib.parse import parse_qsl

    from gatewayd.chain import Plugin, Principal, Response


    class TenantHeaderPlugin(Plugin):
        name = "test_tenant"
        priority = 2000

        async def on_request(self, ctx):
            tenant = ctx.request.headers.get("X-Test-Tenant")
            if tenant:
                ctx.authenticate(Principal(kind="test", subject=tenant, tenant=tenant))
            return None


    class PublishPlugin(Plugin):
        name = "test_publish"
        priority = 1

        async def on_request(self, ctx):
            q = dict(parse_qsl(ctx.request.query_string))
            bus = self.context.services.events
            n = int(q.get("n", "1"))
            pad = "x" * int(q.get("pad", "0"))
            first = last = None
            for i in range(n):
                payload = {"seq": int(q.get("start", "0")) + i, "emitted": time.time()}
                if pad:
                    payload["pad"] = pad
                event = bus.publish(q.get("type", "test.event"), payload, q.get("tenant") or None)
                first = first or event.id
                last = event.id
            return Response.json({"first": first, "last": last})
    '''
)

ENTRY_POINTS = """[gatewayd.plugins]
test_tenant = gatewayd_streams_test:TenantHeaderPlugin
test_publish = gatewayd_streams_test:PublishPlugin
"""


def plugin_env(tmp_path: Path) -> dict[str, str]:
    """Install the test plugins as a distribution on a private path; the env for the daemon."""
    site = tmp_path / "site"
    dist = site / "gatewayd_streams_test-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (site / "gatewayd_streams_test.py").write_text(PLUGIN_MODULE)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gatewayd-streams-test\nVersion: 0\n"
    )
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    return {"PYTHONPATH": str(site)}


async def open_sse(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[aiohttp.ClientResponse, SSEReader]:
    resp = await session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=None))
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return resp, SSEReader(resp)


async def publish(session: aiohttp.ClientSession, base: str, **params: Any) -> tuple[int, int]:
    async with session.get(base + "/publish", params={k: str(v) for k, v in params.items()}) as r:
        assert r.status == 200, await r.text()
        data = await r.json()
    return int(data["first"]), int(data["last"])
