"""Logging set-up: JSON lines (python-json-logger) or plain text, to stderr (journald)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Attributes every LogRecord has; anything else was passed with extra= and is shown.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return line


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt == "text":
        return TextFormatter()
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


class GatewayHandler(logging.StreamHandler[TextIO]):
    """The root handler gatewayd installs (and finds again on a reload)."""


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """(Re)configure the root logger; called at start and on every successful reload."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, GatewayHandler)), None)
    if handler is None:
        handler = GatewayHandler(stream or sys.stderr)
        root.addHandler(handler)
    handler.setFormatter(make_formatter(fmt))
    root.setLevel(_LEVELS.get(level, logging.INFO))
    logging.getLogger("aiohttp.access").disabled = True
