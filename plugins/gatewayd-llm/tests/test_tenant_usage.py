"""The ``llm_usage`` plugin on the real daemon: a tenant reads its own usage through a route
with key_auth (or jwt_auth), never another tenant's; 401/403/400/405 in the project's error
shape. The records are made through the official openai SDK."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import jwt
from fake_openai_server import FakeOpenAI
from llm_testkit import LlmGateway, openai_upstream
from test_usage_query import expected_rows, totals

MSGS = [{"role": "user", "content": "count my tokens please"}]
KEYS = {"a1": "acme", "a2": "acme", "g1": "globex"}
JWT_SECRET = "tenant-usage-jwt-secret-0123456789abcdef"


def config(llm_config: Any, fake: FakeOpenAI) -> dict[str, Any]:
    upstreams = {"main": openai_upstream(fake.url)}
    llm = {
        "models": {
            "m": [{"upstream": "main", "model": "fake-m"}],
            "n": [{"upstream": "main", "model": "fake-n"}],
        },
        "prices": {"m": {"input_per_mtok": 2, "output_per_mtok": 8}},
    }
    cfg = llm_config(upstreams, llm)
    jwt_auth = {"algorithms": ["HS256"], "secret": JWT_SECRET, "claims": {"tenant": "org"}}
    cfg["routes"] += [
        {
            "name": "usage",
            "match": {"path": "/v1/usage"},
            "plugins": [{"key_auth": {}}, {"llm_usage": {"max_rows": 50}}],
        },
        {
            "name": "usage-open",
            "match": {"path": "/open-usage"},
            "plugins": [{"key_auth": {"optional": True}}, {"llm_usage": {}}],
        },
        {
            "name": "usage-jwt",
            "match": {"path": "/jwt-usage"},
            "plugins": [{"jwt_auth": jwt_auth}, {"llm_usage": {}}],
        },
    ]
    return cfg


async def get(
    gw: LlmGateway, path: str, token: str | None, method: str = "GET"
) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, gw.url + path, headers=headers) as r,
    ):
        return r.status, r.headers, await r.json()


def token(**claims: Any) -> str:
    return jwt.encode({"sub": "someone", "exp": int(time.time()) + 600, **claims}, JWT_SECRET)


def assert_error(status: int, headers: Any, body: Any, want: int, code: str) -> None:
    assert status == want, body
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["request_id"] == headers["X-Request-ID"]


async def test_each_tenant_reads_its_own_usage(
    fake_openai: FakeOpenAI, llm_config, llm_gateway
) -> None:
    gw = await llm_gateway(config(llm_config, fake_openai), keys=KEYS)
    plan = [("a1", "m", 3), ("a2", "m", 4), ("a1", "n", 5), ("g1", "m", 6), ("g1", "n", 2)]
    for key, model, max_tokens in plan:
        async with gw.client(gw.keys[key]) as client:
            await client.chat.completions.create(model=model, messages=MSGS, max_tokens=max_tokens)
    records = await gw.usage(len(plan))
    mine = {t: [r for r in records if r.tenant == t] for t in ("acme", "globex")}
    assert [r.completion_tokens for r in mine["acme"]] == [3, 4, 5]

    for key, tenant in KEYS.items():
        status, headers, body = await get(gw, "/v1/usage?group_by=key,model", gw.keys[key])
        assert status == 200, body
        assert headers["Cache-Control"] == "no-store"
        assert body["tenant"] == tenant
        assert body["rows"] == expected_rows(mine[tenant], ("key", "model"))
        assert body["totals"] == totals(mine[tenant])
        assert "instance" not in body  # the admin API's, not a tenant's business
    # a tenant may name itself, not another
    status, _, body = await get(gw, "/v1/usage?tenant=acme&group_by=tenant", gw.keys["a2"])
    assert status == 200 and body["rows"] == expected_rows(mine["acme"], ("tenant",))
    assert_error(*await get(gw, "/v1/usage?tenant=globex", gw.keys["a1"]), 403, "forbidden")
    status, _, body = await get(gw, "/v1/usage?tenant=", gw.keys["a1"])  # blank: unnamed
    assert status == 200 and body["totals"] == totals(mine["acme"])
    # a tenant grouping by tenant sees itself alone
    status, _, body = await get(gw, "/v1/usage?group_by=tenant,day", gw.keys["g1"])
    assert {r["tenant"] for r in body["rows"]} == {"globex"}

    # jwt_auth: the tenant claim decides; a token without one is refused
    jwt_globex = token(org="globex")
    status, _, body = await get(gw, "/jwt-usage?group_by=model", jwt_globex)
    assert status == 200 and body["totals"] == totals(mine["globex"])
    assert body["rows"] == expected_rows(mine["globex"], ("model",))
    assert_error(*await get(gw, "/jwt-usage", token()), 403, "tenant_required")
    status, headers, body = await get(gw, "/jwt-usage", None)
    assert status == 401 and "WWW-Authenticate" in headers


async def test_refusals_in_the_error_shape(
    fake_openai: FakeOpenAI, llm_config, llm_gateway
) -> None:
    gw = await llm_gateway(config(llm_config, fake_openai), keys=KEYS)
    # no key: key_auth's 401; an optional key_auth lets it through to llm_usage: 401 too
    status, headers, body = await get(gw, "/v1/usage", None)
    assert_error(status, headers, body, 401, body["error"]["code"])
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, headers, body = await get(gw, "/open-usage", None)
    assert_error(status, headers, body, 401, "unauthorized")
    assert headers["WWW-Authenticate"] == 'Bearer realm="gatewayd"'
    # with a key, the open route answers
    status, _, body = await get(gw, "/open-usage", gw.keys["g1"])
    assert status == 200 and body["tenant"] == "globex" and body["totals"]["requests"] == 0
    # bad parameters name themselves; the route's max_rows bounds limit
    key = gw.keys["a1"]
    for query, name in [
        ("from=soon", "from"),
        ("group_by=colour", "group_by"),
        ("kind=guessed", "kind"),
        ("limit=51", "limit"),
        ("tenant_id=acme", "tenant_id"),
    ]:
        status, headers, body = await get(gw, f"/v1/usage?{query}", key)
        assert_error(status, headers, body, 400, "bad_parameter")
        assert body["error"]["message"].startswith(f"{name}: "), body
    status, _, body = await get(gw, "/v1/usage?limit=50", key)
    assert status == 200 and body["row_limit"] == 50
    status, headers, body = await get(gw, "/v1/usage", key, method="POST")
    assert_error(status, headers, body, 405, "method_not_allowed")
    assert headers["Allow"] == "GET"
