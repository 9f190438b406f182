"""The audit log through a real daemon: every admin mutation (API and plugin routes) with who,
from where, status and masked before/after; reloads; the gateway's 401s aggregated; GET
/_admin/audit; fail-closed refusals when the log cannot be written (a real ENOSPC)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from support import upstream_url

from gatewayd.observability import audit_chain as fmt
from gatewayd.observability import audit_verify as v

TOKEN = "audit-operator-token-0123456789"
VIEWER = "audit-viewer-token-0123456789"
TOKENS = [
    {"id": "ops", "hash": bcrypt.hashpw(TOKEN.encode(), bcrypt.gensalt(4)).decode()},
    {
        "id": "eyes",
        "hash": bcrypt.hashpw(VIEWER.encode(), bcrypt.gensalt(4)).decode(),
        "role": "viewer",
    },
]


def records(directory: Path) -> list[dict[str, Any]]:
    out = []
    for _, path in fmt.log_files(directory):
        out += [json.loads(line) for line in path.read_bytes().splitlines()]
    return out


async def echo_backend(backend: Any) -> str:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return upstream_url(await backend(app))


def audited_config(config: Any, target: str, **audit: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = config(
        upstreams={"api": {"targets": [target]}},
        routes=[
            {
                "name": "api",
                "match": {"path": "/api/"},
                "upstream": "api",
                "plugins": [{"key_auth": {}}, {"cache": {"default_ttl": "10s"}}],
            }
        ],
        audit={"checkpoint_idle": "200ms", "aggregate_after": 3, **audit},
    )
    cfg["admin"]["tokens"] = TOKENS
    return cfg


async def test_admin_mutations_reloads_and_auth_failures_are_recorded(
    gateway: Any, backend: Any, config: Any, tmp_path: Path
) -> None:
    cfg = audited_config(config, await echo_backend(backend))
    gw = await gateway(cfg)
    audit_dir = Path(cfg["state"]["dir"]) / "audit"
    trusted = tmp_path / "trusted.pub"
    shutil.copy(audit_dir / fmt.PUBLIC_KEY, trusted)  # the operator's copy, kept elsewhere
    ops = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as s:
        admin = gw.admin_url
        async with s.post(
            f"{admin}/_admin/keys", json={"tenant": "acme", "key_id": "k1"}, headers=ops
        ) as r:
            assert r.status == 201
            secret = (await r.json())["key"]
        async with s.post(f"{admin}/_admin/keys/k1/rotate", json={"grace": "1s"}, headers=ops) as r:
            assert r.status == 200
            rotated = (await r.json())["key"]
        async with s.post(f"{admin}/_admin/keys/k1/revoke", headers=ops) as r:
            assert r.status == 200
        async with s.post(
            f"{admin}/_admin/plugins/cache/purge", json={"prefix": "/"}, headers=ops
        ) as r:
            assert r.status == 200
        async with s.post(f"{admin}/_admin/reload", headers=ops) as r:
            assert r.status == 200
        async with s.post(
            f"{admin}/_admin/reload", headers={"Authorization": f"Bearer {VIEWER}"}
        ) as r:
            assert r.status == 403
        for _ in range(20):  # an unauthenticated flood on the gateway
            async with s.get(f"{gw.url}/api/x", headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401
        gw.write_config({**cfg, "routes": [{"name": "bad", "upstream": "missing"}]})
        async with s.post(f"{admin}/_admin/reload", headers=ops) as r:
            assert r.status == 422
        for _ in range(100):  # a record shows once it is on disk
            async with s.get(f"{admin}/_admin/audit?limit=3", headers=ops) as r:
                assert r.status == 200
                panel = await r.json()
            if any(r["what"].get("status") == 422 for r in panel["records"]):
                break
            await asyncio.sleep(0.02)
        async with s.get(f"{admin}/_admin/audit") as r:
            assert r.status == 401
    assert panel["enabled"] is True and len(panel["records"]) == 3
    seqs = [r["seq"] for r in panel["records"]]
    assert seqs == sorted(seqs, reverse=True)  # newest first
    refused = [r for r in panel["records"] if r["what"].get("status") == 422]
    assert refused[0]["type"] == "admin.mutation" and refused[0]["actor"] == "ops"
    assert set(panel["checkpoint"]) == {"last", "age_seconds"}
    await gw.stop()

    recs = records(audit_dir)
    raw = b"".join(p.read_bytes() for _, p in fmt.log_files(audit_dir))
    assert secret.encode() not in raw and rotated.encode() not in raw
    assert secret.rsplit("_", 1)[1].encode() not in raw
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_type.setdefault(r["type"], []).append(r)
    create = by_type["key.create"][0]
    assert (create["actor"], create["source"]) == ("ops", "127.0.0.1")
    assert create["what"]["status"] == 201 and create["what"]["after"]["key"] == "***"
    assert create["what"]["after"]["record"]["key_id"] == "k1"
    rotate = by_type["key.rotate"][0]
    assert rotate["what"]["before"]["key_id"] == "k1" and rotate["what"]["after"]["key"] == "***"
    revoke = by_type["key.revoke"][0]
    assert revoke["what"]["before"]["status"] == "active"
    assert revoke["what"]["after"]["status"] == "revoked"
    mutations = [
        (r["actor"], r["what"]["path"], r["what"]["status"]) for r in by_type["admin.mutation"]
    ]
    assert mutations == [
        ("ops", "/_admin/plugins/cache/purge", 200),
        ("ops", "/_admin/reload", 200),
        ("eyes", "/_admin/reload", 403),
        ("ops", "/_admin/reload", 422),
    ]
    purge = by_type["admin.mutation"][0]["what"]
    assert purge["after"] == {"purged": 0, "caches": 1}
    assert by_type["config.reloaded"][0]["what"]["config_hash"].startswith("sha256:")
    rejected = by_type["config.rejected"][0]["what"]
    assert "missing" in rejected["error"] and rejected["config_hash"].startswith("sha256:")
    failures = [r for r in by_type["auth.failure"] if r["what"].get("route") == "api"]
    # Per minute 3 one by one, then one with the count (the flood may straddle a minute).
    singles = [r for r in failures if "count" not in r["what"]]
    counted = [r for r in failures if "count" in r["what"]]
    assert len(singles) + sum(r["what"]["count"] for r in counted) == 20
    assert len(failures) <= 8 and len(singles) <= 6 and counted
    assert {r["source"] for r in failures} == {"127.0.0.1"}
    admin_401 = [r for r in by_type["auth.failure"] if r["what"].get("route") == "_admin"]
    assert [(r["actor"], r["what"]["status"]) for r in admin_401] == [(None, 401)]
    assert [r["type"] for r in recs][:1] == ["daemon.start"] and recs[-1]["type"] == "daemon.stop"
    result = v.verify(audit_dir, trusted)
    assert result.code == v.OK, result.message


@pytest.mark.parametrize("fail_closed", [True, False])
async def test_fail_closed_refuses_a_mutation_the_log_cannot_record(
    gateway: Any, backend: Any, config: Any, fail_closed: bool
) -> None:
    """The audit file is /dev/full (a real ENOSPC on every write)."""
    cfg = audited_config(config, await echo_backend(backend), fail_closed=fail_closed)
    audit_dir = Path(cfg["state"]["dir"]) / "audit"
    audit_dir.mkdir(parents=True)
    (audit_dir / fmt.file_name(1)).symlink_to("/dev/full")
    gw = await gateway(cfg)
    ops = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gw.admin_url}/_admin/keys", json={"tenant": "acme"}, headers=ops) as r:
            status, body = r.status, await r.json()
        async with s.get(f"{gw.admin_url}/_admin/keys", headers=ops) as r:
            keys = (await r.json())["keys"]
        errors = await gw.metric("gatewayd_audit_write_errors_total")
        # A dashboard form (a session, no bearer token): refused while the log is failing.
        async with s.post(f"{gw.admin_url}/dashboard/reload", allow_redirects=False) as r:
            dashboard = r.status
    if fail_closed:
        assert status == 503 and body["error"]["code"] == "audit_unavailable"
        assert body["error"]["request_id"] and keys == []
        assert dashboard == 503
    else:
        assert dashboard != 503 and status == 201 and len(keys) == 1
    assert errors >= 2  # the start record, and this mutation's


def test_mask_hides_secrets_and_new_keys_but_not_ids() -> None:
    from gatewayd.admin.audit import mask

    body = {
        "key": "gwd_k1_s3cret",
        "record": {"key_id": "k1", "tenant": "acme"},
        "provider": {"api_key": "sk-1", "url": "https://u:pw@h/x", "client_secret": "c"},
        "items": [{"password": "p"}],
    }
    assert mask(body) == {
        "key": "***",
        "record": {"key_id": "k1", "tenant": "acme"},
        "provider": {"api_key": "***", "url": "https://u:***@h/x", "client_secret": "***"},
        "items": [{"password": "***"}],
    }


def test_record_types_and_big_bodies() -> None:
    from gatewayd.admin.audit import MAX_BODY, _json, record_type

    assert record_type("POST", "/_admin/keys") == "key.create"
    assert record_type("POST", "/_admin/keys/k1/rotate") == "key.rotate"
    assert record_type("POST", "/_admin/keys/k1/revoke") == "key.revoke"
    assert record_type("DELETE", "/_admin/keys/k1") == "key.delete"
    assert record_type("POST", "/_admin/reload") == "admin.mutation"
    assert record_type("PUT", "/_admin/llm/providers/x") == "admin.mutation"
    assert _json(b"not json") == {"bytes": 8}
    big = json.dumps({"x": "y" * MAX_BODY}).encode()
    assert _json(big) == {"bytes": len(big), "truncated": True}
