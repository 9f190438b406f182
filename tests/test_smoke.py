import aiohttp
from aiohttp import web
from support import upstream_url


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {"path": request.raw_path, "headers": dict(request.headers), "len": len(body)}
    )


async def test_proxies_a_get(gateway, backend, config):
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    srv = await backend(app)
    gw = await gateway(
        config(
            upstreams={"api": {"targets": [upstream_url(srv)]}},
            routes=[{"name": "api", "match": {"path": "/"}, "upstream": "api"}],
        )
    )
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/hello?x=1") as r:
        assert r.status == 200
        data = await r.json()
    assert data["path"] == "/hello?x=1"
    assert data["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert r.headers["X-Request-ID"] == data["headers"]["X-Request-ID"]
