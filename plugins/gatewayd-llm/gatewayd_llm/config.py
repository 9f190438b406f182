"""The ``llm`` plugin's configuration (the keys of ``- llm: {...}`` in a route's plugins).

```yaml
- llm:
    models:                       # the client's model name -> its deployments
      smart:
        - {upstream: claude, model: claude-sonnet-4-5, weight: 2}
        - {upstream: openai-main, model: gpt-4o, weight: 1, context_window: 128000}
    fallbacks: {smart: [gpt-4o-mini]}      # then these models, in order
    prices: {smart: {input_per_mtok: 3, output_per_mtok: 15}}
    limits: [{tokens: 100000/min, key: tenant}]   # see gatewayd_llm.limits
    limits_store: default          # default (state.backend) | memory | redis
    routing: weighted              # weighted | least_busy
    breaker: {failures: 5, open_for: 30s}
    default_max_tokens: 1024       # what a request without max_tokens reserves
    max_body: 4MiB
    catalog: true                  # also serve the models added through /_admin/llm/models
    secrets_key_file: /etc/gatewayd/llm.key   # seals the secrets given to /_admin/llm
    rotation_grace: 5m             # the old secret stays usable this long after a rotation
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from gatewayd.chain import Duration, PluginConfig, Size
from gatewayd_llm.limits import LimitSpec

__all__ = ["BreakerConfig", "DeploymentConfig", "LlmConfig", "PriceConfig"]


class PriceConfig(PluginConfig):
    """Dollars per million tokens."""

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok
        ) / 1e6


class DeploymentConfig(PluginConfig):
    """One place a model is served: an upstream (``upstreams:``) and the model name there."""

    upstream: str = Field(min_length=1)
    model: str = Field(min_length=1)
    weight: float = Field(1.0, gt=0)
    context_window: int | None = Field(None, ge=1)
    price: PriceConfig | None = None  # overrides ``prices`` of the model for this deployment
    # The deployment's own limits (e.g. the provider account's tokens per minute): a request
    # that would go over them skips the deployment for the next one.
    limits: list[LimitSpec] = []
    owned_by: str | None = None  # what GET /v1/models says (default: the upstream's name)


class BreakerConfig(PluginConfig):
    """Per deployment: ``failures`` consecutive failed attempts open it for ``open_for``; then
    one request tries it (half open) and its outcome closes or reopens it."""

    failures: int = Field(5, ge=1)
    open_for: Duration = 30.0


class LlmConfig(PluginConfig):
    # The catalog (gatewayd_llm.catalog_sync): the models added through /_admin/llm are served
    # too (a YAML model wins a name clash); with it, ``models`` may be empty.
    catalog: bool = True
    models: dict[str, list[DeploymentConfig]] = Field({}, validate_default=True)
    fallbacks: dict[str, list[str]] = {}
    prices: dict[str, PriceConfig] = {}
    limits: list[LimitSpec] = []
    limits_store: Literal["default", "memory", "redis"] = "default"
    on_limits_error: Literal["allow", "deny"] = "allow"  # when the limits' store fails
    routing: Literal["weighted", "least_busy"] = "weighted"
    breaker: BreakerConfig = BreakerConfig()
    default_max_tokens: int = Field(1024, ge=1)
    max_body: Size = 4 * 1024 * 1024
    max_attempts: int = Field(6, ge=1)  # deployments tried per request, fallbacks included
    usage: bool = True  # write usage records to <state.dir>/llm/usage.sqlite3
    # The master key of the provider secrets given to the admin API (gatewayd_llm.sealing):
    # the same file for every llm plugin of the process (else systemd's $CREDENTIALS_DIRECTORY).
    secrets_key_file: Path | None = None
    rotation_grace: Duration = Field(300.0, ge=0)  # default grace of rotate-credentials

    @field_validator("models")
    @classmethod
    def _some_models(
        cls, v: dict[str, list[DeploymentConfig]], info: ValidationInfo
    ) -> dict[str, list[DeploymentConfig]]:
        if not v and not info.data.get("catalog", True):
            raise ValueError("at least one model is needed (or catalog: true)")
        return v

    @model_validator(mode="after")
    def _references(self) -> LlmConfig:
        for name, deployments in self.models.items():
            if not deployments:
                raise ValueError(f"model '{name}' has no deployments")
        for name, chain in self.fallbacks.items():
            if name not in self.models:
                raise ValueError(f"fallbacks: '{name}' is not a model of 'models'")
            for other in chain:
                if other not in self.models:
                    raise ValueError(f"fallbacks.{name}: '{other}' is not a model of 'models'")
                if other == name:
                    raise ValueError(f"fallbacks.{name}: a model cannot fall back to itself")
        for name in self.prices:
            if name not in self.models:
                raise ValueError(f"prices: '{name}' is not a model of 'models'")
        return self

    def chain(self, model: str) -> list[str]:
        """``model`` then its fallbacks, each model once (fallbacks of fallbacks included,
        breadth first)."""
        out = [model]
        i = 0
        while i < len(out):
            for other in self.fallbacks.get(out[i], ()):
                if other not in out:
                    out.append(other)
            i += 1
        return out

    def price(self, model: str, deployment: DeploymentConfig | None) -> PriceConfig | None:
        if deployment is not None and deployment.price is not None:
            return deployment.price
        return self.prices.get(model)
