"""The dashboard in a real browser (headless Chromium): log in, load each page, see the live
tail update as requests are sent, compare the overview's figures with /metrics, CSRF refusal
and logout. With ``GATEWAYD_DASHBOARD_SCREENSHOTS=<dir>`` the pages are saved there as PNG
(docs/dashboard/ holds the committed ones, made so)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from gatewayd.relay.peer import Peer

from .login import OPERATOR, VIEWER, backend_app, dashboard_config
from .test_views import PAGES

SHOTS = os.environ.get("GATEWAYD_DASHBOARD_SCREENSHOTS")


def shot(driver: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))


async def wait(driver: Any, condition: Any, timeout: float = 10.0) -> Any:
    return await asyncio.to_thread(WebDriverWait(driver, timeout).until, condition)


async def log_in(driver: Any, admin_url: str, token: str = OPERATOR) -> None:
    await asyncio.to_thread(driver.get, admin_url + "/dashboard/")
    await wait(driver, ec.title_contains("log in"))
    driver.find_element(By.ID, "token").send_keys(token)
    shot(driver, "login")
    driver.find_element(By.ID, "login").click()
    await wait(driver, ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Overview"))


async def traffic(url: str, counts: dict[str, int]) -> None:
    async with aiohttp.ClientSession() as s:
        for path, n in counts.items():
            for _ in range(n):
                async with s.get(url + path) as r:
                    await r.read()


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


async def test_log_in_load_every_page_and_log_out(
    gateway: Any, backend: Any, config: Any, browser: Any
) -> None:
    server = await backend(backend_app())
    cfg = dashboard_config(config, server)
    cfg["routes"][0]["plugins"] = [{"cache": {"default_ttl": "60s"}}]  # a plugin panel
    cfg["routes"].append({"name": "peers", "match": {"path": "/peer/"}, "relay": "by_path"})
    cfg["relay"] = {"heartbeat": {"interval": "200ms", "timeout": "1s"}}
    gw = await gateway(cfg)
    await traffic(gw.url, {"/api/ok": 20, "/api/missing": 4})
    bearer = {"Authorization": f"Bearer {OPERATOR}"}
    async with aiohttp.ClientSession(headers=bearer) as s:
        for tenant in ("acme", "acme", "globex"):
            async with s.post(gw.admin_url + "/_admin/keys", json={"tenant": tenant}) as r:
                assert r.status == 201, await r.text()
                created = await r.json()
                key_id = created["record"]["key_id"]
        async with s.post(gw.admin_url + f"/_admin/keys/{key_id}/revoke") as r:
            assert r.status == 200, await r.text()
        body = {"tenant": "acme", "scopes": ["relay:app"]}
        async with s.post(gw.admin_url + "/_admin/keys", json=body) as r:
            relay_key = (await r.json())["key"]
    ws = gw.url.replace("http://", "ws://") + "/_relay/connect"
    peer = Peer(ws, "app", relay_key, "http://127.0.0.1:9", on_event=lambda e: None, name="worker")
    async with peer:
        await peer.wait_connected()
        await every_page(gw, browser, bearer, key_id, created)


async def every_page(
    gw: Any, browser: Any, bearer: dict[str, str], key_id: str, created: Any
) -> None:
    await log_in(browser, gw.admin_url)
    assert browser.find_element(By.ID, "who").text == "ops (operator)"
    assert browser.find_element(By.ID, "reload").is_displayed()
    for path, heading in PAGES.items():
        if path == "/dashboard/tail":
            continue  # its own test (a screenshot with lines in it)
        await asyncio.to_thread(browser.get, gw.admin_url + path)
        await wait(browser, ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), heading))
        if path == "/dashboard/":  # the script has refreshed the figures once
            await wait(
                browser,
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-refreshed"),
            )
        if path == "/dashboard/relay":
            lease = (By.ID, "lease-app")
            await wait(browser, ec.text_to_be_present_in_element(lease, "/worker"))
        if path == "/dashboard/plugins":
            assert "Cache" in browser.find_element(By.CSS_SELECTOR, '[data-plugin="cache"]').text
        if path == "/dashboard/events":
            await wait(
                browser, ec.text_to_be_present_in_element((By.ID, "events-state"), "connected")
            )
            async with (  # an event published now appears on the open page
                aiohttp.ClientSession(headers=bearer) as s,
                s.post(gw.admin_url + "/_admin/keys", json={"tenant": "initech"}) as r,
            ):
                assert r.status == 201
            first = (By.CSS_SELECTOR, "#events tbody tr:first-child")
            await wait(browser, ec.text_to_be_present_in_element(first, "initech"))
            assert "key.created" in browser.find_element(*first).text
        if path == "/dashboard/keys":
            assert browser.find_element(By.ID, "keys-total").text == "4"  # before initech's
            assert browser.find_element(By.ID, "keys-revoked").text == "1"
            assert key_id in browser.find_element(By.ID, "revocations").text
            assert created["key"] not in browser.page_source  # never a secret
        name = path.removeprefix("/dashboard/").strip("/") or "overview"
        shot(browser, name)
    # the script and the stylesheet loaded under the CSP, and nothing was refused
    assert console_errors(browser) == []
    browser.find_element(By.ID, "logout").click()
    await wait(browser, ec.title_contains("log in"))
    await asyncio.to_thread(browser.get, gw.admin_url + "/dashboard/upstreams")
    await wait(browser, ec.title_contains("log in"))  # the session is gone


async def test_the_live_tail_updates_as_requests_are_sent(
    gateway: Any, backend: Any, config: Any, browser: Any
) -> None:
    server = await backend(backend_app())
    gw = await gateway(dashboard_config(config, server))
    await log_in(browser, gw.admin_url, VIEWER)
    assert browser.find_elements(By.ID, "reload") == []  # a viewer has no reload button
    await asyncio.to_thread(browser.get, gw.admin_url + "/dashboard/tail")
    await wait(browser, ec.text_to_be_present_in_element((By.ID, "tail-state"), "connected"))
    await traffic(gw.url, {"/api/ok": 3, "/api/missing": 2, "/api/broken": 1})

    def rows(d: Any) -> list[list[str]]:
        found = d.find_elements(By.CSS_SELECTOR, "#tail tbody tr")
        return [[c.text for c in r.find_elements(By.TAG_NAME, "td")] for r in found]

    await wait(browser, lambda d: len(rows(d)) == 6)
    lines = rows(browser)
    assert sorted((r[2], r[4]) for r in lines) == sorted(
        [("/api/ok", "200")] * 3 + [("/api/missing", "404")] * 2 + [("/api/broken", "500")]
    )
    assert {r[1] for r in lines} == {"GET"} and {r[3] for r in lines} == {"api"}
    shot(browser, "tail")
    # a filter is applied by the server: only 5xx from now on
    Select(browser.find_element(By.ID, "status")).select_by_value("5xx")
    browser.find_element(By.CSS_SELECTOR, "#tail-filter button").click()
    await wait(browser, lambda d: rows(d) == [])
    await wait(browser, ec.text_to_be_present_in_element((By.ID, "tail-state"), "connected"))
    await traffic(gw.url, {"/api/ok": 5, "/api/broken": 2})
    await wait(browser, lambda d: len(rows(d)) == 2)
    await asyncio.sleep(0.5)  # nothing else arrives
    assert [(r[2], r[4]) for r in rows(browser)] == [("/api/broken", "500")] * 2
    assert browser.find_element(By.ID, "tail-dropped").text == "0"


async def test_the_overview_shows_the_figures_of_metrics(
    gateway: Any, backend: Any, config: Any, browser: Any
) -> None:
    server = await backend(backend_app())
    gw = await gateway(dashboard_config(config, server))
    await traffic(gw.url, {"/api/ok": 40, "/api/missing": 10, "/api/broken": 6})
    await asyncio.sleep(2.5)  # sampled once a second
    async with aiohttp.ClientSession() as s, s.get(gw.admin_url + "/metrics") as r:
        metrics = await r.text()
    total = 0.0
    buckets: list[tuple[float, float]] = []
    for line in metrics.splitlines():
        if line.startswith('gatewayd_requests_total{route="api"'):
            total += float(line.split()[-1])
        if line.startswith("gatewayd_request_duration_seconds_bucket{") and 'route="api"' in line:
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float(le), float(line.split()[-1])))
    assert total == 56
    await log_in(browser, gw.admin_url)
    await wait(
        browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-refreshed")
    )
    for window in ("1m", "5m"):
        row = browser.find_element(By.CSS_SELECTOR, f'#routes-{window} tr[data-route="api"]')
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        route, requests, rps, r4xx, r5xx, p50, p95, p99 = cells
        assert route == "api" and int(requests) == total
        assert float(r4xx) / float(rps) == approx(10 / 56)
        assert float(r5xx) / float(rps) == approx(6 / 56)
        for q, shown in ((0.5, p50), (0.95, p95), (0.99, p99)):
            lower, upper = bucket_of(q * total, sorted(buckets))
            assert lower * 1000 <= float(shown) <= upper * 1000, (q, shown, buckets)


def bucket_of(rank: float, buckets: list[tuple[float, float]]) -> tuple[float, float]:
    """The bounds of the /metrics bucket that holds the observation of this rank."""
    lower = 0.0
    for bound, count in buckets:
        if count >= rank:
            return lower, bound
        lower = bound
    raise AssertionError("rank over the count")


def approx(value: float) -> Any:
    import pytest

    return pytest.approx(value, rel=0.02)


async def test_a_post_without_the_csrf_token_is_refused_in_the_browser(
    gateway: Any, backend: Any, config: Any, browser: Any
) -> None:
    server = await backend(backend_app())
    gw = await gateway(dashboard_config(config, server))
    await log_in(browser, gw.admin_url)
    script = """
        const done = arguments[arguments.length - 1];
        const body = arguments[0] === null ? undefined : new URLSearchParams({csrf: arguments[0]});
        fetch(arguments[1], {method: "POST", body: body, redirect: "manual"})
            .then(r => done(r.status), e => done(String(e)));
    """
    for csrf in (None, "forged-token"):
        for path in ("/dashboard/reload", "/dashboard/logout"):
            status = await asyncio.to_thread(browser.execute_async_script, script, csrf, path)
            assert status == 403, (csrf, path)
    assert await gw.generation() == 1  # nothing was reloaded
    await asyncio.to_thread(browser.get, gw.admin_url + "/dashboard/keys")
    await wait(browser, ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Keys"))  # still in
    browser.find_element(By.ID, "reload").click()  # the real form carries the token
    await wait(browser, ec.text_to_be_present_in_element((By.ID, "reload-result"), "Reloaded"))
    assert await gw.generation() == 2
