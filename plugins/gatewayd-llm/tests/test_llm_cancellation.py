"""Cancellation: a client that goes away cancels the provider's request at once, and every
request still has exactly one usage record.

1,000 streamed requests, 20 at a time (a 2-core machine shared with other work), 30 % of
them cancelled by the client at a random point: before the gateway answered (the provider has
not sent its head yet, or has sent its head but no event), or after a random number of events.
For each cancelled request the provider sees its connection go within 100 ms of the client
leaving; for each request there is one usage record, equal to what the provider reported when
it reported usage (``provider``), an estimate otherwise (``estimated``: cancelled, or a
provider that gave no usage).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from fake_openai_server import FakeOpenAI, Fault
from llm_testkit import LlmGateway, openai_upstream

REQUESTS = 1000
CONCURRENCY = 20
CANCELLED = 0.3
CANCEL_REACHED = 0.1  # seconds
CHUNK_DELAY = 0.01  # between tokens


@dataclass
class Plan:
    rid: str
    tokens: int  # max_tokens: the reply's length
    cancel: str | None = None  # None, "head" (no head yet), "first" (head, no event), "events"
    after_events: int = 0  # "events": the client leaves after this many events
    wait: float = 0.0  # "head"/"first": the client leaves after this many seconds
    usage: bool = True  # the provider reports usage
    left_at: float | None = None  # when the client left (time.monotonic())
    events: int = 0  # events the client received
    arrived: asyncio.Event | None = None  # set when the provider has the request


def plans(rng: random.Random) -> list[Plan]:
    out = []
    for i in range(REQUESTS):
        p = Plan(f"cancel-test-{i:04d}", rng.randint(2, 8))
        if rng.random() < CANCELLED:
            p.cancel = rng.choice(("head", "first", "events", "events", "events"))
            p.after_events = rng.randint(1, p.tokens)
            p.wait = rng.uniform(0.0, 0.05)
        else:
            p.usage = rng.random() < 0.8
        out.append(p)
    return out


def fault_for(plan: Plan) -> Fault:
    """The provider's side of a plan. A stream the client will leave holds still at the point
    where the client leaves, so that the provider is still at work when the cancel comes (else
    the test could not tell whether the cancel reached it)."""
    if plan.cancel == "head":
        return Fault(delay=30)
    if plan.cancel == "first":
        return Fault(stall_after=0)
    if plan.cancel == "events":
        return Fault(stall_after=plan.after_events, chunk_delay=CHUNK_DELAY)
    return Fault(usage=plan.usage, chunk_delay=CHUNK_DELAY)


async def one(session: aiohttp.ClientSession, gw: LlmGateway, plan: Plan) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "count to " + str(plan.tokens)}],
        "max_tokens": plan.tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": plan.rid,
    }
    headers = {"Authorization": f"Bearer {gw.key}", "X-Request-ID": plan.rid}
    url = gw.url + "/v1/chat/completions"
    if plan.cancel in ("head", "first"):
        plan.arrived = asyncio.Event()
        task = asyncio.ensure_future(session.post(url, json=body, headers=headers))
        async with asyncio.timeout(10):
            await plan.arrived.wait()  # the provider is at work (or about to answer)
        await asyncio.sleep(plan.wait)
        assert not task.done(), "the gateway answered before the provider did"
        plan.left_at = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue
            plan.events += 1
            if plan.cancel == "events" and plan.events >= plan.after_events:
                plan.left_at = time.monotonic()
                resp.close()  # the client goes away
                return


async def test_a_thousand_streams_a_third_cancelled(
    fake_openai: FakeOpenAI, llm_config, llm_gateway
) -> None:
    rng = random.Random(12)
    todo = plans(rng)
    by_rid = {p.rid: p for p in todo}

    def behaviour(body: dict[str, Any]) -> Fault:
        plan = by_rid[body["user"]]
        if plan.arrived is not None:
            plan.arrived.set()
        return fault_for(plan)

    fake_openai.behaviour = behaviour
    upstreams = {"main": openai_upstream(fake_openai.url, max_connections=500)}
    llm = {"models": {"m": [{"upstream": "main", "model": "fake-model"}]}}
    gw = await llm_gateway(llm_config(upstreams, llm))

    started = time.monotonic()
    queue: asyncio.Queue[Plan] = asyncio.Queue()
    for p in todo:
        queue.put_nowait(p)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            await one(session, gw, queue.get_nowait())

    # (when a tick ended, how late it was): the client and the fake provider share this test's
    # event loop, so a stall of the loop delays when the provider *notices* a cancel; that time
    # is the test's, not the gateway's, and is taken off each cancel's measured delay.
    lags: list[tuple[float, float]] = [(0.0, 0.0)]

    async def monitor() -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.005)
            now = time.monotonic()
            lags.append((now, max(0.0, now - t - 0.005)))

    def stalled(start: float, end: float) -> float:
        """How long this test's loop stood still between ``start`` and ``end``."""
        return sum(lag for at, lag in lags if start < at <= end + 0.005)

    mon = asyncio.ensure_future(monitor())
    connector = aiohttp.TCPConnector(limit=CONCURRENCY * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    mon.cancel()
    lag = f"(this test's own event loop lagged up to {max(lag for _, lag in lags) * 1000:.0f} ms)"
    elapsed = time.monotonic() - started
    await fake_openai.wait_idle(5)
    assert not fake_openai.handlers, "provider requests still running after their clients left"

    seen = {s.request_id: s for s in fake_openai.requests}
    assert set(seen) == set(by_rid), "every request reached the provider once"
    late: list[str] = []
    for p in todo:
        s = seen[p.rid]
        if p.cancel is None:
            assert s.cancelled_at is None and s.finished_at is not None, p
            continue
        assert p.left_at is not None and s.cancelled_at is not None, (p, s)
        took = s.cancelled_at - p.left_at
        ours = stalled(p.left_at, s.cancelled_at)
        if took - ours > CANCEL_REACHED:
            late.append(f"{p.rid} ({p.cancel}): {took * 1000:.0f} ms ({ours * 1000:.0f} ms ours)")
    cancelled = sum(1 for p in todo if p.cancel)
    limit = f"{CANCEL_REACHED * 1000:.0f} ms"
    assert not late, f"{len(late)}/{cancelled} cancels took longer than {limit} {lag}: {late}"

    records = await gw.usage(REQUESTS, timeout=30)
    assert len(records) == REQUESTS  # exactly one each: no more came after the quiet time
    assert {r.request_id for r in records} == set(by_rid)
    for rec in records:
        p, s = by_rid[rec.request_id], seen[rec.request_id]
        assert rec.cancelled == (p.cancel is not None), (p, rec)
        if s.usage is not None:  # the provider reported usage: the record is exactly that
            assert rec.source == "provider", (p, rec)
            assert (rec.prompt_tokens, rec.completion_tokens) == (
                s.usage["prompt_tokens"],
                s.usage["completion_tokens"],
            ), (p, rec)
        else:
            assert rec.source == "estimated", (p, rec)
            assert rec.prompt_tokens > 0, rec  # the prompt was sent: its estimate counts
            if p.cancel is None:  # complete, without usage: the tokens relayed
                assert rec.completion_tokens == p.tokens, (p, rec)
            else:
                assert rec.completion_tokens <= s.chunks_sent, (p, rec)
        if p.cancel is not None:
            assert rec.status == 499, (p, rec)

    async with aiohttp.ClientSession() as s:
        admin = {"Authorization": "Bearer llm-admin-token-0123456789"}
        async with s.get(gw.admin_url + "/_admin/upstreams", headers=admin) as r:
            upstreams_view: Any = await r.json()
    targets = [t for u in upstreams_view["upstreams"] for t in u["targets"]]
    assert [t["inflight"] for t in targets] == [0]  # nothing left hanging at the gateway
    assert elapsed < 60, f"{elapsed:.1f} s"


async def test_a_whole_answer_cancelled_while_waiting(
    fake_openai: FakeOpenAI, llm_config, llm_gateway
) -> None:
    """Not streamed: the client leaves while the provider works; the provider sees it at once
    and the record says cancelled (estimated)."""
    fake_openai.push(Fault(delay=30))
    upstreams = {"main": openai_upstream(fake_openai.url)}
    gw = await llm_gateway(
        llm_config(upstreams, {"models": {"m": [{"upstream": "main", "model": "x"}]}})
    )
    async with gw.client() as client:
        task = asyncio.ensure_future(
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
        )
        for _ in range(200):
            if fake_openai.requests:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        left = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await fake_openai.wait_idle(2)
    (s,) = fake_openai.requests
    assert s.cancelled_at is not None and s.cancelled_at - left < CANCEL_REACHED
    (rec,) = await gw.usage(1)
    assert rec.cancelled and rec.status == 499 and rec.source == "estimated"
    assert rec.prompt_tokens > 0 and rec.completion_tokens == 0
