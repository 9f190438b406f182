"""Test support: run the real daemon as a subprocess and real aiohttp backends on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def upstream_url(server: Any) -> str:
    """The base URL of a backend started with the ``backend`` fixture."""
    return f"http://127.0.0.1:{server.port}"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def base_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A minimal config with free ports, state under tmp_path and text logs."""
    cfg: dict[str, Any] = {
        "listen": [{"address": f"127.0.0.1:{free_port()}"}],
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "state": {"dir": str(tmp_path / "state")},
        "logging": {"level": "info", "format": "json", "access_log": True},
        "server": {"drain_timeout": "10s"},
        "upstreams": {},
        "routes": [],
    }
    cfg.update(overrides)
    return cfg


class Daemon:
    """``gatewayd run`` in a subprocess, with its config file, log file and addresses."""

    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None):
        self.config = config
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "gatewayd.yaml"
        self.log_path = workdir / "gatewayd.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(config)

    def write_config(self, config: dict[str, Any] | str) -> None:
        if isinstance(config, dict):
            self.config = config
            text = yaml.safe_dump(config, sort_keys=False)
        else:
            text = config
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    @property
    def url(self) -> str:
        addr = self.config["listen"][0]["address"]
        scheme = "https" if self.config["listen"][0].get("tls") else "http"
        return f"{scheme}://{addr}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.config['admin']['listen']}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self, timeout: float = 20.0) -> Daemon:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gatewayd", "run", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.workdir,
        )
        log.close()
        await self.wait_ready(timeout)
        return self

    async def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gatewayd exited {self.proc.returncode}:\n{self.logs()}")
                try:
                    async with s.get(self.admin_url + "/_ready") as r:
                        if r.status == 200:
                            return dict(await r.json())
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gatewayd not ready:\n{self.logs()}")
                await asyncio.sleep(0.05)

    async def generation(self) -> int:
        async with aiohttp.ClientSession() as s, s.get(self.admin_url + "/_ready") as r:
            return int((await r.json())["generation"])

    async def metric(self, name: str, **labels: str) -> float:
        """The value of one sample from /metrics (0 if absent)."""
        async with aiohttp.ClientSession() as s, s.get(self.admin_url + "/metrics") as r:
            text = await r.text()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        key = f"{name}{{{want}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        return 0.0

    async def reload(self, expect_success: bool = True, timeout: float = 10.0) -> None:
        """SIGHUP, then wait until the reload counter moves."""
        result = "success" if expect_success else "failure"
        other = "failure" if expect_success else "success"
        before = await self.metric("gatewayd_reloads_total", result=result)
        before_other = await self.metric("gatewayd_reloads_total", result=other)
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while await self.metric("gatewayd_reloads_total", result=result) <= before:
            if await self.metric("gatewayd_reloads_total", result=other) > before_other:
                raise AssertionError(f"reload went the other way ({other}):\n{self.logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"reload not seen:\n{self.logs()}")
            await asyncio.sleep(0.05)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    async def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError("gatewayd did not exit")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await self.wait_exit(15)
        except TimeoutError:
            self.proc.kill()
            self.proc.wait()
            return None


REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
SKIP_REDIS_VAR = "GATEWAYD_SKIP_REDIS"


def require_redis_server(binary: str = REDIS_SERVER, env: Mapping[str, str] = os.environ) -> str:
    """The redis-server binary to run. A missing one fails the test (``./scripts/test`` installs
    it, or says how) unless ``GATEWAYD_SKIP_REDIS=1``, which skips the Redis tests instead."""
    if Path(binary).exists():
        return binary
    if env.get(SKIP_REDIS_VAR) == "1":
        pytest.skip(f"redis-server not installed ({SKIP_REDIS_VAR}=1)")
    pytest.fail(
        "redis-server not installed: apt-get install redis-server (./scripts/test does it as"
        f" root), or set {SKIP_REDIS_VAR}=1 to skip the Redis tests",
        pytrace=False,
    )


class RedisServer:
    """A real ``redis-server`` on a free port, its data in a temp dir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = REDIS_SERVER
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
