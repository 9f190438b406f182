"""Config: units, substitution, overrides, error paths, and `gatewayd check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.chain.registry import PluginRegistry
from gatewayd.config import ConfigError, load_config, validate_data
from gatewayd.config.units import parse_duration, parse_rate, parse_ratio, parse_size

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("2s", 2), ("5m", 300), ("1h", 3600), ("1d", 86400), (3, 3)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [("100/s", 100, 1), ("6000/min", 6000, 60), ("1000/day", 1000, 86400), ("10/5min", 10, 300)],
)
def test_rates(text, count, period):
    r = parse_rate(text)
    assert (r.count, r.period) == (count, period)


@pytest.mark.parametrize(
    ("text", "size"),
    [("64KiB", 65536), ("10MiB", 10 * 2**20), ("1GiB", 2**30), ("1KB", 1000), (5, 5)],
)
def test_sizes(text, size):
    assert parse_size(text) == size


def test_ratio():
    assert parse_ratio("20%") == pytest.approx(0.2)
    assert parse_ratio(0.5) == 0.5
    with pytest.raises(ValueError):
        parse_ratio("120%")


@pytest.mark.parametrize("bad", ["fast", "10 parsecs", "-1s", True])
def test_bad_durations_raise(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def registry() -> PluginRegistry:
    return PluginRegistry.discover()


def base() -> dict:
    return {
        "upstreams": {"api": {"targets": ["http://127.0.0.1:8001"]}, "mcp": {"relay": "my-mcp"}},
        "routes": [{"name": "api", "match": {"path": "/v1/"}, "upstream": "api"}],
    }


def test_unknown_upstream_names_the_path_and_the_known_ones():
    data = base()
    data["routes"].append({"name": "b", "upstream": "apii"})
    with pytest.raises(ConfigError) as exc:
        validate_data(data, registry(), env={})
    assert "routes[1].upstream: unknown upstream 'apii' (known: api, mcp)" in str(exc.value)


def test_plugin_config_errors_name_the_plugin_field():
    data = base()
    data["routes"][0]["plugins"] = [{"headers": {"request": {"set": "nope"}}}]
    with pytest.raises(ConfigError) as exc:
        validate_data(data, registry(), env={})
    assert "routes[0].plugins[0].headers.request.set:" in str(exc.value)


def test_unknown_plugin_lists_installed_ones():
    data = base()
    data["plugins"] = [{"no_such_plugin": {}}]
    with pytest.raises(ConfigError) as exc:
        validate_data(data, registry(), env={})
    msg = str(exc.value)
    assert "plugins[0]: unknown plugin 'no_such_plugin'" in msg
    assert "headers" in msg


def test_unknown_field_and_bad_unit():
    data = base()
    data["upstreams"]["api"]["timeouts"] = {"connect": "soon", "colour": "red"}
    with pytest.raises(ConfigError) as exc:
        validate_data(data, registry(), env={})
    msg = str(exc.value)
    assert "upstreams.api.timeouts.connect: invalid duration 'soon'" in msg
    assert "upstreams.api.timeouts.colour: unknown field" in msg


def test_env_substitution_and_defaults():
    data = base()
    data["upstreams"]["api"]["targets"] = ["${API_TARGET}", "${OTHER:-http://127.0.0.1:9}"]
    cfg = validate_data(data, registry(), env={"API_TARGET": "http://10.0.0.1:80"})
    assert cfg.upstreams["api"].targets == ["http://10.0.0.1:80", "http://127.0.0.1:9"]


def test_missing_env_var_names_the_field():
    data = base()
    data["admin"] = {"listen": "${ADMIN_ADDR}"}
    with pytest.raises(ConfigError) as exc:
        validate_data(data, registry(), env={})
    assert "admin.listen: environment variable ADMIN_ADDR is not set" in str(exc.value)


def test_env_overrides():
    cfg = validate_data(
        base(),
        registry(),
        env={"GATEWAYD_ADMIN__LISTEN": "127.0.0.1:9902", "GATEWAYD_LOGGING__ACCESS_LOG": "false"},
    )
    assert cfg.admin.listen == "127.0.0.1:9902"
    assert cfg.logging.access_log is False


def test_bad_yaml_is_a_config_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("routes: [\n  - name: x\n   bad")
    with pytest.raises(ConfigError) as exc:
        load_config(p, registry())
    assert "invalid YAML: line" in str(exc.value)


def test_design_example_loads():
    """The example in DESIGN.md's configuration contract loads as written (with the plugins
    installed in this checkout; unknown ones are reported by name, nothing else)."""
    cfg = load_config(REPO / "etc/gatewayd/gatewayd.yaml", registry(), env={})
    assert cfg.routes and cfg.upstreams


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args], capture_output=True, text=True, timeout=60
    )


def test_check_command_ok_and_error(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(
        "upstreams: {api: {targets: ['http://127.0.0.1:1']}}\n"
        "routes: [{name: api, upstream: api}]\n"
    )
    r = run_cli("check", "-c", str(good))
    assert r.returncode == 0, r.stderr
    assert "ok (1 listeners, 1 upstreams, 1 routes" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [{name: api, upstream: apii}]\n")
    r = run_cli("check", "-c", str(bad))
    assert r.returncode == 1
    assert "routes[0].upstream: unknown upstream 'apii'" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("check", "-c", str(tmp_path / "missing.yaml"))
    assert r.returncode == 1 and "cannot read config" in r.stderr


def test_defaults_are_parsed_like_written_values():
    """A default given in human form (``10/min``) is parsed as if it were in the file."""
    cfg = validate_data({}, registry(), env={})
    assert cfg.relay.connect_rate.count == 10 and cfg.relay.connect_rate.period == 60
