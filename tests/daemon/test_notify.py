"""sd_notify messages arrive on a real unix datagram socket, as systemd would receive them."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewayd.daemon.notify import SystemdNotifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a path in tmp_path, and the NOTIFY_SOCKET value naming it."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def assert_nothing_received(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_ready_stopping_status(receiver: tuple[socket.socket, str]) -> None:
    sock, address = receiver
    notifier = SystemdNotifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready()
    assert recv(sock) == "READY=1"
    assert notifier.stopping()
    assert recv(sock) == "STOPPING=1"
    assert notifier.status("serving 3 routes\non 2 listeners")
    assert recv(sock) == "STATUS=serving 3 routes on 2 listeners"
    assert notifier.watchdog()
    assert recv(sock) == "WATCHDOG=1"
    notifier.close()


def test_reloading_sends_monotonic_usec(receiver: tuple[socket.socket, str]) -> None:
    sock, address = receiver
    notifier = SystemdNotifier({"NOTIFY_SOCKET": address})
    before = time.monotonic_ns() // 1000
    assert notifier.reloading()
    after = time.monotonic_ns() // 1000
    lines = recv(sock).split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert value.isdigit()
    assert before <= int(value) <= after
    notifier.close()


def test_abstract_socket() -> None:
    name = f"gatewayd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert recv(sock) == "READY=1"
        notifier.close()
    finally:
        sock.close()


def test_reads_os_environ_by_default(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, address = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    notifier = SystemdNotifier()
    assert notifier.ready()
    assert recv(sock) == "READY=1"
    notifier.close()


async def test_run_watchdog_pings_every_half_period(receiver: tuple[socket.socket, str]) -> None:
    sock, address = receiver
    sock.setblocking(False)
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    notifier = SystemdNotifier(env)
    assert notifier.watchdog_interval == pytest.approx(0.1)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(notifier.run_watchdog())
    try:
        stamps = []
        for _ in range(3):
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 2)
            assert data == b"WATCHDOG=1"
            stamps.append(time.monotonic())
        assert stamps[2] - stamps[0] >= 0.15  # two intervals of 0.1s, with slack for timers
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    notifier.close()


async def test_run_watchdog_off_for_another_pid(receiver: tuple[socket.socket, str]) -> None:
    sock, address = receiver
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    notifier = SystemdNotifier(env)
    assert notifier.watchdog_interval is None
    await asyncio.wait_for(notifier.run_watchdog(), 1)  # returns at once
    assert_nothing_received(sock)


async def test_run_watchdog_off_without_watchdog_usec(receiver: tuple[socket.socket, str]) -> None:
    sock, address = receiver
    notifier = SystemdNotifier({"NOTIFY_SOCKET": address})
    await asyncio.wait_for(notifier.run_watchdog(), 1)
    assert_nothing_received(sock)


async def test_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    notifier = SystemdNotifier()
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready()
    assert not notifier.reloading()
    assert not notifier.stopping()
    assert not notifier.status("x")
    assert not notifier.watchdog()
    await asyncio.wait_for(notifier.run_watchdog(), 1)
    notifier.close()


def test_send_error_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with caplog.at_level(logging.WARNING, logger="gatewayd.daemon"):
        assert not notifier.ready()
    assert "READY=1" in caplog.text
    notifier.close()


def test_bad_environment_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gatewayd.daemon"):
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "relative.sock", "WATCHDOG_USEC": "soon"})
    assert not notifier.enabled
    assert not notifier.ready()
    assert "NOTIFY_SOCKET" in caplog.text
    assert "WATCHDOG_USEC" in caplog.text
