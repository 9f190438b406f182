"""``request_limits`` (gatewayd/plugins/request_limits.py): config, then requests."""

from __future__ import annotations

import pytest

from gatewayd.plugins.request_limits import RequestLimitsPlugin
from gatewayd.testing import ConfigError, PluginHarness

# -- config ------------------------------------------------------------------------------------


def test_sizes_are_parsed():
    h = PluginHarness(RequestLimitsPlugin, {"max_body": "10MiB", "max_header_size": "8KiB"})
    assert h.plugin.config.max_body == 10 * 1024 * 1024
    assert h.plugin.config.max_header_size == 8 * 1024


def test_no_limits_is_valid():
    assert PluginHarness(RequestLimitsPlugin).plugin.config.max_body is None


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"max_body": "lots"}, "plugins[0].request_limits.max_body"),
        ({"max_header_size": "1 potato"}, "plugins[0].request_limits.max_header_size"),
        ({"max_headers": "many"}, "plugins[0].request_limits.max_headers"),
        ({"max_size": "1MiB"}, "plugins[0].request_limits.max_size"),
    ],
)
def test_invalid_configs_name_the_field(config, path):
    with pytest.raises(ConfigError) as err:
        PluginHarness(RequestLimitsPlugin, config)
    assert [p.path for p in err.value.problems] == [path]


# -- requests ----------------------------------------------------------------------------------

LIMIT = {"max_body": "1KiB"}


async def test_a_declared_length_over_the_limit_is_refused_before_the_backend():
    async def never_read():
        raise AssertionError("the body must not be read")
        yield b""  # pragma: no cover

    async with PluginHarness(RequestLimitsPlugin, LIMIT) as h:
        reply = await h.request("POST", "/", headers={"Content-Length": "4096"}, body=never_read())
        assert reply.status == 413 and b"body_too_large" in reply.body
        assert reply.headers["Connection"] == "close"
        assert h.upstream_requests == []


async def test_a_bytes_body_over_the_limit_is_refused():
    async with PluginHarness(RequestLimitsPlugin, LIMIT) as h:
        assert (await h.request("POST", "/", body=b"x" * 1025)).status == 413
        assert (await h.request("POST", "/", body=b"x" * 1024)).status == 200
        assert h.upstream_requests[-1].body == b"x" * 1024


async def test_a_streamed_body_is_cut_off_when_it_grows_past_the_limit():
    read: list[int] = []

    async def chunks():
        for i in range(100):
            read.append(i)
            yield b"x" * 512

    async with PluginHarness(RequestLimitsPlugin, LIMIT) as h:
        reply = await h.request("POST", "/", body=chunks())
        assert reply.status == 413 and b"exceeds 1024 bytes" in reply.body
        assert len(read) == 3  # not a chunk more than needed to know
        assert h.upstream_requests == []


async def test_a_streamed_body_within_the_limit_passes_whole():
    async def chunks():
        yield b"a" * 600
        yield b"b" * 424

    async with PluginHarness(RequestLimitsPlugin, LIMIT) as h:
        assert (await h.request("PUT", "/", body=chunks())).status == 200
        assert h.upstream_requests[-1].body == b"a" * 600 + b"b" * 424


async def test_too_many_or_too_large_headers_are_431():
    config = {"max_headers": 3, "max_header_size": 200}
    async with PluginHarness(RequestLimitsPlugin, config) as h:
        many = {f"X-{i}": "v" for i in range(4)}
        reply = await h.request(headers=many)
        assert reply.status == 431 and b"more than 3 header fields" in reply.body
        reply = await h.request(headers={"X-Big": "v" * 200})
        assert reply.status == 431 and b"headers exceed 200 bytes" in reply.body
        assert (await h.request(headers={"X-Small": "v"})).status == 200
        assert len(h.upstream_requests) == 1
