"""A client that goes away is a 499 and cancels the upstream request, even when it goes away
at the moment the upstream timeout fires (the two cancellations race inside the gateway)."""

from __future__ import annotations

import asyncio
import collections
import json
import math
import time

from aiohttp import web
from support import upstream_url

from gatewayd.proxy.deadlines import SLOT

READ = 0.3  # the gateway's read timeout (s)
ROUNDS = 3
CLIENTS = 25  # per round
STEP = 0.00025  # between the clients' own timeouts (s): from 3 ms before the gateway's to 3 after


async def test_a_client_leaving_as_the_upstream_times_out_is_a_499(gateway, backend, config):
    """Each client's own timeout expires when the gateway's read timeout does, give or take up
    to 3 ms (one client every 0.25 ms): some leave just before the gateway's timeout fires, some
    just after, and some so close to it that the gateway learns of both in one loop iteration.
    A client that left first (it half-closes, then reads: no answer came) must be logged as 499,
    never as 504 (before the fix, the timeout took the client's cancellation back as its own);
    a client that got its 504 first is logged 504. Either way the target's request is cancelled
    (its connection closed)."""
    arrived: dict[str, float] = {}
    arrival = collections.defaultdict(asyncio.Event)
    cancelled: set[str] = set()

    async def stall(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        arrived[name] = time.monotonic()
        arrival[name].set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.add(name)
            raise
        return web.Response(text="late")

    app = web.Application(handler_args={"handler_cancellation": True})
    app.router.add_get("/stall/{name}", stall)
    srv = await backend(app)
    timeouts = {"read": f"{int(READ * 1000)}ms"}
    gw = await gateway(
        config(
            upstreams={"api": {"targets": [upstream_url(srv)], "timeouts": timeouts}},
            routes=[{"name": "api", "match": {"path": "/"}, "upstream": "api"}],
        )
    )
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)

    async def client(name: str, offset: float) -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /stall/{name} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        await asyncio.wait_for(arrival[name].wait(), 10)
        # The gateway's timeout fires at the end of the timer slot holding "started + READ"
        # (gatewayd.proxy.deadlines); it started a moment before the target saw the request.
        fires = math.ceil((arrived[name] + READ) / SLOT) * SLOT
        await asyncio.sleep(max(0.0, fires + offset - time.monotonic()))
        writer.write_eof()  # the client's own timeout: it goes away
        try:
            return await asyncio.wait_for(reader.read(), 10)  # what the gateway had answered
        except ConnectionError:
            return b""
        finally:
            writer.close()

    names: list[str] = []
    answers: dict[str, bytes] = {}
    offsets = [(i - CLIENTS // 2) * STEP for i in range(CLIENTS)]
    for r in range(ROUNDS):
        batch = [f"r{r}c{i}" for i in range(CLIENTS)]
        got = await asyncio.gather(*(client(n, o) for n, o in zip(batch, offsets, strict=True)))
        answers.update(zip(batch, got, strict=True))
        names += batch
    statuses: dict[str, int] = {}
    for _ in range(50):  # access lines are written in batches, at most 200 ms apart
        for line in gw.logs().splitlines():
            if '"access"' in line:
                entry = json.loads(line)
                statuses[entry["path"].rsplit("/", 1)[1]] = entry["status"]
        if len(statuses) == len(names) and len(cancelled) == len(names):
            break
        await asyncio.sleep(0.1)
    assert cancelled == set(names)  # the target saw every request cancelled
    left_first = [n for n in names if not answers[n]]
    answered = [n for n in names if answers[n]]
    assert left_first, "no client left before its answer: the race was not provoked"
    assert answered, "every client left before the timeout: the race was not provoked"
    for name in answered:
        assert answers[name].startswith(b"HTTP/1.1 504"), answers[name]
        assert statuses[name] == 504
    wrong = {n: statuses[n] for n in left_first if statuses[n] != 499}
    assert not wrong, f"clients that left first were not logged as 499: {wrong}"
