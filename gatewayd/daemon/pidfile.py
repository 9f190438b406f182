"""The daemon's pid file: one running gatewayd per file, and how ``gatewayd reload`` finds it.

The file holds the pid in decimal and a newline. It is written atomically (a temporary file in the
same directory, then a rename), so a reader never sees a half-written pid. A file left behind by a
process that is gone (a crash, ``kill -9``) is stale and is replaced; a file naming a live process
other than us is refused.

Liveness is checked with ``kill(pid, 0)``, so a pid recycled by an unrelated process after a crash
looks alive; the error message names the pid and the file so the operator can check and remove it.
Under systemd the service manager already guarantees a single instance; the pid file is for
``gatewayd reload`` and for running outside systemd.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import final

__all__ = ["PidFile", "PidFileError", "read_pid"]

logger = logging.getLogger("gatewayd.daemon")


class PidFileError(Exception):
    """The pid file is missing, unreadable, malformed, or names another live gatewayd."""


def _is_running(pid: int) -> bool:
    """Whether a process with this pid exists (possibly owned by another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists; we may not signal it
    return True


def _parse(path: Path, text: str) -> int:
    """The pid held in ``text``, or :class:`PidFileError` naming ``path`` and what was found."""
    value = text.strip()
    if not value:
        raise PidFileError(f"pid file {path} is empty")
    if not value.isascii() or not value.isdigit() or int(value) <= 0:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise PidFileError(f"pid file {path} does not hold a pid: {shown!r}")
    return int(value)


def _read(path: Path) -> int | None:
    """The pid in ``path``; ``None`` if the file does not exist. Raises :class:`PidFileError`."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidFileError(f"cannot read pid file {path}: {exc.strerror or exc}") from exc
    return _parse(path, text)


def read_pid(path: str | os.PathLike[str]) -> int:
    """The pid of the running daemon recorded in ``path``.

    Raises :class:`PidFileError` with a message fit for the operator when the file is missing,
    does not hold a pid, or names a process that is not running.
    """
    path = Path(path)
    pid = _read(path)
    if pid is None:
        raise PidFileError(f"pid file {path} not found: is gatewayd running?")
    if not _is_running(pid):
        raise PidFileError(f"gatewayd is not running: pid {pid} from {path} is gone (stale file)")
    return pid


@final
class PidFile:
    """A pid file held by this process between :meth:`acquire` and :meth:`release`.

    Usable as a context manager::

        with PidFile(settings.pid_file):
            serve()
    """

    __slots__ = ("_path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)

    @property
    def path(self) -> Path:
        """Where the pid file lives."""
        return self._path

    def acquire(self) -> None:
        """Record our pid, replacing a stale or malformed file.

        Creates the parent directory if needed. Raises :class:`PidFileError` if the file names
        another live process, or if it cannot be written.
        """
        me = os.getpid()
        try:
            current = _read(self._path)
        except PidFileError as exc:
            logger.warning("replacing malformed pid file: %s", exc)
            current = None
        if current is not None and current != me:
            if _is_running(current):
                raise PidFileError(
                    f"gatewayd is already running with pid {current} (pid file {self._path}); "
                    "stop it first, or remove the file if that process is not gatewayd"
                )
            logger.warning("replacing stale pid file %s (pid %d is gone)", self._path, current)
        try:
            self._write(me)
        except OSError as exc:
            raise PidFileError(
                f"cannot write pid file {self._path}: {exc.strerror or exc}"
            ) from exc

    def _write(self, pid: int) -> None:
        """Write ``pid`` atomically: a temporary file in the same directory, then a rename."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=self._path.parent, prefix=f".{self._path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(f"{pid}\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def release(self) -> None:
        """Remove the file if it still holds our pid; leave anyone else's alone. Never raises."""
        try:
            current = _read(self._path)
        except PidFileError as exc:
            logger.warning("not removing pid file: %s", exc)
            return
        if current is None:
            return
        if current != os.getpid():
            logger.warning(
                "not removing pid file %s: it holds pid %d, not ours", self._path, current
            )
            return
        try:
            self._path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot remove pid file %s: %s", self._path, exc)

    def __enter__(self) -> PidFile:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"PidFile({str(self._path)!r})"
