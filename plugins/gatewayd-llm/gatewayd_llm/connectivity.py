"""A provider's connectivity test (``POST /_admin/llm/providers/{id}/test``): what works, step
by step, without a billed request.

HTTP kinds (openai, anthropic, ollama), on the URL of the kind's cheap probe
(:meth:`~gatewayd_llm.kinds.base.HttpProvider.cheap_probe`, the request its health checks send):

- ``dns``: the host's addresses (``loop.getaddrinfo``);
- ``connect``: a TCP connection to the first address that accepts one;
- ``tls`` (``https`` only): the handshake on that connection with the certificate verified
  against the system's trust store and the host name; the certificate's subject, names, issuer
  and expiry;
- ``auth``: the probe sent with the secret; 401 or 403 mean the provider refused it;
- ``models``: the probe's answer is a model list (its size and first names).

The ``process`` kind has one step, ``command``: its executable is found and executable.

Each step is ``{"name", "ok", "ms", "detail"}`` and takes at most the config's connect
timeout; the first failure ends the test (the steps after it are ``ok: null``, detail
``skipped``). No detail holds the secret: the provider's text is shown only for statuses other
than 401/403 (which may quote part of a key), scrubbed of the secret and of anything that looks
like a key.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from gatewayd.chain import UpstreamConfig
from gatewayd_llm.kinds.anthropic import AnthropicUpstream
from gatewayd_llm.kinds.base import HttpProvider, Probe, ProviderConfig, provider_error, scrub
from gatewayd_llm.kinds.masking import mask
from gatewayd_llm.kinds.ollama import OllamaUpstream
from gatewayd_llm.kinds.openai import OpenAIUpstream
from gatewayd_llm.kinds.process import ProcessUpstreamConfig, environment, executable

__all__ = ["HTTP_KINDS", "check_provider"]

HTTP_KINDS: dict[str, type[HttpProvider]] = {
    "openai": OpenAIUpstream,
    "anthropic": AnthropicUpstream,
    "ollama": OllamaUpstream,
}
MAX_BODY = 1024 * 1024
HTTP_STEPS = ("dns", "connect", "tls", "auth", "models")


class StepFailed(Exception):
    """A step's failure, with what to show (no secret in it)."""


@dataclass(slots=True)
class _Run:
    timeout: float
    secrets: tuple[str, ...]
    steps: list[dict[str, Any]]

    async def step(self, name: str, work: Callable[[], Awaitable[str]]) -> bool:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                detail, ok = await work(), True
        except TimeoutError:
            detail, ok = f"timed out after {self.timeout:g} s", False
        except StepFailed as exc:
            detail, ok = str(exc), False
        ms = round((time.monotonic() - started) * 1000, 1)
        self.steps.append({"name": name, "ok": ok, "ms": ms, "detail": scrub(detail, self.secrets)})
        return ok

    def skip(self, names: tuple[str, ...]) -> None:
        done = {s["name"] for s in self.steps}
        for name in names:
            if name not in done:
                self.steps.append({"name": name, "ok": None, "ms": None, "detail": "skipped"})

    def result(self) -> dict[str, Any]:
        return {"ok": all(s["ok"] is not False for s in self.steps), "steps": self.steps}


async def check_provider(kind: str, config: UpstreamConfig, secret: str | None) -> dict[str, Any]:
    """The test of a provider of ``kind`` with ``config`` sending ``secret``:
    ``{"ok": bool, "steps": [{"name", "ok", "ms", "detail"}, ...]}``."""
    timeout = float(config.timeouts.connect)
    run = _Run(timeout, (secret,) if secret else (), [])
    if kind == "process":
        assert isinstance(config, ProcessUpstreamConfig)
        await run.step("command", lambda: _command(config))
        return run.result()
    cls = HTTP_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"no connectivity test for kind '{kind}'")
    assert isinstance(config, ProviderConfig)
    probe = cls.cheap_probe(config, secret)
    await _http_steps(run, probe)
    run.skip(
        HTTP_STEPS if probe.url.scheme == "https" else tuple(s for s in HTTP_STEPS if s != "tls")
    )
    return run.result()


async def _command(config: ProcessUpstreamConfig) -> str:
    found = executable(config, environment(config))
    if found is None:
        raise StepFailed(f"{config.command[0]}: not found or not executable")
    return f"found {found}"


async def _http_steps(run: _Run, probe: Probe) -> None:
    url = probe.url
    host = url.raw_host or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    addresses: list[str] = []

    async def dns() -> str:
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise StepFailed(f"{host}: {exc.strerror or exc}") from None
        except UnicodeError:  # an empty label or one over 63 characters (IDNA refuses it)
            raise StepFailed(f"{host}: not a valid host name") from None
        for info in infos:
            address = str(info[4][0])
            if address not in addresses:
                addresses.append(address)
        return f"{host}: {', '.join(addresses[:4])}"

    if not await run.step("dns", dns):
        return
    conn: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def connect() -> str:
        errors: list[str] = []
        for address in addresses:
            try:
                conn.append(await asyncio.open_connection(address, port))
                return f"connected to {address} port {port}"
            except OSError as exc:
                errors.append(f"{address}: {exc.strerror or exc}")
        raise StepFailed("; ".join(errors) or "no address")

    context = ssl.create_default_context()
    try:
        if not await run.step("connect", connect):
            return
        if url.scheme == "https" and not await run.step(
            "tls", lambda: _tls(conn[0][1], host, context)
        ):
            return
    finally:
        for _, writer in conn:
            writer.close()
    await _probe(run, probe, context)


async def _tls(writer: asyncio.StreamWriter, host: str, context: ssl.SSLContext) -> str:
    try:
        await writer.start_tls(context, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        raise StepFailed(f"certificate not trusted: {exc.verify_message}") from None
    except (ssl.SSLError, OSError) as exc:
        raise StepFailed(f"TLS handshake failed: {exc.strerror or exc}") from None
    cert = writer.get_extra_info("peercert") or {}
    version = writer.get_extra_info("ssl_object").version()
    subject = _name(cert.get("subject", ()))
    issuer = _name(cert.get("issuer", ()))
    names = [v for k, v in cert.get("subjectAltName", ()) if k in ("DNS", "IP Address")]
    detail = f"{version}, certificate {subject} for {', '.join(names[:4]) or '?'}"
    detail += f" issued by {issuer}"
    if "notAfter" in cert:
        expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), UTC)
        days = (expires - datetime.now(UTC)).days
        detail += f", expires {expires:%Y-%m-%d} (in {days} days)"
    return detail


_RDN_NAMES = {"commonName": "CN", "organizationName": "O"}


def _name(rdns: Any) -> str:
    """A certificate name's CN and O (``CN=api.example.com, O=Example``)."""
    parts = [f"{_RDN_NAMES[k]}={v}" for rdn in rdns for k, v in rdn if k in _RDN_NAMES]
    return ", ".join(parts) or "?"


async def _probe(run: _Run, probe: Probe, context: ssl.SSLContext) -> None:
    reply: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=run.timeout)
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:

        async def auth() -> str:
            try:
                async with session.get(
                    probe.url, headers=probe.headers, allow_redirects=False
                ) as resp:
                    reply["status"] = resp.status
                    reply["body"] = await resp.content.read(MAX_BODY)
            except aiohttp.ClientError as exc:
                raise StepFailed(f"the request failed: {type(exc).__name__}") from None
            status = reply["status"]
            if status in (401, 403):  # its text may quote part of the key: not shown
                raise StepFailed(f"the provider refused the credentials ({status})")
            return f"GET {probe.url.path} answered {status}"

        if not await run.step("auth", auth):
            return

    async def models() -> str:
        status = reply["status"]
        payload = _json(reply["body"])
        if status != 200:
            message = mask(provider_error(status, payload, "")[0], run.secrets)
            raise StepFailed(
                f"the model list answered {status}" + (f": {message}" if message else "")
            )
        names = _model_names(payload)
        if names is None:
            raise StepFailed("the answer is not a model list")
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        return f"{len(names)} models" + (f": {shown}" if names else "")

    await run.step("models", models)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _model_names(payload: Any) -> list[str] | None:
    """The names in OpenAI's/Anthropic's ``{"data": [{"id"}]}`` or Ollama's
    ``{"models": [{"name"}]}``; None when it is neither."""
    if not isinstance(payload, dict):
        return None
    items = payload.get("data", payload.get("models"))
    if not isinstance(items, list):
        return None
    names: list[str] = []
    for item in items:
        if isinstance(item, dict):
            name = item.get("id") or item.get("name") or item.get("model")
            if isinstance(name, str):
                names.append(name)
    return names
