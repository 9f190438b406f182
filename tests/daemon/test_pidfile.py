"""The pid file: acquire, release, stale and foreign files, and read_pid's errors."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewayd.daemon.pidfile import PidFile, PidFileError, read_pid


@pytest.fixture
def live_child() -> Iterator[int]:
    """The pid of a real, running process that is not us."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_acquire_and_release(tmp_path: Path) -> None:
    path = tmp_path / "run" / "sub" / "gatewayd.pid"  # parent directories are created
    pidfile = PidFile(path)
    pidfile.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    assert read_pid(path) == os.getpid()
    assert os.listdir(path.parent) == ["gatewayd.pid"]  # no temporary file left behind
    pidfile.release()
    assert not path.exists()
    pidfile.release()  # releasing twice is harmless


def test_context_manager(tmp_path: Path) -> None:
    path = tmp_path / "gatewayd.pid"
    with PidFile(path) as pidfile:
        assert pidfile.path == path
        assert read_pid(path) == os.getpid()
    assert not path.exists()


def test_reacquire_own_pid(tmp_path: Path) -> None:
    path = tmp_path / "gatewayd.pid"
    path.write_text(f"{os.getpid()}\n")
    PidFile(path).acquire()
    assert read_pid(path) == os.getpid()


def test_stale_file_is_replaced(tmp_path: Path, dead_pid: int) -> None:
    path = tmp_path / "gatewayd.pid"
    path.write_text(f"{dead_pid}\n")
    PidFile(path).acquire()
    assert path.read_text() == f"{os.getpid()}\n"


def test_garbage_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "gatewayd.pid"
    path.write_text("not a pid\n")
    PidFile(path).acquire()
    assert read_pid(path) == os.getpid()


def test_live_foreign_pid_is_refused(tmp_path: Path, live_child: int) -> None:
    path = tmp_path / "gatewayd.pid"
    path.write_text(f"{live_child}\n")
    with pytest.raises(PidFileError, match=rf"already running with pid {live_child}"):
        PidFile(path).acquire()
    assert path.read_text() == f"{live_child}\n"  # untouched
    assert read_pid(path) == live_child


def test_release_leaves_foreign_file(tmp_path: Path, live_child: int) -> None:
    path = tmp_path / "gatewayd.pid"
    pidfile = PidFile(path)
    pidfile.acquire()
    path.write_text(f"{live_child}\n")  # another instance took over the file
    pidfile.release()
    assert path.read_text() == f"{live_child}\n"


def test_read_pid_missing(tmp_path: Path) -> None:
    path = tmp_path / "gatewayd.pid"
    with pytest.raises(PidFileError, match="not found: is gatewayd running") as info:
        read_pid(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("hello\n", "does not hold a pid: 'hello'"),
        ("12abc", "does not hold a pid: '12abc'"),
        ("-5\n", "does not hold a pid: '-5'"),
        ("0\n", "does not hold a pid: '0'"),
        ("", "is empty"),
        ("  \n", "is empty"),
    ],
)
def test_read_pid_garbage(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "gatewayd.pid"
    path.write_text(content)
    with pytest.raises(PidFileError, match=message) as info:
        read_pid(path)
    assert str(path) in str(info.value)


def test_read_pid_not_running(tmp_path: Path, dead_pid: int) -> None:
    path = tmp_path / "gatewayd.pid"
    path.write_text(f"{dead_pid}\n")
    with pytest.raises(PidFileError, match=rf"not running: pid {dead_pid} .* is gone"):
        read_pid(path)
