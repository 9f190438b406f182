"""``gatewayd schema``: the JSON Schema of gatewayd.yaml, for editors (yaml-language-server).

The schema is pydantic's ``model_json_schema`` of :class:`GatewayConfig`, with the plugin entries
of every chain (``plugins`` and ``routes[].plugins``) described by the installed plugins' own
configs (each under its plugin key) and the upstreams by the installed kinds' configs (each under
its ``kind:``). ``--markdown`` prints the key reference of docs/configuration.md instead (the core
and the built-in plugins only, so it does not depend on what else is installed);
``--check FILE`` / ``--write FILE`` compare it with or write it into that file, between the
markers (``scripts/gen-config-reference`` writes docs/configuration.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gatewayd.chain.registry import PluginRegistry
from gatewayd.config.errors import ConfigError
from gatewayd.config.loader import default_path, load_config
from gatewayd.config.schema import GatewayConfig

BUILTIN_DISTRIBUTION = "gatewayd"
BEGIN = "<!-- BEGIN GENERATED KEY REFERENCE: scripts/gen-config-reference writes it -->"
END = "<!-- END GENERATED KEY REFERENCE -->"
REGENERATE = "scripts/gen-config-reference"
Schema = dict[str, Any]


def _namespaced(model: Any, prefix: str, defs: Schema) -> Schema:
    """``model``'s schema with its definitions moved into ``defs`` under ``prefix``."""
    sub: Schema = model.model_json_schema(ref_template=f"#/$defs/{prefix}.{{model}}")
    for name, definition in sub.pop("$defs", {}).items():
        defs[f"{prefix}.{name}"] = definition
    return sub


def build_schema(registry: PluginRegistry, builtin_only: bool = False) -> Schema:
    """The JSON Schema (2020-12) of gatewayd.yaml with these plugins and upstream kinds."""
    schema = GatewayConfig.model_json_schema()
    defs: Schema = schema["$defs"]
    types = sorted(registry.types.values(), key=lambda t: t.name)
    kinds = sorted(registry.kinds.values(), key=lambda k: k.name)
    if builtin_only:
        types = [t for t in types if t.distribution == BUILTIN_DISTRIBUTION]
        kinds = [k for k in kinds if k.distribution == BUILTIN_DISTRIBUTION]
    entries: list[Schema] = [{"type": "string", "enum": [t.name for t in types]}]
    for t in types:
        ref = f"plugin.{t.name}"
        defs[ref] = _namespaced(t.config_model, ref, defs)
        defs[ref].setdefault("description", f"The {t.name} plugin ({t.distribution}).")
        entries.append(
            {
                "type": "object",
                "title": t.name,
                "properties": {
                    t.name: {"anyOf": [{"$ref": f"#/$defs/{ref}"}, {"type": "null"}]},
                    "priority": {"type": "integer", "description": "overrides its default place"},
                },
                "required": [t.name],
                "additionalProperties": False,
            }
        )
    spec = defs["PluginSpec"]
    defs["PluginSpec"] = {
        "title": "PluginSpec",
        "description": spec.get("description", ""),
        "anyOf": entries,
    }
    upstreams: list[Schema] = [
        {"$ref": "#/$defs/HttpUpstreamConfig"},
        {"$ref": "#/$defs/RelayUpstreamConfig"},
    ]
    for k in kinds:
        ref = f"kind.{k.name}"
        sub = _namespaced(k.config_model, ref, defs)
        sub.setdefault("properties", {})["kind"] = {"const": k.name}
        sub["required"] = sorted({*sub.get("required", []), "kind"})
        defs[ref] = sub
        upstreams.append({"$ref": f"#/$defs/{ref}"})
    schema["properties"]["upstreams"]["additionalProperties"] = {"oneOf": upstreams}
    for unused in ("ExtensionUpstreamConfig", "_NoKind"):
        defs.pop(unused, None)
    out: Schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gatewayd.yaml",
        "description": "gatewayd's configuration (gatewayd schema; docs/configuration.md)",
    }
    out.update({k: v for k, v in schema.items() if k != "title"})
    return out


# -- the markdown key reference ----------------------------------------------------------------

_UNITS = {"250ms": "duration", "64KiB": "size", "20%": "ratio", "100/s": "rate"}


def _resolve(node: Schema, defs: Schema) -> Schema:
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[1]]
    return node


def _is_model(node: Schema, defs: Schema) -> bool:
    node = _resolve(node, defs)
    return node.get("type") == "object" and "properties" in node


def _type(node: Schema, defs: Schema) -> str:
    examples = node.get("examples") or []
    for example in examples:
        if isinstance(example, str) and example in _UNITS:
            return _UNITS[example]
    if "$ref" in node:
        target = node["$ref"].rsplit("/", 1)[1]
        return "plugin entry (see Plugins)" if target == "PluginSpec" else "object"
    if "const" in node:
        return json.dumps(node["const"])
    if "enum" in node:
        return " \\| ".join(json.dumps(v) for v in node["enum"])
    for key in ("anyOf", "oneOf"):
        if key in node:
            kinds = [_type(n, defs) for n in node[key] if n.get("type") != "null"]
            return " \\| ".join(dict.fromkeys(kinds))
    kind = node.get("type", "any")
    if kind == "array":
        return f"list of {_type(node.get('items', {}), defs)}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type(node['additionalProperties'], defs)}"
    if isinstance(kind, list):
        return " \\| ".join(k for k in kind if k != "null")
    return str(kind)


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def _default(node: Schema, kind: str = "") -> str:
    if "default" not in node:
        return "required"
    value = node["default"]
    if value is None or value == [] or value == {}:
        return "-"
    if kind == "duration" and isinstance(value, int | float):
        text = f"{value:g}s"
    elif kind == "size" and isinstance(value, int):
        text = _size(value)
    else:
        text = json.dumps(value, separators=(", ", ": "))
    return f"`{text}`" if len(text) <= 40 else "(see the model)"


def _rows(node: Schema, path: str, defs: Schema, out: list[tuple[str, str, str]]) -> None:
    node = _resolve(node, defs)
    required = set(node.get("required", []))
    for key, prop in node.get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        models = [
            n for n in prop.get("anyOf", [prop]) if n.get("type") != "null" and _is_model(n, defs)
        ]
        items = prop.get("items", {})
        if prop.get("type") == "array" and _is_model(items, defs):
            out.append((here, "list", _default(prop)))
            _rows(items, here + "[]", defs, out)
        elif len(models) == 1 and "$ref" in models[0]:
            _rows(models[0], here, defs, out)
        else:
            kind = _type(prop, defs)
            out.append((here, kind, "required" if key in required else _default(prop, kind)))


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| key | type | default |", "|---|---|---|"]
    lines += [f"| `{k}` | {t} | {d} |" for k, t, d in rows]
    return lines


def markdown(schema: Schema) -> str:
    """The key reference: one table per section, per upstream kind and per plugin."""
    defs: Schema = schema["$defs"]
    lines = [
        BEGIN,
        "",
        "## Key reference",
        "",
        "Generated from the configuration schema (`gatewayd schema`, which also covers the",
        f"installed plugin distributions); regenerate with `{REGENERATE}`.",
    ]
    for key, prop in schema["properties"].items():
        lines += ["", f"### Keys: `{key}`", ""]
        if key == "upstreams":
            for alt in prop["additionalProperties"]["oneOf"]:
                target = _resolve(alt, defs)
                lines += [f"`upstreams.<name>`: {target.get('description', '').split('.')[0]}.", ""]
                rows: list[tuple[str, str, str]] = []
                _rows(alt, "upstreams.<name>", defs, rows)
                lines += [*_table(rows), ""]
            lines.pop()
            continue
        rows = []
        _rows({"properties": {key: prop}, "required": schema.get("required", [])}, "", defs, rows)
        lines += _table(rows)
    lines += ["", "### Plugins", ""]
    for entry in defs["PluginSpec"]["anyOf"][1:]:
        name = entry["title"]
        rows = []
        _rows({"$ref": f"#/$defs/plugin.{name}"}, name, defs, rows)
        lines += [f"#### `{name}`", "", *_table(rows), ""]
    lines += [END]
    return "\n".join(lines) + "\n"


def splice(document: str, reference: str) -> str:
    """``document`` with the text between the markers replaced (appended when it has none)."""
    if BEGIN in document and END in document:
        head, rest = document.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + reference.rstrip("\n") + tail
    return document.rstrip("\n") + "\n\n" + reference


def _unknown_names(config: GatewayConfig, schema: Schema) -> list[str]:
    known = set(schema["$defs"]["PluginSpec"]["anyOf"][0]["enum"])
    kinds = {k.split(".", 1)[1] for k in schema["$defs"] if k.count(".") == 1 and k[:5] == "kind."}
    specs = [*config.plugins, *(p for r in config.routes for p in r.plugins)]
    out = [f"plugin {s.name!r}" for s in specs if s.name not in known]
    out += [
        f"upstream kind {u.kind!r}"
        for u in config.upstreams.values()
        if u.kind not in (None, "http", "relay") and u.kind not in kinds
    ]
    return sorted(set(out))


def cmd_schema(args: argparse.Namespace) -> int:
    registry = PluginRegistry.discover()
    if args.markdown or args.check or args.write:
        reference = markdown(build_schema(registry, builtin_only=True))
        target = Path(args.check or args.write) if (args.check or args.write) else None
        if target is None:
            sys.stdout.write(reference)
            return 0
        try:
            current = target.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"gatewayd schema: cannot read {target}: {exc.strerror}", file=sys.stderr)
            return 1
        wanted = splice(current, reference)
        if args.check:
            if wanted != current:
                print(
                    f"{target}: the key reference is not current; regenerate it with {REGENERATE}",
                    file=sys.stderr,
                )
                return 1
            print(f"{target}: the key reference is current")
            return 0
        target.write_text(wanted, encoding="utf-8")
        print(f"{target}: key reference written")
        return 0
    schema = build_schema(registry)
    if args.config is not None and Path(args.config).exists():
        try:
            config = load_config(args.config, None)
        except ConfigError as exc:
            print(exc.describe(), file=sys.stderr)
            return 1
        for name in _unknown_names(config, schema):
            print(
                f"gatewayd schema: {args.config} uses {name}, which is not installed",
                file=sys.stderr,
            )
    json.dump(schema, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    return 0


def install(sub: Any) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of gatewayd.yaml (for editors)")
    p.add_argument(
        "-c",
        "--config",
        default=None,
        help=f"also say which plugins or kinds this config uses that are not installed "
        f"(e.g. {default_path()})",
    )
    how = p.add_mutually_exclusive_group()
    how.add_argument("--markdown", action="store_true", help="print the key reference instead")
    how.add_argument("--check", metavar="FILE", help="exit 1 when FILE's key reference is stale")
    how.add_argument("--write", metavar="FILE", help="write the key reference into FILE")
    p.set_defaults(func=cmd_schema)
