"""GET /_admin/upstreams: every upstream of every kind, through the real daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
from support import upstream_url

TOKEN = "upstreams-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def with_token(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg["admin"]["tokens"] = [
        {"id": "ops", "hash": bcrypt.hashpw(TOKEN.encode(), bcrypt.gensalt(4)).decode()}
    ]
    return cfg


async def test_relay_upstream_without_peers_is_listed_not_a_500(
    tmp_path: Path, gateway: Any, backend: Any, config: Any
) -> None:
    """Defect 1 of issue 10: a relay upstream (the shipped example has one) made this a 500."""
    from aiohttp import web

    server = await backend(web.Application())
    cfg = with_token(
        config(
            upstreams={
                "api": {"targets": [upstream_url(server)], "health": {"interval": "1s"}},
                "mcp": {"relay": "my-mcp"},
            },
            routes=[
                {"name": "api", "match": {"path": "/api/"}, "upstream": "api"},
                {"name": "mcp", "match": {"path": "/mcp/"}, "upstream": "mcp"},
            ],
        )
    )
    gw = await gateway(cfg)
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.admin_url + "/_admin/upstreams", headers=ADMIN) as r,
    ):
        assert r.status == 200, await r.text()
        view = {u["name"]: u for u in (await r.json())["upstreams"]}
    assert view["api"]["kind"] == "http"
    assert [t["id"] for t in view["api"]["targets"]] == [upstream_url(server)]
    assert view["api"]["health_checks"] is True
    assert view["mcp"]["kind"] == "relay"
    assert view["mcp"]["targets"] == []  # no peer holds the lease yet
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/mcp/x") as r:
        assert r.status == 503  # no peer: the same answer as an HTTP upstream with no target
        assert (await r.json())["error"]["code"] == "upstream_unavailable"


async def test_unknown_upstream_kind_is_refused_with_its_path(
    tmp_path: Path, gateway: Any, config: Any
) -> None:
    import subprocess
    import sys

    import yaml

    cfg = config(upstreams={"x": {"kind": "nope", "targets": ["a"]}}, routes=[])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0
    assert "upstreams.x.kind" in out.stderr + out.stdout
    assert "unknown upstream kind 'nope'" in out.stderr + out.stdout
    assert "unix" in out.stderr + out.stdout  # the installed kinds are named
    assert "Traceback" not in out.stderr + out.stdout
