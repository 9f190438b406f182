"""webhook_signature, cors and ip_filter through the real daemon."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import aiohttp

from .identity_support import echo_app, route, upstream_url

GH = "gh-secret"
ST = "whsec_stripe"
TG = "tg-token-123"
HM = "generic-secret"


async def start(gateway, backend, config, seen):
    srv = await backend(echo_app(seen))
    ws = "webhook_signature"
    cfg = config(
        upstreams={"api": {"targets": [upstream_url(srv)]}},
        routes=[
            route(
                "gh",
                "api",
                "/gh/",
                [{ws: {"provider": "github", "secret": GH, "max_body": "1KiB"}}],
            ),
            route(
                "st", "api", "/st/", [{ws: {"provider": "stripe", "secret": ST, "tolerance": "5m"}}]
            ),
            route("tg", "api", "/tg/", [{ws: {"provider": "telegram", "secret_token": TG}}]),
            route(
                "hm",
                "api",
                "/hm/",
                [
                    {
                        ws: {
                            "provider": "hmac",
                            "secret": HM,
                            "header": "X-Signature",
                            "algorithm": "sha512",
                            "encoding": "base64",
                            "prefix": "v1=",
                        }
                    }
                ],
            ),
            route(
                "cors",
                "api",
                "/cors/",
                [
                    {
                        "cors": {
                            "origins": ["https://*.example.com"],
                            "credentials": True,
                            "max_age": "1h",
                            "expose_headers": ["X-Total"],
                        }
                    },
                    {"key_auth": {}},
                ],
            ),
            route("deny", "api", "/deny/", [{"ip_filter": {"deny": ["127.0.0.0/8"]}}]),
            route(
                "proxied",
                "api",
                "/proxied/",
                [{"ip_filter": {"allow": ["203.0.113.0/24"]}}],
            ),
        ],
    )
    cfg["listen"][0]["trusted_proxies"] = ["127.0.0.1/32"]  # the client IP comes from XFF
    return await gateway(cfg)


def mac(secret: str, data: bytes, alg=hashlib.sha256) -> bytes:
    return hmac.new(secret.encode(), data, alg).digest()


async def test_webhook_providers(gateway, backend, config):
    seen: list = []
    gw = await start(gateway, backend, config, seen)
    body = b'{"action":"opened","n":\x00\xff 1}'
    now = int(time.time())
    async with aiohttp.ClientSession() as s:

        async def post(path, headers, data=body):
            async with s.post(gw.url + path, data=data, headers=headers) as r:
                return r.status, await r.read()

        good = {"X-Hub-Signature-256": "sha256=" + mac(GH, body).hex()}
        assert (await post("/gh/", good))[0] == 200
        assert base64.b64decode(seen[-1]["body"]) == body  # byte for byte
        assert (await post("/gh/", {"X-Hub-Signature-256": "sha256=" + "0" * 64}))[0] == 401
        assert (await post("/gh/", {}))[0] == 401
        big = b"x" * 2048
        big_sig = {"X-Hub-Signature-256": "sha256=" + mac(GH, big).hex()}
        assert (await post("/gh/", big_sig, big))[0] == 413

        def stripe(t: int, data: bytes = body) -> dict:
            sig = mac(ST, f"{t}.".encode() + data).hex()
            return {"Stripe-Signature": f"t={t},v1={'f' * 64},v1={sig}"}

        assert (await post("/st/", stripe(now)))[0] == 200
        assert (await post("/st/", stripe(now - 3600)))[0] == 401  # outside tolerance
        assert (await post("/st/", stripe(now), body + b"!"))[0] == 401

        assert (await post("/tg/", {"X-Telegram-Bot-Api-Secret-Token": TG}))[0] == 200
        assert (await post("/tg/", {"X-Telegram-Bot-Api-Secret-Token": TG + "x"}))[0] == 401

        sig = base64.b64encode(mac(HM, body, hashlib.sha512)).decode()
        assert (await post("/hm/", {"X-Signature": "v1=" + sig}))[0] == 200
        assert (await post("/hm/", {"X-Signature": sig}))[0] == 401  # prefix missing
        status, reply = await post("/hm/", {"X-Signature": "v1=%%%"})
        assert status == 401 and HM.encode() not in reply


async def test_cors(gateway, backend, config):
    seen: list = []
    gw = await start(gateway, backend, config, seen)
    async with aiohttp.ClientSession() as s:
        pre = {
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        }
        async with s.options(gw.url + "/cors/x", headers=pre) as r:
            assert r.status == 204  # answered here, before key_auth, never forwarded
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            assert r.headers["Access-Control-Allow-Credentials"] == "true"
            assert r.headers["Access-Control-Max-Age"] == "3600"
            assert r.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
        assert seen == []
        for bad in ("https://evil.com", "https://example.com.evil.com", "https://a.example.com/x"):
            async with s.options(gw.url + "/cors/x", headers={**pre, "Origin": bad}) as r:
                assert r.status == 403, bad
        # An actual request: the 401 from key_auth still carries the CORS headers.
        async with s.get(gw.url + "/cors/x", headers={"Origin": "https://app.example.com"}) as r:
            assert r.status == 401
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            assert r.headers["Access-Control-Expose-Headers"] == "X-Total"
            assert "Origin" in r.headers["Vary"]


async def test_ip_filter(gateway, backend, config):
    gw = await start(gateway, backend, config, [])
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/deny/x") as r:
            assert r.status == 403
            assert (await r.json())["error"]["code"] == "forbidden"
        # The peer (127.0.0.1) is a trusted proxy of the listener: X-Forwarded-For is believed.
        xff = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
        async with s.get(gw.url + "/proxied/x", headers=xff) as r:
            assert r.status == 200
        xff = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}  # spoofed leftmost hop
        async with s.get(gw.url + "/proxied/x", headers=xff) as r:
            assert r.status == 403
        async with s.get(gw.url + "/proxied/x") as r:
            assert r.status == 403  # the proxy itself is not allowed
