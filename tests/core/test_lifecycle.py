"""Reloads, draining, sd_notify, plugins installed at run time, TLS certificate reloads."""

from __future__ import annotations

import asyncio
import copy
import signal
import socket
import ssl
import subprocess
import sys
import textwrap

import aiohttp
import pytest
from aiohttp import web
from support import rss_bytes, upstream_url


def named_app(name: str, delay: float = 0.0) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=name)

    async def slow_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(10):
            await resp.write(f"{name}-{i};".encode())
            await asyncio.sleep(delay)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/slow", slow_stream)
    app.router.add_get("/{tail:.*}", hello)
    return app


def two_upstreams(config, a, b) -> dict:
    return config(
        upstreams={"a": {"targets": [upstream_url(a)]}, "b": {"targets": [upstream_url(b)]}},
        routes=[{"name": "main", "match": {"path": "/"}, "upstream": "a"}],
    )


async def get_text(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.text()


async def test_streaming_response_spans_a_reload_while_new_requests_see_new_routes(
    gateway, backend, config
):
    a, b = await backend(named_app("A", 0.2)), await backend(named_app("B", 0.2))
    cfg = two_upstreams(config, a, b)
    gw = await gateway(cfg)
    async with aiohttp.ClientSession() as s:
        slow = await s.get(gw.url + "/slow")
        first = await slow.content.readuntil(b";")
        assert first == b"A-0;"
        new = copy.deepcopy(cfg)
        new["routes"][0]["upstream"] = "b"
        gw.write_config(new)
        await gw.reload()
        assert await get_text(gw.url + "/x") == "B"  # new requests: new generation
        rest = await slow.read()  # the old one finishes intact on the old generation
    assert first + rest == b"".join(f"A-{i};".encode() for i in range(10))
    assert await gw.generation() == 2


async def test_broken_config_is_refused_and_old_routes_keep_serving(gateway, backend, config):
    a, b = await backend(named_app("A")), await backend(named_app("B"))
    gw = await gateway(two_upstreams(config, a, b))
    gw.write_config("routes: [{name: main, upstream: nope}]\n")
    await gw.reload(expect_success=False)
    assert await gw.metric("gatewayd_reloads_total", result="failure") == 1
    assert await get_text(gw.url + "/x") == "A"
    assert await gw.generation() == 1
    assert "reload refused" in gw.logs() and "unknown upstream 'nope'" in gw.logs()
    gw.write_config("listen: [ {{{ not yaml")
    await gw.reload(expect_success=False)
    assert await get_text(gw.url + "/x") == "A"


async def test_sigterm_lets_a_slow_request_finish_then_exits_zero(gateway, backend, config):
    a, b = await backend(named_app("A", 0.1)), await backend(named_app("B"))
    gw = await gateway(two_upstreams(config, a, b))
    async with aiohttp.ClientSession() as s:
        slow = await s.get(gw.url + "/slow")
        await slow.content.readuntil(b";")
        gw.signal(signal.SIGTERM)
        body = await slow.read()
    assert body.endswith(b"A-9;")
    assert await gw.wait_exit(10) == 0
    # New connections are refused once draining started.
    with pytest.raises(aiohttp.ClientConnectionError):
        await get_text(gw.url + "/x")


@pytest.mark.slow
async def test_100_reloads_keep_memory_flat(gateway, backend, config):
    a, b = await backend(named_app("A")), await backend(named_app("B"))
    cfg = two_upstreams(config, a, b)
    cfg["routes"][0]["plugins"] = [{"headers": {"response": {"set": {"X-Gen": "0"}}}}]
    gw = await gateway(cfg)
    for i in range(5):  # warm up: first reloads import modules and fill caches
        cfg["routes"][0]["plugins"][0]["headers"]["response"]["set"]["X-Gen"] = str(i)
        gw.write_config(cfg)
        await gw.reload()
        await get_text(gw.url + "/x")
    start = rss_bytes(gw.pid)
    for i in range(100):
        cfg["routes"][0]["upstream"] = "ab"[i % 2]
        gw.write_config(cfg)
        await gw.reload()
        assert await get_text(gw.url + "/x") == "AB"[i % 2]
    await asyncio.sleep(0.5)
    growth = rss_bytes(gw.pid) - start
    print(f"RSS after 100 reloads: {growth / 2**20:+.1f} MiB")
    assert abs(growth) < 10 * 2**20


async def test_sd_notify_messages_on_a_real_socket(gateway, backend, config, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()

    async def recv() -> str:
        return (await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)).decode()

    try:
        a, b = await backend(named_app("A")), await backend(named_app("B"))
        gw = await gateway(two_upstreams(config, a, b), env={"NOTIFY_SOCKET": path})
        messages = [await recv()]
        while "READY=1" not in messages[-1]:
            messages.append(await recv())
        gw.signal(signal.SIGHUP)
        reloading = await recv()
        while "RELOADING=1" not in reloading:
            assert "STATUS=" in reloading, reloading  # nothing but status lines before it
            reloading = await recv()
        usec = int(reloading.split("MONOTONIC_USEC=")[1].split()[0])
        assert usec > 0
        seen = [await recv()]
        while "READY=1" not in seen[-1]:
            seen.append(await recv())
        gw.signal(signal.SIGTERM)
        while "STOPPING=1" not in await recv():
            pass
        assert await gw.wait_exit() == 0
    finally:
        sock.close()


PLUGIN_SRC = """
from gatewayd.chain import Plugin, PluginConfig


class StampConfig(PluginConfig):
    value: str = "stamped"


class StampPlugin(Plugin):
    name = "late_stamp"
    Config = StampConfig

    async def on_response(self, ctx, response):
        response.headers["X-Late-Stamp"] = self.config.value
"""


@pytest.mark.slow
async def test_plugin_installed_after_start_is_usable_after_sighup(
    gateway, backend, config, tmp_path
):
    site = tmp_path / "site"
    site.mkdir()
    a, b = await backend(named_app("A")), await backend(named_app("B"))
    cfg = two_upstreams(config, a, b)
    gw = await gateway(cfg, env={"PYTHONPATH": str(site)})
    dist = tmp_path / "gatewayd-late"
    (dist / "gatewayd_late").mkdir(parents=True)
    (dist / "gatewayd_late" / "__init__.py").write_text(textwrap.dedent(PLUGIN_SRC))
    (dist / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"
            [project]
            name = "gatewayd-late"
            version = "1.0"
            [project.entry-points."gatewayd.plugins"]
            late_stamp = "gatewayd_late:StampPlugin"
            """
        )
    )
    cfg["routes"][0]["plugins"] = [{"late_stamp": {"value": "hello"}}]
    gw.write_config(cfg)
    await gw.reload(expect_success=False)  # not installed yet: refused, named
    assert "unknown plugin 'late_stamp'" in gw.logs()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(dist),
        ],
        check=True,
        capture_output=True,
    )
    await gw.reload()
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/x") as r:
        assert r.headers["X-Late-Stamp"] == "hello"


async def test_plugin_state_survives_reload_only_when_config_unchanged(gateway, backend, config):
    a, b = await backend(named_app("A")), await backend(named_app("B"))
    cfg = two_upstreams(config, a, b)
    cfg["routes"][0]["plugins"] = [{"request_counter": {}}]
    gw = await gateway(cfg)

    async def count() -> int:
        async with aiohttp.ClientSession() as s, s.get(gw.url + "/x") as r:
            return int(r.headers["X-Request-Count"])

    assert [await count() for _ in range(3)] == [1, 2, 3]
    cfg["routes"][0]["upstream"] = "b"  # the route changes, the plugin's config does not
    gw.write_config(cfg)
    await gw.reload()
    assert await count() == 4
    cfg["routes"][0]["plugins"] = [{"request_counter": {"limit": 100}}]
    gw.write_config(cfg)
    await gw.reload()
    assert await count() == 1


def make_cert(tmp_path, name: str):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", common_name=name)
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / f"{name}.pem"))
    return ca, tmp_path / f"{name}.pem"


async def test_tls_listener_min_version_and_certificate_reload(gateway, backend, config, tmp_path):
    ca1, pem1 = make_cert(tmp_path, "first")
    ca2, pem2 = make_cert(tmp_path, "second")
    live = tmp_path / "live.pem"
    live.write_bytes(pem1.read_bytes())
    a, b = await backend(named_app("A")), await backend(named_app("B"))
    cfg = two_upstreams(config, a, b)
    cfg["listen"][0]["tls"] = {"cert": str(live), "key": str(live), "min_version": "1.3"}
    gw = await gateway(cfg)

    def client_ctx(ca, max_version=None) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        if max_version:
            ctx.maximum_version = max_version
        return ctx

    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/x", ssl=client_ctx(ca1)) as r:
            assert await r.text() == "A"
        with pytest.raises(aiohttp.ClientError):  # TLS 1.2 refused by min_version 1.3
            await s.get(gw.url + "/x", ssl=client_ctx(ca1, ssl.TLSVersion.TLSv1_2))
    live.write_bytes(pem2.read_bytes())
    await gw.reload()
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/x", ssl=client_ctx(ca2)) as r:
            assert await r.text() == "A"
        with pytest.raises(aiohttp.ClientError):  # the old certificate is no longer served
            await s.get(gw.url + "/x", ssl=client_ctx(ca1))
