"""gatewayd_llm.limits: reserve before sending, settle to the real usage, on gatewayd's memory
and Redis state stores (a real redis-server started here), in one process and in two."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from gatewayd_llm.limits import (
    LimitExceeded,
    Limits,
    LimitSpec,
    LimitSubject,
    LimitsUnavailable,
    Reservation,
)
from llm_testkit import free_port
from pydantic import ValidationError

from gatewayd.testing import HarnessServices

ACME = LimitSubject(api_key="k1", tenant="acme", model="smart", route="llm", headers={})


@pytest.fixture(params=["memory", "redis"])
async def services(request: pytest.FixtureRequest) -> AsyncIterator[HarnessServices]:
    """The harness's real services on the memory backend, or on a real Redis."""
    if request.param == "redis":
        url = request.getfixturevalue("llm_redis_url")
        made = HarnessServices(backend="redis", redis_url=url)
    else:
        made = HarnessServices()
    yield made
    await made.close()


def spec(**kw: Any) -> LimitSpec:
    return LimitSpec.model_validate(kw)


async def used(limits: Limits, subject: LimitSubject = ACME) -> list[int]:
    """Each of the subject's counters as it is now (a reservation of nothing)."""
    items = [(c.key, 10**15, c.period, 0) for c in limits.counters(subject)]
    decision = limits.limiter.reserve(items)
    if limits.limiter.is_async:
        decision = await decision
    return list(decision.used)


async def fresh_window(period: float, margin: float) -> None:
    """At least ``margin`` seconds left in the current window of ``period`` seconds."""
    now = time.time()
    end = (int(now // period) + 1) * period
    if end - now < margin:
        await asyncio.sleep(end - now + 0.01)


# -- the config ------------------------------------------------------------------------------


def test_a_limit_counts_exactly_one_thing_per_key() -> None:
    s = spec(tokens="100000/min", key="tenant")
    assert (s.dimension, s.budget, s.rate.period) == ("tokens", 100000, 60)
    assert s.describe() == "tokens 100000/min per tenant"
    c = spec(cost="20/day", key="tenant")
    assert (c.dimension, c.budget, c.rate.period) == ("cost", 20_000_000, 86400)
    assert spec(requests="600/min", key="api_key").dimension == "requests"
    assert spec(tokens="10/s", key="header:X-Team").key == "header:x-team"
    assert spec(tokens="10/s").key == "global"
    for bad in (
        {"tokens": "10/s", "requests": "1/s"},
        {},
        {"tokens": "10/s", "key": "ip"},
        {"tokens": "10/s", "key": "header:"},
        {"cost": "lots"},
        {"tokens": "10/s", "burst": 3},
    ):
        with pytest.raises(ValidationError):
            spec(**bad)


# -- reserve and settle ----------------------------------------------------------------------


async def test_reserve_is_all_or_nothing_over_every_limit(services: HarnessServices) -> None:
    await fresh_window(3600, 5)
    limits = Limits(
        [spec(tokens="1000/h", key="tenant"), spec(requests="2/h", key="api_key")],
        services.stores,
    )
    await limits.reserve(ACME, 300, 0)
    await limits.reserve(ACME, 300, 0)
    with pytest.raises(LimitExceeded) as exc:
        await limits.reserve(ACME, 100, 0)  # the tokens fit, the third request does not
    assert exc.value.limit == "requests 2/h per api_key" and exc.value.status == 429
    assert 0 < exc.value.retry_after <= 3600
    assert await used(limits) == [600, 2]  # the refused request added no tokens
    other = LimitSubject(api_key="k2", tenant="acme", model="smart", route="llm")
    with pytest.raises(LimitExceeded) as exc:
        await limits.reserve(other, 500, 0)  # a new key's request, but the tenant's tokens
    assert exc.value.limit == "tokens 1000/h per tenant" and exc.value.fits
    assert await used(limits, other) == [600, 0]
    with pytest.raises(LimitExceeded) as exc:
        await limits.reserve(other, 1001, 0)
    assert not exc.value.fits and "alone" in exc.value.message


async def test_settle_refunds_or_tops_up_exactly_once(services: HarnessServices) -> None:
    await fresh_window(3600, 5)
    limits = Limits(
        [spec(tokens="1000/h", key="tenant"), spec(cost="1/h", key="tenant")], services.stores
    )
    r = await limits.reserve(ACME, 600, 0.25)
    assert await used(limits) == [600, 250_000]
    await limits.settle(r, 100, 0.05)  # a refund
    assert await used(limits) == [100, 50_000]
    await limits.settle(r, 900, 0.9)  # settled already: nothing happens
    assert await used(limits) == [100, 50_000]
    r = await limits.reserve(ACME, 100, 0.1)
    await limits.settle(r, 950, 0.4)  # a top-up, never refused, even over the limit
    assert await used(limits) == [1050, 450_000]
    with pytest.raises(LimitExceeded):
        await limits.reserve(ACME, 0, 0)
    # a request that failed before using anything gives its whole reservation back
    limits2 = Limits([spec(tokens="5000/h", key="route")], services.stores)
    r = await limits2.reserve(ACME, 700, 0)
    await limits2.settle(r, 0, 0)
    assert await used(limits2) == [0]


async def test_cost_is_counted_in_millionths_rounded_up(services: HarnessServices) -> None:
    await fresh_window(3600, 5)
    limits = Limits([spec(cost="0.001/h", key="model")], services.stores)
    rs = [await limits.reserve(ACME, 0, 0.0001) for _ in range(10)]
    with pytest.raises(LimitExceeded):
        await limits.reserve(ACME, 0, 0.0000001)  # any positive cost counts as 1e-6
    for r in rs:
        await limits.settle(r, 0, 0.00005)
    assert await used(limits) == [500]


async def test_keys_and_requests_without_a_value(services: HarnessServices) -> None:
    await fresh_window(3600, 5)
    limits = Limits(
        [spec(requests="1/h", key="header:X-Team"), spec(requests="5/h", key="tenant")],
        services.stores,
    )
    red = LimitSubject("k", "acme", "m", "llm", {"x-team": "red"})
    blue = LimitSubject("k", "acme", "m", "llm", {"x-team": "blue"})
    await limits.reserve(red, 1, 0)
    await limits.reserve(blue, 1, 0)
    with pytest.raises(LimitExceeded):
        await limits.reserve(red, 1, 0)
    # no header and no tenant: one shared counter for all of them, not a way around the limit
    anonymous = LimitSubject(None, None, "m", "llm", {})
    await limits.reserve(anonymous, 1, 0)
    with pytest.raises(LimitExceeded):
        await limits.reserve(LimitSubject("other", None, "m2", "llm", {}), 1, 0)
    # header values never reach the store as sent; long values are hashed too
    keys = [c.key for c in limits.counters(LimitSubject("k", "t" * 10_000, "m", "r", red.headers))]
    assert all("red" not in k and len(k) < 120 for k in keys)


async def test_two_limits_on_one_counter_share_it(services: HarnessServices) -> None:
    limits = Limits(
        [spec(tokens="500/h", key="tenant"), spec(tokens="300/h", key="tenant")], services.stores
    )
    assert len(limits.counters(ACME)) == 1
    await fresh_window(3600, 5)
    await limits.reserve(ACME, 300, 0)
    with pytest.raises(LimitExceeded) as exc:
        await limits.reserve(ACME, 1, 0)
    assert exc.value.limit == "tokens 300/h per tenant"


async def test_200_concurrent_requests_never_overshoot(services: HarnessServices) -> None:
    """200 requests at once against N tokens: every one reserves its estimate, is "sent" (a
    random wait), then settles to its real usage; admitted usage <= N + one reservation."""
    await fresh_window(3600, 15)
    n, max_tokens, prompt = 5000, 200, 40
    limits = Limits([spec(tokens=f"{n}/h", key="tenant")], services.stores)
    rng = random.Random(7)
    spent: list[int] = []

    async def one() -> None:
        try:
            r = await limits.reserve(ACME, prompt + max_tokens, 0)
        except LimitExceeded:
            return
        await asyncio.sleep(rng.random() * 0.02)
        real = prompt + rng.randint(0, max_tokens)
        spent.append(real)
        await limits.settle(r, real, 0)

    await asyncio.gather(*(one() for _ in range(200)))
    assert sum(spent) <= n + prompt + max_tokens
    assert len(spent) >= n // (prompt + max_tokens)  # refunds were used again
    assert await used(limits) == [sum(spent)]


# -- windows ---------------------------------------------------------------------------------


async def test_windows_roll_over_and_settles_land_in_their_own(
    services: HarnessServices,
) -> None:
    limits = Limits([spec(tokens="100/2s", key="tenant")], services.stores)
    await fresh_window(2, 1.0)
    old = await limits.reserve(ACME, 100, 0)
    with pytest.raises(LimitExceeded) as exc:
        await limits.reserve(ACME, 1, 0)
    assert 0 < exc.value.retry_after <= 2
    await asyncio.sleep(exc.value.retry_after + 0.02)
    new = await limits.reserve(ACME, 30, 0)  # a new window: the whole budget again
    assert new.windows[0] == old.windows[0] + 1
    await limits.settle(old, 5, 0)  # the refund goes to the old window, not to this one
    assert await used(limits) == [30]
    await limits.settle(new, 10, 0)
    assert await used(limits) == [10]


# -- bounded memory, reloads -----------------------------------------------------------------


async def test_memory_counters_are_bounded_and_outlive_a_config_change() -> None:
    services = HarnessServices()
    limits = Limits([spec(requests="1/h", key="tenant")], services.stores, max_entries=100)
    for i in range(5000):
        await limits.reserve(LimitSubject("k", f"tenant-{i}", "m", "r"), 1, 0)
    assert len(limits.limiter) == 100
    await fresh_window(3600, 5)
    await limits.reserve(ACME, 1, 0)
    # the reloaded plugin, its limit changed: the same counters, the request already counted
    again = Limits([spec(requests="2/h", key="tenant")], services.stores, max_entries=100)
    assert again.limiter is limits.limiter
    await again.reserve(ACME, 1, 0)
    with pytest.raises(LimitExceeded):
        await again.reserve(ACME, 1, 0)
    other_route = Limits([spec(requests="2/h", key="tenant")], services.stores, prefix="llm:b")
    assert other_route.limiter is not limits.limiter
    await services.close()


# -- store failures, cancellation ------------------------------------------------------------


async def test_store_errors_allow_or_deny() -> None:
    services = HarnessServices(backend="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    specs = [spec(tokens="100/h", key="tenant")]
    allow = Limits(specs, services.stores)
    r = await allow.reserve(ACME, 1000, 0)
    assert not r.counted and allow.store_errors == 1
    await allow.settle(r, 10, 0)  # never raises
    assert allow.store_errors == 2
    deny = Limits(specs, services.stores, on_store_error="deny")
    with pytest.raises(LimitsUnavailable) as exc:
        await deny.reserve(ACME, 1, 0)
    assert exc.value.status == 503 and exc.value.retry_after == 1
    await services.close()


async def test_a_store_outage_counts_the_real_usage_afterwards(llm_redis_url: str) -> None:
    """on_store_error allow: a request admitted while the store failed still has its real usage
    added to the current window when it settles (if the store answers by then)."""
    services = HarnessServices(backend="redis", redis_url=llm_redis_url)
    limits = Limits([spec(tokens="1000/h", key="tenant")], services.stores)
    await fresh_window(3600, 5)
    r = Reservation(limits.counters(ACME), [-1], 500, 0, counted=False)
    await limits.settle(r, 120, 0)
    assert await used(limits) == [120]
    await services.close()


async def test_cancelled_reserve_and_settle_are_carried_through(llm_redis_url: str) -> None:
    services = HarnessServices(backend="redis", redis_url=llm_redis_url)
    limits = Limits([spec(tokens="1000/h", key="tenant")], services.stores)
    await fresh_window(3600, 5)
    assert await used(limits) == [0]  # connected
    task = asyncio.create_task(limits.reserve(ACME, 400, 0))
    await asyncio.sleep(0)  # the script is on its way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await limits.close()
    assert await used(limits) == [0]  # the reservation nobody saw was given back
    r = await limits.reserve(ACME, 400, 0)
    task = asyncio.create_task(limits.settle(r, 50, 0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await limits.close()
    assert await used(limits) == [50]
    await services.close()


# -- two gateway processes on one Redis ------------------------------------------------------

WORKER = r"""
import asyncio, json, random, sys, time
from gatewayd.testing import HarnessServices
from gatewayd_llm.limits import LimitExceeded, Limits, LimitSpec, LimitSubject, LimitsUnavailable

url, budget, count, prompt, max_tokens, seed = sys.argv[1:]
budget, count, prompt, max_tokens = int(budget), int(count), int(prompt), int(max_tokens)

async def used_now(limits, subject):
    c = limits.counters(subject)[0]
    return (await limits.limiter.reserve([(c.key, 10**15, c.period, 0)])).used[0]

async def main():
    services = HarnessServices(backend="redis", redis_url=url)
    limits = Limits(
        [LimitSpec(tokens=f"{budget}/h", key="tenant")], services.stores, on_store_error="deny"
    )
    subject = LimitSubject("k", "acme", "smart", "llm")
    rng = random.Random(int(seed))
    spent, refused, unavailable = [], 0, 0
    assert await used_now(limits, subject) >= 0  # connected
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"

    async def one():
        nonlocal refused, unavailable
        try:
            r = await limits.reserve(subject, prompt + max_tokens, 0)
        except LimitsUnavailable:
            unavailable += 1
            return
        except LimitExceeded:
            refused += 1
            return
        await asyncio.sleep(rng.random() * 0.03)
        real = prompt + rng.randint(0, max_tokens)
        spent.append(real)
        await limits.settle(r, real, 0)

    await asyncio.gather(*(one() for _ in range(count)))
    await limits.close()
    await services.close()
    print(json.dumps({"spent": spent, "refused": refused, "unavailable": unavailable}))

asyncio.run(main())
"""


async def test_two_processes_share_one_budget(llm_redis_url: str) -> None:
    await fresh_window(3600, 30)
    n, prompt, max_tokens = 8000, 50, 150
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            llm_redis_url,
            str(n),
            "100",
            str(prompt),
            str(max_tokens),
            str(seed),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed in (1, 2)
    ]
    for proc in procs:  # both started and connected: then both at once
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
    results = []
    for out, err in await asyncio.gather(*(p.communicate(b"go\n") for p in procs)):
        results.append(json.loads(out or b"null") or err.decode())
    assert all(p.returncode == 0 for p in procs), results
    spent = [t for r in results for t in r["spent"]]
    assert all(r["spent"] for r in results), results  # both processes had requests admitted
    assert sum(r["refused"] for r in results) > 0, results  # the budget was the limit
    unavailable = sum(r["unavailable"] for r in results)  # Redis too slow on a loaded host
    assert len(spent) + sum(r["refused"] for r in results) + unavailable == 200
    assert unavailable < 20, results
    assert sum(spent) <= n + max_tokens, results
    services = HarnessServices(backend="redis", redis_url=llm_redis_url)
    limits = Limits([spec(tokens=f"{n}/h", key="tenant")], services.stores)
    subject = LimitSubject("k", "acme", "smart", "llm")
    assert await used(limits, subject) == [sum(spent)]  # settled exactly, across processes
    await services.close()


async def test_settle_nowait_from_synchronous_code(services: HarnessServices) -> None:
    await fresh_window(3600, 5)
    limits = Limits([spec(tokens="1000/h", key="tenant")], services.stores)
    r = await limits.reserve(ACME, 500, 0)
    task = limits.settle_nowait(r, 20, 0)
    if services.stores.backend == "memory":
        assert task is None and await used(limits) == [20]  # settled before it returned
    else:
        assert task is not None
        await limits.close()
        assert task.done() and await used(limits) == [20]
    assert limits.settle_nowait(r, 900, 0) is None  # once only
    assert await used(limits) == [20]


# -- end to end: two gateway daemons, one Redis, the official SDK ----------------------------


async def test_two_gateways_on_one_redis_hold_a_token_budget(
    llm_redis_url: str, fake_openai: Any, llm_config: Any, llm_gateway: Any, tmp_path: Path
) -> None:
    """Two ``gatewayd run`` processes with ``state.backend: redis`` on one redis-server, 200
    concurrent requests (100 through each, half of them streamed; half sent at once, half
    within the next 3 s) against a budget of N tokens
    per tenant: the usage the provider reported for the admitted ones is at most N plus one
    request's max_tokens, and the requests over the budget got OpenAI-shaped 429s."""
    import openai
    from fake_openai_server import Fault
    from llm_testkit import openai_upstream

    await fresh_window(3600, 60)
    n, max_tokens = 2000, 100
    rng = random.Random(12)
    # every answer uses part of its max_tokens, after a short wait: requests overlap
    fake_openai.behaviour = lambda body: Fault(chunks=rng.randint(1, max_tokens), delay=0.05)
    upstreams = {"main": openai_upstream(fake_openai.url)}
    llm = {
        "models": {"m": [{"upstream": "main", "model": "fake-model"}]},
        "limits": [{"tokens": f"{n}/h", "key": "tenant"}],
        "on_limits_error": "deny",
    }
    gateways = []
    for name in ("a", "b"):
        state = {"dir": str(tmp_path / f"state-{name}"), "backend": "redis"}
        cfg = llm_config(upstreams, llm, state={**state, "redis_url": llm_redis_url})
        gateways.append(await llm_gateway(cfg, keys={f"key-{name}": "acme"}))
    clients = [gw.client() for gw in gateways]
    messages = [{"role": "user", "content": "count to one hundred"}]
    outcomes: list[tuple[int, str]] = []
    # all at once, or within 3 s: the later ones meet the earlier ones' refunds
    starts = [0.0 if i < 100 else 3 * rng.random() for i in range(200)]

    async def one(i: int) -> None:
        client = clients[i % 2]
        await asyncio.sleep(starts[i])
        try:
            if i % 4 < 2:
                reply = await client.chat.completions.create(
                    model="m", messages=messages, max_tokens=max_tokens
                )
                assert reply.usage is not None
            else:
                stream = await client.chat.completions.create(
                    model="m", messages=messages, max_tokens=max_tokens, stream=True
                )
                async for _ in stream:
                    pass
            outcomes.append((i % 2, "ok"))
        except openai.RateLimitError as exc:
            assert exc.status_code == 429 and exc.code == "rate_limit_exceeded"
            assert int(exc.response.headers["Retry-After"]) >= 1
            outcomes.append((i % 2, "limited"))
        except openai.APIStatusError as exc:
            outcomes.append((i % 2, f"status {exc.status_code}"))

    await asyncio.gather(*(one(i) for i in range(200)))
    await fake_openai.wait_idle()
    seen = [s for s in fake_openai.seen() if s.usage is not None]
    admitted = sum(s.usage["prompt_tokens"] + s.usage["completion_tokens"] for s in seen)
    results = [r for _, r in outcomes]
    assert len(results) == 200 and results.count("ok") == len(seen), outcomes
    assert results.count("ok") + results.count("limited") >= 190, outcomes  # few 503s at most
    assert admitted <= n + max_tokens, (admitted, len(seen))
    # more were admitted than fit at once: the refunds of the settled ones were used again
    assert len(seen) > n // max_tokens
    # the gateways settled every reservation to the provider's counts: the shared counter
    # (the plugin's prefix is llm:<route>) holds exactly the admitted usage
    services = HarnessServices(backend="redis", redis_url=llm_redis_url)
    limits = Limits([spec(tokens=f"{n}/h", key="tenant")], services.stores, prefix="llm:llm")
    acme = LimitSubject(None, "acme", "m", "llm")
    for _ in range(100):  # settles are tasks that end just after their replies
        if await used(limits, acme) == [admitted]:
            break
        await asyncio.sleep(0.05)
    assert await used(limits, acme) == [admitted]
    await services.close()
    for g, gw in enumerate(gateways):  # each gateway admitted some and refused some: one budget
        mine = [r for h, r in outcomes if h == g]
        assert "ok" in mine and "limited" in mine
        limited = await gw.metric("gatewayd_llm_errors_total", model="m", kind="limited")
        assert limited == mine.count("limited")


async def test_a_reload_that_changes_the_config_is_no_way_around_a_limit(
    fake_openai: Any, llm_config: Any, llm_gateway: Any
) -> None:
    """The memory store, through the daemon: two requests of 2/h, then a reload that changes
    the plugin's config (another default, a higher limit): the counts carry on."""
    import copy

    import openai
    from llm_testkit import openai_upstream

    await fresh_window(3600, 20)
    upstreams = {"main": openai_upstream(fake_openai.url)}
    llm = {
        "models": {"m": [{"upstream": "main", "model": "fake-model"}]},
        "limits": [{"requests": "2/h", "key": "tenant"}],
    }
    cfg = llm_config(upstreams, llm)
    gw = await llm_gateway(cfg)
    client = gw.client()
    messages = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        await client.chat.completions.create(model="m", messages=messages, max_tokens=2)
    changed = copy.deepcopy(cfg)
    changed["routes"][0]["plugins"][-1]["llm"]["default_max_tokens"] = 64
    changed["routes"][0]["plugins"][-1]["llm"]["limits"] = [{"requests": "3/h", "key": "tenant"}]
    await gw.reload(changed)
    await client.chat.completions.create(model="m", messages=messages, max_tokens=2)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="m", messages=messages, max_tokens=2)
    assert len(fake_openai.seen()) == 3
