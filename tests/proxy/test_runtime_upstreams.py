"""Upstreams added at run time (``services.upstreams``), driven through a private plugin
distribution the way a real one (the LLM gateway) drives them: its admin routes (under its
``admin_path``) put and remove upstreams, its ``on_request`` sends to one by name."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from multidict import CIMultiDict
from support import upstream_url

from gatewayd.chain import Request, RequestContext, RouteInfo, TimeoutsConfig, UpstreamConfigInvalid
from gatewayd.chain.registry import inspect_kind
from gatewayd.testing import HarnessServices

TOKEN = "runtime-admin-token-0123456789"
HASH = bcrypt.hashpw(TOKEN.encode(), bcrypt.gensalt(4)).decode()
AUTH = {"Authorization": f"Bearer {TOKEN}"}

PLUGIN = textwrap.dedent(
    '''
    import aiohttp

    from gatewayd.chain import (
        AdminRoute, Plugin, PluginError, Response, Target, UpstreamConfig,
        UpstreamConfigInvalid, UpstreamError,
    )

    class RuntimeDemo(Plugin):
        name = "runtime_demo"
        admin_path = "/_admin/demo"

        async def on_request(self, ctx):
            name = ctx.request.headers.get("X-Use")
            if name:
                ctx.use_upstream(name)

        @classmethod
        def admin_routes(cls):
            return [
                AdminRoute("PUT", "/upstreams/{name}", put, role="operator"),
                AdminRoute("DELETE", "/upstreams/{name}", remove, role="operator"),
                AdminRoute("GET", "/upstreams", listing),
            ]

    async def put(call, instances):
        upstreams = instances[0].context.services.upstreams
        try:
            await upstreams.put(call.params["name"], call.body, owner="demo")
        except UpstreamConfigInvalid as exc:
            raise PluginError(400, "invalid", str(exc))
        except ValueError as exc:
            raise PluginError(409, "conflict", str(exc))
        return Response.json({"put": call.params["name"]})

    async def remove(call, instances):
        upstreams = instances[0].context.services.upstreams
        if not await upstreams.remove(call.params["name"], owner="demo"):
            raise PluginError(404, "not_found", "no such upstream")
        return Response.json({"removed": call.params["name"]})

    async def listing(call, instances):
        upstreams = instances[0].context.services.upstreams
        return Response.json(
            {"runtime": upstreams.runtime(), "configured": sorted(upstreams.configured())}
        )

    class SessionProxyConfig(UpstreamConfig):
        url: str

    class SessionProxy:
        """A kind on its own aiohttp session whose close() cuts the streams it still serves."""

        kind = "session_proxy"
        Config = SessionProxyConfig

        def __init__(self, name, config, context):
            self.name, self.config = name, config
            self._targets = [Target(config.url)]
            self.session = None
            self.open = set()

        def targets(self):
            return self._targets

        async def start(self):
            self.session = aiohttp.ClientSession()

        async def close(self):
            for resp in list(self.open):
                resp.close()
            await self.session.close()

        async def send(self, target, attempt, ctx, path, headers, timeouts):
            resp = await self.session.get(self.config.url + path)
            self.open.add(resp)

            async def body():
                try:
                    async for chunk in resp.content.iter_any():
                        yield chunk
                finally:
                    self.open.discard(resp)
                    resp.release()

            return Response(resp.status, {"Content-Type": "text/plain"}, body())

        async def upgrade(self, *args):
            raise UpstreamError(501, "websocket_refused", "no WebSockets")

    def install(sub):
        p = sub.add_parser("demo", help="a distribution's own command")
        p.add_argument("--say", default="hello")
        p.set_defaults(func=lambda args: print(f"demo says {args.say}") or 0)
    '''
)


def demo_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    dist = site / "gatewayd_runtime_demo-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (site / "gatewayd_runtime_demo.py").write_text(PLUGIN)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gatewayd-runtime-demo\nVersion: 0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[gatewayd.plugins]\nruntime_demo = gatewayd_runtime_demo:RuntimeDemo\n"
        "[gatewayd.commands]\ndemo = gatewayd_runtime_demo:install\n"
        "[gatewayd.upstreams]\nsession_proxy = gatewayd_runtime_demo:SessionProxy\n"
    )
    return {"PYTHONPATH": str(site)}


def named_app(name: str, gate: asyncio.Event | None = None) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"X-Backend": name})
        await resp.prepare(request)
        await resp.write(f"{name} ".encode())
        if gate is not None and request.query.get("slow"):
            await gate.wait()
        await resp.write(b"done")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def demo_config(config: Any, srv: Any) -> dict[str, Any]:
    return config(
        admin={"listen": config()["admin"]["listen"], "tokens": [{"id": "ops", "hash": HASH}]},
        upstreams={"yaml": {"targets": [upstream_url(srv)]}},
        routes=[
            {
                "name": "r",
                "match": {"path": "/"},
                "upstream": "yaml",
                "plugins": [{"runtime_demo": {}}],
            }
        ],
    )


async def test_a_plugin_puts_an_upstream_and_requests_reach_it_at_once(
    gateway, backend, config, tmp_path
):
    yaml_srv = await backend(named_app("yaml"))
    one = await backend(named_app("one"))
    two = await backend(named_app("two"))
    gw = await gateway(demo_config(config, yaml_srv), env=demo_env(tmp_path))
    admin = gw.admin_url + "/_admin/demo/upstreams"
    async with aiohttp.ClientSession() as s:
        async with s.put(
            admin + "/extra", json={"targets": [upstream_url(one)]}, headers=AUTH
        ) as r:
            assert r.status == 200, await r.text()
        async with s.get(gw.url + "/x", headers={"X-Use": "extra"}) as r:
            assert (r.status, await r.text()) == (200, "one done")
        async with s.get(gw.url + "/x") as r:
            assert await r.text() == "yaml done"  # the route's own upstream is untouched
        # Listed by the core's admin view, as run-time and with its owner.
        async with s.get(gw.admin_url + "/_admin/upstreams", headers=AUTH) as r:
            listed = {u["name"]: u for u in (await r.json())["upstreams"]}
        assert listed["extra"]["source"] == "runtime" and listed["extra"]["owner"] == "demo"
        assert "source" not in listed["yaml"]
        # A reload keeps it (process-wide), and it is replaced at once by a new put.
        await gw.reload()
        async with s.get(gw.url + "/x", headers={"X-Use": "extra"}) as r:
            assert await r.text() == "one done"
        async with s.put(
            admin + "/extra", json={"targets": [upstream_url(two)]}, headers=AUTH
        ) as r:
            assert r.status == 200
        async with s.get(gw.url + "/x", headers={"X-Use": "extra"}) as r:
            assert await r.text() == "two done"
        async with s.get(admin, headers=AUTH) as r:
            assert await r.json() == {"runtime": {"extra": "demo"}, "configured": ["yaml"]}
        # The YAML's name cannot be taken; a bad config names its field.
        async with s.put(admin + "/yaml", json={"targets": [upstream_url(one)]}, headers=AUTH) as r:
            assert r.status == 409 and "config file" in (await r.json())["error"]["message"]
        bad = {"targets": [upstream_url(one)], "timeouts": {"connect": "soon"}}
        async with s.put(admin + "/bad", json=bad, headers=AUTH) as r:
            assert r.status == 400
            assert "timeouts.connect" in (await r.json())["error"]["message"]
        async with s.put(admin + "/bad", json={"kind": "nope"}, headers=AUTH) as r:
            assert (
                r.status == 400 and "unknown upstream kind" in (await r.json())["error"]["message"]
            )
        # Removed: the name answers like any unknown upstream again.
        async with s.delete(admin + "/extra", headers=AUTH) as r:
            assert r.status == 200
        async with s.get(gw.url + "/x", headers={"X-Use": "extra"}) as r:
            assert r.status == 500 and (await r.json())["error"]["code"] == "unknown_upstream"
        async with s.delete(admin + "/extra", headers=AUTH) as r:
            assert r.status == 404


async def test_a_replaced_upstream_finishes_its_requests_in_flight(
    gateway, backend, config, tmp_path
):
    gate = asyncio.Event()
    yaml_srv = await backend(named_app("yaml"))
    one = await backend(named_app("one", gate))
    two = await backend(named_app("two"))
    gw = await gateway(demo_config(config, yaml_srv), env=demo_env(tmp_path))
    admin = gw.admin_url + "/_admin/demo/upstreams/extra"
    first = {"kind": "session_proxy", "url": upstream_url(one)}
    async with aiohttp.ClientSession() as s:
        async with s.put(admin, json=first, headers=AUTH) as r:
            assert r.status == 200, await r.text()
        async with s.get(gw.url + "/x?slow=1", headers={"X-Use": "extra"}) as slow:
            assert await slow.content.readexactly(4) == b"one "  # in flight on "one"
            async with s.put(admin, json={"targets": [upstream_url(two)]}, headers=AUTH) as r:
                assert r.status == 200
            async with s.get(gw.url + "/x", headers={"X-Use": "extra"}) as r:
                assert await r.text() == "two done"  # new requests: the new one at once
            await asyncio.sleep(0.6)  # past the drain poll: the old one must still be open
            gate.set()  # (a kind closed at once would have cut this stream)
            assert await slow.content.read() == b"done"  # and its stream ends whole


async def test_a_distribution_adds_its_own_command(tmp_path):
    env = {"PYTHONPATH": demo_env(tmp_path)["PYTHONPATH"], "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "gatewayd", "demo", "--say", "hi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (run.returncode, run.stdout.strip()) == (0, "demo says hi"), run.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "gatewayd", "--help"], capture_output=True, text=True, env=env
    )
    assert "demo" in listed.stdout


async def test_a_broken_command_entry_point_leaves_the_rest_working(tmp_path):
    env = demo_env(tmp_path)
    site = Path(env["PYTHONPATH"])
    (site / "gatewayd_runtime_demo-0.dist-info" / "entry_points.txt").write_text(
        "[gatewayd.commands]\nbroken = gatewayd_no_such_module:install\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "gatewayd", "version"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert run.returncode == 0 and run.stdout.startswith("gatewayd ")
    assert "command 'broken'" in run.stderr and "Traceback" not in run.stderr


async def test_the_harness_has_the_same_directory(backend):
    srv = await backend(named_app("one"))
    services = HarnessServices()
    try:
        await services.upstreams.put("u", {"targets": [upstream_url(srv)]}, owner="t")
        assert services.upstreams.runtime() == {"u": "t"}
        with pytest.raises(ValueError, match="belongs to 't'"):
            await services.upstreams.put("u", {"targets": [upstream_url(srv)]}, owner="other")
        with pytest.raises(UpstreamConfigInvalid) as caught:
            await services.upstreams.put("v", {"targets": ["not a url"]}, owner="t")
        assert caught.value.problems and caught.value.problems[0][0].startswith("targets")
        first = services.upstreams.serving["u"]
        await services.upstreams.put("u", {"targets": [upstream_url(srv)]}, owner="t")
        assert services.upstreams.serving["u"] is first  # the same config: not rebuilt
        assert not await services.upstreams.remove("u", owner="other")
        assert await services.upstreams.remove("u", owner="t")
        assert services.upstreams.runtime() == {}
    finally:
        await services.close()


async def test_a_replaced_kind_is_closed_only_once_its_streams_are_done(backend, tmp_path):
    """The same with a kind whose close() cuts what it still serves: the old upstream stays
    open until its stream is done."""
    gate = asyncio.Event()
    srv = await backend(named_app("one", gate))
    env = demo_env(tmp_path)
    sys.path.insert(0, env["PYTHONPATH"])
    try:
        import gatewayd_runtime_demo as demo  # type: ignore[import-not-found]
    finally:
        sys.path.remove(env["PYTHONPATH"])
    services = HarnessServices()
    services.upstreams.registry.kinds["session_proxy"] = inspect_kind(
        "session_proxy", demo.SessionProxy
    )
    try:
        first = {"kind": "session_proxy", "url": upstream_url(srv)}
        await services.upstreams.put("x", first, owner="t")
        old = services.upstreams.serving["x"]
        request = Request(
            "GET", "/a", "slow=1", CIMultiDict(), "h", "http", "127.0.0.1", None, None
        )
        ctx = RequestContext(request, "rid", RouteInfo("r", "x", ""))
        reply = await old.send(ctx, "/a?slow=1", CIMultiDict(), TimeoutsConfig())
        body = reply.body.__aiter__()
        assert await body.__anext__() == b"one "
        await services.upstreams.put("x", first | {"url": upstream_url(srv) + "/v2"}, owner="t")
        assert services.upstreams.serving["x"] is not old
        await asyncio.sleep(0.6)  # past the drain poll
        gate.set()
        assert await body.__anext__() == b"done"
        with pytest.raises(StopAsyncIteration):
            await body.__anext__()
        for _ in range(40):  # and once its stream is done, the old one is closed
            if old.impl.session.closed:
                break
            await asyncio.sleep(0.1)
        assert old.impl.session.closed
    finally:
        await services.close()
