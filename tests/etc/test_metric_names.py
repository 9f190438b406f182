"""etc/grafana/gatewayd.json and etc/prometheus/gatewayd-rules.yml against a live daemon: every
metric a panel, a variable or a rule asks for must be exported by gatewayd (scraped after the
routes, a health-checked upstream, a failing one with retries and a breaker, a rate limit with
tenants, a relay lease with a peer, an SSE stream, a WebSocket, a TLS listener and a reload
made their series exist). And every panel's query is valid PromQL (promtool parses it)."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import trustme
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from support import free_port, upstream_url
from test_prometheus_rules import promtool

from gatewayd.config.schema import StateConfig
from gatewayd.relay.peer import Peer
from gatewayd.stores.keys import KeyStoreSettings, open_key_store

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "etc" / "grafana" / "gatewayd.json"
RULES = ROOT / "etc" / "prometheus" / "gatewayd-rules.yml"
METRIC = re.compile(r"\b((?:gatewayd|process)_[a-z0-9_]+)\b")
PROMETHEUS_MADE = {"up"}  # series Prometheus makes itself for each scrape target


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    return exprs


def rule_queries() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def names(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in METRIC.findall(e)}


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """Grafana's variables replaced by values, each query as a recording rule: promtool
    parses them all (label_values() is Grafana's, not PromQL: the variables are left out)."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    assert len(exprs) > 40
    rules = []
    for i, expr in enumerate(exprs):
        for var, value in (("$__rate_interval", "1m"), ("$instance", ".*"), ("$route", ".*")):
            expr = expr.replace(var, value)
        rules.append({"record": f"panel:query_{i}", "expr": expr.replace("$upstream", ".*")})
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    run = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_dashboard_variables_and_rows() -> None:
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"instance", "route", "upstream"} <= set(variables)
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()  # no two panels overlap on Grafana's 24-column grid
    for panel in board["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    rows = {p["title"] for p in board["panels"] if p["type"] == "row"}
    assert rows >= {
        "Overview",
        "Traffic",
        "Latency",
        "Bandwidth",
        "Upstreams",
        "Rate limits",
        "Streams",
        "Relay",
        "Config and certificates",
        "Audit log",
    }


def backend_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: hello\n\n")
        await resp.write_eof()
        return resp

    async def echo_ws(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/api/events", events)
    app.router.add_get("/ws/echo", echo_ws)
    app.router.add_route("*", "/{tail:.*}", ok)
    return app


def live_config(base: Any, tmp_path: Path, backend: str, pem: Path) -> dict[str, Any]:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    cfg: dict[str, Any] = base(
        upstreams={
            "api": {
                "targets": [backend],
                "health": {"path": "/health", "interval": "200ms", "healthy_after": 1},
            },
            "flaky": {"targets": dead, "retries": {"attempts": 1, "min_retries": 100}},
        },
        routes=[
            {
                "name": "api",
                "match": {"path": "/api/"},
                "upstream": "api",
                "plugins": [{"key_auth": {}}, {"rate_limit": {"quota": "3/day", "key": "tenant"}}],
            },
            {
                "name": "flaky",
                "match": {"path": "/flaky/"},
                "upstream": "flaky",
                "plugins": [{"circuit_breaker": {"consecutive_failures": 1, "open_for": "1m"}}],
            },
            {"name": "relay", "match": {"path": "/relay/"}, "relay": "app"},
            {"name": "ws", "match": {"path": "/ws/"}, "upstream": "api"},
        ],
    )
    cfg["listen"].append(
        {"address": f"127.0.0.1:{free_port()}", "tls": {"cert": str(pem), "key": str(pem)}}
    )
    cfg["relay"] = {"heartbeat": {"interval": "200ms", "timeout": "2s"}}
    return cfg


async def new_key(state_dir: Path, tenant: str, *scopes: str) -> str:
    store = await open_key_store(
        StateConfig(dir=state_dir), settings=KeyStoreSettings(bcrypt_rounds=4)
    )
    try:
        key, _ = await store.create(tenant, scopes=list(scopes))
    finally:
        await store.close()
    return key


async def exercise(gw: Any, state_dir: Path, ca: trustme.CA) -> None:
    acme = {"Authorization": f"Bearer {await new_key(state_dir, 'acme')}"}
    peer_key = await new_key(state_dir, "acme", "relay:app")
    relay_url = gw.url.replace("http://", "ws://") + "/_relay/connect"
    async with (
        aiohttp.ClientSession() as s,
        Peer(relay_url, "app", peer_key, upstream_url_of(gw)) as peer,
    ):
        await peer.wait_connected()
        async with s.get(gw.url + "/relay/x") as r:
            assert r.status in (200, 404), r.status  # through the tunnel and back
        async with s.get(gw.url + "/api/events", headers=acme) as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            await r.read()
        for _ in range(3):  # over the quota of 3: 429
            async with s.get(gw.url + "/api/x", headers=acme) as r:
                await r.read()
        assert r.status == 429
        for _ in range(2):  # connect errors, a retry, the breaker opens
            async with s.get(gw.url + "/flaky/x") as r:
                assert r.status in (502, 503)
        tls = ssl.create_default_context()
        ca.configure_trust(tls)
        tls_url = "https://" + gw.config["listen"][1]["address"] + "/relay/x"
        async with s.get(tls_url, ssl=tls) as r:
            await r.read()
        await gw.reload()


def upstream_url_of(gw: Any) -> str:
    return str(gw.config["upstreams"]["api"]["targets"][0])


async def test_dashboard_and_rules_use_only_exported_metrics(gateway, backend, config, tmp_path):
    ca = trustme.CA()
    pem = tmp_path / "listener.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    srv = await backend(backend_app())
    cfg = live_config(config, tmp_path, upstream_url(srv), pem)
    gw = await gateway(cfg)
    await exercise(gw, Path(cfg["state"]["dir"]), ca)
    async with aiohttp.ClientSession() as s:  # a WebSocket open while /metrics is read
        ws = await s.ws_connect(gw.url.replace("http", "ws") + "/ws/echo")
        await ws.send_str("hello")
        assert (await ws.receive()).data == "hello"
        await asyncio.sleep(0.5)  # health checks have run
        async with s.get(gw.admin_url + "/metrics") as r:
            text = await r.text()
        await ws.close()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    used = names(dashboard_queries()) | names(rule_queries())
    assert len(used) > 30
    missing = sorted(used - exported)
    assert not missing, f"used but not exported by the daemon: {missing}"
    rule_only = {m for e in rule_queries() for m in re.findall(r"\b([a-z_]+)\{", e)}
    assert rule_only - exported <= PROMETHEUS_MADE
