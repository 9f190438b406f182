"""The ``redis_server`` fixture fails, not skips, when redis-server is missing, unless
``GATEWAYD_SKIP_REDIS=1`` (on a fresh machine the Redis tests must not pass by skipping)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import require_redis_server


def test_a_missing_binary_fails(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="apt-get install redis-server"):
        require_redis_server(str(tmp_path / "redis-server"), env={})


@pytest.mark.parametrize("value", ["", "0", "yes"])
def test_only_the_documented_value_skips(tmp_path: Path, value: str) -> None:
    with pytest.raises(pytest.fail.Exception):
        require_redis_server(str(tmp_path / "redis-server"), env={"GATEWAYD_SKIP_REDIS": value})


def test_skip_when_asked(tmp_path: Path) -> None:
    with pytest.raises(pytest.skip.Exception, match="GATEWAYD_SKIP_REDIS=1"):
        require_redis_server(str(tmp_path / "redis-server"), env={"GATEWAYD_SKIP_REDIS": "1"})


def test_an_installed_binary_is_used(tmp_path: Path) -> None:
    binary = tmp_path / "redis-server"
    binary.write_text("")
    assert require_redis_server(str(binary), env={}) == str(binary)
