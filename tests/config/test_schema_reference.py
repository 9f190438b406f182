"""``gatewayd schema`` (gatewayd/cli_schema.py): the JSON Schema editors get accepts the example
config and refuses what the daemon refuses; docs/configuration.md's key reference is current
(./scripts/test runs this: a stale reference fails with the command that regenerates it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import BaseModel

from gatewayd.chain import Plugin, PluginConfig, UpstreamConfig
from gatewayd.chain.registry import PluginRegistry
from gatewayd.cli_schema import BEGIN, END, build_schema, markdown

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"


def gatewayd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_the_committed_key_reference_is_current() -> None:
    out = gatewayd("schema", "--check", str(DOC))
    assert out.returncode == 0, (
        f"{out.stderr}\ndocs/configuration.md's key reference is stale: run "
        "scripts/gen-config-reference and commit docs/configuration.md"
    )


def test_a_stale_reference_is_found_and_rewritten_keeping_the_prose(tmp_path: Path) -> None:
    doc = tmp_path / "configuration.md"
    text = DOC.read_text()
    stale = text.replace("| `admin.listen` |", "| `admin.listen_old` |")
    assert stale != text
    doc.write_text(stale)
    out = gatewayd("schema", "--check", str(doc))
    assert out.returncode == 1
    assert "not current" in out.stderr and "scripts/gen-config-reference" in out.stderr
    assert gatewayd("schema", "--write", str(doc)).returncode == 0
    assert doc.read_text() == text  # the prose outside the markers is untouched
    assert gatewayd("schema", "--check", str(doc)).returncode == 0
    prose_only = tmp_path / "new.md"
    prose_only.write_text("# Title\n\nProse.\n")
    assert gatewayd("schema", "--write", str(prose_only)).returncode == 0
    written = prose_only.read_text()
    assert written.startswith("# Title\n\nProse.\n\n" + BEGIN) and written.endswith(END + "\n")


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(v: jsonschema.Draft202012Validator, doc: dict[str, Any]) -> list[str]:
    return [".".join(str(p) for p in e.absolute_path) for e in v.iter_errors(doc)]


def test_the_printed_schema_takes_the_example_and_refuses_mistakes() -> None:
    out = gatewayd("schema")
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    v = validator(schema)
    example = yaml.safe_load((ROOT / "etc" / "gatewayd" / "gatewayd.yaml").read_text())
    assert errors(v, example) == []
    assert errors(v, {"plugins": [{"rate_limit": {"rate": "10/s"}, "priority": 5}]}) == []
    assert errors(v, {"plugins": ["cors", {"key_auth": None}]}) == []
    assert errors(v, {"plugins": [{"rate_limt": {"rate": "10/s"}}]})  # misspelled plugin
    assert errors(v, {"plugins": [{"rate_limit": {"rate": "10/s", "bogus": 1}}]})
    assert errors(v, {"routes": [{"name": "a", "plugins": [{"jwt_auth": {"leeway": []}}]}]})
    assert errors(v, {"upstreams": {"a": {"targets": ["http://x:1"], "relay": "l"}}})
    assert errors(v, {"upstreams": {"a": {"kind": "no-such-kind"}}})
    assert errors(v, {"admin": {"jwt": {"issuer": "i", "role_claims": "x"}}})
    assert errors(v, {"admin": {"tokens": [{"id": "a", "hash": "h", "role": "admin"}]}})


class EchoConfig(UpstreamConfig):
    greeting: str = "hi"


class EchoKind:
    """An upstream kind defined here: its Config must appear under ``kind: echo``."""

    Config = EchoConfig

    def targets(self) -> list[Any]:
        return []

    async def send(self, *args: Any) -> Any: ...

    async def upgrade(self, *args: Any) -> Any: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Stamp(BaseModel):
    value: str


class StampConfig(PluginConfig):
    stamps: list[Stamp] = []


class StampPlugin(Plugin):
    Config = StampConfig

    async def on_request(self, ctx: Any) -> None:
        return None


def test_installed_plugins_and_kinds_are_in_the_schema_but_not_the_reference() -> None:
    registry = PluginRegistry.discover()
    registry.add("stamp", StampPlugin)
    registry.add_kind("echo", EchoKind)
    schema = build_schema(registry)
    v = validator(schema)
    assert errors(v, {"plugins": [{"stamp": {"stamps": [{"value": "x"}]}}]}) == []
    assert errors(v, {"plugins": [{"stamp": {"stamps": [{"val": "x"}]}}]})
    assert errors(v, {"upstreams": {"e": {"kind": "echo", "greeting": "yo"}}}) == []
    assert errors(v, {"upstreams": {"e": {"kind": "echo", "greting": "yo"}}})
    assert errors(v, {"upstreams": {"e": {"kind": "echo", "timeouts": {"connect": "2s"}}}}) == []
    reference = markdown(build_schema(registry, builtin_only=True))
    assert "`stamp" not in reference and "echo" not in reference
    assert "#### `rate_limit`" in reference and "| `admin.jwt.role_claim` |" in reference


def test_schema_names_what_a_config_uses_that_is_not_installed(tmp_path: Path) -> None:
    config = tmp_path / "gatewayd.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "plugins": [{"no_such_plugin": {}}, {"cors": {}}],
                "upstreams": {"x": {"kind": "teleport", "anything": 1}},
            }
        )
    )
    out = gatewayd("schema", "-c", str(config))
    assert out.returncode == 0
    assert "uses plugin 'no_such_plugin', which is not installed" in out.stderr
    assert "uses upstream kind 'teleport', which is not installed" in out.stderr
    assert "cors" not in out.stderr
    json.loads(out.stdout)
