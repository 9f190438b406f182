"""gatewayd.testing.PluginHarness: real services, the daemon's runner, reloads, failures."""

from __future__ import annotations

import logging
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from gatewayd.chain import (
    Plugin,
    PluginConfig,
    PluginContext,
    Principal,
    RequestContext,
    Response,
    UpstreamConnectError,
    UpstreamTimeout,
    runner,
)
from gatewayd.chain.registry import PluginLoadError
from gatewayd.testing import ConfigError, HarnessServices, PluginFailed, PluginHarness

# The smallest valid config of each built-in plugin (the others need none).
MINIMAL = {
    "rate_limit": {"rate": "5/s", "burst": 5},
    "webhook_signature": {"provider": "github", "secret": "s3cret"},
    "jwt_auth": {"algorithms": ["HS256"], "secret": "x" * 32},
}
BUILT_IN = sorted(
    ep.name for ep in entry_points(group="gatewayd.plugins") if ep.module.startswith("gatewayd.")
)


def built_in(name: str) -> type:
    return next(ep for ep in entry_points(group="gatewayd.plugins") if ep.name == name).load()


def test_the_harness_runs_the_daemons_runner():
    import gatewayd.testing as testing

    assert testing.run_request is runner.run_request
    assert testing.run_response is runner.run_response
    assert testing.run_done is runner.run_done


@pytest.mark.parametrize("name", BUILT_IN)
async def test_every_built_in_plugin_is_built_and_served(name):
    """Defect 7: PluginHarness(RateLimitPlugin) could not be constructed (no services)."""
    async with PluginHarness(built_in(name), MINIMAL.get(name)) as h:
        reply = await h.request("GET", "/")
        assert 200 <= reply.status < 500
        assert h.failures == []
        assert isinstance(h.plugin.context.logger, logging.Logger)
        assert h.plugin.context.logger.name == f"gatewayd.plugins.{name}"


def test_an_invalid_config_names_the_field():
    with pytest.raises(ConfigError) as err:
        PluginHarness(built_in("rate_limit"), {"rate": "5/s", "burst": -1})
    assert [p.path for p in err.value.problems] == ["plugins[0].rate_limit.burst"]
    with pytest.raises(ConfigError) as err:
        PluginHarness(built_in("cors"), {"origin": ["*"]})
    assert err.value.problems[0].path == "plugins[0].cors.origin"
    assert err.value.problems[0].message == "unknown field"


def test_a_class_that_is_no_plugin_is_refused_by_name():
    class NotAPlugin:
        name = "nothing"

    with pytest.raises(PluginLoadError, match="nothing"):
        PluginHarness(NotAPlugin)


async def test_a_failing_constructor_is_a_config_error():
    class Picky(Plugin):
        name = "picky"

        def __init__(self, config: PluginConfig, context: PluginContext) -> None:
            raise ValueError("needs a friend")

        async def on_request(self, ctx: RequestContext) -> None:
            return None

    expected = re.escape("plugins[0].picky: plugin failed to initialise")
    with pytest.raises(ConfigError, match=expected):
        PluginHarness(Picky)


async def test_what_reached_the_backend_is_recorded():
    class Stamp(Plugin):
        name = "stamp"

        def on_request(self, ctx: RequestContext) -> None:
            ctx.request.headers["X-Stamp"] = "1"
            ctx.request.path = "/rewritten"

    async with PluginHarness(Stamp) as h:
        reply = await h.request(
            "POST",
            "/p",
            headers={"X-Gateway-Tenant": "spoofed", "Content-Type": "text/plain"},
            body=b"hello",
            client_ip="192.0.2.7",
            query_string="a=1",
        )
        assert reply.status == 200 and reply.body == b"ok"
        seen = h.upstream_requests[-1]
        assert (seen.method, seen.path, seen.query_string, seen.body) == (
            "POST",
            "/rewritten",
            "a=1",
            b"hello",
        )
        assert seen.client_ip == "192.0.2.7" and seen.headers["X-Stamp"] == "1"
        assert "X-Gateway-Tenant" not in seen.headers  # incoming identity headers are removed
        assert seen.upstream == "test" and seen.target == "target-1"
        ctx = h.last_context
        assert ctx.attempts[-1].target == "target-1" and ctx.attempts[-1].status == 200


async def test_a_streamed_body_reaches_the_backend_whole():
    async def chunks():
        yield b"ab"
        yield b"cd"

    async with PluginHarness(built_in("headers")) as h:
        await h.request("PUT", "/", body=chunks())
        assert h.upstream_requests[-1].body == b"abcd"
        assert h.last_context.bytes_in == 4


async def test_backend_failures_are_answered_as_the_daemon_does():
    async def timeout(ctx: RequestContext) -> Response:
        raise UpstreamTimeout()

    async def refused(ctx: RequestContext) -> Response:
        raise UpstreamConnectError()

    async with PluginHarness(built_in("headers"), upstream=timeout) as h:
        reply = await h.request()
        assert reply.status == 504 and b"upstream_timeout" in reply.body
        assert h.last_context.attempts[-1].error == "timeout"
    async with PluginHarness(built_in("headers"), upstream=refused) as h:
        assert (await h.request()).status == 502
        assert h.last_context.attempts[-1].error == "connect"


async def test_excluded_targets_are_skipped_and_none_left_is_a_503():
    class Exclude(Plugin):
        name = "exclude"

        def on_request(self, ctx: RequestContext) -> None:
            ctx.excluded_targets.update(ctx.request.headers.getall("X-Exclude", []))

    async with PluginHarness(Exclude, targets=["a", "b"]) as h:
        await h.request(headers={"X-Exclude": "a"})
        await h.request(headers={"X-Exclude": "a"})
        assert [r.target for r in h.upstream_requests] == ["b", "b"]
        h2 = [("X-Exclude", "a"), ("X-Exclude", "b")]
        from multidict import CIMultiDict

        reply = await h.request(headers=CIMultiDict(h2))
        assert reply.status == 503 and reply.headers["Retry-After"] == "1"
        assert len(h.upstream_requests) == 2


async def test_a_principal_can_be_given_as_an_earlier_auth_plugin_would():
    class Who(Plugin):
        name = "who"

        def on_request(self, ctx: RequestContext) -> Response | None:
            return Response.json({"tenant": ctx.principal.tenant if ctx.principal else None})

    async with PluginHarness(Who) as h:
        reply = await h.request(principal=Principal("key", tenant="acme"))
        assert reply.body == b'{"tenant":"acme"}'


async def test_keys_created_through_the_harness_authenticate():
    async with PluginHarness(built_in("key_auth")) as h:
        key = await h.create_key(tenant="acme", scopes=["read"])
        reply = await h.request(headers={"Authorization": f"Bearer {key}"})
        assert reply.status == 200
        principal = h.last_context.principal
        assert principal is not None and principal.tenant == "acme"
        assert principal.scopes == frozenset({"read"})
        assert h.upstream_requests[-1].headers["X-Gateway-Tenant"] == "acme"
        assert (await h.request(headers={"Authorization": f"Bearer {key}x"})).status == 401
        assert [e.type for e in h.published()] == ["key.created"]


async def test_on_done_never_fails_silently():
    class Broken(Plugin):
        name = "broken"

        def on_done(self, ctx: RequestContext) -> None:
            self.context.logger.info("counted")  # the logger is real
            raise KeyError("oops")

    async with PluginHarness(Broken) as h:
        with pytest.raises(PluginFailed, match=re.escape("broken.on_done: KeyError")):
            await h.request()
        assert h.failures[0].phase == "on_done"


class Kept:
    def __init__(self) -> None:
        self.n = 0
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class Keeper(Plugin):
    name = "keeper"
    started = 0

    def __init__(self, config: PluginConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.kept = context.keep("kept", Kept)

    async def start(self) -> None:
        self.started += 1

    def on_request(self, ctx: RequestContext) -> None:
        self.kept.n += 1


class KeeperConfig(PluginConfig):
    flavour: str = "plain"


Keeper.Config = KeeperConfig


async def test_reload_hands_state_over_when_the_config_is_unchanged_and_close_closes_it():
    h = PluginHarness(Keeper)
    await h.request()
    same = h.reload()
    other = h.reload({"flavour": "spicy"})
    assert same.plugin.kept is h.plugin.kept and same.plugin is not h.plugin
    assert other.plugin.kept is not h.plugin.kept
    await same.request()
    assert same.plugin.kept.n == 2 and same.plugin.started == 1
    assert same.services is h.services
    await other.close()  # closing one closes the lineage
    assert h.plugin.kept.closed and other.plugin.kept.closed
    with pytest.raises(RuntimeError):
        await h.request()


async def test_own_services_are_used_and_not_closed():
    services = HarnessServices()
    async with PluginHarness(built_in("rate_limit"), MINIMAL["rate_limit"], services=services):
        pass
    assert services.events is services.events  # still usable: the caller closes them
    await services.close()


@pytest.mark.redis
async def test_harness_services_on_redis_share_state_between_harnesses(redis_server):
    """``HarnessServices(backend="redis")``: two harnesses (two gateways) share one budget."""
    rate_limit = built_in("rate_limit")
    config = {"rate": "2/min", "burst": 2, "key": "ip"}
    one = HarnessServices(backend="redis", redis_url=redis_server.url)
    two = HarnessServices(backend="redis", redis_url=redis_server.url)
    try:
        a = PluginHarness(rate_limit, config, services=one)
        b = PluginHarness(rate_limit, config, services=two)
        statuses = [(await h.request()).status for h in (a, b, a)]
        assert statuses == [200, 200, 429]
        assert a.sample("gatewayd_ratelimit_total", route="test", result="limited") == 1
        await a.close()
        await b.close()
    finally:
        await one.close()
        await two.close()


async def test_context_forward_reaches_the_fake_backend():
    class Prefetch(Plugin):
        """Answers with what the backend says for /warm, fetched on its own."""

        name = "prefetch"

        async def on_request(self, ctx: RequestContext) -> Response | None:
            ctx.request.path = "/warm"
            reply = await self.context.forward(ctx)
            return Response(reply.status, {"X-Prefetched": "1"}, reply.body)

    async def slow(ctx: RequestContext) -> Response:
        if ctx.request.path == "/warm":
            return Response(200, {}, b"warmed")
        raise UpstreamTimeout()

    async with PluginHarness(Prefetch, upstream=slow) as h:
        reply = await h.request("GET", "/cold")
        assert reply.body == b"warmed" and reply.headers["X-Prefetched"] == "1"
        assert [r.path for r in h.upstream_requests] == ["/warm"]


class StateFile(Plugin):
    """Writes a file into ``context.services.state_dir`` when it starts."""

    name = "state_file"

    async def start(self) -> None:
        (self.context.services.state_dir / "state_file.txt").write_text("written")

    async def on_request(self, ctx: RequestContext) -> Response | None:
        return None


async def test_state_dir_is_a_temporary_directory_removed_by_close():
    h = PluginHarness(StateFile)
    async with h:
        state_dir = h.services.state_dir
        assert (state_dir / "state_file.txt").read_text() == "written"
        assert h.plugin.context.services.state_dir == state_dir
    assert not state_dir.exists()


async def test_state_dir_given_is_used_and_kept(tmp_path):
    async with PluginHarness(StateFile, state_dir=tmp_path) as h:
        assert h.plugin.context.services.state_dir == tmp_path
    assert (tmp_path / "state_file.txt").read_text() == "written"  # not removed: the caller's
    assert HarnessServices(state_dir=tmp_path).state_dir == tmp_path


def test_state_dir_with_own_services_is_refused():
    with pytest.raises(ValueError, match="state_dir"):
        PluginHarness(StateFile, services=HarnessServices(), state_dir=Path("/tmp"))
