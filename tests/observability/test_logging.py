"""configure_logging: one gatewayd handler on the root logger, however often it is called."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from gatewayd.observability.logging import GatewayHandler, configure_logging


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def test_a_reload_reconfigures_the_same_handler(root: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    configure_logging("warning", "text", stream)  # as a reload does
    ours = [h for h in root.handlers if isinstance(h, GatewayHandler)]
    assert len(ours) == 1
    logging.getLogger("gatewayd.test").warning("hello")
    line = stream.getvalue().strip().splitlines()[-1]
    assert "hello" in line
    with pytest.raises(ValueError):
        json.loads(line)  # text format now
    assert root.level == logging.WARNING
