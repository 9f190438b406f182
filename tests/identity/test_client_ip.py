"""The real client IP through the real daemon (issue 10, defect 9): behind a listener's
``trusted_proxies`` it comes from X-Forwarded-For, and ip_filter, ``rate_limit key: ip``, the
X-Forwarded-For sent upstream, ``hash`` balancing and the access log all use that one value;
on a listener that trusts nobody the header is ignored; hostile headers get a defined answer."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from multidict import CIMultiDict
from support import free_port

from .identity_support import echo_app, route, upstream_url

CLIENT = "203.0.113.9"


def two_listeners(cfg: dict[str, Any], **trust: Any) -> tuple[str, str]:
    """listen[0] trusts 127.0.0.1 (or ``trust``), listen[1] trusts nobody; their URLs."""
    trusted = {
        "address": cfg["listen"][0]["address"],
        **(trust or {"trusted_proxies": ["127.0.0.1/32"]}),
    }
    plain = {"address": f"127.0.0.1:{free_port()}"}
    cfg["listen"] = [trusted, plain]
    return f"http://{trusted['address']}", f"http://{plain['address']}"


def named_app(name: str) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"target": name, "xff": request.headers.get("X-Forwarded-For")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def start(gateway, backend, config, **trust: Any):
    echo = await backend(echo_app())
    one, two = await backend(named_app("one")), await backend(named_app("two"))
    cfg = config(
        upstreams={
            "api": {"targets": [upstream_url(echo)]},
            "sticky": {"targets": [upstream_url(one), upstream_url(two)], "balance": "hash"},
        },
        routes=[
            route("echo", "api", "/echo/", []),
            route("allow", "api", "/allow/", [{"ip_filter": {"allow": ["203.0.113.0/24"]}}]),
            route(
                "rl", "api", "/rl/", [{"rate_limit": {"rate": "1/min", "burst": 2, "key": "ip"}}]
            ),
            route("sticky", "sticky", "/sticky/", []),
        ],
    )
    trusted, plain = two_listeners(cfg, **trust)
    gw = await gateway(cfg)
    return gw, trusted, plain


async def get(
    s: aiohttp.ClientSession, url: str, xff: str | list[str] | None = None, rid: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers: CIMultiDict[str] = CIMultiDict()
    for value in [xff] if isinstance(xff, str) else xff or []:
        headers.add("X-Forwarded-For", value)
    if rid:
        headers["X-Request-ID"] = rid
    async with s.get(url, headers=headers) as r:
        body = await r.json() if r.content_type == "application/json" else {}
        return r.status, body


async def access_entry(gw, rid: str, timeout: float = 5.0) -> dict[str, Any]:
    """The access-log line of request ``rid`` (the log is flushed in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in gw.logs().splitlines():
            if f'"request_id":"{rid}"' in line and '"message":"access"' in line:
                return dict(json.loads(line))
        if time.monotonic() > deadline:
            raise AssertionError(f"no access log line for {rid}:\n{gw.logs()[-3000:]}")
        await asyncio.sleep(0.05)


async def test_trusted_listener_uses_the_forwarded_client_everywhere(gateway, backend, config):
    gw, trusted, _ = await start(gateway, backend, config)
    async with aiohttp.ClientSession() as s:
        # ip_filter: the forwarded client is allowed; a spoofed leftmost hop changes nothing.
        assert (await get(s, trusted + "/allow/x", f"198.51.100.7, {CLIENT}"))[0] == 200
        assert (await get(s, trusted + "/allow/x", f"{CLIENT}, 198.51.100.7"))[0] == 403
        assert (await get(s, trusted + "/allow/x"))[0] == 403  # the proxy itself is not allowed
        # X-Forwarded-For upstream: the client, the trusted proxies, then the peer.
        status, seen = await get(s, trusted + "/echo/x", f"10.9.9.9, {CLIENT}, 127.0.0.1", "xff-1")
        assert status == 200
        assert seen["headers"]["X-Forwarded-For"] == f"{CLIENT}, 127.0.0.1, 127.0.0.1"
        # The access log records the forwarded client.
        assert (await access_entry(gw, "xff-1"))["client"] == CLIENT
        # rate_limit key: ip keys by the forwarded client: one budget per client.
        a = [(await get(s, trusted + "/rl/x", "198.51.100.1"))[0] for _ in range(3)]
        b = [(await get(s, trusted + "/rl/x", "198.51.100.2"))[0] for _ in range(2)]
        assert a == [200, 200, 429]
        assert b == [200, 200]
        # hash balancing: by the forwarded client, so clients spread and each one sticks.
        picks = {}
        for i in range(24):
            ip = f"198.51.100.{i + 10}"
            first = (await get(s, trusted + "/sticky/x", ip))[1]["target"]
            again = (await get(s, trusted + "/sticky/x", ip))[1]["target"]
            assert first == again
            picks[ip] = first
        assert set(picks.values()) == {"one", "two"}


async def test_untrusted_listener_ignores_x_forwarded_for(gateway, backend, config):
    gw, _, plain = await start(gateway, backend, config)
    async with aiohttp.ClientSession() as s:
        assert (await get(s, plain + "/allow/x", CLIENT))[0] == 403
        status, seen = await get(s, plain + "/echo/x", f"{CLIENT}, 198.51.100.7", "plain-1")
        assert status == 200
        assert seen["headers"]["X-Forwarded-For"] == "127.0.0.1"  # the spoofed chain is dropped
        assert (await access_entry(gw, "plain-1"))["client"] == "127.0.0.1"
        # one budget for everyone behind the socket peer, whatever they claim
        statuses = [(await get(s, plain + "/rl/x", f"198.51.100.{i}"))[0] for i in range(3)]
        assert statuses == [200, 200, 429]
        targets = {
            (await get(s, plain + "/sticky/x", f"198.51.100.{i}"))[1]["target"] for i in range(12)
        }
        assert len(targets) == 1


HOSTILE = [
    # (X-Forwarded-For as sent, client the gateway settles on, X-Forwarded-For upstream)
    ("garbage", "127.0.0.1", "127.0.0.1"),
    (f"{CLIENT}, garbage", "127.0.0.1", "127.0.0.1"),  # nothing right of the garbage to believe
    (f"garbage, {CLIENT}", CLIENT, f"{CLIENT}, 127.0.0.1"),  # the client is right of it
    (f"  {CLIENT}  ,   ", CLIENT, f"{CLIENT}, 127.0.0.1"),  # spaces and empty entries
    ("2001:DB8::1", "2001:db8::1", "2001:db8::1, 127.0.0.1"),  # IPv6, normalised
    ("[2001:db8::2]:443", "2001:db8::2", "2001:db8::2, 127.0.0.1"),  # with a port
    (f"{CLIENT}:5555", CLIENT, f"{CLIENT}, 127.0.0.1"),
    ("::ffff:203.0.113.10", "203.0.113.10", "203.0.113.10, 127.0.0.1"),  # IPv4-mapped
    ('fe80::1%"x', "127.0.0.1", "127.0.0.1"),  # a zone id: not an address we can use
    ("unknown, 127.0.0.1", "127.0.0.1", "127.0.0.1, 127.0.0.1"),
    ([f"198.51.100.3, {CLIENT}", "127.0.0.1"], CLIENT, f"{CLIENT}, 127.0.0.1, 127.0.0.1"),
]


async def test_hostile_x_forwarded_for_gets_a_defined_answer(gateway, backend, config):
    gw, trusted, _ = await start(gateway, backend, config)
    async with aiohttp.ClientSession() as s:
        for i, (sent, client, upstream) in enumerate(HOSTILE):
            status, seen = await get(s, trusted + "/echo/x", sent, f"hostile-{i}")
            assert status == 200, sent
            assert seen["headers"]["X-Forwarded-For"] == upstream, sent
            assert (await access_entry(gw, f"hostile-{i}"))["client"] == client, sent


async def test_huge_x_forwarded_for_is_bounded(gateway, backend, config):
    gw, trusted, _ = await start(gateway, backend, config)
    cfg = gw.config
    huge = ", ".join(["127.0.0.1"] * 10_000)  # about 110 KB: over the default header limit
    async with (
        aiohttp.ClientSession() as s,
        s.get(trusted + "/echo/x", headers={"X-Forwarded-For": huge}) as r,
    ):
        assert r.status == 431  # the HTTP parser refuses it before the gateway sees it
    # With room for it, 10,000 entries cost no more than 32 (the walk stops there).
    cfg["server"]["max_header_size"] = "1MiB"
    gw.write_config(cfg)
    await gw.stop()
    await gw.start()
    async with aiohttp.ClientSession() as s:
        started = time.monotonic()
        status, seen = await get(s, trusted + "/echo/x", huge, "huge-1")
        assert status == 200
        assert time.monotonic() - started < 2.0
        assert seen["headers"]["X-Forwarded-For"] == ", ".join(["127.0.0.1"] * 33)
        assert (await access_entry(gw, "huge-1"))["client"] == "127.0.0.1"
        many = ", ".join(f"198.51.{i // 250}.{i % 250}" for i in range(10_000))
        status, seen = await get(s, trusted + "/echo/x", many, "huge-2")
        assert status == 200
        assert seen["headers"]["X-Forwarded-For"] == "198.51.39.249, 127.0.0.1"
        assert (await access_entry(gw, "huge-2"))["client"] == "198.51.39.249"


async def test_trusted_hops_counts_proxies(gateway, backend, config):
    """``trusted_hops: 2``: the peer and the proxy before it are trusted, whoever they are."""
    gw, trusted, _ = await start(gateway, backend, config, trusted_hops=2)
    async with aiohttp.ClientSession() as s:
        status, seen = await get(s, trusted + "/echo/x", f"10.0.0.1, {CLIENT}, 192.0.2.1", "hops-1")
        assert status == 200
        assert seen["headers"]["X-Forwarded-For"] == f"{CLIENT}, 192.0.2.1, 127.0.0.1"
        assert (await access_entry(gw, "hops-1"))["client"] == CLIENT
        assert (await get(s, trusted + "/allow/x", f"{CLIENT}, 192.0.2.1"))[0] == 200


def check(tmp_path, cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "listen,plugin,expected",
    [
        ({"trusted_proxies": ["10.0.0.0/33"]}, None, "listen[0].trusted_proxies"),
        ({"trusted_proxies": ["proxy.example.com"]}, None, "invalid address or CIDR"),
        ({"trusted_hops": -1}, None, "listen[0].trusted_hops"),
        ({"trusted_hops": 33}, None, "listen[0].trusted_hops"),
        ({}, {"ip_filter": {"trusted_proxies": ["127.0.0.1/32"]}}, "listen[].trusted_proxies"),
    ],
)
def test_config_errors_point_to_the_field(tmp_path, config, listen, plugin, expected):
    cfg = config(
        upstreams={"api": {"targets": ["http://127.0.0.1:9"]}},
        routes=[route("r", "api", "/", [plugin] if plugin else [])],
    )
    cfg["listen"][0].update(listen)
    result = check(tmp_path, cfg)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert expected in out, out
    assert "Traceback" not in out


async def test_a_reload_changes_a_listeners_trust_on_open_connections(gateway, backend, config):
    echo = await backend(echo_app())
    cfg = config(
        upstreams={"api": {"targets": [upstream_url(echo)]}},
        routes=[route("echo", "api", "/", [])],
    )
    gw = await gateway(cfg)
    async with aiohttp.ClientSession() as s:  # one keep-alive connection throughout
        _, seen = await get(s, gw.url + "/x", CLIENT, "before")
        assert seen["headers"]["X-Forwarded-For"] == "127.0.0.1"
        cfg["listen"][0]["trusted_proxies"] = ["127.0.0.0/8"]
        gw.write_config(cfg)
        await gw.reload()
        _, seen = await get(s, gw.url + "/x", CLIENT, "after")
        assert seen["headers"]["X-Forwarded-For"] == f"{CLIENT}, 127.0.0.1"
        assert (await access_entry(gw, "after"))["client"] == CLIENT
        cfg["listen"][0]["trusted_proxies"] = ["not-a-cidr"]
        gw.write_config(cfg)
        await gw.reload(expect_success=False)  # refused: the old trust keeps serving
        _, seen = await get(s, gw.url + "/x", CLIENT, "refused")
        assert seen["headers"]["X-Forwarded-For"] == f"{CLIENT}, 127.0.0.1"
