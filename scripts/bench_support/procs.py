"""Child processes for the benchmark: pinned, in their own process group, always cleaned up."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

_PR_SET_PDEATHSIG = 1
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StartError(RuntimeError):
    """A process under test did not come up (or died)."""


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the harness dies without cleaning up."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def pinned(argv: Sequence[str], core: int | None) -> list[str]:
    """``argv`` prefixed with ``taskset -c CORE`` (taskset execs, so the pid stays the same)."""
    return ["taskset", "-c", str(core), *argv] if core is not None else list(argv)


class Children:
    """Every process the harness starts; ``stop_all`` (or leaving the ``with``) ends them all.

    Each child is the leader of its own process group, so a terminal Ctrl-C reaches only the
    harness, which then stops the children in order; stopping signals the whole group, which
    takes nginx workers (and anything else a child forked) along.
    """

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def spawn(
        self,
        argv: Sequence[str],
        *,
        core: int | None,
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running child with stdout and stderr appended to ``log``."""
        with open(log, "ab") as out:
            proc = self._popen(argv, core, stdout=out, stderr=subprocess.STDOUT, env=env)
        return proc

    def run(self, argv: Sequence[str], *, core: int | None, timeout: float) -> str:
        """Run a child to completion and return its stdout; raise on a non-zero exit."""
        proc = self._popen(argv, core, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            self.stop(proc)
        if proc.returncode != 0:
            cmd = " ".join(argv)
            msg = err.decode(errors="replace").strip()
            raise RuntimeError(f"{cmd} exited {proc.returncode}: {msg}")
        return out.decode(errors="replace")

    def _popen(
        self,
        argv: Sequence[str],
        core: int | None,
        *,
        stdout: int | IO[bytes],
        stderr: int | IO[bytes],
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            pinned(argv, core),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # the harness is single-threaded
        )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
        """SIGTERM the child's process group, SIGKILL it after ``grace`` seconds."""
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        # Leftovers of the group (a worker whose master died first) go too.
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def pgids(self) -> set[int]:
        """The process groups of the running children (each child leads its own)."""
        return {proc.pid for proc in self._procs if proc.poll() is None}

    def stop_all(self) -> None:
        """Stop every child, newest first; a second Ctrl-C cannot cut this short."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in reversed(list(self._procs)):
                self.stop(proc)
        finally:
            signal.signal(signal.SIGINT, previous)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> Response:
    """GET ``url`` (never through an HTTP proxy from the environment); any status is returned."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _NO_PROXY.open(req, timeout=timeout) as resp:
            return Response(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, dict(err.headers.items()), err.read())


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], *, timeout: float = 30.0, log: Path | None = None
) -> None:
    """Poll ``url`` until it answers 200; raise StartError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"exited with code {proc.returncode}{_log_tail(log)}")
        try:
            resp = http_get(url, timeout=1.0)
        except OSError as err:
            last = str(err)
        else:
            if resp.status == 200:
                return
            last = f"HTTP {resp.status}"
        time.sleep(0.05)
    raise StartError(f"{url} not ready after {timeout:.0f}s ({last}){_log_tail(log)}")


def _log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n  | " + "\n  | ".join(tail) if tail else ""


def _proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, fields of /proc/<pid>/stat after the command name) for every process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # After "pid (comm) ": state ppid pgrp session tty tpgid flags minflt cminflt majflt
        # cmajflt utime stime cutime cstime ...
        yield int(entry.name), stat[stat.rindex(")") + 2 :].split()


def _process_group_members(pgid: int) -> Iterator[int]:
    return (pid for pid, fields in _proc_stats() if int(fields[2]) == pgid)


def other_cpu_seconds(children: Children) -> dict[int, float]:
    """CPU seconds used so far by each process that is neither the harness nor its children.

    Children's time is counted once reaped (cutime/cstime), so a test run that starts and ends
    daemons while we measure still shows up. Kernel threads (process group 0) are left out: they
    mostly do the network work of our own load.
    """
    mine = children.pgids()
    tick = os.sysconf("SC_CLK_TCK")
    return {
        pid: sum(int(v) for v in fields[11:15]) / tick
        for pid, fields in _proc_stats()
        if int(fields[2]) not in mine and int(fields[2]) != 0 and pid != os.getpid()
    }


def other_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds others used between two :func:`other_cpu_seconds` snapshots."""
    return sum(max(0.0, used - before.get(pid, 0.0)) for pid, used in after.items())


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mib(pid: int) -> float:
    """Peak RSS (VmHWM) summed over the process group led by ``pid`` (nginx: master + worker)."""
    return sum(_vm_hwm_kib(p) for p in _process_group_members(pid)) / 1024
