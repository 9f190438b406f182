"""Providers and models managed live, end to end: the real daemon (``gatewayd run``), the fake
OpenAI provider, the official ``openai`` SDK, the admin API at ``/_admin/llm``, and for the
shared mode two daemons on one real redis-server.

- a provider made through the API serves completions and streams at once; deleted, its model
  answers 404 in OpenAI's shape; it survives a reload and a restart;
- invalid bodies give 400 naming the field; the YAML's provider and model are read-only;
- its credential rotated under 200 requests/s: no request fails, every request that reached
  the provider after the rotation answered carries the new secret, the old one only requests
  already under way (slow streams among them);
- with ``state.backend: redis``, a change on one instance is applied on the other within 1 s,
  and a revoked client key is refused by the other on its next request;
- a secret given to the API is nowhere (plain, base64, its first 8 characters) in the state
  directory, the logs, /metrics, the event stream or any admin response.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from fake_openai_server import FakeOpenAI, Fault
from gatewayd_llm.sealing import fingerprint, generate_key_file
from llm_testkit import ADMIN_TOKEN, FakeFactory, GatewayFactory, LlmGateway, openai_upstream

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Admin:
    """Calls to a daemon's admin API; every answer's text is kept (the grep test reads them)."""

    def __init__(self, gw: LlmGateway, seen: list[str] | None = None) -> None:
        self.gw = gw
        self.seen = seen if seen is not None else []

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        url = self.gw.admin_url + path
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, url, json=body, headers=AUTH) as r,
        ):
            text = await r.text()
            self.seen.append(text)
            return r.status, json.loads(text) if text else None


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "llm.key"
    if not path.exists():
        generate_key_file(path)
    return path


def llm(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return {"models": {}, "secrets_key_file": str(key_file(tmp_path)), **kw}


def fake_provider(fake: FakeOpenAI, secret: str, pid: str = "fake", **kw: Any) -> dict[str, Any]:
    return {
        "id": pid,
        "kind": "openai",
        "base_url": fake.url,
        "api_key": secret,
        "models": {"gpt-live": {"model": "gpt-4o-mini"}},
        **kw,
    }


async def chat(gw: LlmGateway, model: str = "gpt-live", key: str | None = None) -> str:
    client = gw.client(key)
    try:
        reply = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "say hello"}]
        )
    finally:
        await client.close()
    return reply.choices[0].message.content or ""


async def until(check: Callable[[], Any], timeout: float) -> float:
    """Seconds until ``await check()`` is true (AssertionError after ``timeout``)."""
    start = time.monotonic()
    while True:
        try:
            if await check():
                return time.monotonic() - start
        except openai.APIError:
            pass
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.02)


def bearer(seen: Any) -> str | None:
    value = seen.headers.get("Authorization")
    return value.removeprefix("Bearer ") if value else None


async def test_a_provider_made_through_the_api_serves_at_once_and_survives(
    tmp_path: Path,
    make_fake_openai: FakeFactory,
    llm_config: Callable[..., dict[str, Any]],
    llm_gateway: GatewayFactory,
) -> None:
    secret = "sk-" + secrets.token_urlsafe(24)
    fake = await make_fake_openai(api_key=secret)
    yaml_fake = await make_fake_openai()
    config = llm_config(
        {"yaml-up": openai_upstream(yaml_fake.url)},
        llm(tmp_path, models={"yaml-model": [{"upstream": "yaml-up", "model": "gpt-4o"}]}),
    )
    gw = await llm_gateway(config)
    admin = Admin(gw)

    status, body = await admin.call("POST", "/_admin/llm/providers", fake_provider(fake, secret))
    assert status == 201, body
    assert body["api_key"] == {"set": True, "fingerprint": fingerprint(secret)}
    # At once, through the official SDK: whole and streamed.
    assert await chat(gw) != ""
    assert bearer(fake.requests[-1]) == secret
    assert fake.requests[-1].model == "gpt-4o-mini"
    client = gw.client()
    stream = await client.chat.completions.create(
        model="gpt-live", messages=[{"role": "user", "content": "count"}], stream=True
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts)
    models = [m.id async for m in client.models.list()]
    assert models == ["yaml-model", "gpt-live"]
    await client.close()
    # Its metrics carry its name (not "other", the label of names the config does not know).
    assert await gw.metric("gatewayd_llm_tokens_total", model="gpt-live") > 0
    listed = (await admin.call("GET", "/_admin/llm/providers"))[1]["data"]
    assert [(p["id"], p["source"]) for p in listed] == [("yaml-up", "config"), ("fake", "api")]

    # Errors name the field; the YAML's records are read-only.
    status, body = await admin.call(
        "POST", "/_admin/llm/providers", fake_provider(fake, secret, pid="p2", base_url="ftp:x")
    )
    assert status == 400 and body["error"]["message"].startswith("base_url: "), body
    assert body["error"]["request_id"]
    status, body = await admin.call(
        "POST", "/_admin/llm/models",
        {"name": "m2", "deployments": [{"upstream": "fake", "model": "x", "weight": -1}]},
    )  # fmt: skip
    assert status == 400 and body["error"]["message"].startswith("deployments[0].weight: ")
    for method, path in [
        ("PUT", "/_admin/llm/providers/yaml-up"),
        ("PATCH", "/_admin/llm/providers/yaml-up"),
        ("DELETE", "/_admin/llm/providers/yaml-up"),
        ("DELETE", "/_admin/llm/models/yaml-model"),
    ]:
        status, body = await admin.call(method, path, {"kind": "openai", "base_url": fake.url})
        assert status == 409 and "defined in the config file" in body["error"]["message"]
    assert (await admin.call("GET", "/_admin/llm/providers/nope"))[0] == 404

    # A reload keeps it; so does a restart.
    await gw.reload()
    assert await chat(gw) != ""
    await gw.stop()
    await gw.start()
    assert (await admin.call("GET", "/_admin/llm/providers/fake"))[1]["models"] == ["gpt-live"]
    assert await chat(gw) != ""
    assert bearer(fake.requests[-1]) == secret

    # Deleted: its model is gone at once, in OpenAI's shape.
    assert (await admin.call("DELETE", "/_admin/llm/providers/fake"))[0] == 204
    with pytest.raises(openai.NotFoundError) as err:
        await chat(gw)
    assert err.value.code == "model_not_found"
    assert (await admin.call("GET", "/_admin/llm/providers/fake"))[0] == 404
    assert (await admin.call("GET", "/_admin/llm/models/gpt-live"))[0] == 404
    assert await chat(gw, "yaml-model") != ""


async def test_rotation_under_load_fails_no_request(
    tmp_path: Path,
    make_fake_openai: FakeFactory,
    llm_config: Callable[..., dict[str, Any]],
    llm_gateway: GatewayFactory,
) -> None:
    old, new = "sk-old-" + secrets.token_urlsafe(16), "sk-new-" + secrets.token_urlsafe(16)
    # The provider accepts both keys (as a provider does while an operator rotates); what
    # each request carried is in fake.requests.
    fake = await make_fake_openai(chunks=4)
    gw = await llm_gateway(llm_config({}, llm(tmp_path)))
    admin = Admin(gw)
    body = fake_provider(fake, old)
    body["models"]["gpt-slow"] = {"model": "slow-model"}
    assert (await admin.call("POST", "/_admin/llm/providers", body))[0] == 201
    failures: list[str] = []
    done = 0
    headers = {"Authorization": f"Bearer {gw.key}"}
    url = gw.url + "/v1/chat/completions"

    async def one(s: aiohttp.ClientSession, model: str, stream: bool) -> None:
        nonlocal done
        payload = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        if stream:
            payload["stream"] = True
        try:
            async with s.post(url, json=payload, headers=headers) as r:
                text = await r.text()
                if r.status != 200 or (stream and "[DONE]" not in text):
                    failures.append(f"{r.status} {text[:200]}")
        except Exception as exc:
            failures.append(repr(exc))
        done += 1

    async def slow_streams(s: aiohttp.ClientSession) -> None:
        payload = {
            "model": "gpt-slow",
            "messages": [{"role": "user", "content": "tell a long story"}],
            "stream": True,
        }
        async with s.post(url, json=payload, headers=headers) as r:
            text = await r.text()
            if r.status != 200 or "[DONE]" not in text:
                failures.append(f"slow {r.status} {text[:200]}")

    rotated_at = 0.0
    # The slow streams: 8 chunks, 0.3 s apart (only the model slow-model).
    fake.behaviour = lambda b: (
        Fault(chunks=8, chunk_delay=0.3) if b.get("model") == "slow-model" else None
    )
    tasks: list[asyncio.Task[None]] = []
    slow: list[asyncio.Task[None]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as s:
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < 3.0:
            now = time.monotonic() - start
            while i < int(now * 200):  # 200 requests per second
                tasks.append(asyncio.create_task(one(s, "gpt-live", stream=i % 4 == 0)))
                i += 1
            if not slow and now > 0.8:
                slow = [asyncio.create_task(slow_streams(s)) for _ in range(5)]
            if slow and not rotated_at and now > 1.5:
                status, _ = await admin.call(
                    "POST",
                    "/_admin/llm/providers/fake/rotate-credentials",
                    {"api_key": new, "grace": "5m"},
                )
                assert status == 200
                rotated_at = time.monotonic()
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks, *slow)
    assert failures == []
    assert done == len(tasks) and len(tasks) >= 550
    assert rotated_at
    after = [r for r in fake.requests if r.received > rotated_at]
    before = [r for r in fake.requests if r.received < rotated_at]
    assert len(after) > 200 and len(before) > 200
    assert {bearer(r) for r in after} == {new}
    assert {bearer(r) for r in fake.requests if bearer(r) == old} and all(
        r.received < rotated_at for r in fake.requests if bearer(r) == old
    )
    # The slow streams began before the rotation, with the old key, and ended after it.
    slow_seen = [r for r in fake.requests if r.model == "slow-model"]
    assert len(slow_seen) == 5
    assert all(bearer(r) == old and (r.finished_at or 0) > rotated_at for r in slow_seen)


async def test_two_instances_on_one_redis_follow_each_other_within_a_second(
    tmp_path: Path,
    llm_redis_url: str,
    make_fake_openai: FakeFactory,
    llm_config: Callable[..., dict[str, Any]],
    llm_gateway: GatewayFactory,
) -> None:
    old, new = "sk-a-" + secrets.token_urlsafe(16), "sk-b-" + secrets.token_urlsafe(16)
    fake = await make_fake_openai()
    state = {"backend": "redis", "redis_url": llm_redis_url}
    one = llm_config({}, llm(tmp_path), state={**state, "dir": str(tmp_path / "s1")})
    two = llm_config({}, llm(tmp_path), state={**state, "dir": str(tmp_path / "s2")})
    a, b = await asyncio.gather(llm_gateway(one), llm_gateway(two, keys={}))
    key = a.key  # in Redis: both instances know it
    admin_a, admin_b = Admin(a), Admin(b)
    session = aiohttp.ClientSession()  # one for every probe: what is timed is the gateways

    async def ask(gw: LlmGateway, model: str = "gpt-live") -> tuple[int, Any]:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {key}"}
        async with session.post(gw.url + "/v1/chat/completions", json=body, headers=headers) as r:
            return r.status, await r.json()

    async def serves(gw: LlmGateway, model: str = "gpt-live") -> bool:
        return (await ask(gw, model))[0] == 200

    try:
        status, _ = await admin_a.call("POST", "/_admin/llm/providers", fake_provider(fake, old))
        assert status == 201
        assert await until(lambda: serves(b), 1.0) < 1.0
        assert bearer(fake.requests[-1]) == old
        assert await chat(b, key=key) != ""  # the official SDK, too

        # Rotated on a: b sends the new secret within a second.
        status, _ = await admin_a.call(
            "POST", "/_admin/llm/providers/fake/rotate-credentials", {"api_key": new}
        )
        assert status == 200

        async def b_sends_new() -> bool:
            await ask(b)
            return bearer(fake.requests[-1]) == new

        assert await until(b_sends_new, 1.0) < 1.0
        status, body = await admin_b.call("GET", "/_admin/llm/providers/fake")
        assert body["api_key"]["fingerprint"] == fingerprint(new) and body["version"] == 2

        # A model made on b is served by a; deleted on a, b answers 404 within a second.
        status, _ = await admin_b.call(
            "POST",
            "/_admin/llm/models",
            {"name": "other", "deployments": [{"upstream": "fake", "model": "gpt-x"}]},
        )
        assert status == 201
        assert await until(lambda: serves(a, "other"), 1.0) < 1.0
        assert (await admin_a.call("DELETE", "/_admin/llm/providers/fake"))[0] == 204

        async def b_forgot() -> bool:
            status, body = await ask(b)
            return status == 404 and body["error"]["code"] == "model_not_found"

        assert await until(b_forgot, 1.0) < 1.0
        with pytest.raises(openai.NotFoundError):
            await chat(b, key=key)

        # A client key revoked on a is refused by b on its very next request.
        status, _ = await admin_a.call("POST", "/_admin/llm/providers", fake_provider(fake, new))
        assert status == 201
        await until(lambda: serves(b), 1.0)
        assert await serves(b)  # b knows the key (and may hold it in its cache)
        url = f"{a.admin_url}/_admin/keys/{next(iter(a.keys))}"
        async with session.delete(url, headers=AUTH) as r:
            assert r.status in (200, 204), await r.text()
        assert (await ask(b))[0] == 401
        assert (await ask(a))[0] == 401
        with pytest.raises(openai.AuthenticationError):
            await chat(b, key=key)
    finally:
        await session.close()


async def test_a_secret_given_to_the_api_is_nowhere_else(
    tmp_path: Path,
    make_fake_openai: FakeFactory,
    llm_config: Callable[..., dict[str, Any]],
    llm_gateway: GatewayFactory,
) -> None:
    first, second = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    fake = await make_fake_openai(api_key=first)
    gw = await llm_gateway(llm_config({}, llm(tmp_path)))
    admin = Admin(gw)
    assert (await admin.call("POST", "/_admin/llm/providers", fake_provider(fake, first)))[0] == 201
    assert await chat(gw)
    # A refusal by the provider (an error path that might quote the key) and a rotation.
    fake.api_key = second
    with pytest.raises(openai.APIStatusError):
        await chat(gw)
    status, _ = await admin.call(
        "POST", "/_admin/llm/providers/fake/rotate-credentials", {"api_key": second, "grace": "1s"}
    )
    assert status == 200
    assert await chat(gw)
    assert (await admin.call("POST", "/_admin/llm/providers/fake/test"))[0] == 200
    await admin.call("PATCH", "/_admin/llm/providers/fake", {"base_url": "nope", "api_key": first})
    for path in [
        "/_admin/llm/providers",
        "/_admin/llm/providers/fake",
        "/_admin/llm/models",
        "/_admin/upstreams",
        "/_admin/config",
        "/_admin/audit",
    ]:
        await admin.call("GET", path)
    await gw.reload()
    events = await read_events(gw)
    metrics = await gw.metrics()
    await gw.stop()  # logs flushed, files closed

    haystacks: dict[str, bytes] = {
        "logs": gw.logs().encode(),
        "metrics": metrics.encode(),
        "events": events.encode(),
        "admin responses": "\n".join(admin.seen).encode(),
    }
    for path in sorted(gw.state_dir.rglob("*")):
        if path.is_file():
            haystacks[f"state file {path.relative_to(gw.state_dir)}"] = path.read_bytes()
    # The catalog's store and the audit log (which keeps every admin change's answer) are read.
    assert any("catalog.sqlite3" in name for name in haystacks)
    assert any("audit" in name for name in haystacks), sorted(haystacks)
    for secret in (first, second):
        forms = {
            "plain": secret.encode(),
            "base64": base64.b64encode(secret.encode()).rstrip(b"="),
            "base64url": base64.urlsafe_b64encode(secret.encode()).rstrip(b"="),
            "first 8 characters": secret[:8].encode(),
        }
        for where, data in haystacks.items():
            for form, needle in forms.items():
                assert needle not in data, f"the secret ({form}) is in {where}"
    assert any(b"/_admin/llm/providers" in v or b"llm" in v for v in haystacks.values())


async def read_events(gw: LlmGateway, quiet: float = 0.5) -> str:
    """Everything the event stream still holds, from the start."""
    headers = {**AUTH, "Last-Event-ID": "0"}
    out: list[str] = []
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.admin_url + "/_admin/events", headers=headers) as r,
    ):
        assert r.status == 200
        try:
            while True:
                line = await asyncio.wait_for(r.content.readline(), quiet)
                if not line:
                    break
                out.append(line.decode(errors="replace"))
        except TimeoutError:
            pass
    assert any(line.startswith("data:") for line in out)
    return "".join(out)
