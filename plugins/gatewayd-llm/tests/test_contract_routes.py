"""The LLM document (gatewayd_llm/openapi.yaml) is valid OpenAPI 3.1 and lists exactly what
the distribution serves: the llm plugin's admin routes under its ``admin_path`` and the
OpenAI endpoints it answers; and ``GET /_admin/llm/openapi.json`` serves it."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import aiohttp
import yaml
from fake_openai_server import FakeOpenAI
from gatewayd_llm.contract import document
from gatewayd_llm.endpoints import POST_ENDPOINTS, check_body, endpoint_of
from gatewayd_llm.plugin import LlmPlugin
from gatewayd_llm.tenant_usage import TenantUsagePlugin
from llm_testkit import ADMIN_TOKEN, openai_upstream
from openapi_spec_validator import validate

from gatewayd.chain.admin import admin_path_of, admin_routes_of

OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# The llm_usage plugin's route (a tenant's own usage), at the path docs/llm.md gives it.
TENANT_USAGE = ("GET", "/v1/usage")


def pairs(doc: dict[str, Any], prefix: str) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        if path.startswith(prefix)
        for method in OPERATIONS
        if method in item
    }


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        twice = sorted({str(k) for k in keys if keys.count(k) > 1})
        assert not twice, f"keys given twice at line {node.start_mark.line + 1}: {twice}"
        return super().construct_mapping(node, deep)


def test_no_key_is_given_twice() -> None:
    text = files("gatewayd_llm").joinpath("openapi.yaml").read_text(encoding="utf-8")
    assert yaml.load(text, Loader=UniqueKeyLoader) == document()


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_admin_routes_and_document_are_the_same() -> None:
    prefix = admin_path_of(LlmPlugin)
    assert prefix == "/_admin/llm"
    served = {(r.method, prefix + r.path) for r in admin_routes_of(LlmPlugin)}
    documented = pairs(document(), prefix + "/")
    assert served == documented, (
        f"served but not in openapi.yaml: {sorted(served - documented)}; "
        f"in openapi.yaml but not served: {sorted(documented - served)}"
    )


def test_openai_endpoints_and_document_are_the_same() -> None:
    served = {("POST", "/v1/" + ("chat/completions" if e == "chat" else e)) for e in POST_ENDPOINTS}
    served |= {("GET", "/v1/models"), ("GET", "/v1/models/{model}")}
    documented = pairs(document(), "/v1/") - {TENANT_USAGE}
    assert served == documented, (
        f"served but not in openapi.yaml: {sorted(served - documented)}; "
        f"in openapi.yaml but not served: {sorted(documented - served)}"
    )
    for _, path in documented:  # and the plugin knows each documented path
        assert endpoint_of(path.replace("{model}", "gpt-4o")) is not None, path


def test_every_operation_has_its_errors_in_the_right_shape() -> None:
    doc = document()
    for path, item in doc["paths"].items():
        for method in OPERATIONS:
            op = item.get(method)
            if op is None:
                continue
            responses = op["responses"]
            if path.startswith("/v1/") and (method.upper(), path) != TENANT_USAGE:
                # OpenAI's error object for every error
                assert responses["default"] == {"$ref": "#/components/responses/OpenAIError"}
            else:  # gatewayd's admin error body
                assert responses["401"] == {"$ref": "#/components/responses/AdminUnauthorized"}
                for status, r in responses.items():
                    if status[0] in "45" and status != "401":
                        assert r == {"$ref": "#/components/responses/AdminError"}, (path, status)


def test_the_tenant_usage_route_is_the_llm_usage_plugin() -> None:
    assert TENANT_USAGE in pairs(document(), "/v1/")
    assert TenantUsagePlugin.name == "llm_usage"
    op = document()["paths"]["/v1/usage"]["get"]
    admin = document()["paths"]["/_admin/llm/usage"]["get"]
    assert op["parameters"] == admin["parameters"]  # the same query as the admin's
    assert op["responses"]["200"] == {"$ref": "#/components/responses/Usage"}


def test_links_join_create_read_and_delete() -> None:
    paths = document()["paths"]
    providers = paths["/_admin/llm/providers"]["post"]["responses"]["201"]["links"]
    assert {"getProvider", "deleteProvider"} <= {v["operationId"] for v in providers.values()}
    models = paths["/_admin/llm/models"]["post"]["responses"]["201"]["links"]
    assert {"getCatalogModel", "deleteCatalogModel"} <= {v["operationId"] for v in models.values()}


async def test_the_document_is_served_to_admin_tokens(
    fake_openai: FakeOpenAI, llm_config: Any, llm_gateway: Any
) -> None:
    upstreams = {"main": openai_upstream(fake_openai.url)}
    gw = await llm_gateway(
        llm_config(upstreams, {"models": {"m": [{"upstream": "main", "model": "x"}]}})
    )
    url = gw.admin_url + "/_admin/llm/openapi.json"
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 401
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with s.get(url, headers=headers) as r:
            assert r.status == 200 and r.content_type == "application/json"
            assert await r.json() == document()
        async with s.get(gw.admin_url + "/_admin/plugins/llm/openapi.json", headers=headers) as r:
            assert r.status == 200 and await r.json() == document()


def test_an_integral_float_is_the_integer_the_document_allows() -> None:
    """JSON Schema's ``integer`` (the document's ``max_tokens``, ``n``) includes ``2.0``: the
    plugin takes it, as the integer (limits, estimates and the provider see an int)."""
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user"}], "n": 2.0}
    body["max_tokens"] = 16.0
    assert check_body("chat", body) is None
    assert body["n"] == 2 and type(body["n"]) is int
    assert body["max_tokens"] == 16 and type(body["max_tokens"]) is int
    assert check_body("chat", {**body, "n": 2.5}) == ("'n' must be a positive integer", "n")
    assert check_body("chat", {**body, "max_tokens": 0.0}) is not None
