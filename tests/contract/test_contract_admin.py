"""The admin API against its contract: schemathesis (all checks, every phase: examples,
coverage, fuzzing and the stateful phase that follows the document's links) against a live
daemon, for every operation of GET /_admin/openapi.json.

Run alone: ``.venv/bin/pytest -q tests/contract/test_contract_admin.py -p no:cacheprovider``.
A failure prints schemathesis's report, with a ``curl`` line per failing case.

Anything schemathesis finds fails this test (no accepted failures).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import bcrypt
import pytest

from gatewayd.admin.openapi import load_document

HERE = Path(__file__).parent
TOKEN = "contract-admin-token-0123456789"
SEED = 20261201
MAX_EXAMPLES = 20
OPERATIONS = ("get", "put", "post", "delete", "patch")


def schemathesis_binary() -> str:
    beside = Path(sys.executable).with_name("schemathesis")
    found = str(beside) if beside.exists() else shutil.which("schemathesis")
    if found is None:
        pytest.fail("schemathesis is not installed (pip install -e '.[test]')", pytrace=False)
    return found


async def run_schemathesis(
    schema_url: str, token: str, config: Path, baseline: Path | None, workdir: Path
) -> tuple[int, str]:
    args = [
        schemathesis_binary(),
        "--no-color",
        "--config-file",
        str(config),
        "run",
        schema_url,
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--request-timeout",
        "10",
        "--workers",
        "1",
    ]
    args += ["--report", "junit", "--report-junit-path", str(workdir / "junit.xml")]
    if baseline is not None:
        args += ["--baseline", str(baseline)]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=workdir,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def admin_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Every built-in plugin with admin routes has an instance serving, the relay accepts one
    event type, an operator token (schemathesis calls every operation with it)."""
    cfg["admin"]["tokens"] = [
        {"id": "contract", "hash": bcrypt.hashpw(TOKEN.encode(), bcrypt.gensalt(4)).decode()}
    ]
    cfg["upstreams"] = {"api": {"targets": ["http://127.0.0.1:9"]}}
    cfg["routes"] = [
        {
            "name": "api",
            "match": {"path": "/api/"},
            "upstream": "api",
            "plugins": [{"circuit_breaker": {}}, {"cache": {}}],
        }
    ]
    cfg["relay"] = {"event_types": ["api.deployed"]}
    return cfg


def document_operations(document: dict[str, Any]) -> set[str]:
    return {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in OPERATIONS
        if method in item
    }


def operations_run(junit: Path) -> set[str]:
    """The operations schemathesis ran (one JUnit test case each)."""
    return {case.attrib["name"] for case in ElementTree.parse(junit).iter("testcase")}


@pytest.mark.slow
async def test_schemathesis_all_checks_on_every_admin_operation(
    tmp_path: Path, gateway: Any, config: Any
) -> None:
    gw = await gateway(admin_config(config()))
    code, out = await run_schemathesis(
        gw.admin_url + "/_admin/openapi.json",
        TOKEN,
        HERE / "schemathesis-admin.toml",
        None,
        tmp_path,
    )
    assert code == 0, out[-20000:]
    # every operation, but the document's own (schemathesis leaves out the URL it loaded the
    # document from; tests/admin/test_openapi.py calls it)
    expected = document_operations(load_document()) - {"GET /_admin/openapi.json"}
    run = operations_run(tmp_path / "junit.xml")
    assert "Stateful tests" in run  # the phase that follows the links ran
    assert run - {"Stateful tests"} == expected
