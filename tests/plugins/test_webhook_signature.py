"""``webhook_signature`` (gatewayd/plugins/webhook_signature.py): config, then requests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest

from gatewayd.plugins.webhook_signature import WebhookSignaturePlugin
from gatewayd.testing import ConfigError, PluginHarness

SECRET = "whsec-0123456789abcdef"
BODY = b'{"action":"opened","n":1}'

# -- config ------------------------------------------------------------------------------------


def test_valid_configs_and_secrets_kept_out_of_reprs():
    h = PluginHarness(
        WebhookSignaturePlugin, {"provider": "stripe", "secret": SECRET, "tolerance": "5m"}
    )
    assert h.plugin.config.tolerance == 300.0
    assert SECRET not in repr(h.plugin.config)
    h = PluginHarness(WebhookSignaturePlugin, {"provider": "telegram", "secret_token": SECRET})
    assert SECRET not in repr(h.plugin.config)


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({}, "plugins[0].webhook_signature.provider", "Field required"),
        ({"provider": "gitlab", "secret": "s"}, "plugins[0].webhook_signature.provider", "'hmac'"),
        ({"provider": "telegram"}, "plugins[0].webhook_signature", "needs 'secret_token'"),
        ({"provider": "github"}, "plugins[0].webhook_signature", "needs 'secret'"),
        ({"provider": "hmac", "secret": "s"}, "plugins[0].webhook_signature", "needs 'header'"),
        (
            {"provider": "hmac", "secret": "s", "header": "X-Sig", "algorithm": "md5"},
            "plugins[0].webhook_signature.algorithm",
            "",
        ),
        (
            {"provider": "github", "secret": "s", "max_body": "huge"},
            "plugins[0].webhook_signature.max_body",
            "invalid size",
        ),
    ],
)
def test_invalid_configs_name_the_field(config, path, message):
    with pytest.raises(ConfigError) as err:
        PluginHarness(WebhookSignaturePlugin, config)
    (problem,) = err.value.problems
    assert problem.path == path and message in problem.message


# -- requests ----------------------------------------------------------------------------------


def mac(data: bytes, alg=hashlib.sha256, secret: str = SECRET) -> bytes:
    return hmac.new(secret.encode(), data, alg).digest()


async def chunks(data: bytes):
    for i in range(0, len(data), 7):
        yield data[i : i + 7]


async def test_github_signatures_and_the_body_forwarded_byte_for_byte():
    async with PluginHarness(WebhookSignaturePlugin, {"provider": "github", "secret": SECRET}) as h:
        good = {"X-Hub-Signature-256": "sha256=" + mac(BODY).hex()}
        assert (await h.request("POST", "/hook", headers=good, body=BODY)).status == 200
        assert h.upstream_requests[-1].body == BODY
        # a streamed body is read, verified and forwarded whole
        assert (await h.request("POST", "/hook", headers=good, body=chunks(BODY))).status == 200
        assert h.upstream_requests[-1].body == BODY
        bad = await h.request("POST", "/hook", headers=good, body=BODY + b" ")
        assert bad.status == 401 and b"signature does not match" in bad.body
        assert bad.headers["WWW-Authenticate"].startswith("Signature")
        missing = await h.request("POST", "/hook", body=BODY)
        assert missing.status == 401 and b"missing X-Hub-Signature-256" in missing.body
        assert SECRET.encode() not in bad.body + missing.body
        assert len(h.upstream_requests) == 2


async def test_stripe_timestamps_and_several_signatures():
    config = {"provider": "stripe", "secret": SECRET, "tolerance": "5m"}
    async with PluginHarness(WebhookSignaturePlugin, config) as h:

        def header(t: int, *extra: str) -> dict[str, str]:
            sig = mac(f"{t}.".encode() + BODY).hex()
            return {"Stripe-Signature": ",".join([f"t={t}", *extra, f"v1={sig}"])}

        now = int(time.time())
        assert (await h.request("POST", headers=header(now), body=BODY)).status == 200
        rotated = header(now, "v1=" + "0" * 64)  # an old secret's signature beside the new one
        assert (await h.request("POST", headers=rotated, body=BODY)).status == 200
        replayed = header(now - 600)  # outside the tolerance
        assert (await h.request("POST", headers=replayed, body=BODY)).status == 401
        no_time = {"Stripe-Signature": "v1=" + mac(BODY).hex()}
        assert (await h.request("POST", headers=no_time, body=BODY)).status == 401


async def test_telegram_secret_token():
    config = {"provider": "telegram", "secret_token": SECRET}
    async with PluginHarness(WebhookSignaturePlugin, config) as h:
        ok = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
        assert (await h.request("POST", headers=ok, body=BODY)).status == 200
        wrong = {"X-Telegram-Bot-Api-Secret-Token": SECRET + "x"}
        assert (await h.request("POST", headers=wrong, body=BODY)).status == 401
        assert (await h.request("POST", body=BODY)).status == 401


@pytest.mark.parametrize(
    ("algorithm", "encoding", "prefix"),
    [("sha256", "hex", "sha256="), ("sha1", "hex", ""), ("sha512", "base64", "")],
)
async def test_generic_hmac(algorithm, encoding, prefix):
    config = {
        "provider": "hmac",
        "secret": SECRET,
        "header": "X-Signature",
        "algorithm": algorithm,
        "encoding": encoding,
        "prefix": prefix,
    }
    digest = mac(BODY, getattr(hashlib, algorithm))
    value = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    async with PluginHarness(WebhookSignaturePlugin, config) as h:
        good = {"X-Signature": prefix + value}
        assert (await h.request("POST", headers=good, body=BODY)).status == 200
        if encoding == "hex":
            upper = {"X-Signature": prefix + value.upper()}
            assert (await h.request("POST", headers=upper, body=BODY)).status == 200
        for bad in (value, "!!!" + value, prefix + value[:-2]):
            if bad == prefix + value:
                continue
            assert (await h.request("POST", headers={"X-Signature": bad}, body=BODY)).status == 401


async def test_a_body_over_max_body_is_413():
    config = {"provider": "github", "secret": SECRET, "max_body": 16}
    async with PluginHarness(WebhookSignaturePlugin, config) as h:
        good = {"X-Hub-Signature-256": "sha256=" + mac(BODY).hex()}
        reply = await h.request("POST", headers=good, body=BODY)
        assert reply.status == 413 and h.upstream_requests == []
        reply = await h.request("POST", headers=good, body=chunks(BODY))
        assert reply.status == 413 and h.upstream_requests == []
