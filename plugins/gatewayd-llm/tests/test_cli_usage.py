"""``gatewayd llm usage export`` as a subprocess: the records of a running daemon (made through
the openai SDK) as JSON lines and CSV, parsed back and compared with the store; ranges and a
tenant; one clear line and exit 1 for bad dates and a missing store; memory that does not grow
with the export."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from gatewayd_llm.usage import UsageRecord, UsageStore
from gatewayd_llm.usage_query import iso
from llm_testkit import gateway_config
from test_llm_usage import make
from test_usage_api import traffic

# Runs the command line in-process and says its peak memory (KiB) on the last line of stderr.
MEASURED = (
    "import resource, sys\n"
    "from gatewayd.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "sys.stderr.write(f'maxrss={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n')\n"
    "sys.exit(rc)\n"
)


async def export(config: Path, *args: str, measured: bool = False) -> tuple[int, str, str]:
    head = [sys.executable, "-c", MEASURED] if measured else [sys.executable, "-m", "gatewayd"]
    proc = await asyncio.create_subprocess_exec(
        *head,
        "llm",
        "usage",
        "export",
        "-c",
        str(config),
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def exported(rec: UsageRecord) -> dict[str, Any]:
    """What the export says of a record (JSON types)."""
    doc = dataclasses.asdict(rec)
    doc["time"] = iso(rec.time)
    doc["total_tokens"] = rec.total_tokens
    return doc


def as_csv(doc: dict[str, Any]) -> dict[str, str]:
    def text(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    return {k: text(v) for k, v in doc.items()}


async def test_export_while_the_daemon_runs(
    make_fake_openai, llm_config, llm_gateway, tmp_path: Path
) -> None:
    gw, records, _ = await traffic(make_fake_openai, llm_config, llm_gateway)
    want = [exported(r) for r in records]

    rc, out, err = await export(gw.config_path, "--format", "jsonl")
    assert rc == 0, err
    assert [json.loads(line) for line in out.splitlines()] == want

    target = tmp_path / "usage.csv"
    rc, out, err = await export(gw.config_path, "--format", "csv", "--output", str(target))
    assert rc == 0 and out == "", err
    assert f"{len(records)} records" in err
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert rows == [as_csv(d) for d in want]
    assert list(rows[0]) == list(want[0])  # the header: every field, in order

    # a tenant; a range (to exclusive) that leaves out the first record
    rc, out, _ = await export(gw.config_path, "--tenant", "globex")
    assert [json.loads(x) for x in out.splitlines()] == [d for d in want if d["tenant"] == "globex"]
    rc, out, _ = await export(gw.config_path, "--from", want[1]["time"], "--to", "2100-01-01")
    assert rc == 0 and [json.loads(x) for x in out.splitlines()] == want[1:]
    rc, out, _ = await export(
        gw.config_path, "--format", "csv", "--from", "2001-01-01", "--to", "2001-01-02"
    )
    assert rc == 0 and out.splitlines() == [",".join(want[0])]  # the header alone

    # the daemon goes on recording meanwhile
    async with gw.client(gw.keys["a1"]) as client:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    more = await gw.usage(len(records) + 1)
    rc, out, _ = await export(gw.config_path)
    assert [json.loads(x) for x in out.splitlines()] == [exported(r) for r in more]


async def test_bad_dates_and_a_missing_store_exit_1(tmp_path: Path) -> None:
    cfg = gateway_config(tmp_path / "empty-state", {}, {"models": {}})
    path = tmp_path / "gatewayd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for args, words in [
        (("--from", "last tuesday"), "--from: 'last tuesday' is not an ISO 8601"),
        (("--to", "2026-12-45"), "--to: "),
        (("--from", "2026-12-02", "--to", "2026-12-01"), "--from: "),
        ((), f"no usage store at {tmp_path / 'empty-state' / 'llm' / 'usage.sqlite3'}"),
    ]:
        rc, out, err = await export(path, *args)
        assert rc == 1 and out == "", args
        assert len(err.splitlines()) == 1 and words in err, err
        assert "Traceback" not in err
    rc, out, err = await export(path, "--format", "xml")
    assert rc == 2 and "invalid choice" in err  # argparse's own usage error
    rc, out, err = await export(tmp_path / "missing.yaml")
    assert rc == 1 and "Traceback" not in err and "missing.yaml" in err


async def test_the_export_is_streamed(tmp_path: Path) -> None:
    """Peak memory exporting 30,000 records is that of exporting 600: never loaded whole
    (30,000 records held at once take some 26 MB)."""
    configs = []
    for n in (600, 30_000):
        state = tmp_path / f"state-{n}"
        store = UsageStore(state / "llm" / "usage.sqlite3", batch=5000)
        await store.start()
        for i in range(n):
            store.record(make(i))
        await store.close()
        path = tmp_path / f"gatewayd-{n}.yaml"
        path.write_text(yaml.safe_dump(gateway_config(state, {}, {"models": {}})))
        configs.append(path)
    peaks = []
    for path, n in zip(configs, (600, 30_000), strict=True):
        rc, out, err = await export(
            path, "--from", "2023-01-01", "--to", "2024-01-01", measured=True
        )
        assert rc == 0, err
        assert out.count("\n") == n
        peaks.append(int(err.strip().splitlines()[-1].removeprefix("maxrss=")))
    assert peaks[1] - peaks[0] < 12 * 1024, f"peak memory {peaks} KiB"
