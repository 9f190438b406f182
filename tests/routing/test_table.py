"""RouteTable.allowed_methods: the Allow of a 405, computed only after a failed match."""

from __future__ import annotations

from gatewayd.chain.builder import EMPTY_CHAIN
from gatewayd.config.schema import RouteConfig
from gatewayd.routing import RouteTable, make_route


def table(*routes: dict) -> RouteTable:
    return RouteTable(
        [make_route(RouteConfig.model_validate(r), EMPTY_CHAIN, None) for r in routes]
    )


def test_allowed_methods_is_the_union_of_the_matching_routes():
    t = table(
        {"name": "reads", "match": {"path": "/items", "methods": ["GET"]}},
        {"name": "writes", "match": {"path": "/items/", "methods": ["POST", "PUT"]}},
        {"name": "admin", "match": {"path": "/admin", "methods": ["DELETE"]}},
        {
            "name": "elsewhere",
            "match": {"host": "other.example", "path": "/", "methods": ["PATCH"]},
        },
    )
    assert t.match("h", "/items/1", "DELETE") is None
    assert t.allowed_methods("h", "/items/1") == {"GET", "HEAD", "POST", "PUT"}  # HEAD with GET
    assert t.allowed_methods("h", "/admin") == {"DELETE"}
    assert t.allowed_methods("h", "/nothing") == frozenset()  # a 404, not a 405
    assert t.allowed_methods("h", "/itemsx") == frozenset()  # prefixes match on segments
    # host matching as match() does it: case and port do not matter
    assert t.allowed_methods("OTHER.example:8080", "/x") == {"PATCH"}
    assert t.allowed_methods("h", "/x") == frozenset()


def test_a_route_without_methods_takes_every_method():
    t = table(
        {"name": "get", "match": {"path": "/", "methods": ["GET"]}},
        {"name": "any", "match": {"path": "/open"}},
    )
    assert t.match("h", "/open/x", "DELETE").name == "any"
    assert t.match("h", "/x", "DELETE") is None
    assert t.allowed_methods("h", "/x") == {"GET", "HEAD"}
