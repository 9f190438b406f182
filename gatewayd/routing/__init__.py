"""Path normalisation and the route table."""

from gatewayd.routing.paths import BadPath, normalise_path
from gatewayd.routing.table import Route, RouteTable, make_route

__all__ = ["BadPath", "Route", "RouteTable", "make_route", "normalise_path"]
