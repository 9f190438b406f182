"""The admin API's OpenAPI document (gatewayd/admin/openapi.yaml, GET /_admin/openapi.json):
a valid OpenAPI 3.1 document that lists exactly the admin listener's (method, path) pairs."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml
from aiohttp import web
from openapi_spec_validator import validate

from gatewayd.admin.app import build_admin_app
from gatewayd.admin.openapi import load_document
from gatewayd.admin.plugins import ALIASES, PREFIX
from gatewayd.chain.admin import admin_routes_of
from gatewayd.chain.registry import PluginRegistry

TOKEN = "openapi-admin-token"
VIEWER = "openapi-viewer-token"
OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# The catch-all routes of the admin router and what stands for them in the inventory: a
# plugin's routes under /_admin/plugins/<name> (the built-ins' are in this document), and
# the admin_path mounts (/_admin/llm...: the distribution's own document covers them).
PLUGIN_ROUTES = PREFIX + "/{plugin}{tail}"
MOUNTS = "/_admin/{segment}{tail}"
# The dashboard's pages (server-rendered HTML behind a login session, not the admin API) share
# the listener; the document says so and leaves them out.
DASHBOARD = "/dashboard"


class NoDaemon:
    """The admin app is only built here, never called: nothing reads the daemon."""

    ready = False
    config = None
    services = None
    gateway = None


def document_pairs(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in OPERATIONS
        if method in item
    }


def builtin_plugin_pairs() -> set[tuple[str, str]]:
    """(method, path) of the admin routes of gatewayd's own plugins (not other
    distributions': each publishes its own document)."""
    pairs = set()
    for name, ptype in PluginRegistry.discover().types.items():
        if ptype.distribution != "gatewayd":
            continue
        for route in admin_routes_of(ptype.cls):
            pairs.add((route.method, f"{PREFIX}/{name}{route.path}"))
    return pairs


def router_pairs(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route of the admin router, catch-alls replaced by the routes
    they serve; HEAD left out (aiohttp adds it beside every GET)."""
    plugins = builtin_plugin_pairs()
    by_path = {path: method for method, path in plugins}
    pairs: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        path = resource.canonical
        if path == DASHBOARD or path.startswith(DASHBOARD + "/"):
            continue
        for route in resource:
            method = route.method
            if method == "HEAD":
                continue
            if method != "*":
                pairs.add((method, path))
            elif path == PLUGIN_ROUTES:
                pairs |= plugins
            elif path == MOUNTS:
                continue
            elif path in ALIASES:
                plugin, tail = ALIASES[path]
                pairs.add((by_path[f"{PREFIX}/{plugin}{tail}"], path))
            else:
                pytest.fail(f"a new catch-all admin route {path}: say here what it serves")
    return pairs


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        twice = sorted({str(k) for k in keys if keys.count(k) > 1})
        assert not twice, f"keys given twice at line {node.start_mark.line + 1}: {twice}"
        return super().construct_mapping(node, deep)


def test_no_key_is_given_twice() -> None:
    text = files("gatewayd.admin").joinpath("openapi.yaml").read_text(encoding="utf-8")
    assert yaml.load(text, Loader=UniqueKeyLoader) == load_document()


def test_the_document_is_valid_openapi_3_1() -> None:
    document = load_document()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_router_and_document_list_the_same_routes() -> None:
    app = build_admin_app(NoDaemon())  # type: ignore[arg-type]
    routes = router_pairs(app)
    documented = document_pairs(load_document())
    undocumented = sorted(routes - documented)
    stale = sorted(documented - routes)
    assert not undocumented and not stale, (
        f"served but not in gatewayd/admin/openapi.yaml: {undocumented}; "
        f"in the document but not served: {stale}"
    )
    # the inventory sees what it must: the built-ins' plugin routes and the deprecated alias
    assert ("POST", "/_admin/plugins/cache/purge") in routes
    assert ("GET", "/_admin/plugins/circuit_breaker/breakers") in routes
    assert ("POST", "/_admin/cache/purge") in routes
    assert ("GET", "/_admin/openapi.json") in routes


def test_every_operation_has_an_id_errors_and_the_error_schema() -> None:
    document = load_document()
    ids = []
    for path, item in document["paths"].items():
        for method in OPERATIONS:
            op = item.get(method)
            if op is None:
                continue
            ids.append(op["operationId"])
            if op.get("security", document["security"]) == []:
                continue  # the probes: no token, no error of their own
            responses = op["responses"]
            assert "401" in responses and "403" in responses, f"{method} {path}"
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    ref = response.get("$ref", "")
                    if ref:
                        response = document["components"]["responses"][ref.rsplit("/", 1)[1]]
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    assert len(ids) == len(set(ids))


def test_links_join_create_read_and_delete_of_keys() -> None:
    document = load_document()
    created = document["paths"]["/_admin/keys"]["post"]["responses"]["201"]["links"]
    targets = {link["operationId"] for link in created.values()}
    assert {"getKey", "deleteKey", "revokeKey", "rotateKey"} <= targets
    ids = {
        op["operationId"]
        for item in document["paths"].values()
        for m, op in item.items()
        if m in OPERATIONS
    }
    assert targets <= ids


def hashed(token: str) -> str:
    return bcrypt.hashpw(token.encode(), bcrypt.gensalt(4)).decode()


async def test_served_document_is_the_shipped_one_behind_admin_tokens(
    tmp_path: Path, gateway: Any, config: Any
) -> None:
    cfg = config()
    cfg["admin"]["tokens"] = [
        {"id": "ops", "hash": hashed(TOKEN)},
        {"id": "ro", "hash": hashed(VIEWER), "role": "viewer"},
    ]
    gw = await gateway(cfg)
    url = gw.admin_url + "/_admin/openapi.json"
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await r.json())["error"]["code"] == "unauthorized"
        async with s.get(url, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 403
        for token in (TOKEN, VIEWER):
            async with s.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
                assert r.content_type == "application/json"
                assert await r.json() == load_document()
        # a method the document does not list: 405 with the ones it does, in the error body
        ops = {"Authorization": f"Bearer {TOKEN}"}
        for method, path, allowed in [
            ("PUT", "/_admin/keys", "GET, HEAD, POST"),
            ("PATCH", "/_admin/upstreams", "GET, HEAD"),
            ("DELETE", "/_admin/reload", "POST"),
        ]:
            async with s.request(method, gw.admin_url + path, headers=ops) as r:
                assert r.status == 405, (method, path)
                assert r.headers["Allow"] == allowed
                assert (await r.json())["error"]["code"] == "method_not_allowed"
        # a path no route serves, a newline in it too: the JSON 404
        for path in ("/_admin/nothing", "/_admin/plugins/cache/x%0Ay"):
            async with s.get(gw.admin_url + path, headers=ops) as r:
                assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        # aiohttp's own refusals outside /_admin (no token needed to get them) are JSON too
        for method, path, status in [
            ("POST", "/metrics", 405),
            ("PATCH", "/_admin/openapi.json", 405),
            ("GET", "/nowhere", 404),
        ]:
            async with s.request(method, gw.admin_url + path) as r:
                assert r.status == status, (method, path)
                assert r.content_type == "application/json", (method, path)
                error = (await r.json())["error"]
                assert error["code"] in ("not_found", "method_not_allowed") and error["request_id"]
                if status == 405:
                    assert r.headers["Allow"]
