"""The LLM gateway against its contract: schemathesis (all checks, every phase, a fixed seed)
against a live daemon with a fake OpenAI provider, for every operation of
gatewayd_llm/openapi.yaml. The document spans two listeners, so there are two runs over the
same document: ``/v1/...`` on the gateway's listener with an API key, ``/_admin/llm/...`` on
the admin listener with an admin token.

Run alone: ``.venv/bin/pytest -q plugins/gatewayd-llm/tests/test_contract_schemathesis.py
-p no:cacheprovider``. A failure prints schemathesis's report (a ``curl`` line per case).

Anything schemathesis finds fails this test (no accepted failures). The operations' settings
that the document cannot say (run-time references, ``from`` before ``to``) are in
``schemathesis-llm.toml``.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import pytest
from fake_openai_server import FakeOpenAI
from gatewayd_llm.contract import document
from gatewayd_llm.sealing import generate_key_file
from llm_testkit import ADMIN_TOKEN, openai_upstream

HERE = Path(__file__).parent
SEED = 20261201
MAX_EXAMPLES = 15
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
OPERATIONS = ("get", "put", "post", "delete", "patch")


def schemathesis_binary() -> str:
    beside = Path(sys.executable).with_name("schemathesis")
    found = str(beside) if beside.exists() else shutil.which("schemathesis")
    if found is None:
        pytest.fail("schemathesis is not installed (pip install -e 'plugins/gatewayd-llm[test]')")
    return found


async def schemathesis(
    schema_url: str,
    base_url: str,
    token: str,
    paths: str,
    workdir: Path,
    baseline: Path | None = None,
) -> tuple[int, str, set[str]]:
    """(exit code, report, the operations run) of one schemathesis run."""
    junit = workdir / f"junit-{paths.strip('^/').split('/')[0]}.xml"
    args = [
        schemathesis_binary(),
        "--no-color",
        "--config-file",
        str(HERE / "schemathesis-llm.toml"),
        "run",
        schema_url,
        "--url",
        base_url,
        "--include-path-regex",
        paths,
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--request-timeout",
        "15",
        "--workers",
        "1",
        "--report",
        "junit",
        "--report-junit-path",
        str(junit),
    ]
    if baseline is not None:
        args += ["--baseline", str(baseline)]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=workdir
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    ran = (
        {c.attrib["name"] for c in ElementTree.parse(junit).iter("testcase")}
        if junit.exists()
        else set()
    )
    return proc.returncode, out.decode(errors="replace"), ran - {"Stateful tests"}


def documented(prefix: str) -> set[str]:
    return {
        f"{method.upper()} {path}"
        for path, item in document()["paths"].items()
        if path.startswith(prefix)
        for method in OPERATIONS
        if method in item
    }


@pytest.mark.slow
async def test_schemathesis_all_checks_on_every_llm_operation(
    tmp_path: Path, fake_openai: FakeOpenAI, llm_config: Any, llm_gateway: Any
) -> None:
    key = tmp_path / "llm.key"
    generate_key_file(key)
    upstreams = {"main": openai_upstream(fake_openai.url)}
    llm = {
        # no context_window: a request's size is then the provider's to judge
        "models": {"m": [{"upstream": "main", "model": "fake-model"}]},
        "secrets_key_file": str(key),
    }
    config = llm_config(upstreams, llm)
    usage = {"name": "my-usage", "match": {"path": "/v1/usage"}}
    config["routes"].append({**usage, "plugins": [{"key_auth": {}}, {"llm_usage": {}}]})
    gw = await llm_gateway(config)
    # the document as the daemon serves it, in a file: the /v1 run's API key may not read it
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.admin_url + "/_admin/llm/openapi.json", headers=ADMIN) as r,
    ):
        assert r.status == 200
        served = await r.read()
    schema_file = tmp_path / "llm-openapi.json"
    await asyncio.to_thread(schema_file.write_bytes, served)
    schema_url = str(schema_file)
    data_code, data_out, data_ran = await schemathesis(
        schema_url, gw.url, gw.key, "^/v1/", tmp_path
    )
    admin_code, admin_out, admin_ran = await schemathesis(
        schema_url, gw.admin_url, ADMIN_TOKEN, "^/_admin/llm/", tmp_path
    )
    assert data_code == 0, data_out[-20000:]
    assert admin_code == 0, admin_out[-20000:]
    assert data_ran == documented("/v1/")
    assert admin_ran == documented("/_admin/llm/")
