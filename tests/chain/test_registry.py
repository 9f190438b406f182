"""Entry-point discovery: a broken third-party entry point is reported, never fatal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewayd.chain.registry import PluginRegistry


@pytest.fixture
def broken_distribution(tmp_path: Path) -> Iterator[None]:
    """A distribution on sys.path whose entry points name a module that does not exist."""
    info = tmp_path / "broken_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[gatewayd.upstreams]\nbroken_kind = no_such_module_xyz:Kind\n\n"
        "[gatewayd.plugins]\nbroken_plugin = no_such_module_xyz:Plugin\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield
    finally:
        sys.path.remove(str(tmp_path))


def test_broken_entry_point_is_logged_and_skipped(
    broken_distribution: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gatewayd"):
        registry = PluginRegistry.discover()
    assert "cannot be imported" in registry.kind_errors["broken_kind"]
    assert "cannot be imported" in registry.errors["broken_plugin"]
    assert "broken_kind" not in registry.kinds and "broken_plugin" not in registry.types
    assert "key_auth" in registry.types and "http" not in registry.kind_errors
    logged = {
        (r.__dict__["group"], r.__dict__["entry_point"])
        for r in caplog.records
        if r.getMessage() == "entry point not loaded"
    }
    assert logged == {("gatewayd.upstreams", "broken_kind"), ("gatewayd.plugins", "broken_plugin")}
