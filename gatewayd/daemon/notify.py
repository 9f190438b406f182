"""A dependency-free sd_notify client: readiness, reload, stop, status and watchdog messages.

systemd passes the notification socket in ``NOTIFY_SOCKET`` (a filesystem path, or an abstract
socket name written with a leading ``@``) and, when ``WatchdogSec=`` is set, the watchdog period in
``WATCHDOG_USEC`` (and, optionally, the pid it applies to in ``WATCHDOG_PID``). Outside systemd the
variables are unset and every method here is a no-op, so the daemon can call them unconditionally.

Messages are sent on a non-blocking ``AF_UNIX``/``SOCK_DGRAM`` socket. A failed send is logged and
reported as ``False``; it never raises: a lost notification must not take the gateway down.

The reload protocol (as ``Type=notify-reload`` expects, and understood by ``Type=notify`` too)::

    notifier.reloading()   # RELOADING=1 + MONOTONIC_USEC, before the new config is read
    ...                    # build and swap the new generation (or refuse it)
    notifier.ready()       # READY=1, whether the reload succeeded or the old config kept serving
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import final

__all__ = ["SystemdNotifier"]

logger = logging.getLogger("gatewayd.daemon")


def _socket_address(value: str) -> str | None:
    """Translate ``NOTIFY_SOCKET`` into an ``AF_UNIX`` address, or ``None`` if unsupported."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # Linux abstract namespace
    return None


def _positive_int(name: str, value: str | None) -> int | None:
    """Parse an environment variable holding a positive integer; log and ignore anything else."""
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        logger.warning("ignoring %s=%r: not a positive integer", name, value)
        return None
    return number


@final
class SystemdNotifier:
    """Send sd_notify(3) messages to the service manager named by the environment.

    ``environ`` defaults to ``os.environ``; it is read once, at construction. Every public
    method returns ``True`` when the message was handed to the socket and ``False`` otherwise
    (no ``NOTIFY_SOCKET``, or a send error, which is logged).
    """

    __slots__ = ("_address", "_sock", "_watchdog_pid", "_watchdog_usec")

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address: str | None = None
        self._sock: socket.socket | None = None
        raw = env.get("NOTIFY_SOCKET", "")
        if raw:
            self._address = _socket_address(raw)
            if self._address is None:
                logger.warning("ignoring NOTIFY_SOCKET=%r: unsupported address", raw)
        self._watchdog_usec = _positive_int("WATCHDOG_USEC", env.get("WATCHDOG_USEC"))
        self._watchdog_pid = _positive_int("WATCHDOG_PID", env.get("WATCHDOG_PID"))

    # -- state ---------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Whether there is a notification socket to talk to."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or ``None``.

        ``None`` when notifications are off, ``WATCHDOG_USEC`` is unset, or ``WATCHDOG_PID``
        names another process.
        """
        if not self.enabled or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    # -- messages ------------------------------------------------------------------------------

    def notify(self, message: str) -> bool:
        """Send one raw notification (``KEY=VALUE`` lines). Never raises."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            logger.warning(
                "sd_notify %r to %r failed: %s", message, self._address.replace("\0", "@"), exc
            )
            return False
        return True

    def ready(self) -> bool:
        """Start-up (or a reload) is complete: ``READY=1``."""
        return self.notify("READY=1")

    def reloading(self) -> bool:
        """A reload begins: ``RELOADING=1`` with the ``CLOCK_MONOTONIC`` time in microseconds.

        Follow it with :meth:`ready` once the reload is done or refused.
        """
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> bool:
        """Shutdown begins: ``STOPPING=1``."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """A one-line human status shown by ``systemctl status``: ``STATUS=<text>``."""
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """Keep-alive ping: ``WATCHDOG=1``."""
        return self.notify("WATCHDOG=1")

    async def run_watchdog(self) -> None:
        """Ping the watchdog every half period until cancelled; return at once if it is off.

        Run it as a task beside the server and cancel it at shutdown. Because it runs on the
        event loop, a loop blocked for longer than ``WatchdogSec=`` gets the service restarted,
        which is the point.
        """
        interval = self.watchdog_interval
        if interval is None:
            return
        logger.debug("systemd watchdog enabled: ping every %.3fs", interval)
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Close the socket; a later message opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __repr__(self) -> str:
        address = None if self._address is None else self._address.replace("\0", "@")
        return f"SystemdNotifier(address={address!r}, watchdog_usec={self._watchdog_usec!r})"
