"""Fixtures of the gatewayd-llm distribution's tests (names distinct from gatewayd's own
tests/conftest.py: both run in one pytest session).

- ``fake_openai``: a started :class:`FakeOpenAI` (a real aiohttp app on 127.0.0.1 speaking
  OpenAI's wire format, faults scriptable per request); ``make_fake_openai(**kw)`` starts more.
- ``llm_config(upstreams, llm, **kw)``: a whole gatewayd config with one ``llm`` route on
  ``/v1/`` behind ``key_auth`` (see :func:`llm_testkit.gateway_config`), state in tmp_path.
- ``llm_gateway(config, keys={"test": "acme"}, env=None)``: ``gatewayd run`` as a subprocess
  with those API keys (key id -> tenant, made with ``gatewayd keys create``) once its listener
  answers; stopped after the test. It has ``url``, ``admin_url``, ``log_path``, ``pid``,
  ``keys``/``key``, ``client()``, ``metric()``, ``reload()``, ``logs()``.
- ``llm_redis_url``: a throwaway redis-server (its URL), stopped after the test.
- ``openai_client(base_url, api_key)``: the official SDK's ``AsyncOpenAI`` (max_retries=0),
  closed after the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fake_openai_server import FakeOpenAI
from llm_testkit import FakeFactory, GatewayFactory, LlmGateway, free_port, gateway_config
from llm_testkit import openai_client as make_client
from openai import AsyncOpenAI


@pytest.fixture
async def make_fake_openai() -> AsyncIterator[FakeFactory]:
    """``await make_fake_openai(api_key=None, chunks=3, chunk_delay=0.0, models=(...))``."""
    fakes: list[FakeOpenAI] = []

    async def start(**kw: Any) -> FakeOpenAI:
        fake = await FakeOpenAI(**kw).start()
        fakes.append(fake)
        return fake

    yield start
    for fake in fakes:
        await fake.close()


@pytest.fixture
async def fake_openai(make_fake_openai: FakeFactory) -> FakeOpenAI:
    return await make_fake_openai()


@pytest.fixture
def llm_config(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    def build(upstreams: Mapping[str, Any], llm: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
        return gateway_config(tmp_path / "state", upstreams, llm, **kw)

    return build


@pytest.fixture
async def llm_gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    started: list[LlmGateway] = []

    async def start(
        config: dict[str, Any],
        keys: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LlmGateway:
        gw = LlmGateway(config, tmp_path / f"llm-gw{len(started)}", env)
        started.append(gw)
        wanted = keys if keys is not None else {"test": "acme"}
        # The keys are made while the daemon starts (it reads the key store per request).
        made = [gw.create_key(tenant, key_id) for key_id, tenant in wanted.items()]
        await asyncio.gather(gw.start(), *made)
        gw.keys = {key_id: gw.keys[key_id] for key_id in wanted}  # in the order given
        return gw

    yield start
    for gw in started:
        await gw.stop()


@pytest.fixture
async def openai_client() -> AsyncIterator[Callable[[str, str], AsyncOpenAI]]:
    clients: list[AsyncOpenAI] = []

    def make(base_url: str, api_key: str) -> AsyncOpenAI:
        client = make_client(base_url, api_key)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def llm_redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free port, for the distribution's Redis tests. Missing, it
    fails the test (as gatewayd's own Redis tests do), unless GATEWAYD_SKIP_REDIS=1."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        if os.environ.get("GATEWAYD_SKIP_REDIS") == "1":
            pytest.skip("redis-server not installed (GATEWAYD_SKIP_REDIS=1)")
        pytest.fail("redis-server not installed: apt-get install redis-server")
    port = free_port()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
