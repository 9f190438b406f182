"""gatewayd_llm.connectivity: the provider test's steps against real servers on 127.0.0.1 (the
fake providers, a TLS server with a trustme CA, a socket that never answers)."""

from __future__ import annotations

import asyncio
import datetime
import re
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from fake_native_servers import FakeAnthropic, FakeOllama
from fake_openai_server import FakeOpenAI
from gatewayd_llm.connectivity import check_provider
from gatewayd_llm.kinds.anthropic import AnthropicUpstreamConfig
from gatewayd_llm.kinds.ollama import OllamaUpstreamConfig
from gatewayd_llm.kinds.openai import OpenAIUpstreamConfig
from gatewayd_llm.kinds.process import ProcessUpstreamConfig
from llm_testkit import free_port

SECRET = "sk-conn-test-Secret-0123456789"


def openai_config(base_url: str, connect: str = "2s") -> OpenAIUpstreamConfig:
    return OpenAIUpstreamConfig.model_validate(
        {"kind": "openai", "base_url": base_url, "timeouts": {"connect": connect}}
    )


def by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in result["steps"]}


def no_secret(result: dict[str, Any]) -> None:
    text = repr(result)
    assert SECRET not in text and SECRET[:8] not in text and SECRET[-8:] not in text


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    f = await FakeOpenAI(api_key=SECRET, models=("gpt-a", "gpt-b")).start()
    yield f
    await f.close()


async def test_openai_all_steps_ok(fake: FakeOpenAI) -> None:
    result = await check_provider("openai", openai_config(fake.url), SECRET)
    assert result["ok"] is True
    assert [s["name"] for s in result["steps"]] == ["dns", "connect", "auth", "models"]
    steps = by_name(result)
    assert all(s["ok"] is True and isinstance(s["ms"], float) for s in result["steps"])
    assert steps["dns"]["detail"] == "127.0.0.1: 127.0.0.1"
    assert steps["connect"]["detail"] == f"connected to 127.0.0.1 port {fake.port}"
    assert steps["auth"]["detail"] == "GET /v1/models answered 200"
    assert steps["models"]["detail"] == "2 models: gpt-a, gpt-b"
    # The cheap probe: the model list (the fake answers it only to Bearer SECRET, and records
    # every completion request: there was none).
    assert fake.requests == []
    no_secret(result)


async def test_wrong_secret_fails_auth_and_skips_models(fake: FakeOpenAI) -> None:
    wrong = SECRET[::-1]
    result = await check_provider("openai", openai_config(fake.url), wrong)
    steps = by_name(result)
    assert result["ok"] is False
    assert steps["auth"]["ok"] is False
    assert steps["auth"]["detail"] == "the provider refused the credentials (401)"
    assert steps["models"] == {"name": "models", "ok": None, "ms": None, "detail": "skipped"}
    assert wrong not in repr(result)


async def test_native_kinds_use_their_own_probe() -> None:
    anthropic = await FakeAnthropic(api_key=SECRET, models=("claude-x",)).start()
    ollama = await FakeOllama(models=("llama3.2:3b", "qwen")).start()
    try:
        a_cfg = AnthropicUpstreamConfig.model_validate(
            {"kind": "anthropic", "base_url": anthropic.url}
        )
        a = await check_provider("anthropic", a_cfg, SECRET)
        assert a["ok"] is True and by_name(a)["models"]["detail"] == "1 models: claude-x"
        assert [s.path for s in anthropic.requests] == ["/v1/models"]
        assert anthropic.requests[0].headers["x-api-key"] == SECRET
        bad = await check_provider("anthropic", a_cfg, "sk-wrong-one-123")
        assert by_name(bad)["auth"]["ok"] is False
        o_cfg = OllamaUpstreamConfig.model_validate({"kind": "ollama", "base_url": ollama.url})
        o = await check_provider("ollama", o_cfg, None)
        assert o["ok"] is True and by_name(o)["models"]["detail"] == "2 models: llama3.2:3b, qwen"
        assert [s.path for s in ollama.requests] == ["/api/tags"]
        assert "Authorization" not in ollama.requests[0].headers
    finally:
        await anthropic.close()
        await ollama.close()


async def test_connection_refused_skips_the_rest() -> None:
    port = free_port()
    result = await check_provider("openai", openai_config(f"http://127.0.0.1:{port}/v1"), SECRET)
    steps = by_name(result)
    assert steps["dns"]["ok"] is True and steps["connect"]["ok"] is False
    assert "127.0.0.1" in steps["connect"]["detail"]
    assert steps["auth"]["detail"] == steps["models"]["detail"] == "skipped"


async def test_dns_failure() -> None:
    result = await check_provider(
        "openai", openai_config("http://no-such-host.invalid/v1", "1s"), SECRET
    )
    steps = by_name(result)
    assert steps["dns"]["ok"] is False and steps["dns"]["detail"].startswith(
        ("no-such-host.invalid: ", "timed out")
    )
    assert [s["ok"] for s in result["steps"][1:]] == [None, None, None]


async def test_a_silent_server_is_bounded_by_the_connect_timeout() -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        result = await check_provider(
            "openai", openai_config(f"http://127.0.0.1:{port}/v1", "300ms"), SECRET
        )
        elapsed = time.monotonic() - started
    finally:
        server.close()
    steps = by_name(result)
    assert steps["connect"]["ok"] is True
    assert steps["auth"] == {**steps["auth"], "ok": False, "detail": "timed out after 0.3 s"}
    assert 0.3 <= steps["auth"]["ms"] / 1000 < 1.0 and elapsed < 2.0


async def test_provider_text_is_scrubbed_of_the_secret() -> None:
    async def models(request: web.Request) -> web.Response:
        quoted = request.headers["Authorization"]
        return web.json_response(
            {"error": {"message": f"backend down for {quoted} (key {SECRET})"}}, status=500
        )

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        result = await check_provider(
            "openai", openai_config(f"http://127.0.0.1:{port}/v1"), SECRET
        )
    finally:
        await runner.cleanup()
    models_step = by_name(result)["models"]
    assert models_step["ok"] is False
    assert models_step["detail"].startswith("the model list answered 500: backend down for ")
    assert "***" in models_step["detail"]
    no_secret(result)


# -- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def tls_server(ca: trustme.CA, **cert: Any) -> tuple[web.AppRunner, int]:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "tls-model"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", **cert).configure_cert(ctx)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    return runner, port


async def test_tls_verified_against_the_trust_store(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, port = await tls_server(ca, common_name="localhost")
    url = f"https://localhost:{port}/v1"
    try:
        untrusted = await check_provider("openai", openai_config(url), SECRET)
        steps = by_name(untrusted)
        assert steps["connect"]["ok"] is True and steps["tls"]["ok"] is False
        assert steps["tls"]["detail"].startswith("certificate not trusted: ")
        assert steps["auth"]["detail"] == "skipped"

        bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # the system trust store, for the test
        trusted = await check_provider("openai", openai_config(url), SECRET)
        steps = by_name(trusted)
        assert trusted["ok"] is True, trusted
        assert [s["name"] for s in trusted["steps"]] == ["dns", "connect", "tls", "auth", "models"]
        assert steps["tls"]["detail"].startswith("TLSv1.")
        assert re.fullmatch(
            r"TLSv1\.[23], certificate O=[^,]+, CN=localhost for localhost issued by O=.+, "
            r"expires \d{4}-\d\d-\d\d \(in \d+ days\)",
            steps["tls"]["detail"],
        ), steps["tls"]["detail"]
        assert steps["models"]["detail"] == "1 models: tls-model"
    finally:
        await runner.cleanup()


async def test_an_expired_certificate_fails_tls(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    runner, port = await tls_server(
        ca, not_before=past, not_after=past + datetime.timedelta(days=1)
    )
    try:
        result = await check_provider(
            "openai", openai_config(f"https://localhost:{port}/v1"), SECRET
        )
    finally:
        await runner.cleanup()
    tls = by_name(result)["tls"]
    assert tls["ok"] is False and "expired" in tls["detail"]


# -- process ---------------------------------------------------------------------------------------


async def test_process_kind_checks_the_command(tmp_path: Path) -> None:
    found = ProcessUpstreamConfig.model_validate(
        {"kind": "process", "command": [sys.executable, "-c", "pass"]}
    )
    ok = await check_provider("process", found, None)
    assert ok == {
        "ok": True,
        "steps": [
            {
                "name": "command",
                "ok": True,
                "ms": ok["steps"][0]["ms"],
                "detail": f"found {sys.executable}",
            }
        ],
    }
    script = tmp_path / "model.sh"
    script.write_text("#!/bin/sh\n")  # not executable
    for command in (str(script), "no-such-model-cli-xyz"):
        cfg = ProcessUpstreamConfig.model_validate({"kind": "process", "command": [command]})
        bad = await check_provider("process", cfg, None)
        assert bad["ok"] is False
        assert bad["steps"][0]["detail"] == f"{command}: not found or not executable"
