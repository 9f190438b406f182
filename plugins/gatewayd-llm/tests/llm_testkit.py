"""Test support of the gatewayd-llm distribution (its own, not gatewayd's tests/support.py):
the real daemon as a subprocess with API keys made by ``gatewayd keys create``, a config
builder for an ``llm`` route, and the official OpenAI SDK as the client."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import yaml
from fake_openai_server import FakeOpenAI
from gatewayd_llm.usage import UsageRecord, UsageStore
from openai import AsyncOpenAI

ADMIN_TOKEN = "llm-admin-token-0123456789"
ADMIN_HASH = bcrypt.hashpw(ADMIN_TOKEN.encode(), bcrypt.gensalt(4)).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config(
    state_dir: Path,
    upstreams: Mapping[str, Any],
    llm: Mapping[str, Any],
    *,
    auth: bool = True,
    route: Mapping[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """A whole gatewayd config: free ports, ``state.dir``, JSON logs, the given ``upstreams``
    and one route ``llm`` on ``/v1/`` with ``[key_auth, llm]`` (``auth=False``: ``[llm]``).
    ``route`` adds keys to the route; ``top`` replaces top-level sections."""
    plugins: list[Any] = [{"key_auth": {}}] if auth else []
    plugins.append({"llm": dict(llm)})
    cfg: dict[str, Any] = {
        "listen": [{"address": f"127.0.0.1:{free_port()}"}],
        "admin": {
            "listen": f"127.0.0.1:{free_port()}",
            "tokens": [{"id": "ops", "hash": ADMIN_HASH}],
        },
        "state": {"dir": str(state_dir)},
        "logging": {"level": "info", "format": "json", "access_log": True},
        "server": {"drain_timeout": "5s"},
        "upstreams": dict(upstreams),
        "routes": [{"name": "llm", "match": {"path": "/v1/"}, "plugins": plugins, **(route or {})}],
    }
    cfg.update(top)
    return cfg


def openai_upstream(base_url: str, api_key: str | None = "sk-provider-secret", **kw: Any) -> dict:
    """An ``kind: openai`` upstream's config."""
    up: dict[str, Any] = {"kind": "openai", "base_url": base_url, **kw}
    if api_key is not None:
        up["api_key"] = api_key
    return up


def openai_client(base_url: str, api_key: str, timeout: float = 30.0) -> AsyncOpenAI:
    """The official SDK against the gateway (``base_url`` is the gateway's URL, with or without
    ``/v1``); no retries of its own, so that what a test sees is what the gateway did."""
    url = base_url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    return AsyncOpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=timeout)


async def create_key(config_path: Path, tenant: str, key_id: str | None = None) -> str:
    """``gatewayd keys create`` against the config's state dir; the key (shown once)."""
    args = [sys.executable, "-m", "gatewayd", "keys", "create", "-c", str(config_path)]
    args += ["--tenant", tenant, "--json"] + (["--id", key_id] if key_id else [])
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"gatewayd keys create failed: {err.decode(errors='replace')}")
    return str(json.loads(out)["key"])


class LlmGateway:
    """``gatewayd run -c <yaml>`` in a subprocess: its config file, log, URLs and API keys."""

    def __init__(
        self, config: dict[str, Any], workdir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.config = config
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "gatewayd.yaml"
        self.log_path = workdir / "gatewayd.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.keys: dict[str, str] = {}  # key id -> the key as a client presents it
        self.write_config(config)

    # -- what a test reads ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.config['listen'][0]['address']}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.config['admin']['listen']}"

    @property
    def state_dir(self) -> Path:
        return Path(self.config["state"]["dir"])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def key(self) -> str:
        """The first key made for this gateway."""
        return next(iter(self.keys.values()))

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, key: str | None = None, timeout: float = 30.0) -> AsyncOpenAI:
        return openai_client(self.url, key or self.key, timeout)

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as s, s.get(self.admin_url + "/metrics") as r:
            return await r.text()

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
        total = 0.0
        for line in (await self.metrics()).splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, rest = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += float(value)
        return total

    async def usage(
        self, count: int | None = None, timeout: float = 10.0, quiet: float = 0.7
    ) -> list[UsageRecord]:
        """The usage records written so far (oldest first). With ``count``: waits until there
        are at least that many, then ``quiet`` seconds more (the store writes in batches every
        0.5 s), so a record written twice would be seen."""
        store = UsageStore(self.state_dir / "llm" / "usage.sqlite3")
        await store.start()
        try:
            deadline = time.monotonic() + timeout
            while True:
                records = await store.query(limit=1_000_000)
                if count is None or len(records) >= count:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(records)} usage records, expected {count}")
                await asyncio.sleep(0.1)
            if count is not None and quiet:
                await asyncio.sleep(quiet)
                records = await store.query(limit=1_000_000)
            return records
        finally:
            await store.close()

    async def events(self, types: str, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The first ``count`` events of ``types`` the bus still holds (from the start)."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Last-Event-ID": "0"}
        found: list[dict[str, Any]] = []
        url = f"{self.admin_url}/_admin/events?types={types}"
        async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
            assert r.status == 200, await r.text()
            async with asyncio.timeout(timeout):
                async for line in r.content:
                    if line.startswith(b"data:"):
                        doc = json.loads(line[5:])
                        if doc.get("type") == "gap":
                            continue
                        found.append(doc)
                        if len(found) >= count:
                            break
        return found

    # -- lifecycle --------------------------------------------------------------------------

    def write_config(self, config: dict[str, Any]) -> None:
        self.config = config
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.replace(self.config_path)

    async def create_key(self, tenant: str = "acme", key_id: str | None = None) -> str:
        key = await create_key(self.config_path, tenant, key_id)
        self.keys[key_id or key.split("_")[1]] = key
        return key

    async def start(self, timeout: float = 20.0) -> LlmGateway:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 -- returns at once
            [sys.executable, "-m", "gatewayd", "run", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.workdir,
        )
        log.close()
        await self.wait_ready(timeout)
        return self

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the admin API says ready and the listener accepts connections."""
        deadline = time.monotonic() + timeout
        host, _, port = self.config["listen"][0]["address"].rpartition(":")
        async with aiohttp.ClientSession() as s:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gatewayd exited {self.proc.returncode}:\n{self.logs()}")
                try:
                    async with s.get(self.admin_url + "/_ready") as r:
                        if r.status == 200:
                            _, writer = await asyncio.open_connection(host, int(port))
                            writer.close()
                            return
                except (aiohttp.ClientError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gatewayd not ready:\n{self.logs()}")
                await asyncio.sleep(0.05)

    async def reload(self, config: dict[str, Any] | None = None, timeout: float = 10.0) -> None:
        """Write ``config`` (if given), SIGHUP, and wait until the reload succeeded."""
        if config is not None:
            self.write_config(config)
        before = await self.metric("gatewayd_reloads_total", result="success")
        failed = await self.metric("gatewayd_reloads_total", result="failure")
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while await self.metric("gatewayd_reloads_total", result="success") <= before:
            if await self.metric("gatewayd_reloads_total", result="failure") > failed:
                raise AssertionError(f"reload failed:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"reload not seen:\n{self.logs()}")
            await asyncio.sleep(0.05)

    async def stop(self) -> int | None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                return None
            await asyncio.sleep(0.05)
        return proc.returncode


GatewayFactory = Callable[..., Awaitable[LlmGateway]]
"""The ``llm_gateway`` fixture: ``await llm_gateway(config, keys=..., env=...)``."""
FakeFactory = Callable[..., Awaitable[FakeOpenAI]]
"""The ``make_fake_openai`` fixture: ``await make_fake_openai(**kw)``."""
