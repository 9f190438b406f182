"""The llm plugin's configuration: what loads, and errors that name the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gatewayd_llm.config import LlmConfig
from gatewayd_llm.plugin import LlmPlugin

from gatewayd.testing import ConfigError, PluginHarness

ISSUE_EXAMPLE: dict[str, Any] = {
    "models": {
        "gpt-4o-mini": [{"upstream": "openai-main", "model": "gpt-4o-mini",
                         "context_window": 128000}],
        "smart": [
            {"upstream": "claude", "model": "claude-sonnet-4-5", "weight": 2},
            {"upstream": "openai-main", "model": "gpt-4o", "weight": 1},
        ],
        "local": [{"upstream": "ollama", "model": "llama3.2:3b", "context_window": 8192}],
        "echo": [{"upstream": "cli", "model": "default"}],
    },
    "fallbacks": {"smart": ["gpt-4o-mini"], "gpt-4o-mini": ["local"]},
    "prices": {"gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.60}},
    "limits": [
        {"tokens": "100000/min", "key": "tenant"},
        {"requests": "600/min", "key": "api_key"},
        {"cost": "20/day", "key": "tenant"},
    ],
}  # fmt: skip


async def test_the_issues_example_loads_and_lists_its_models(tmp_path) -> None:
    config = LlmConfig.model_validate(ISSUE_EXAMPLE)
    assert config.chain("smart") == ["smart", "gpt-4o-mini", "local"]
    assert config.price("gpt-4o-mini", None).cost(1_000_000, 1_000_000) == pytest.approx(0.75)  # type: ignore[union-attr]
    async with PluginHarness(LlmPlugin, ISSUE_EXAMPLE, state_dir=tmp_path) as h:
        reply = await h.request("GET", "/v1/models")
        assert reply.status == 200
        models = {m["id"]: m for m in json.loads(reply.body)["data"]}  # type: ignore[arg-type]
        assert list(models) == ["gpt-4o-mini", "smart", "local", "echo"]
        assert models["smart"]["owned_by"] == "claude,openai-main"
        assert models["local"]["context_window"] == 8192
        assert models["echo"]["context_window"] is None
        assert h.upstream_requests == []  # answered by the plugin


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"models": {}, "catalog": False}, "models"),
        ({"models": {"m": []}}, ""),
        ({"models": {"m": [{"model": "x"}]}}, "models.m[0].upstream"),
        ({"models": {"m": [{"upstream": "u", "model": "x", "weight": 0}]}}, "models.m[0].weight"),
        ({"fallbacks": {"m": ["nope"]}}, ""),
        ({"fallbacks": {"m": ["m"]}}, ""),
        ({"prices": {"nope": {}}}, ""),
        ({"prices": {"m": {"input_per_mtok": -1}}}, "prices.m.input_per_mtok"),
        ({"limits": [{"tokens": "lots"}]}, "limits[0].tokens"),
        ({"routing": "random"}, "routing"),
        ({"modles": {}}, "modles"),
    ],
)
def test_invalid_configs_name_the_field(change: dict[str, Any], path: str) -> None:
    config = {"models": {"m": [{"upstream": "u", "model": "x"}]}, **change}
    with pytest.raises(ConfigError) as err:
        PluginHarness(LlmPlugin, config)
    (problem,) = err.value.problems
    want = "plugins[0].llm" + (f".{path}" if path else "")
    assert problem.path == want, problem
