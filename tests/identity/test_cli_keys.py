"""``gatewayd keys ...`` against the store under the config's state dir."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from .identity_support import sqlite_store


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args], capture_output=True, text=True, timeout=30
    )


async def test_create_list_rotate_revoke(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({"state": {"dir": str(tmp_path / "state")}}))
    c = str(cfg)
    out = cli(
        "keys",
        "create",
        "-c",
        c,
        "--tenant",
        "acme",
        "--scope",
        "api:read",
        "--expires",
        "30d",
        "--id",
        "ci-1",
        "--description",
        "CI",
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.splitlines()[0]
    assert key.startswith("gwd_ci-1_")
    assert "shown once" in out.stderr
    listed = cli("keys", "list", "-c", c)
    assert "ci-1" in listed.stdout and "acme" in listed.stdout and "api:read" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout
    store = sqlite_store(tmp_path / "state")
    assert (await store.verify(key)) is not None
    rotated = cli("keys", "rotate", "-c", c, "ci-1", "--grace", "0s", "--json")
    assert rotated.returncode == 0, rotated.stderr
    new_key = json.loads(rotated.stdout)["key"]
    store2 = sqlite_store(tmp_path / "state")
    assert await store2.verify(new_key) is not None
    assert await store2.verify(key) is None  # no grace
    assert cli("keys", "revoke", "-c", c, "ci-1").returncode == 0
    store3 = sqlite_store(tmp_path / "state")
    assert await store3.verify(new_key) is None
    data = json.loads(cli("keys", "list", "-c", c, "--json").stdout)
    assert data[0]["status"] == "revoked"
    for s in (store, store2, store3):
        await s.close()


def test_user_errors_are_one_line(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({"state": {"dir": str(tmp_path / "state")}}))
    for args in (
        ("keys", "revoke", "-c", str(cfg), "missing"),
        ("keys", "create", "-c", str(cfg), "--tenant", "a", "--id", "bad_id"),
        ("keys", "list", "-c", str(tmp_path / "nope.yaml")),
    ):
        out = cli(*args)
        assert out.returncode == 1, args
        assert "Traceback" not in out.stderr and out.stderr.strip(), args
