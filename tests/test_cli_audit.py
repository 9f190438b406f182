"""``gatewayd audit verify|export`` and the key commands' audit records, as the operator runs
them (subprocesses, real files)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import yaml

from gatewayd.observability import audit_chain as fmt
from gatewayd.observability.audit import ChainWriter, Entry


def gatewayd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args], capture_output=True, text=True, timeout=60
    )


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "gatewayd.yaml"
    cfg = {"state": {"dir": str(tmp_path / "state")}, "audit": {"dir": str(tmp_path / "audit")}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def make_log(directory: Path) -> None:
    w = ChainWriter(directory, 64 * 1024)
    first = datetime(2026, 12, 1, 8, 53, 20, tzinfo=UTC).timestamp()
    for i, at in enumerate([first, first + 3600, first + 7200]):
        w.append([Entry("admin.mutation", "ops", "127.0.0.1", {"i": i, "note": 'a "quote"'}, at)])
    w.checkpoint()


def test_verify_ok_then_each_damage_exits_with_its_code(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    make_log(directory)
    trusted = tmp_path / "trusted.pub"
    trusted.write_bytes((directory / fmt.PUBLIC_KEY).read_bytes())
    ok = gatewayd("audit", "verify", "--dir", str(directory), "--public-key", str(trusted))
    assert ok.returncode == 0, ok.stderr
    assert "ok: 3 records in 1 files, 1 checkpoints" in ok.stdout and ok.stderr == ""
    beside = gatewayd("audit", "verify", "-c", str(write_config(tmp_path)))
    assert beside.returncode == 0 and "warning" in beside.stderr and "--public-key" in beside.stderr
    path = directory / fmt.file_name(1)
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"i":1', b'"i":7'))
    bad = gatewayd("audit", "verify", "--dir", str(directory), "--public-key", str(trusted))
    assert bad.returncode == 10
    assert bad.stderr.count("\n") == 1 and "was changed" in bad.stderr and "exit 10" in bad.stderr
    path.write_bytes(b"".join(data.splitlines(keepends=True)[:2]))
    cut = gatewayd("audit", "verify", "--dir", str(directory), "--public-key", str(trusted))
    assert cut.returncode == 16 and "before the last checkpoint" in cut.stderr
    missing = gatewayd("audit", "verify", "--dir", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def test_export_a_time_range_as_jsonl_and_csv(tmp_path: Path) -> None:
    make_log(tmp_path / "audit")
    config = str(write_config(tmp_path))
    out = gatewayd("audit", "export", "-c", config, "--from", "2026-12-01T09:00:00Z")
    assert out.returncode == 0, out.stderr
    recs = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["what"]["i"] for r in recs] == [1, 2]  # 09:53:20Z and 10:53:20Z
    out = gatewayd(
        "audit",
        "export",
        "-c",
        config,
        "--from",
        "2026-12-01",
        "--to",
        "2026-12-01T11:00:00+01:00",
        "--format",
        "csv",
    )
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows[0] == ["seq", "time", "type", "actor", "source", "what"]
    assert [r[0] for r in rows[1:]] == ["1", "2"]
    assert json.loads(rows[1][5]) == {"i": 0, "note": 'a "quote"'}
    bad = gatewayd("audit", "export", "-c", config, "--from", "yesterday")
    assert bad.returncode == 2 and "is not a time" in bad.stderr


def test_key_commands_are_recorded_and_signed(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    created = gatewayd("keys", "create", "-c", config, "--tenant", "acme", "--id", "k1", "--json")
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)["key"]
    assert gatewayd("keys", "rotate", "-c", config, "k1", "--grace", "1s").returncode == 0
    assert gatewayd("keys", "revoke", "-c", config, "k1").returncode == 0
    directory = tmp_path / "audit"
    raw = b"".join(p.read_bytes() for _, p in fmt.log_files(directory))
    recs = [json.loads(line) for line in raw.splitlines()]
    assert [(r["type"], r["actor"], r["what"]["key_id"]) for r in recs] == [
        ("key.create", "cli", "k1"),
        ("key.rotate", "cli", "k1"),
        ("key.revoke", "cli", "k1"),
    ]
    assert secret.encode() not in raw
    ok = gatewayd("audit", "verify", "-c", config)
    assert ok.returncode == 0, ok.stderr  # each command signed its record


def test_a_key_command_whose_record_cannot_be_written(tmp_path: Path) -> None:
    """/dev/full: the key is made (the store comes first); fail_closed turns it into exit 1."""
    config = write_config(tmp_path)
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / fmt.file_name(1)).symlink_to("/dev/full")
    made = gatewayd("keys", "create", "-c", str(config), "--tenant", "acme")
    assert made.returncode == 0 and "audit record was not written" in made.stderr
    cfg = yaml.safe_load(config.read_text())
    cfg["audit"]["fail_closed"] = True
    config.write_text(yaml.safe_dump(cfg))
    refused = gatewayd("keys", "create", "-c", str(config), "--tenant", "acme")
    assert refused.returncode == 1 and "audit record was not written" in refused.stderr
