"""``gatewayd admin token create|list|revoke`` (gatewayd/cli_admin.py) against a real daemon:
the pasted line and the stored tokens authenticate, a revoked stored token is refused on the
next call, the same id twice is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gatewayd.admin.tokens import add_token, hash_token, token_path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", "admin", "token", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GATEWAYD_CONFIG": "/nonexistent/gatewayd.yaml"},
    )


async def call(gw: Any, token: str, method: str = "GET", path: str = "/_admin/config") -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, gw.admin_url + path, headers=headers) as r,
    ):
        return r.status, await r.json()


async def test_create_prints_the_token_once_and_the_line_to_paste(gateway, config, tmp_path):
    out = cli("create", "--id", "ops", "--role", "operator")  # no config file: print only
    assert out.returncode == 0, out.stderr
    token, hint, line = out.stdout.splitlines()
    assert token.startswith("gwadm_")
    assert "shown once" in out.stderr
    assert "paste under admin.tokens" in hint
    entry = yaml.safe_load(line)[0]
    assert entry["id"] == "ops" and entry["role"] == "operator"
    assert entry["hash"].startswith("$2b$12$")  # bcrypt, cost 12 by default
    assert token not in line
    viewer = cli("create", "--id", "dash", "--role", "viewer", "--rounds", "4", "--json")
    v = json.loads(viewer.stdout)
    cfg = config(admin={**config()["admin"], "tokens": [entry, yaml.safe_load(v["config"])[0]]})
    gw = await gateway(cfg)
    assert (await call(gw, token))[0] == 200
    assert (await call(gw, v["token"]))[0] == 200
    status, body = await call(gw, v["token"], "POST", "/_admin/reload")  # viewer: read-only
    assert status == 403 and "operator" in body["error"]["message"]
    status, body = await call(gw, token, "POST", "/_admin/reload")
    assert status == 200 and body["reloaded"] is True


async def test_stored_tokens_work_at_once_and_revocation_applies_on_the_next_call(gateway, config):
    cfg = config()  # no admin.tokens: the admin API is off ...
    gw = await gateway(cfg)
    status, body = await call(gw, "gwadm_whatever")
    assert status == 403 and "disabled" in body["error"]["message"]
    assert body["error"]["request_id"]
    c = str(gw.config_path)
    made = cli("create", "--id", "ops", "--role", "operator", "--store", "--rounds", "4", "-c", c)
    assert made.returncode == 0, made.stderr
    token = made.stdout.splitlines()[0]
    assert "stored as 'ops'" in made.stdout and "$2b$" not in made.stdout
    path = token_path(Path(cfg["state"]["dir"]))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert (await call(gw, token))[0] == 200  # ... until a token is stored: no reload needed
    viewer = cli("create", "--id", "v", "--role", "viewer", "--store", "--rounds", "4", "-c", c)
    vtoken = viewer.stdout.splitlines()[0]
    assert (await call(gw, vtoken))[0] == 200
    assert (await call(gw, vtoken, "POST", "/_admin/reload"))[0] == 403
    listed = cli("list", "-c", c, "--json")
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["role"], r["source"]) for r in rows] == [
        ("ops", "operator", "stored"),
        ("v", "viewer", "stored"),
    ]
    assert "$2b$" not in listed.stdout
    revoked = cli("revoke", "ops", "-c", c)
    assert revoked.returncode == 0 and "revoked ops" in revoked.stdout
    status, body = await call(gw, token)  # the very next call, without a reload
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert (await call(gw, vtoken))[0] == 200
    again = cli("revoke", "ops", "-c", c)
    assert again.returncode == 1 and "no stored admin token with id 'ops'" in again.stderr
    assert token not in gw.logs() and vtoken not in gw.logs()
    # the stored tokens' creation and revocation are in the audit log, without a secret
    audit = "".join(p.read_text() for p in sorted((path.parent / "audit").glob("audit-*.jsonl")))
    records = [json.loads(line) for line in audit.splitlines()]
    records = [r for r in records if r["type"].startswith("admin_token.")]  # and the daemon's
    assert [(r["type"], r["what"]["token_id"]) for r in records] == [
        ("admin_token.create", "ops"),
        ("admin_token.create", "v"),
        ("admin_token.revoke", "ops"),
    ]
    assert token not in audit and "$2b$" not in audit


async def test_the_same_id_twice_is_refused(gateway, config, tmp_path):
    hashed = hash_token("config-token-123", rounds=4)
    cfg = config(admin={**config()["admin"], "tokens": [{"id": "ops", "hash": hashed}]})
    gw = await gateway(cfg)
    c = str(gw.config_path)
    out = cli("create", "--id", "ops", "--store", "--rounds", "4", "-c", c)
    assert out.returncode == 1
    assert "admin.tokens in" in out.stderr and "has id 'ops' already" in out.stderr
    assert out.stdout == ""  # no token was made
    first = cli("create", "--id", "two", "--store", "--rounds", "4", "-c", c)
    assert first.returncode == 0
    second = cli("create", "--id", "two", "--store", "--rounds", "4", "-c", c)
    assert second.returncode == 1 and "'two' exists already" in second.stderr
    out = cli("revoke", "ops", "-c", c)
    assert out.returncode == 1 and "remove it there and reload" in out.stderr
    out = cli("create", "--id", "bad id", "-c", c)
    assert out.returncode == 2 and "invalid token id" in out.stderr
    # a stored token whose id the config has too (written behind the CLI's back) does not count
    add_token(token_path(Path(cfg["state"]["dir"])), "ops", "operator", hash_token("shadow", 4))
    status, _ = await call(gw, "shadow")
    assert status == 403
    assert (await call(gw, "config-token-123"))[0] == 200
    logs = gw.logs()
    assert "has the id of a configured one" in logs and "$2b$" not in logs
    twice = dict(cfg)
    twice["admin"] = {**cfg["admin"], "tokens": [{"id": "ops", "hash": hashed}] * 2}
    gw.write_config(twice)
    out = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check", "-c", c], capture_output=True, text=True
    )
    assert out.returncode == 1 and "the same token id twice: ops" in out.stderr
