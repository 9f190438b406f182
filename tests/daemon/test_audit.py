"""The daemon's own audit records: start and stop, and relay leases registered and lost (from
the event bus), through a real daemon and the real peer client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import Daemon

from gatewayd.config.schema import StateConfig
from gatewayd.observability import audit_chain as fmt
from gatewayd.observability import audit_verify as v
from gatewayd.relay.peer import Peer
from gatewayd.stores.keys import KeyStoreSettings, open_key_store


def records(directory: Path) -> list[dict[str, Any]]:
    out = []
    for _, path in fmt.log_files(directory):
        out += [json.loads(line) for line in path.read_bytes().splitlines()]
    return out


async def test_relay_leases_registered_and_lost_are_recorded(gateway: Any, config: Any) -> None:
    cfg = config(routes=[{"name": "peers", "match": {"path": "/peer/"}, "relay": "by_path"}])
    cfg["relay"] = {"heartbeat": {"interval": "200ms", "timeout": "1s"}}
    state = Path(cfg["state"]["dir"])
    gw = await gateway(cfg)
    store = await open_key_store(StateConfig(dir=state), settings=KeyStoreSettings(bcrypt_rounds=4))
    try:
        key, record = await store.create("acme", scopes=["relay:app"])
    finally:
        await store.close()
    url = gw.url.replace("http://", "ws://") + "/_relay/connect"
    async with Peer(url, "app", key, "http://127.0.0.1:9") as peer:
        await peer.wait_connected()
    await gw.stop()
    recs = records(state / "audit")
    leases = [r for r in recs if r["type"].startswith("relay.lease.")]
    assert [(r["type"], r["actor"], r["source"], r["what"]["lease"]) for r in leases] == [
        ("relay.lease.registered", record.key_id, "127.0.0.1", "app"),
        ("relay.lease.lost", record.key_id, None, "app"),
    ]
    assert leases[1]["what"]["connection"] == leases[0]["what"]["connection"]
    assert "reason" in leases[1]["what"]
    assert key.encode() not in b"".join(p.read_bytes() for _, p in fmt.log_files(state / "audit"))
    assert (recs[0]["type"], recs[-1]["type"]) == ("daemon.start", "daemon.stop")
    assert recs[0]["what"]["config_hash"].startswith("sha256:")
    assert v.verify(state / "audit", state / "audit" / fmt.PUBLIC_KEY).code == v.OK


async def test_audit_enabled_false_writes_nothing(gateway: Any, config: Any) -> None:
    cfg = config(audit={"enabled": False})
    gw = await gateway(cfg)
    await gw.stop()
    assert not (Path(cfg["state"]["dir"]) / "audit").exists()


@pytest.mark.parametrize("fail_closed", [False, True])
async def test_an_audit_log_that_cannot_be_opened(
    gateway: Any, config: Any, tmp_path: Path, fail_closed: bool
) -> None:
    """A signing key that is not one: the daemon serves without the log (every record counted
    as a write error), or, fail-closed, refuses to start with one line."""
    cfg = config(audit={"fail_closed": fail_closed})
    audit_dir = Path(cfg["state"]["dir"]) / "audit"
    audit_dir.mkdir(parents=True)
    (audit_dir / fmt.PRIVATE_KEY).write_text("not a key\n")
    if not fail_closed:
        gw = await gateway(cfg)
        assert await gw.metric("gatewayd_audit_write_errors_total") >= 1  # daemon.start's
        assert "the audit log cannot be opened" in gw.logs()
        return
    d = Daemon(cfg, tmp_path / "refused")
    with pytest.raises(RuntimeError, match="exited 1") as refused:
        await d.start()
    assert "cannot start: audit log:" in str(refused.value)
    assert "Traceback" not in d.logs()
