"""Path normalisation and route matching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.chain.builder import EMPTY_CHAIN
from gatewayd.config.schema import RouteConfig
from gatewayd.routing import BadPath, RouteTable, make_route, normalise_path


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("/a/../admin", "/admin"),
        ("/a/%2e%2e/admin", "/admin"),
        ("/a/%2E%2e/admin", "/admin"),
        ("//admin///x", "/admin/x"),
        ("/a/./b/.", "/a/b/"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/%61dmin", "/admin"),
        ("/a%2fb", "/a%2Fb"),
        ("/a/%2e%2e%2fadmin", "/a/..%2Fadmin"),
        ("/", "/"),
    ],
)
def test_normalise(raw, norm):
    assert normalise_path(raw) == norm


@pytest.mark.parametrize("raw", ["/a%zz", "/a%2", "/a%00b", "/a\x00", "*", "admin", "/a b"])
def test_bad_paths(raw):
    with pytest.raises(BadPath):
        normalise_path(raw)


@given(st.text(alphabet="/.%2eEaA_-~", max_size=40).map(lambda s: "/" + s))
def test_normalised_paths_are_stable_and_safe(raw):
    try:
        once = normalise_path(raw)
    except BadPath:
        return
    assert normalise_path(once) == once
    assert "/../" not in once and not once.endswith("/..") and "//" not in once


def table(*routes: dict) -> RouteTable:
    return RouteTable(
        [make_route(RouteConfig.model_validate(r), EMPTY_CHAIN, None) for r in routes]
    )


def test_most_specific_wins():
    t = table(
        {"name": "any", "match": {"path": "/"}},
        {"name": "v1", "match": {"path": "/v1/"}},
        {"name": "v1-users", "match": {"path": "/v1/users"}},
        {"name": "wild", "match": {"host": "*.example.com", "path": "/"}},
        {"name": "exact", "match": {"host": "api.example.com", "path": "/"}},
        {"name": "v1-post", "match": {"path": "/v1/", "methods": ["POST"]}},
    )
    assert t.match("x", "/v1/users/7", "GET").name == "v1-users"
    assert t.match("x", "/v1/other", "GET").name == "v1"
    assert t.match("x", "/v1/other", "POST").name == "v1-post"
    assert t.match("x", "/v1x", "GET").name == "any"
    assert t.match("api.example.com:8080", "/v1/users", "GET").name == "exact"
    assert t.match("a.b.example.com", "/v1/users", "GET").name == "wild"
    assert t.match("example.com", "/", "GET").name == "any"


def test_methods_and_head():
    t = table({"name": "get", "match": {"path": "/", "methods": ["get"]}})
    assert t.match("h", "/", "HEAD").name == "get"
    assert t.match("h", "/", "DELETE") is None


def test_strip_prefix_and_rewrite():
    t = table(
        {"name": "s", "match": {"path": "/svc/"}, "strip_prefix": True},
        {
            "name": "r",
            "match": {"path": "/old/"},
            "rewrite": {"pattern": "^/old/(.*)$", "replacement": r"/new/\1"},
        },
    )
    assert t.match("h", "/svc/a/b", "GET").upstream_path("/svc/a/b") == "/a/b"
    assert t.match("h", "/svc", "GET").upstream_path("/svc") == "/"
    assert t.match("h", "/old/x", "GET").upstream_path("/old/x") == "/new/x"
