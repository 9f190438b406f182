"""GET /_admin/llm/usage against the real daemon: requests through the official openai SDK make
the records, and the answers are checked against those records (and the records against what
the fake providers reported)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import aiohttp
import pytest
from fake_openai_server import FakeOpenAI, Fault
from gatewayd_llm.usage import UsageRecord
from llm_testkit import ADMIN_TOKEN, LlmGateway, openai_upstream
from test_usage_query import expected_rows, totals

MSGS = [{"role": "user", "content": "how many tokens is this"}]
KEYS = {"a1": "acme", "a2": "acme", "g1": "globex"}


async def admin_get(gw: LlmGateway, path: str, token: str | None = ADMIN_TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(gw.admin_url + path, headers=headers) as r:
        return r.status, await r.json()


async def traffic(
    make_fake_openai: Any, llm_config: Any, llm_gateway: Any
) -> tuple[LlmGateway, list[UsageRecord], dict[str, FakeOpenAI]]:
    """Two providers, two models with prices, three keys of two tenants; chat answers whole
    and streamed, some from a provider that reports no usage (estimated records)."""
    fakes = {"main": await make_fake_openai(), "alt": await make_fake_openai()}
    upstreams = {name: openai_upstream(f.url) for name, f in fakes.items()}
    llm = {
        "models": {
            "m": [{"upstream": "main", "model": "fake-m"}],
            "n": [{"upstream": "alt", "model": "fake-n"}],
        },
        "prices": {
            "m": {"input_per_mtok": 1.5, "output_per_mtok": 6},
            "n": {"input_per_mtok": 0.25, "output_per_mtok": 1},
        },
    }
    gw = await llm_gateway(llm_config(upstreams, llm), keys=KEYS)
    plan = [  # key, model, max_tokens, stream, the provider reports usage
        ("a1", "m", 3, False, True),
        ("a1", "m", 5, True, True),
        ("a1", "n", 2, False, True),
        ("a2", "m", 7, False, False),
        ("a2", "n", 4, True, True),
        ("g1", "m", 1, False, True),
        ("g1", "n", 6, True, False),
        ("g1", "n", 8, False, True),
    ]
    sent: list[tuple[str, str, int, bool]] = []
    for key, model, max_tokens, stream, reports in plan:
        fake = fakes["main" if model == "m" else "alt"]
        if not reports:
            fake.push(Fault(usage=False))
        async with gw.client(gw.keys[key]) as client:
            if stream:
                chunks = await client.chat.completions.create(
                    model=model, messages=MSGS, max_tokens=max_tokens, stream=True
                )
                async for _ in chunks:
                    pass
            else:
                await client.chat.completions.create(
                    model=model, messages=MSGS, max_tokens=max_tokens
                )
        sent.append((key, model, max_tokens, reports))
    records = await gw.usage(len(plan))
    assert len(records) == len(plan)
    prices = llm["prices"]
    for rec, (key, model, max_tokens, reports) in zip(records, sent, strict=True):
        assert (rec.key_id, rec.tenant, rec.model) == (key, KEYS[key], model)
        if reports:  # the fake answers max_tokens tokens and says so
            assert rec.completion_tokens == max_tokens
        else:  # the gateway's estimate of the text
            assert rec.completion_tokens > 0
        assert rec.source == ("provider" if reports else "estimated")
        price = prices[model]
        assert rec.cost == pytest.approx(
            (
                rec.prompt_tokens * price["input_per_mtok"]
                + rec.completion_tokens * price["output_per_mtok"]
            )
            / 1e6
        )
    reported = [s.usage for f in fakes.values() for s in f.requests if s.usage is not None]
    assert sorted(u["prompt_tokens"] for u in reported) == sorted(
        r.prompt_tokens for r in records if r.source == "provider"
    )
    return gw, records, fakes


async def test_usage_grouped_as_the_records_say(make_fake_openai, llm_config, llm_gateway) -> None:
    gw, records, _ = await traffic(make_fake_openai, llm_config, llm_gateway)
    for group_by in [
        ("tenant", "key", "model", "day"),
        ("tenant",),
        ("provider", "deployment"),
        ("day",),
    ]:
        status, body = await admin_get(gw, f"/_admin/llm/usage?group_by={','.join(group_by)}")
        assert status == 200, body
        assert body["rows"] == expected_rows(records, group_by)
        assert body["totals"] == totals(records)
        assert body["group_by"] == list(group_by) and body["truncated"] is False
    assert {
        r["tenant"] for r in (await admin_get(gw, "/_admin/llm/usage?group_by=tenant"))[1]["rows"]
    } == {"acme", "globex"}
    # the instance that answered (usage is per instance)
    assert body["instance"]["pid"] == gw.pid
    assert body["instance"]["store"] == str(gw.state_dir / "llm" / "usage.sqlite3")
    # filters: a tenant, a kind
    status, body = await admin_get(gw, "/_admin/llm/usage?tenant=globex&group_by=model")
    globex = [r for r in records if r.tenant == "globex"]
    assert body["rows"] == expected_rows(globex, ("model",))
    assert body["totals"] == totals(globex)
    status, body = await admin_get(gw, "/_admin/llm/usage?kind=estimated&group_by=key")
    estimated = [r for r in records if r.source == "estimated"]
    assert len(estimated) == 2 and body["totals"] == totals(estimated)
    assert [r["key"] for r in body["rows"]] == ["a2", "g1"]
    # a range: today (UTC) holds them all, the day before none
    today = dt.datetime.fromtimestamp(records[0].time, dt.UTC).date()
    tomorrow = today + dt.timedelta(days=1)
    if all(dt.datetime.fromtimestamp(r.time, dt.UTC).date() == today for r in records):
        q = f"from={today}&to={tomorrow}"
        assert (await admin_get(gw, f"/_admin/llm/usage?{q}"))[1]["totals"] == totals(records)
        q = f"from={today - dt.timedelta(days=1)}&to={today}"
        assert (await admin_get(gw, f"/_admin/llm/usage?{q}"))[1]["totals"]["requests"] == 0
    # the row cap is said
    status, body = await admin_get(gw, "/_admin/llm/usage?group_by=key&limit=2")
    assert body["truncated"] is True and body["row_limit"] == 2 and len(body["rows"]) == 2
    assert body["totals"] == totals(records)
    # the same under /_admin/plugins/llm
    status, same = await admin_get(gw, "/_admin/plugins/llm/usage?group_by=key&limit=2")
    assert status == 200 and same["rows"] == body["rows"]


BAD = [
    ("from=last-week", "from"),
    ("to=2026-02-30", "to"),
    ("from=2026-12-02&to=2026-12-01", "from"),
    ("group_by=tenant,color", "group_by"),
    ("kind=reported", "kind"),
    ("limit=100000", "limit"),
    ("tenantt=acme", "tenantt"),
]


async def test_bad_parameters_answer_400_naming_them(
    fake_openai: FakeOpenAI, llm_config, llm_gateway
) -> None:
    upstreams = {"main": openai_upstream(fake_openai.url)}
    llm = {"models": {"m": [{"upstream": "main", "model": "fake-model"}]}}
    gw = await llm_gateway(llm_config(upstreams, llm))
    for query, parameter in BAD:
        status, body = await admin_get(gw, f"/_admin/llm/usage?{query}")
        assert status == 400, query
        assert body["error"]["code"] == "bad_parameter" and body["error"]["request_id"]
        assert body["error"]["message"].startswith(f"{parameter}: "), body


async def test_admin_token_needed_and_empty_store(
    fake_openai: FakeOpenAI, llm_config, llm_gateway
) -> None:
    upstreams = {"main": openai_upstream(fake_openai.url)}
    gw = await llm_gateway(
        llm_config(upstreams, {"models": {"m": [{"upstream": "main", "model": "fake-model"}]}})
    )
    status, body = await admin_get(gw, "/_admin/llm/usage", token=None)
    assert status == 401 and body["error"]["request_id"]
    status, body = await admin_get(gw, "/_admin/llm/usage?group_by=tenant")
    assert status == 200 and body["rows"] == [] and body["totals"]["requests"] == 0
    # 30 days back from now, by default
    end = dt.datetime.fromisoformat(body["to"])
    start = dt.datetime.fromisoformat(body["from"])
    assert end - start == dt.timedelta(days=30)
    assert abs(end.timestamp() - time.time()) < 60


async def test_no_usage_recorded_answers_404(
    fake_openai: FakeOpenAI, llm_config, llm_gateway
) -> None:
    upstreams = {"main": openai_upstream(fake_openai.url)}
    llm = {"models": {"m": [{"upstream": "main", "model": "fake-model"}]}, "usage": False}
    gw = await llm_gateway(llm_config(upstreams, llm))
    status, body = await admin_get(gw, "/_admin/llm/usage")
    assert status == 404 and body["error"]["code"] == "usage_not_recorded"
