"""The dashboard's pages and actions through the real daemon, with a plain HTTP client (no
JavaScript): each page renders, login, logout, CSRF and roles."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp

from .login import (
    OPERATOR,
    VIEWER,
    backend_app,
    client,
    csrf_of,
    dashboard_config,
    log_in,
)

HTML = {"Accept": "text/html"}
PAGES = {
    "/dashboard/": "Overview",
    "/dashboard/upstreams": "Upstreams",
    "/dashboard/relay": "Relay",
    "/dashboard/keys": "Keys and tenants",
    "/dashboard/audit": "Audit log",
    "/dashboard/tail": "Live request tail",
    "/dashboard/events": "Event stream",
    "/dashboard/plugins": "Plugins",
}


async def test_every_page_renders_without_javascript(
    gateway: Any, backend: Any, config: Any
) -> None:
    server = await backend(backend_app())
    gw = await gateway(dashboard_config(config, server))
    async with client() as s:
        await log_in(s, gw.admin_url)
        for path, heading in PAGES.items():
            async with s.get(gw.admin_url + path, headers=HTML) as r:
                assert r.status == 200, (path, await r.text())
                html = await r.text()
                assert f"<h1>{heading}</h1>" in html, path
                csp = r.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
                assert r.headers["X-Frame-Options"] == "DENY"
                assert r.headers["Cache-Control"] == "no-store"
                # the only script is the static file: no inline script, no inline handler
                assert re.findall(r"<script[^>]*>", html) == [
                    '<script src="/dashboard/static/dashboard.js" defer>'
                ]
                assert not re.search(r"\son[a-z]+=", html)
        async with s.get(gw.admin_url + "/dashboard/upstreams", headers=HTML) as r:
            html = await r.text()
        assert f'data-target="http://127.0.0.1:{server.port}"' in html
        assert "health checks on" in html
        async with s.get(gw.admin_url + "/dashboard/static/dashboard.js") as r:
            assert r.status == 200
            assert "EventSource" in await r.text()


async def test_without_a_session_pages_send_to_login_and_the_rest_get_401(
    gateway: Any, backend: Any, config: Any
) -> None:
    server = await backend(backend_app())
    gw = await gateway(dashboard_config(config, server))
    async with client() as s:
        async with s.get(gw.admin_url + "/dashboard", headers=HTML) as r:
            assert r.status == 200 and "<h1>Log in</h1>" in await r.text()
            assert str(r.url).endswith("/dashboard/login")
        for path in ("/dashboard/overview.json", "/dashboard/tail/stream"):
            async with s.get(gw.admin_url + path) as r:
                assert r.status == 401
                assert (await r.json())["error"]["code"] == "unauthorized"
        # a bearer token is not a session: the dashboard wants its cookie
        bearer = {"Authorization": f"Bearer {OPERATOR}"}
        async with s.get(gw.admin_url + "/dashboard/overview.json", headers=bearer) as r:
            assert r.status == 401


async def test_login_refuses_a_wrong_token_and_a_missing_csrf_token(
    gateway: Any, backend: Any, config: Any
) -> None:
    server = await backend(backend_app())
    gw = await gateway(dashboard_config(config, server))
    url = gw.admin_url + "/dashboard/login"
    async with client() as s:
        async with s.get(url) as r:
            token = csrf_of(await r.text())
            cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        form = {"token": "not-a-token", "csrf": token}
        async with s.post(url, data=form, allow_redirects=False) as r:
            assert r.status == 403
            html = await r.text()
            assert "not accepted" in html and "not-a-token" not in html
        form = {"token": OPERATOR, "csrf": "x" * 64}
        async with s.post(url, data=form, allow_redirects=False) as r:
            assert r.status == 403 and (await r.json())["error"]["code"] == "csrf"
    async with client() as fresh:  # a token from another browser's login cookie
        form = {"token": OPERATOR, "csrf": token}
        async with fresh.post(url, data=form, allow_redirects=False) as r:
            assert r.status == 403


async def test_session_cookie_csrf_and_logout(gateway: Any, backend: Any, config: Any) -> None:
    server = await backend(backend_app())
    gw = await gateway(dashboard_config(config, server))
    async with client() as s:
        async with s.get(gw.admin_url + "/dashboard/login") as r:
            login_csrf = csrf_of(await r.text())
        form = {"token": OPERATOR, "csrf": login_csrf}
        async with s.post(gw.admin_url + "/dashboard/login", data=form, allow_redirects=False) as r:
            cookies = r.headers.getall("Set-Cookie")
        session = next(c for c in cookies if c.startswith("gatewayd_session="))
        assert (
            "HttpOnly" in session and "SameSite=Strict" in session and "Path=/dashboard/" in session
        )
        assert len(session.split(";")[0].split("=", 1)[1]) >= 40  # a random id, not the token
        assert OPERATOR not in " ".join(cookies)
        async with s.get(gw.admin_url + "/dashboard/", headers=HTML) as r:
            csrf = csrf_of(await r.text())
        logout = gw.admin_url + "/dashboard/logout"
        async with s.post(logout, allow_redirects=False) as r:
            assert r.status == 403 and (await r.json())["error"]["code"] == "csrf"
        async with s.post(logout, data={"csrf": "wrong" + csrf[5:]}, allow_redirects=False) as r:
            assert r.status == 403
        async with s.get(gw.admin_url + "/dashboard/overview.json") as r:
            assert r.status == 200  # refused POSTs changed nothing
        async with s.post(logout, data={"csrf": csrf}, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/dashboard/login"
        async with s.get(gw.admin_url + "/dashboard/overview.json") as r:
            assert r.status == 401


async def test_viewers_do_not_see_or_get_reload_and_operators_do(
    gateway: Any, backend: Any, config: Any
) -> None:
    server = await backend(backend_app())
    gw = await gateway(dashboard_config(config, server))
    async with client() as viewer:
        csrf = await log_in(viewer, gw.admin_url, VIEWER)
        async with viewer.get(gw.admin_url + "/dashboard/", headers=HTML) as r:
            html = await r.text()
        assert "watcher (viewer)" in html and 'action="/dashboard/reload"' not in html
        reload = gw.admin_url + "/dashboard/reload"
        async with viewer.post(reload, data={"csrf": csrf}, allow_redirects=False) as r:
            assert r.status == 403 and (await r.json())["error"]["code"] == "forbidden"
    assert await gw.generation() == 1
    async with client() as operator:
        csrf = await log_in(operator, gw.admin_url, OPERATOR)
        async with operator.get(gw.admin_url + "/dashboard/", headers=HTML) as r:
            assert 'action="/dashboard/reload"' in await r.text()
        async with operator.post(reload, data={"csrf": csrf}, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/dashboard/?reload=ok"
        assert await gw.generation() == 2
        for _ in range(50):  # the page learns of the reload from the event bus
            async with operator.get(gw.admin_url + "/dashboard/overview.json") as r:
                view = await r.json()
            if view["last_reload"] is not None:
                break
            await asyncio.sleep(0.1)
        assert view["generation"] == 2
        assert view["last_reload"]["ok"] is True and view["last_reload"]["generation"] == 2
        bearer = {"Authorization": f"Bearer {OPERATOR}"}
        for _ in range(50):  # the audit log names who acted from the dashboard
            async with operator.get(gw.admin_url + "/_admin/audit", headers=bearer) as r:
                records = (await r.json())["records"]
            acts = {(x["what"].get("path"), x["actor"]) for x in records if "path" in x["what"]}
            if ("/dashboard/reload", "ops") in acts:
                break
            await asyncio.sleep(0.1)
        assert {("/dashboard/login", "ops"), ("/dashboard/reload", "ops")} <= acts
        assert ("/dashboard/reload", "watcher") in acts  # the refused one, too


async def test_a_refused_reload_shows_its_error(gateway: Any, backend: Any, config: Any) -> None:
    server = await backend(backend_app())
    cfg = dashboard_config(config, server)
    gw = await gateway(cfg)
    async with client() as s:
        csrf = await log_in(s, gw.admin_url)
        gw.write_config(
            {**cfg, "routes": [{"name": "x", "match": {"path": "/"}, "upstream": "nope"}]}
        )
        reload = gw.admin_url + "/dashboard/reload"
        async with s.post(reload, data={"csrf": csrf}, allow_redirects=False) as r:
            assert r.headers["Location"] == "/dashboard/?reload=refused"
        for _ in range(50):
            async with s.get(gw.admin_url + "/dashboard/?reload=refused", headers=HTML) as r:
                html = await r.text()
            if 'id="last-reload-error"' in html:
                break
            await asyncio.sleep(0.1)
        assert "Reload refused" in html
        assert re.search(r'id="last-reload-error">[^<]*nope', html), html


async def test_a_reload_that_removes_the_token_ends_its_sessions(
    gateway: Any, backend: Any, config: Any
) -> None:
    server = await backend(backend_app())
    cfg = dashboard_config(config, server)
    gw = await gateway(cfg)
    async with client() as s:
        await log_in(s, gw.admin_url, VIEWER)
        async with s.get(gw.admin_url + "/dashboard/overview.json") as r:
            assert r.status == 200
        cfg["admin"]["tokens"] = cfg["admin"]["tokens"][:1]  # only "ops" is left
        gw.write_config(cfg)
        await gw.reload()
        async with s.get(gw.admin_url + "/dashboard/overview.json") as r:
            assert r.status == 401


async def test_overview_figures_are_those_of_metrics(
    gateway: Any, backend: Any, config: Any
) -> None:
    server = await backend(backend_app())
    gw = await gateway(dashboard_config(config, server))
    async with aiohttp.ClientSession() as s:
        for path, n in (("/api/ok", 30), ("/api/missing", 12), ("/api/broken", 5)):
            for _ in range(n):
                async with s.get(gw.url + path) as r:
                    await r.read()
    await asyncio.sleep(2.5)  # the sampler reads the metrics once a second
    total = sum(
        [
            await gw.metric("gatewayd_requests_total", route="api", status=str(c))
            for c in (200, 404, 500)
        ]
    )
    assert total == 47
    async with client() as s:
        await log_in(s, gw.admin_url)
        async with s.get(gw.admin_url + "/dashboard/overview.json") as r:
            view = await r.json()
    for window in ("1m", "5m"):
        (row,) = [x for x in view["windows"][window] if x["route"] == "api"]
        assert row["requests"] == total
        assert row["rate_4xx"] * row["span"] == pytest_approx(12)
        assert row["rate_5xx"] * row["span"] == pytest_approx(5)
        assert row["rps"] * row["span"] == pytest_approx(47)
        assert row["p50_ms"] is not None and row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]


def pytest_approx(value: float) -> Any:
    import pytest

    return pytest.approx(value, rel=0.01)


async def test_plugins_page_shows_the_cache_panel(gateway: Any, backend: Any, config: Any) -> None:
    server = await backend(backend_app())
    cfg = dashboard_config(config, server)
    cfg["routes"][0]["plugins"] = [{"cache": {"default_ttl": "60s"}}]
    gw = await gateway(cfg)
    async with aiohttp.ClientSession() as s:
        for _ in range(3):  # a miss, then two hits
            async with s.get(gw.url + "/api/ok") as r:
                assert await r.text() == "ok"
    async with client() as s:
        await log_in(s, gw.admin_url)
        async with s.get(gw.admin_url + "/dashboard/plugins", headers=HTML) as r:
            html = await r.text()
    assert '<section class="panel" data-plugin="cache">' in html
    cells = re.findall(r"<td>([^<]*)</td>", html.split('data-plugin="cache"')[1])
    # route, store, entries, bytes, hits, stale, misses, bypass
    assert cells[:3] == ["api", "memory", "1"]
    assert cells[4:7] == ["2", "0", "1"]
    async with aiohttp.ClientSession() as s, s.get(gw.admin_url + "/metrics") as r:
        lines = (await r.text()).splitlines()
    (hits,) = [
        line
        for line in lines
        if line.startswith("gatewayd_cache_total{") and 'route="api"' in line and '"HIT"' in line
    ]
    assert float(hits.split()[-1]) == 2  # the panel's figures are the metrics'


async def test_the_config_hash_is_the_one_the_audit_log_records(
    gateway: Any, backend: Any, config: Any
) -> None:
    import hashlib

    server = await backend(backend_app())
    cfg = dashboard_config(config, server)
    gw = await gateway(cfg)
    bearer = {"Authorization": f"Bearer {OPERATOR}"}
    async with client() as s:
        await log_in(s, gw.admin_url)
        async with s.get(gw.admin_url + "/dashboard/overview.json") as r:
            shown = (await r.json())["config_hash"]
        assert shown == "sha256:" + hashlib.sha256(gw.config_path.read_bytes()).hexdigest()
        async with s.get(gw.admin_url + "/_admin/audit?limit=200", headers=bearer) as r:
            records = (await r.json())["records"]
        (start,) = [x for x in records if x["type"] == "daemon.start"]
        assert start["what"]["config_hash"] == shown
        cfg["server"]["drain_timeout"] = "5s"  # another file, another hash
        gw.write_config(cfg)
        await gw.reload()
        for _ in range(50):
            async with s.get(gw.admin_url + "/dashboard/overview.json") as r:
                now = (await r.json())["config_hash"]
            if now != shown:
                break
            await asyncio.sleep(0.1)
        assert now == "sha256:" + hashlib.sha256(gw.config_path.read_bytes()).hexdigest() != shown


async def test_the_audit_page_lists_the_last_records_or_says_it_is_off(
    gateway: Any, backend: Any, config: Any
) -> None:
    server = await backend(backend_app())
    gw = await gateway(dashboard_config(config, server))
    bearer = {"Authorization": f"Bearer {OPERATOR}"}
    async with (
        aiohttp.ClientSession(headers=bearer) as s,
        s.post(gw.admin_url + "/_admin/keys", json={"tenant": "acme"}) as r,
    ):
        assert r.status == 201
        secret = (await r.json())["key"]
    async with client() as s:
        await log_in(s, gw.admin_url)
        for _ in range(50):  # written by the audit writer task
            async with s.get(gw.admin_url + "/dashboard/audit", headers=HTML) as r:
                html = await r.text()
            if "<td>key.create</td>" in html:
                break
            await asyncio.sleep(0.1)
    assert "<td>key.create</td>" in html and "<td>daemon.start</td>" in html
    assert "<td>ops</td>" in html  # the actor: the admin token's id
    assert secret not in html and 'id="audit-off"' not in html
    off_cfg = dashboard_config(config, server, audit={"enabled": False})
    off_cfg["state"]["dir"] += "-off"  # a daemon of its own
    off = await gateway(off_cfg)
    async with client() as s:
        await log_in(s, off.admin_url)
        async with s.get(off.admin_url + "/dashboard/audit", headers=HTML) as r:
            assert '<p id="audit-off">audit log off</p>' in await r.text()


async def test_the_upstreams_page_shows_an_open_breaker(
    gateway: Any, backend: Any, config: Any
) -> None:
    server = await backend(backend_app())
    cfg = dashboard_config(config, server)
    breaker = {"circuit_breaker": {"consecutive_failures": 2, "open_for": "1m"}}
    cfg["routes"][0]["plugins"] = [breaker]
    gw = await gateway(cfg)
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(gw.url + "/api/broken") as r:
                assert r.status == 500
    async with client() as s:
        await log_in(s, gw.admin_url)
        async with s.get(gw.admin_url + "/dashboard/upstreams", headers=HTML) as r:
            html = await r.text()
    row = html.split(f'data-target="http://127.0.0.1:{server.port}"')[1].split("</tr>")[0]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    # target, available, health, last check, failures, last error, breaker, ejection, in flight
    assert cells[1] == "no"  # the breaker keeps requests away
    assert cells[2] == "healthy"
    assert cells[6] == "api: open"


async def test_the_relay_page_shows_leases_peers_and_deliveries(
    gateway: Any, backend: Any, config: Any
) -> None:
    from gatewayd.relay.peer import Peer

    server = await backend(backend_app())
    cfg = dashboard_config(config, server)
    cfg["routes"].append({"name": "peers", "match": {"path": "/peer/"}, "relay": "by_path"})
    cfg["relay"] = {
        "heartbeat": {"interval": "200ms", "timeout": "1s"},
        "event_types": ["api.deployed"],
    }
    gw = await gateway(cfg)
    bearer = {"Authorization": f"Bearer {OPERATOR}"}
    async with aiohttp.ClientSession(headers=bearer) as admin:
        body = {"tenant": "acme", "scopes": ["relay:app"]}
        async with admin.post(gw.admin_url + "/_admin/keys", json=body) as r:
            assert r.status == 201, await r.text()
            created = await r.json()
        key, kid = created["key"], created["record"]["key_id"]
        ws = gw.url.replace("http://", "ws://") + "/_relay/connect"
        got: list[Any] = []
        peer = Peer(ws, "app", key, "http://127.0.0.1:9", on_event=got.append, name="worker")
        async with peer, client() as s:
            await peer.wait_connected()
            for i in range(2):
                event = {"type": "api.deployed", "payload": i}
                url = gw.admin_url + "/_admin/relay/leases/app/events"
                async with admin.post(url, json=event) as r:
                    assert r.status == 202
            await log_in(s, gw.admin_url)
            for _ in range(50):  # acked, and a heartbeat seen
                async with s.get(gw.admin_url + "/dashboard/relay", headers=HTML) as r:
                    html = await r.text()
                conn = lease_row(html, "app")
                if len(got) == 2 and conn[6:9] == ["2", "2", "0"] and conn[4].endswith(" ago"):
                    break
                await asyncio.sleep(0.1)
    assert html.count(f"<td>{kid}/worker</td>") == 2  # its connection, and the peer's totals
    # peer, connection, client, connected since, heartbeat, in flight, sent, acked, failed, queued
    assert conn[0] == f"{kid}/worker" and conn[2] == "127.0.0.1" and conn[3].endswith(" UTC")
    assert conn[4].endswith(" ago")  # heartbeats arrive every 200 ms
    assert conn[6:9] == ["2", "2", "0"]
    assert key not in html


def lease_row(html: str, lease: str) -> list[str]:
    """The cells of the first connection of ``lease`` on the relay page."""
    if f'id="lease-{lease}"' not in html:
        return []
    part = html.split(f'id="lease-{lease}"')[1].split("<tbody>")[1].split("</tbody>")[0]
    return re.findall(r"<td>([^<]*)</td>", part.split("</tr>")[0])


async def test_a_stored_admin_token_logs_in_and_its_revocation_ends_the_session(
    gateway: Any, backend: Any, config: Any
) -> None:
    from pathlib import Path

    from gatewayd.admin.tokens import add_token, hash_token, remove_token, token_path

    server = await backend(backend_app())
    cfg = dashboard_config(config, server)
    gw = await gateway(cfg)
    path = token_path(Path(cfg["state"]["dir"]))
    add_token(path, "stored-ops", "operator", hash_token("stored-admin-token", rounds=4))
    async with client() as s:
        await log_in(s, gw.admin_url, "stored-admin-token")
        async with s.get(gw.admin_url + "/dashboard/", headers=HTML) as r:
            assert "stored-ops (operator)" in await r.text()
        remove_token(path, "stored-ops")  # gatewayd admin token revoke stored-ops
        async with s.get(gw.admin_url + "/dashboard/overview.json") as r:
            assert r.status == 401  # on the next request, no reload needed
