"""Circuit breaker, health checks, passive ejection and retries, with real failing backends."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp
import bcrypt
from aiohttp import web
from support import free_port, upstream_url
from traffic_helpers import Counting, get_many, route

ADMIN_TOKEN = "traffic-admin-token-0123456789"
ADMIN_HASH = bcrypt.hashpw(ADMIN_TOKEN.encode(), bcrypt.gensalt(4)).decode()
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
VIEWER_TOKEN = "traffic-viewer-token-0123456789"
VIEWER_HASH = bcrypt.hashpw(VIEWER_TOKEN.encode(), bcrypt.gensalt(4)).decode()
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}


def with_admin(cfg: dict) -> dict:
    cfg["admin"]["tokens"] = [
        {"id": "ops", "hash": ADMIN_HASH},
        {"id": "watcher", "hash": VIEWER_HASH, "role": "viewer"},
    ]
    return cfg


async def admin_upstreams(gw) -> dict:
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.admin_url + "/_admin/upstreams", headers=AUTH) as r,
    ):
        assert r.status == 200
        return {u["name"]: u for u in (await r.json())["upstreams"]}


async def test_breaker_opens_then_closes_through_half_open(gateway, backend, config):
    failing = {"n": 3}

    async def handler(request: web.Request) -> web.Response:
        if failing["n"] > 0:
            failing["n"] -= 1
            return web.Response(status=500, text="boom")
        return web.Response(text="ok")

    counting = Counting(handler)
    srv = await backend(counting.app)
    breaker = {"consecutive_failures": 3, "open_for": "1s", "min_requests": 100}
    cfg = with_admin(
        config(
            upstreams={"api": {"targets": [upstream_url(srv)]}},
            routes=[route(plugins=[{"circuit_breaker": breaker}])],
        )
    )
    gw = await gateway(cfg)
    assert [s for s, _ in await get_many(gw.url + "/x", 3)] == [500, 500, 500]
    assert counting.hits == 3
    # Open: answered at once, the target untouched.
    results = await get_many(gw.url + "/x", 5)
    assert [s for s, _ in results] == [503] * 5
    assert results[0][1]["Retry-After"] == "1"
    assert counting.hits == 3
    target = upstream_url(srv)
    ups = await admin_upstreams(gw)
    (t,) = ups["api"]["targets"]
    (note,) = t["plugins"]["circuit_breaker"]  # describe_target: one entry per route's breaker
    assert note["state"] == "open" and note["route"] == "api" and t["available"] is False
    assert await gw.metric("gatewayd_breaker_state", target=target, upstream="api") == 2
    await asyncio.sleep(1.1)
    # Half-open: one probe goes through; it succeeds, the breaker closes.
    assert [s for s, _ in await get_many(gw.url + "/x", 3)] == [200, 200, 200]
    assert counting.hits == 6
    assert await gw.metric("gatewayd_breaker_state", target=target, upstream="api") == 0
    for state in ("open", "half_open", "closed"):
        assert (
            await gw.metric(
                "gatewayd_breaker_transitions_total", state=state, target=target, upstream="api"
            )
            == 1
        )


async def test_breaker_ratio_over_window_and_failed_probe_reopens(gateway, backend, config):
    mode = {"fail": True}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=503 if mode["fail"] else 200)

    counting = Counting(handler)
    srv = await backend(counting.app)
    breaker = {"failure_ratio": "50%", "min_requests": 4, "window": "10s", "open_for": "500ms"}
    gw = await gateway(
        config(
            upstreams={"api": {"targets": [upstream_url(srv)]}},
            routes=[route(plugins=[{"circuit_breaker": breaker}])],
        )
    )
    assert [s for s, _ in await get_many(gw.url + "/x", 6)] == [503] * 6
    assert counting.hits == 4  # opened at the 4th (4 requests, 100% failed)
    await asyncio.sleep(0.6)
    await get_many(gw.url + "/x", 1)  # the probe fails: open again
    assert counting.hits == 5
    await get_many(gw.url + "/x", 3)
    assert counting.hits == 5
    mode["fail"] = False
    await asyncio.sleep(0.6)
    assert [s for s, _ in await get_many(gw.url + "/x", 3)] == [200] * 3


async def test_breaker_skips_an_open_target_when_another_is_healthy(gateway, backend, config):
    bad = Counting(lambda r: asyncio.sleep(0, web.Response(status=500)))
    good = Counting()
    s1, s2 = await backend(bad.app), await backend(good.app)
    gw = await gateway(
        config(
            upstreams={"api": {"targets": [upstream_url(s1), upstream_url(s2)]}},
            routes=[
                route(plugins=[{"circuit_breaker": {"consecutive_failures": 2, "open_for": "1m"}}])
            ],
        )
    )
    await get_many(gw.url + "/x", 20)
    assert bad.hits == 2
    assert good.hits == 18


async def test_retries_go_to_another_target_and_respect_idempotency(gateway, backend, config):
    bad = Counting(lambda r: asyncio.sleep(0, web.Response(status=502)))
    good = Counting()
    s1, s2 = await backend(bad.app), await backend(good.app)
    upstreams = {
        "targets": [upstream_url(s1), upstream_url(s2)],
        "retries": {"attempts": 1, "backoff": "1ms", "budget": "100%"},
    }
    cfg = config(upstreams={"api": upstreams}, routes=[route()])
    gw = await gateway(cfg)
    assert [s for s, _ in await get_many(gw.url + "/x", 10)] == [200] * 10
    assert good.hits == 10 and 0 < bad.hits <= 10  # each request: at most one retry
    async with aiohttp.ClientSession() as s:
        statuses = []
        for _ in range(4):
            async with s.post(gw.url + "/x", data=b"payload") as r:
                statuses.append(r.status)
        assert sorted(statuses) == [200, 200, 502, 502]  # a POST is not replayed
    # A route that opts in replays a POST carrying an Idempotency-Key (its body buffered).
    cfg["upstreams"]["api"]["retries"]["idempotency_key"] = True
    gw.write_config(cfg)
    await gw.reload()
    async with aiohttp.ClientSession() as s:
        for _ in range(4):
            async with s.post(
                gw.url + "/x", data=b"payload", headers={"Idempotency-Key": "k1"}
            ) as r:
                assert r.status == 200


async def test_connect_refused_is_retried_for_any_method(gateway, backend, config):
    good = Counting()
    s2 = await backend(good.app)
    dead = f"http://127.0.0.1:{free_port()}"
    upstreams = {
        "targets": [dead, upstream_url(s2)],
        "retries": {"attempts": 1, "backoff": "1ms", "budget": "100%"},
    }
    gw = await gateway(config(upstreams={"api": upstreams}, routes=[route()]))
    async with aiohttp.ClientSession() as s:
        for _ in range(6):
            async with s.post(gw.url + "/x", data=b"x" * 100) as r:
                assert r.status == 200


async def test_retry_storm_is_capped_by_the_budget(gateway, backend, config):
    bad = Counting(lambda r: asyncio.sleep(0, web.Response(status=503)))
    s1 = await backend(bad.app)
    upstreams = {
        "targets": [upstream_url(s1)],
        "retries": {"attempts": 3, "backoff": "1ms", "budget": "10%", "min_retries": 3},
    }
    gw = await gateway(config(upstreams={"api": upstreams}, routes=[route()]))
    results = await get_many(gw.url + "/x", 200, concurrency=10)
    assert [s for s, _ in results] == [503] * 200
    # Without a budget this would be 800 backend requests.
    assert 200 < bad.hits <= 200 + 20 + 3
    exhausted = await gw.metric(
        "gatewayd_upstream_retries_total", outcome="budget_exhausted", upstream="api"
    )
    assert exhausted > 100


async def test_health_checks_take_a_target_out_and_back(gateway, backend, config):
    health = {"ok": True}

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/healthz":
            return web.Response(status=200 if health["ok"] else 500)
        return web.Response(text="a")

    a = Counting(handler)
    b = Counting()
    s1, s2 = await backend(a.app), await backend(b.app)
    hc = {"path": "/healthz", "interval": "100ms", "unhealthy_after": 2, "healthy_after": 2}
    cfg = with_admin(
        config(
            upstreams={"api": {"targets": [upstream_url(s1), upstream_url(s2)], "health": hc}},
            routes=[route()],
        )
    )
    gw = await gateway(cfg)
    health["ok"] = False
    await asyncio.sleep(0.5)
    before = a.hits
    await get_many(gw.url + "/x", 10)
    assert a.hits == before
    ups = await admin_upstreams(gw)
    t0 = ups["api"]["targets"][0]
    assert t0["healthy"] is False and t0["health_check"]["last_status"] == 500
    failures = t0["health_check"]["consecutive_failures"]
    # An unrelated reload keeps the health state (no window where the bad target is back).
    cfg["routes"].append(route("other", path="/other/"))
    gw.write_config(cfg)
    await gw.reload()
    await get_many(gw.url + "/x", 10)
    assert a.hits == before
    ups = await admin_upstreams(gw)
    assert ups["api"]["targets"][0]["health_check"]["consecutive_failures"] >= failures
    health["ok"] = True
    await asyncio.sleep(0.5)
    await get_many(gw.url + "/x", 10)
    assert a.hits > before
    assert (
        await gw.metric("gatewayd_upstream_target_up", target=upstream_url(s1), upstream="api") == 1
    )


async def test_503_with_retry_after_when_no_target_is_left(gateway, backend, config):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=500 if request.path == "/healthz" else 200)

    a = Counting(handler)
    s1 = await backend(a.app)
    hc = {"interval": "100ms", "unhealthy_after": 1}
    gw = await gateway(
        config(upstreams={"api": {"targets": [upstream_url(s1)], "health": hc}}, routes=[route()])
    )
    await asyncio.sleep(0.4)
    results = await get_many(gw.url + "/x", 3)
    assert [s for s, _ in results] == [503] * 3
    assert results[0][1]["Retry-After"]
    assert a.hits == 0


async def test_passive_ejection(gateway, backend, config):
    bad = Counting(lambda r: asyncio.sleep(0, web.Response(status=502)))
    good = Counting()
    s1, s2 = await backend(bad.app), await backend(good.app)
    up = {
        "targets": [upstream_url(s1), upstream_url(s2)],
        "passive": {"failures": 2, "eject_for": "1m"},
    }
    gw = await gateway(config(upstreams={"api": up}, routes=[route()]))
    await get_many(gw.url + "/x", 20)
    assert bad.hits == 2 and good.hits == 18


async def test_target_killed_under_load_costs_under_a_tenth_of_a_percent(gateway, backend, config):
    async def slowish(request: web.Request) -> web.Response:
        await asyncio.sleep(0.002)
        return web.Response(text="ok")

    a, b = Counting(slowish), Counting(slowish)
    s1, s2 = await backend(a.app), await backend(b.app)
    up = {
        "targets": [upstream_url(s1), upstream_url(s2)],
        # The probe's timeout is longer than a pause of this test process (which serves both
        # backends): late in a full run a 200 ms timeout marked both targets unhealthy before the
        # kill (503s). A killed target refuses connections at once: no timeout is involved.
        "health": {"interval": "200ms", "timeout": "1s", "unhealthy_after": 1},
        "retries": {"attempts": 2, "backoff": "5ms", "budget": "20%"},
        "passive": {"failures": 3, "eject_for": "10s"},
    }
    gw = await gateway(config(upstreams={"api": up}, routes=[route()]))
    total = 3000
    statuses: list[int] = []
    async with aiohttp.ClientSession() as s:
        sem = asyncio.Semaphore(20)

        async def one(i: int) -> None:
            async with sem:
                if i == total // 3:
                    await s1.close()  # the target dies mid-run, in-flight requests included
                try:
                    async with s.get(gw.url + f"/x{i}") as r:
                        await r.read()
                        statuses.append(r.status)
                except aiohttp.ClientError:
                    statuses.append(0)

        await asyncio.gather(*(one(i) for i in range(total)))
    failed = sum(1 for st in statuses if st != 200)
    assert failed <= total // 1000, f"{failed} failed of {total}"
    assert a.hits > 0 and b.hits > total // 2


# -- breakers on every upstream kind (issue 10, defect 2) and their admin route -------------------


async def breakers(gw, headers=AUTH, **query: str) -> list[dict]:
    url = gw.admin_url + "/_admin/plugins/circuit_breaker/breakers"
    async with aiohttp.ClientSession() as s, s.get(url, params=query, headers=headers) as r:
        assert r.status == 200, await r.text()
        return list((await r.json())["breakers"])


async def test_breakers_admin_route_lists_and_filters(gateway, backend, config):
    bad = Counting(lambda r: asyncio.sleep(0, web.Response(status=500)))
    good = Counting()
    s1, s2 = await backend(bad.app), await backend(good.app)
    cb = {"circuit_breaker": {"consecutive_failures": 2, "open_for": "1m"}}
    gw = await gateway(
        with_admin(
            config(
                upstreams={"api": {"targets": [upstream_url(s1), upstream_url(s2)]}},
                routes=[route(plugins=[cb])],
            )
        )
    )
    await get_many(gw.url + "/x", 10)
    listed = await breakers(gw, headers=VIEWER)  # reading: any admin token
    assert [(b["route"], b["upstream"], b["target"], b["state"]) for b in listed] == sorted(
        [
            ("api", "api", upstream_url(s1), "open"),
            ("api", "api", upstream_url(s2), "closed"),
        ],
        key=lambda b: b[2],
    )
    (opened,) = await breakers(gw, state="open")
    assert opened["target"] == upstream_url(s1) and 0 < opened["retry_after"] <= 60
    assert await breakers(gw, upstream="other") == []


PICK_PLUGIN = textwrap.dedent(
    """
    from gatewayd.chain import Plugin


    class PickUpstreamPlugin(Plugin):
        name = "pick_upstream"
        priority = 300  # before the breaker (200): it sees the choice

        def on_request(self, ctx):
            chosen = ctx.request.headers.get("X-Upstream")
            if chosen:
                ctx.use_upstream(chosen)
            return None
    """
)


def pick_plugin_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    dist = site / "gatewayd_pick_test-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (site / "gatewayd_pick_test.py").write_text(PICK_PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gatewayd-pick-test\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[gatewayd.plugins]\npick_upstream = gatewayd_pick_test:PickUpstreamPlugin\n"
    )
    return {"PYTHONPATH": str(site)}


async def test_breaker_keys_on_the_upstream_a_plugin_chose(gateway, backend, config, tmp_path):
    good = Counting()
    bad = Counting(lambda r: asyncio.sleep(0, web.Response(status=502)))
    s_good, s_bad = await backend(good.app), await backend(bad.app)
    cb = {"circuit_breaker": {"consecutive_failures": 2, "open_for": "1m"}}
    cfg = with_admin(
        config(
            upstreams={
                "main": {"targets": [upstream_url(s_good)]},
                "other": {"targets": [upstream_url(s_bad)]},
            },
            routes=[route(upstream="main", plugins=[{"pick_upstream": {}}, cb])],
        )
    )
    gw = await gateway(cfg, env=pick_plugin_env(tmp_path))
    chosen = await get_many(gw.url + "/x", 4, headers={"X-Upstream": "other"})
    assert [s for s, _ in chosen] == [502, 502, 503, 503]
    assert bad.hits == 2
    assert [s for s, _ in await get_many(gw.url + "/x", 3)] == [200] * 3  # main is untouched
    (b,) = await breakers(gw, state="open")
    assert (b["upstream"], b["target"]) == ("other", upstream_url(s_bad))
    target = upstream_url(s_bad)
    assert await gw.metric("gatewayd_breaker_state", target=target, upstream="other") == 2


class Peer:
    """``gatewayd peer`` in a subprocess."""

    def __init__(self, gw, lease: str, key: str, target: str, name: str, log: Path) -> None:
        relay = gw.url.replace("http://", "ws://") + "/_relay/connect"
        args = ["--gateway", relay, "--lease", lease, "--key", key, "--target", target]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gatewayd", "peer", *args, "--name", name],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ},
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def lease_peers(gw, lease: str) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.admin_url + "/_admin/relay/stats", headers=AUTH) as r,
    ):
        stats = await r.json()
    return len(stats["leases"].get(lease, {}).get("connections", []))


async def wait_peers(gw, lease: str, n: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while await lease_peers(gw, lease) != n:
        assert time.monotonic() < deadline, f"lease {lease} never had {n} connection(s)"
        await asyncio.sleep(0.05)


async def test_breaker_on_a_relay_by_path_route_survives_a_reconnect(
    gateway, backend, config, tmp_path
):
    failing = Counting(lambda r: asyncio.sleep(0, web.Response(status=500)))
    srv = await backend(failing.app)
    cb = {"circuit_breaker": {"consecutive_failures": 2, "open_for": "1m"}}
    cfg = with_admin(
        config(
            routes=[
                {"name": "peers", "match": {"path": "/peer/"}, "relay": "by_path", "plugins": [cb]}
            ]
        )
    )
    cfg["relay"] = {"heartbeat": {"interval": "200ms", "timeout": "1s"}, "connect_rate": "100/s"}
    gw = await gateway(cfg)
    spec = {"tenant": "acme", "scopes": ["relay:svc"], "key_id": "peer-key"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.admin_url + "/_admin/keys", json=spec, headers=AUTH) as r,
    ):
        assert r.status == 201, await r.text()
        key = (await r.json())["key"]
    peers = []
    try:
        peers.append(Peer(gw, "svc", key, upstream_url(srv), "p1", tmp_path / "peer.log"))
        await wait_peers(gw, "svc", 1)
        statuses = [s for s, _ in await get_many(gw.url + "/peer/svc/x", 5)]
        assert statuses == [500, 500, 503, 503, 503]
        assert failing.hits == 2  # open: the peer is not asked any more
        (b,) = await breakers(gw)
        assert (b["route"], b["upstream"], b["target"], b["state"]) == (
            "peers",
            "relay:svc",
            "peer-key/p1",  # the peer's stable identity: key id and name
            "open",
        )
        # The peer reconnects (a new connection, the same identity): still open.
        peers[0].stop()
        await wait_peers(gw, "svc", 0)
        peers.append(Peer(gw, "svc", key, upstream_url(srv), "p1", tmp_path / "peer.log"))
        await wait_peers(gw, "svc", 1)
        assert [s for s, _ in await get_many(gw.url + "/peer/svc/x", 3)] == [503] * 3
        assert failing.hits == 2
        (b,) = await breakers(gw)
        assert b["state"] == "open" and b["target"] == "peer-key/p1"
    finally:
        for p in peers:
            p.stop()


async def test_breaker_on_a_plugin_upstream_kind(gateway, config):
    """``kind: unix`` from the gatewayd-example distribution: breakers key on its target ids
    (the socket paths) as on any kind's."""
    sock_dir = Path(tempfile.mkdtemp(prefix="gwr-", dir="/tmp"))
    bad, good = Counting(lambda r: asyncio.sleep(0, web.Response(status=500))), Counting()
    runners = []
    try:
        paths = []
        for name, app in (("bad", bad.app), ("good", good.app)):
            runner = web.AppRunner(app)
            await runner.setup()
            paths.append(str(sock_dir / f"{name}.sock"))
            await web.UnixSite(runner, paths[-1]).start()
            runners.append(runner)
        cb = {"circuit_breaker": {"consecutive_failures": 2, "open_for": "1m"}}
        gw = await gateway(
            with_admin(
                config(
                    upstreams={"app": {"kind": "unix", "targets": paths}},
                    routes=[route(upstream="app", plugins=[cb])],
                )
            )
        )
        statuses = [s for s, _ in await get_many(gw.url + "/x", 20)]
        assert statuses.count(500) == 2 and statuses.count(200) == 18
        assert bad.hits == 2 and good.hits == 18
        (b,) = await breakers(gw, state="open")
        assert (b["upstream"], b["target"]) == ("app", paths[0])
        targets = {t["id"]: t for t in (await admin_upstreams(gw))["app"]["targets"]}
        assert targets[paths[0]]["available"] is False
        assert targets[paths[0]]["plugins"]["circuit_breaker"][0]["state"] == "open"
        assert targets[paths[1]]["available"] is True
    finally:
        for runner in runners:
            await runner.cleanup()
        shutil.rmtree(sock_dir, ignore_errors=True)
