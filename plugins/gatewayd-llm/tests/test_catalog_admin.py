"""The catalog's admin handlers (gatewayd_llm.catalog_admin) on a real llm plugin instance
(gatewayd.testing's harness: real services, a real SQLite store, real run-time upstreams):
validation naming the field, 404/409/503, the YAML's read-only records, secrets shown only as
a fingerprint, merge patches, and the plugin serving what the catalog holds."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from gatewayd_llm import catalog_admin
from gatewayd_llm.plugin import LlmPlugin
from gatewayd_llm.sealing import fingerprint, generate_key_file
from llm_testkit import free_port

from gatewayd.chain import AdminRequest, PluginError, Response
from gatewayd.testing import ConfigError, HarnessServices, PluginHarness

SECRET = "sk-admin-unit-secret-0123456789abcdef"
YAML = {"models": {"yaml-model": [{"upstream": "yaml-up", "model": "m"}]}}


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[PluginHarness]:
    key_file = tmp_path / "llm.key"
    generate_key_file(key_file)
    h = PluginHarness(
        LlmPlugin, {**YAML, "secrets_key_file": str(key_file)}, state_dir=tmp_path / "state"
    )
    async with h:
        yield h


async def call(
    h: PluginHarness, method: str, path: str, body: Any = None, **params: str
) -> tuple[int, Any]:
    """The admin route of ``method path`` (a pattern) with ``params``: (status, JSON body);
    a PluginError is the status and message the admin API answers with."""
    (r,) = [r for r in catalog_admin.routes() if r.method == method and r.path == path]
    request = AdminRequest(method, path, params, {}, body, "ops", "operator")
    try:
        reply: Response = await r.handler(request, h.plugins)
    except PluginError as exc:
        return exc.status, exc.message
    data = reply.body
    assert isinstance(data, bytes)
    return reply.status, json.loads(data) if data else None


def provider(pid: str = "p1", **kw: Any) -> dict[str, Any]:
    return {"id": pid, "kind": "openai", "base_url": "http://127.0.0.1:9/v1", **kw}


async def test_a_provider_is_stored_sealed_and_shown_with_a_fingerprint(
    harness: PluginHarness, tmp_path: Path
) -> None:
    status, body = await call(
        harness, "POST", "/providers", provider(api_key=SECRET, models=["gpt-x"])
    )
    assert status == 201, body
    assert body["api_key"] == {"set": True, "fingerprint": fingerprint(SECRET)}
    assert body["source"] == "api" and body["models"] == ["gpt-x"]
    assert SECRET not in json.dumps(body)
    raw = b"".join(f.read_bytes() for f in (tmp_path / "state" / "llm").glob("catalog*"))
    assert SECRET.encode() not in raw and b"gdl1:" in raw
    # Served now: a run-time upstream of owner llm, with the credential set.
    services = harness.services
    assert services.upstreams.runtime() == {"p1": "llm"}
    status, listed = await call(harness, "GET", "/providers")
    assert [(p["id"], p["source"]) for p in listed["data"]] == [("p1", "api")]
    # The llm plugin lists the catalog's model beside the YAML's.
    reply = await harness.request("GET", "/v1/models")
    ids = [m["id"] for m in json.loads(reply.body)["data"]]  # type: ignore[arg-type]
    assert ids == ["yaml-model", "gpt-x"]


async def test_errors_name_the_field(harness: PluginHarness) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (provider(base_url="nope"), "base_url: "),
        (provider(timeouts={"connect": "soon"}), "timeouts.connect: "),
        (provider(kind="gopher"), "kind: must be one of openai, anthropic, ollama"),
        (provider(kind="process", command=["sh"]), "kind: 'process'"),
        (provider(credential="x"), "credential: "),
        (provider(pid="bad id"), "id: "),
        (provider(models={"m": {"weight": 0}}), "models.m.weight: "),
        (provider(surprise=1), "surprise: "),
        (provider(headers={"Authorization": SECRET}), "headers.Authorization: "),
        # found by schemathesis: these were 500s
        (provider(kind={}), "kind: must be one of"),
        (provider(models=[{}]), "models: each model name must be a string"),
        (provider(base_url="http://a..b"), "base_url: "),
        (provider(base_url="http://" + "x" * 64 + ".example"), "base_url: "),
    ]
    for body, want in cases:
        status, message = await call(harness, "POST", "/providers", body)
        assert status == 400, (body, message)
        assert message.startswith(want), (body, message)
    await call(harness, "POST", "/providers", provider())
    for body, want in [
        ({"name": "m", "deployments": []}, "deployments: "),
        ({"name": "m", "deployments": [{"upstream": "p1", "model": "x", "weight": 0}]},
         "deployments[0].weight: "),
        ({"name": "m", "deployments": [{"upstream": "nowhere", "model": "x"}]},
         "deployments[0].upstream: no provider or upstream 'nowhere'"),
        ({"name": "m", "deployments": [{"upstream": "p1", "model": "x"}], "fallbacks": ["zz"]},
         "fallbacks[0]: no model 'zz'"),
        ({"name": "m", "deployments": [{"upstream": "p1", "model": "x"}], "price": {"x": 1}},
         "price.x: "),
    ]:  # fmt: skip
        status, message = await call(harness, "POST", "/models", body)
        assert status == 400, (body, message)
        assert message.startswith(want), (body, message)


async def test_404_409_and_the_yaml_read_only(harness: PluginHarness) -> None:
    assert (await call(harness, "GET", "/providers/{id}", id="nope"))[0] == 404
    assert (await call(harness, "DELETE", "/providers/{id}", id="nope"))[0] == 404
    assert (await call(harness, "GET", "/models/{name}", name="nope"))[0] == 404
    assert (await call(harness, "POST", "/providers", provider()))[0] == 201
    status, message = await call(harness, "POST", "/providers", provider())
    assert (status, message) == (409, "provider 'p1' exists already")
    # A model the YAML defines cannot be made, changed or deleted through the API.
    status, message = await call(
        harness, "POST", "/providers", provider("p2", models=["yaml-model"])
    )
    assert status == 409 and "defined in the config file" in message
    status, _ = await call(
        harness, "PUT", "/models/{name}", {"deployments": [{"upstream": "p1", "model": "x"}]},
        name="yaml-model",
    )  # fmt: skip
    assert status == 409
    assert (await call(harness, "DELETE", "/models/{name}", name="yaml-model"))[0] == 409
    status, body = await call(harness, "GET", "/models/{name}", name="yaml-model")
    assert status == 200 and body["source"] == "config"
    # A run-time upstream another distribution put is not the catalog's to take.
    await harness.services.upstreams.put(
        "taken", {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}, owner="other"
    )
    status, message = await call(harness, "POST", "/providers", provider("taken"))
    assert (status, message) == (409, "upstream 'taken' belongs to 'other'")


async def test_patch_put_and_delete(harness: PluginHarness) -> None:
    await call(harness, "POST", "/providers", provider(api_key=SECRET, models=["a", "b"]))
    status, body = await call(
        harness, "PATCH", "/providers/{id}", {"headers": {"X-Team": "ml"}}, id="p1"
    )
    assert status == 200, body
    assert body["headers"] == {"X-Team": "ml"} and body["version"] == 2
    assert body["api_key"]["set"] is True and body["models"] == ["a", "b"]
    status, body = await call(
        harness, "PATCH", "/providers/{id}", {"headers": None, "models": ["a"]}, id="p1"
    )
    assert "headers" not in body and body["models"] == ["a"]
    status, body = await call(
        harness, "PUT", "/providers/{id}",
        {"kind": "openai", "base_url": "http://127.0.0.1:8/v1", "api_key": None}, id="p1",
    )  # fmt: skip
    assert status == 200 and body["api_key"] == {"set": False}
    assert body["base_url"] == "http://127.0.0.1:8/v1" and body["models"] == ["a"]
    status, body = await call(
        harness, "POST", "/models",
        {"name": "smart", "deployments": [{"upstream": "p1", "model": "big"}], "fallbacks": ["a"]},
    )  # fmt: skip
    assert status == 201 and body["provider"] is None
    status, body = await call(
        harness, "PATCH", "/models/{name}", {"price": {"input_per_mtok": 3}}, name="smart"
    )
    assert body["price"] == {"input_per_mtok": 3} and body["fallbacks"] == ["a"]
    # Deleting the provider deletes the models it made, not the others.
    assert (await call(harness, "DELETE", "/providers/{id}", id="p1"))[0] == 204
    status, listed = await call(harness, "GET", "/models")
    assert [m["name"] for m in listed["data"]] == ["yaml-model", "smart"]
    assert harness.services.upstreams.runtime() == {}
    reply = await harness.request("GET", "/v1/models/a")
    assert reply.status == 404
    assert json.loads(reply.body)["error"]["code"] == "model_not_found"  # type: ignore[arg-type]


async def test_rotate_needs_a_secret_and_takes_a_grace(harness: PluginHarness) -> None:
    await call(harness, "POST", "/providers", provider(api_key=SECRET))
    status, message = await call(
        harness, "POST", "/providers/{id}/rotate-credentials", {"grace": "1m"}, id="p1"
    )
    assert status == 400 and message.startswith("api_key: ")
    status, message = await call(
        harness, "POST", "/providers/{id}/rotate-credentials",
        {"api_key": "sk-new-one", "grace": "soon"}, id="p1",
    )  # fmt: skip
    assert status == 400 and message.startswith("grace: ")
    status, body = await call(
        harness, "POST", "/providers/{id}/rotate-credentials",
        {"api_key": "sk-new-one", "grace": "1m"}, id="p1",
    )  # fmt: skip
    assert status == 200
    assert body["api_key"]["fingerprint"] == fingerprint("sk-new-one")
    assert body["grace"] == 60.0 and body["version"] == 2


async def test_a_secret_without_a_key_file_is_503(tmp_path: Path) -> None:
    async with PluginHarness(LlmPlugin, YAML, state_dir=tmp_path) as h:
        status, message = await call(h, "POST", "/providers", provider(api_key=SECRET))
        assert status == 503 and message.startswith("no secrets key configured")
        assert SECRET not in message
        assert (await call(h, "POST", "/providers", provider()))[0] == 201  # no secret: fine


def test_every_llm_plugin_names_the_same_key_file(tmp_path: Path) -> None:
    one, two = tmp_path / "one.key", tmp_path / "two.key"
    generate_key_file(one)
    generate_key_file(two)
    h = PluginHarness(LlmPlugin, {**YAML, "secrets_key_file": str(one)}, state_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        PluginHarness(
            LlmPlugin,
            {**YAML, "secrets_key_file": str(two)},
            services=h.services,
        )
    (problem,) = err.value.problems
    assert "every llm plugin must name the same key file" in problem.message
    PluginHarness(LlmPlugin, {**YAML, "secrets_key_file": str(one)}, services=h.services)


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "llm.key"
    generate_key_file(key)
    key.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        PluginHarness(LlmPlugin, {**YAML, "secrets_key_file": str(key)}, state_dir=tmp_path)
    assert "chmod 600" in err.value.problems[0].message


async def test_a_yaml_model_wins_a_name_clash_and_dangling_fallbacks_are_left_out(
    harness: PluginHarness, tmp_path: Path
) -> None:
    await call(harness, "POST", "/providers", provider(models=["later", "solo"]))
    await call(
        harness, "POST", "/models",
        {"name": "chain", "deployments": [{"upstream": "p1", "model": "c"}], "fallbacks": ["solo"]},
    )  # fmt: skip
    reply = await harness.request("GET", "/v1/models")
    assert [m["id"] for m in json.loads(reply.body)["data"]] == [  # type: ignore[arg-type]
        "yaml-model", "chain", "later", "solo",
    ]  # fmt: skip
    assert harness.plugin.config.chain("chain") == ["chain", "solo"]
    # solo goes: chain is still served, without its fallback.
    assert (await call(harness, "DELETE", "/models/{name}", name="solo"))[0] == 204
    await harness.request("GET", "/v1/models")
    assert harness.plugin.config.chain("chain") == ["chain"]
    # The YAML now defines "later" too: the YAML's deployments serve it.
    key = str(tmp_path / "llm.key")
    yaml = {"models": {**YAML["models"], "later": [{"upstream": "yaml-up", "model": "y"}]}}
    reloaded = harness.reload({**yaml, "secrets_key_file": key})
    await reloaded.start()
    reply = await reloaded.request("GET", "/v1/models/later")
    assert json.loads(reply.body)["owned_by"] == "yaml-up"  # type: ignore[arg-type]
    status, body = await call(reloaded, "GET", "/models/{name}", name="later")
    assert (status, body["source"]) == (200, "config")
    await reloaded.close()


async def test_redis_down_at_start_up_does_not_stop_the_plugin(tmp_path: Path) -> None:
    port = free_port()
    services = HarnessServices(backend="redis", redis_url=f"redis://127.0.0.1:{port}/0")
    async with PluginHarness(LlmPlugin, YAML, services=services) as h:
        reply = await h.request("GET", "/v1/models")  # the YAML's models are served meanwhile
        assert reply.status == 200
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        proc = subprocess.Popen(  # noqa: ASYNC220 -- returns at once
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    status, _body = await call(h, "POST", "/providers", provider())
                    break
                except Exception:  # redis.ConnectionError: not up yet
                    await asyncio.sleep(0.05)
            assert status == 201
            assert h.services.upstreams.runtime() == {"p1": "llm"}
        finally:
            proc.terminate()
            proc.wait(10)
    await services.close()
