"""The catalog's admin routes, served at ``/_admin/llm/...`` (and ``/_admin/plugins/llm/...``).

- ``GET /providers``, ``POST /providers``, ``GET/PUT/PATCH/DELETE /providers/{id}``: a provider
  is an upstream of an LLM kind (``openai``, ``anthropic``, ``ollama``) in the YAML's shape,
  ``{"id", "kind", "base_url", "api_key", ..., "models": ...}``, validated by the kind's own
  config model; ``models`` (names, or name -> deployment keys) are models it makes, deleted
  with it. ``POST /providers/{id}/test`` runs the connectivity test (nothing billed);
  ``POST /providers/{id}/rotate-credentials`` ``{"api_key", "grace": "5m"}``.
- ``GET /models``, ``POST /models``, ``GET/PUT/PATCH/DELETE /models/{name}``: ``{"name",
  "deployments": [DeploymentConfig...], "fallbacks", "price"}``.

The YAML's providers (the upstreams its llm models use) and models are listed with
``"source": "config"`` and are read-only here (409). Secrets never leave: a provider shows
``"api_key": {"set": true, "fingerprint": "sha256:..."}``. PATCH is a JSON merge patch
(RFC 7396: ``null`` removes a key). A change answers the record as it is now (a DELETE 204),
applied to new requests before the answer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, Field, SecretStr, ValidationError

from gatewayd.chain import AdminRequest, AdminRoute, Duration, PluginConfig, PluginError, Response
from gatewayd_llm.catalog import Catalog, ModelRecord, ProviderRecord, Writes, record_id, stamp
from gatewayd_llm.catalog_sync import OWNER, CatalogSync, served_model
from gatewayd_llm.config import DeploymentConfig, PriceConfig
from gatewayd_llm.credentials import credentials
from gatewayd_llm.kinds.anthropic import AnthropicUpstreamConfig
from gatewayd_llm.kinds.base import ProviderConfig
from gatewayd_llm.kinds.ollama import OllamaUpstreamConfig
from gatewayd_llm.kinds.openai import OpenAIUpstreamConfig
from gatewayd_llm.sealing import context, fingerprint

__all__ = ["KINDS", "routes"]

KINDS: dict[str, type[ProviderConfig]] = {
    "openai": OpenAIUpstreamConfig,
    "anthropic": AnthropicUpstreamConfig,
    "ollama": OllamaUpstreamConfig,
}
SECRET = "api_key"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
# Headers that carry a credential: refused in ``headers`` (stored as given), the secret goes in
# ``api_key`` (sealed).
SECRET_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})
# Keys of a provider's body that are not its kind's config.
OWN_KEYS = frozenset({"id", "kind", "models", "source"})


# -- helpers -----------------------------------------------------------------------------------


def bad(message: str) -> PluginError:
    return PluginError(400, "invalid_request", message)


def where(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def invalid(exc: ValidationError, prefix: str = "") -> PluginError:
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        path = where([*([prefix] if prefix else []), *err["loc"]])
        parts.append(f"{path}: {err['msg']}" if path else str(err["msg"]))
    return bad("; ".join(parts))


def sync_of(instances: Sequence[Any]) -> CatalogSync:
    for inst in instances:
        catalog = getattr(inst, "catalog", None)
        if isinstance(catalog, CatalogSync) and catalog.running:
            return catalog
    raise PluginError(
        503, "catalog_unavailable", "no llm route with the catalog (catalog: true) is serving"
    )


def yaml_models(instances: Sequence[Any]) -> dict[str, list[DeploymentConfig]]:
    out: dict[str, list[DeploymentConfig]] = {}
    for inst in instances:
        config = getattr(inst, "yaml_config", None)
        if config is not None:
            for name, deployments in config.models.items():
                out.setdefault(name, deployments)
    return out


def yaml_providers(instances: Sequence[Any], sync: CatalogSync) -> dict[str, list[str]]:
    """The configured upstreams the YAML's llm models use -> those models."""
    assert sync.services is not None
    configured = sync.services.upstreams.configured()
    out: dict[str, list[str]] = {}
    for name, deployments in yaml_models(instances).items():
        for d in deployments:
            if d.upstream in configured:
                models = out.setdefault(d.upstream, [])
                if name not in models:
                    models.append(name)
    return out


def body_of(request: AdminRequest) -> dict[str, Any]:
    if not isinstance(request.body, dict):
        raise bad("body: a JSON object is expected")
    return dict(request.body)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def check_name(name: Any, what: str, field: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise bad(
            f"{field}: a {what} is 1 to 128 letters, digits and . _ : @ - (starting with a"
            " letter or digit)"
        )
    return name


# -- providers ---------------------------------------------------------------------------------


def provider_view(rec: ProviderRecord, catalog: Catalog, sync: CatalogSync) -> dict[str, Any]:
    out: dict[str, Any] = {"id": rec.id, "kind": rec.kind, "source": "api", **rec.config}
    if SECRET in rec.secrets:
        plain = credentials(sync.services).current(rec.id) if sync.services else None
        if plain is None and sync.keyring is not None:
            try:
                plain = sync.keyring.open(rec.secrets[SECRET], context(record_id(rec.id), SECRET))
            except ValueError:
                plain = None
        out[SECRET] = {"set": True, "fingerprint": fingerprint(plain) if plain else None}
    else:
        out[SECRET] = {"set": False}
    out["models"] = sorted(catalog.provider_models(rec.id))
    out.update(created=rec.created, updated=rec.updated, version=rec.version)
    if rec.rotated is not None:
        out.update(rotated=rec.rotated, grace=rec.grace)
    return out


def config_provider_view(name: str, models: list[str]) -> dict[str, Any]:
    return {"id": name, "source": "config", "models": sorted(models)}


def read_only(what: str, name: str) -> PluginError:
    return PluginError(
        409,
        "read_only",
        f"{what} '{name}' is defined in the config file: change it there (the API changes only"
        " what it made)",
    )


class ProviderInput(BaseModel):
    """A provider's body, checked: its kind's config (without the secret), the secret given
    (``None``: not given; ``""``: removed) and the models it makes."""

    kind: str
    config: dict[str, Any]
    secret: str | None
    models: dict[str, dict[str, Any]] | None


def provider_input(pid: str, body: dict[str, Any]) -> ProviderInput:
    kind = body.get("kind")
    if kind == "process":
        raise bad("kind: 'process' providers come from the config file only")
    if not isinstance(kind, str) or kind not in KINDS:
        raise bad(f"kind: must be one of {', '.join(KINDS)}")
    if "credential" in body:
        raise bad("credential: set by the catalog (give api_key)")
    config = {k: v for k, v in body.items() if k not in OWN_KEYS and k != SECRET}
    headers = config.get("headers")
    if isinstance(headers, dict):
        for name in headers:
            if isinstance(name, str) and name.lower() in SECRET_HEADERS:
                raise bad(f"headers.{name}: a credential goes in api_key (sealed at rest)")
    secret = body.get(SECRET) if SECRET in body else None
    if SECRET in body and body[SECRET] is None:
        secret = ""
    if secret is not None and not isinstance(secret, str):
        raise bad(f"{SECRET}: a string is expected")
    try:
        KINDS[kind].model_validate({**config, "kind": kind, SECRET: secret or None})
    except ValidationError as exc:
        raise invalid(exc) from None
    return ProviderInput(
        kind=kind, config=config, secret=secret, models=models_of(pid, body.get("models"))
    )


def models_of(pid: str, spec: Any) -> dict[str, dict[str, Any]] | None:
    """A provider's ``models``: ``["gpt-4o", ...]`` or ``{"smart": {"model": "gpt-4o", ...}}``
    -> name -> its one deployment (on this provider)."""
    if spec is None:
        return None
    if isinstance(spec, list):
        if not all(isinstance(name, str) for name in spec):
            raise bad("models: each model name must be a string")
        spec = {name: {} for name in spec}
    if not isinstance(spec, dict):
        raise bad("models: a list of model names or a mapping name -> deployment is expected")
    out: dict[str, dict[str, Any]] = {}
    for name, keys in spec.items():
        check_name(name, "model name", f"models.{name}" if isinstance(name, str) else "models")
        if not isinstance(keys, dict):
            raise bad(f"models.{name}: a mapping of deployment keys is expected")
        if "upstream" in keys:
            raise bad(f"models.{name}.upstream: the provider itself")
        deployment = {"model": name, **keys, "upstream": pid}
        try:
            DeploymentConfig.model_validate(deployment)
        except ValidationError as exc:
            raise invalid(exc, f"models.{name}") from None
        out[name] = deployment
    return out


class RotateBody(PluginConfig):
    api_key: SecretStr = Field(min_length=1)
    grace: Duration | None = None


def route(method: str, path: str, handler: Any, summary: str, role: str = "operator") -> AdminRoute:
    return AdminRoute(method, path, handler, role=role, summary=summary)  # type: ignore[arg-type]


async def list_providers(request: AdminRequest, instances: Sequence[Any]) -> Response:
    sync = sync_of(instances)
    catalog = sync.catalog
    data = [config_provider_view(n, m) for n, m in sorted(yaml_providers(instances, sync).items())]
    data += [provider_view(p, catalog, sync) for _, p in sorted(catalog.providers.items())]
    return Response.json({"object": "list", "data": data})


async def get_provider(request: AdminRequest, instances: Sequence[Any]) -> Response:
    sync = sync_of(instances)
    pid = request.params["id"]
    config = yaml_providers(instances, sync)
    if pid in config:
        return Response.json(config_provider_view(pid, config[pid]))
    rec = sync.catalog.providers.get(pid)
    if rec is None:
        raise not_found("provider", pid)
    return Response.json(provider_view(rec, sync.catalog, sync))


def not_found(what: str, name: str) -> PluginError:
    return PluginError(404, "not_found", f"no {what} '{name}'")


def guard_provider(instances: Sequence[Any], sync: CatalogSync, pid: str) -> None:
    assert sync.services is not None
    if pid in yaml_providers(instances, sync) or pid in sync.services.upstreams.configured():
        raise read_only("provider", pid)
    owner = sync.services.upstreams.runtime().get(pid, OWNER)
    if owner != OWNER:
        raise PluginError(409, "conflict", f"upstream '{pid}' belongs to '{owner}'")


def seal(sync: CatalogSync, pid: str, secret: str) -> str:
    if sync.keyring is None:
        raise PluginError(
            503,
            "no_secrets_key",
            "no secrets key configured (llm.secrets_key_file or the systemd credential"
            " gatewayd-llm.key): a secret cannot be stored",
        )
    return sync.keyring.seal(secret, context(record_id(pid), SECRET))


def provider_writes(
    catalog: Catalog,
    yaml: dict[str, list[DeploymentConfig]],
    rec: ProviderRecord,
    models: dict[str, dict[str, Any]] | None,
) -> Writes:
    """The provider's record, and (``models`` given) its models replaced by those."""
    writes: Writes = {("providers", rec.id): rec.to_json()}
    if models is None:
        return writes
    for name in models:
        if name in yaml:
            raise read_only("model", name)
        other = catalog.models.get(name)
        if other is not None and other.provider != rec.id:
            raise PluginError(409, "conflict", f"model '{name}' exists already")
    for name in catalog.provider_models(rec.id):
        if name not in models:
            writes[("models", name)] = None
    for name, deployment in models.items():
        old = catalog.models.get(name)
        if old is not None and old.deployments == [deployment]:
            continue
        model = stamp(ModelRecord(name, [deployment], provider=rec.id), old)
        writes[("models", name)] = model.to_json()
    return writes


async def create_provider(request: AdminRequest, instances: Sequence[Any]) -> Response:
    sync = sync_of(instances)
    body = body_of(request)
    pid = check_name(body.get("id"), "provider id", "id")
    guard_provider(instances, sync, pid)
    given = provider_input(pid, body)
    secrets = {SECRET: seal(sync, pid, given.secret)} if given.secret else {}
    yaml = yaml_models(instances)

    def change(catalog: Catalog) -> tuple[Writes, None]:
        if pid in catalog.providers:
            raise PluginError(409, "conflict", f"provider '{pid}' exists already")
        rec = stamp(ProviderRecord(pid, given.kind, given.config, secrets), None)
        return provider_writes(catalog, yaml, rec, given.models), None

    await sync.transact(change)
    return provider_reply(sync, pid, 201)


def provider_reply(sync: CatalogSync, pid: str, status: int = 200) -> Response:
    rec = sync.catalog.providers.get(pid)
    if rec is None:  # deleted meanwhile
        raise not_found("provider", pid)
    return Response.json(provider_view(rec, sync.catalog, sync), status)


async def change_provider(request: AdminRequest, instances: Sequence[Any]) -> Response:
    """PUT (the whole provider; a missing ``api_key`` keeps the stored one, ``null`` removes
    it) or PATCH (a merge patch of it). A new secret is a rotation with the default grace."""
    sync = sync_of(instances)
    pid = request.params["id"]
    guard_provider(instances, sync, pid)
    body = body_of(request)
    if body.get("id", pid) != pid:
        raise bad("id: the id of a provider cannot change")
    current = sync.catalog.providers.get(pid)
    if current is None:
        raise not_found("provider", pid)
    if request.method == "PATCH":
        base = {"kind": current.kind, **current.config}
        patched = merge_patch(base, {k: v for k, v in body.items() if k not in ("models",)})
        if "models" in body:
            patched["models"] = body["models"]
        body = patched
    given = provider_input(pid, body)
    token = seal(sync, pid, given.secret) if given.secret else None
    yaml = yaml_models(instances)
    grace = sync.grace

    def change(catalog: Catalog) -> tuple[Writes, None]:
        old = catalog.providers.get(pid)
        if old is None:
            raise not_found("provider", pid)
        secrets, rotated, kept = dict(old.secrets), old.rotated, old.grace
        if given.secret == "":
            secrets.pop(SECRET, None)
        elif token is not None:
            secrets[SECRET] = token
            rotated, kept = time.time(), grace
        rec = stamp(
            ProviderRecord(pid, given.kind, given.config, secrets, rotated=rotated, grace=kept),
            old,
        )
        return provider_writes(catalog, yaml, rec, given.models), None

    await sync.transact(change)
    return provider_reply(sync, pid)


async def delete_provider(request: AdminRequest, instances: Sequence[Any]) -> Response:
    sync = sync_of(instances)
    pid = request.params["id"]
    guard_provider(instances, sync, pid)

    def change(catalog: Catalog) -> tuple[Writes, None]:
        if pid not in catalog.providers:
            raise not_found("provider", pid)
        writes: Writes = {("providers", pid): None}
        for name in catalog.provider_models(pid):
            writes[("models", name)] = None
        return writes, None

    await sync.transact(change)
    return Response(204, {}, b"")


async def rotate(request: AdminRequest, instances: Sequence[Any]) -> Response:
    sync = sync_of(instances)
    pid = request.params["id"]
    guard_provider(instances, sync, pid)
    try:
        given = RotateBody.model_validate(body_of(request))
    except ValidationError as exc:
        raise invalid(exc) from None
    if pid not in sync.catalog.providers:
        raise not_found("provider", pid)
    token = seal(sync, pid, given.api_key.get_secret_value())
    grace = sync.grace if given.grace is None else float(given.grace)

    def change(catalog: Catalog) -> tuple[Writes, None]:
        old = catalog.providers.get(pid)
        if old is None:
            raise not_found("provider", pid)
        rec = stamp(
            replace(old, secrets={**old.secrets, SECRET: token}, rotated=time.time(), grace=grace),
            old,
        )
        return {("providers", pid): rec.to_json()}, None

    await sync.transact(change)
    return provider_reply(sync, pid)


async def check(request: AdminRequest, instances: Sequence[Any]) -> Response:
    from gatewayd_llm.connectivity import check_provider

    sync = sync_of(instances)
    pid = request.params["id"]
    if pid in yaml_providers(instances, sync):
        raise read_only("provider", pid)
    rec = sync.catalog.providers.get(pid)
    if rec is None:
        raise not_found("provider", pid)
    secret = sync.open_secret(rec) if rec.secrets else None
    config = KINDS[rec.kind].model_validate({**rec.config, "kind": rec.kind})
    result = await check_provider(rec.kind, config, secret)
    return Response.json({"id": pid, **result})


# -- models ------------------------------------------------------------------------------------


class ModelBody(PluginConfig):
    deployments: list[DeploymentConfig] = Field(min_length=1)
    fallbacks: list[str] = []
    price: PriceConfig | None = None


def model_view(rec: ModelRecord) -> dict[str, Any]:
    return {"name": rec.name, "source": "api", **model_fields(rec)}


def model_fields(rec: ModelRecord) -> dict[str, Any]:
    return {
        "deployments": rec.deployments,
        "fallbacks": rec.fallbacks,
        "price": rec.price,
        "provider": rec.provider,
        "created": rec.created,
        "updated": rec.updated,
        "version": rec.version,
    }


def config_model_view(name: str, deployments: list[DeploymentConfig]) -> dict[str, Any]:
    return {
        "name": name,
        "source": "config",
        "deployments": [d.model_dump(mode="json", exclude_defaults=True) for d in deployments],
    }


async def list_models(request: AdminRequest, instances: Sequence[Any]) -> Response:
    sync = sync_of(instances)
    yaml = yaml_models(instances)
    data = [config_model_view(n, d) for n, d in yaml.items()]
    data += [model_view(m) for n, m in sorted(sync.catalog.models.items()) if n not in yaml]
    return Response.json({"object": "list", "data": data})


async def get_model(request: AdminRequest, instances: Sequence[Any]) -> Response:
    sync = sync_of(instances)
    name = request.params["name"]
    yaml = yaml_models(instances)
    if name in yaml:
        return Response.json(config_model_view(name, yaml[name]))
    rec = sync.catalog.models.get(name)
    if rec is None:
        raise not_found("model", name)
    return Response.json(model_view(rec))


def model_input(
    body: dict[str, Any], name: str, known: Callable[[str], bool], upstream: Callable[[str], bool]
) -> tuple[ModelBody, dict[str, Any]]:
    fields = {k: v for k, v in body.items() if k != "name"}
    try:
        given = ModelBody.model_validate(fields)
    except ValidationError as exc:
        raise invalid(exc) from None
    for i, d in enumerate(given.deployments):
        if not upstream(d.upstream):
            raise bad(f"deployments[{i}].upstream: no provider or upstream '{d.upstream}'")
    for i, other in enumerate(given.fallbacks):
        if other == name:
            raise bad(f"fallbacks[{i}]: a model cannot fall back to itself")
        if not known(other):
            raise bad(f"fallbacks[{i}]: no model '{other}'")
    return given, fields


async def put_model(request: AdminRequest, instances: Sequence[Any]) -> Response:
    """POST /models (new), PUT /models/{name} (the whole model), PATCH (a merge patch)."""
    sync = sync_of(instances)
    assert sync.services is not None
    body = body_of(request)
    creating = request.method == "POST"
    if creating:
        name = check_name(body.get("name"), "model name", "name")
    else:
        name = request.params["name"]
        if body.get("name", name) != name:
            raise bad("name: the name of a model cannot change")
    yaml = yaml_models(instances)
    if name in yaml:
        raise read_only("model", name)
    current = sync.catalog.models.get(name)
    if not creating and current is None:
        raise not_found("model", name)
    if request.method == "PATCH" and current is not None:
        base = {"deployments": current.deployments, "fallbacks": current.fallbacks}
        if current.price is not None:
            base["price"] = current.price
        body = merge_patch(base, body)
    configured = sync.services.upstreams.configured()
    catalog_now = sync.catalog
    given, fields = model_input(
        body,
        name,
        lambda m: m in yaml or m in catalog_now.models,
        lambda u: u in configured or u in catalog_now.providers,
    )
    served_model(ModelRecord(name, fields["deployments"]))  # parses as the sync will

    def change(catalog: Catalog) -> tuple[Writes, None]:
        old = catalog.models.get(name)
        if creating and old is not None:
            raise PluginError(409, "conflict", f"model '{name}' exists already")
        if not creating and old is None:
            raise not_found("model", name)
        rec = ModelRecord(
            name,
            [dict(d) for d in fields["deployments"]],
            [str(f) for f in given.fallbacks],
            dict(fields["price"]) if fields.get("price") is not None else None,
            old.provider if old is not None else None,
        )
        return {("models", name): stamp(rec, old).to_json()}, None

    await sync.transact(change)
    rec = sync.catalog.models.get(name)
    if rec is None:
        raise not_found("model", name)
    return Response.json(model_view(rec), 201 if creating else 200)


async def delete_model(request: AdminRequest, instances: Sequence[Any]) -> Response:
    sync = sync_of(instances)
    name = request.params["name"]
    if name in yaml_models(instances):
        raise read_only("model", name)

    def change(catalog: Catalog) -> tuple[Writes, None]:
        if name not in catalog.models:
            raise not_found("model", name)
        return {("models", name): None}, None

    await sync.transact(change)
    return Response(204, {}, b"")


def routes() -> list[AdminRoute]:
    return [
        route("GET", "/providers", list_providers, "the providers (config and API)", "viewer"),
        route("POST", "/providers", create_provider, "add a provider"),
        route("GET", "/providers/{id}", get_provider, "one provider", "viewer"),
        route("PUT", "/providers/{id}", change_provider, "replace a provider"),
        route("PATCH", "/providers/{id}", change_provider, "change a provider (merge patch)"),
        route("DELETE", "/providers/{id}", delete_provider, "delete a provider and its models"),
        route("POST", "/providers/{id}/test", check, "connectivity test (not billed)"),
        route(
            "POST",
            "/providers/{id}/rotate-credentials",
            rotate,
            "rotate a provider's secret (the old one stays usable during grace)",
        ),
        route("GET", "/models", list_models, "the models (config and API)", "viewer"),
        route("POST", "/models", put_model, "add a model"),
        route("GET", "/models/{name}", get_model, "one model", "viewer"),
        route("PUT", "/models/{name}", put_model, "replace a model"),
        route("PATCH", "/models/{name}", put_model, "change a model (merge patch)"),
        route("DELETE", "/models/{name}", delete_model, "delete a model"),
    ]
