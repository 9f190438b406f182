"""``headers``: add, set, remove and rename headers on the request and the response."""

from __future__ import annotations

from multidict import CIMultiDict
from pydantic import field_validator

from gatewayd.chain import Plugin, PluginConfig, RequestContext, Response

# Headers a plugin must not touch: the framing of the message is the proxy's business.
PROTECTED = frozenset({"content-length", "transfer-encoding", "connection", "host"})


class HeaderOps(PluginConfig):
    set: dict[str, str] = {}
    add: dict[str, str] = {}
    remove: list[str] = []
    rename: dict[str, str] = {}

    @field_validator("set", "add", "rename")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            _check_name(name)
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"header value for {name!r} contains a control character")
        return v

    @field_validator("remove")
    @classmethod
    def _removed(cls, v: list[str]) -> list[str]:
        for name in v:
            _check_name(name)
        return v

    def apply(self, headers: CIMultiDict[str]) -> None:
        for old, new in self.rename.items():
            values = headers.popall(old, [])
            for value in values:
                headers.add(new, value)
        for name in self.remove:
            headers.popall(name, None)
        for name, value in self.set.items():
            headers[name] = value
        for name, value in self.add.items():
            headers.add(name, value)


def _check_name(name: str) -> None:
    if not name or any(not (c.isalnum() or c in "-_!#$%&'*+.^`|~") for c in name):
        raise ValueError(f"invalid header name {name!r}")
    if name.lower() in PROTECTED:
        raise ValueError(f"header {name!r} is managed by the proxy and cannot be changed")


class HeadersConfig(PluginConfig):
    request: HeaderOps = HeaderOps()
    response: HeaderOps = HeaderOps()


class HeadersPlugin(Plugin):
    name = "headers"
    Config = HeadersConfig
    priority = 800

    def __init__(self, config: HeadersConfig, context: object) -> None:
        super().__init__(config, context)  # type: ignore[arg-type]
        self.request_ops = config.request
        self.response_ops = config.response

    def on_request(self, ctx: RequestContext) -> Response | None:
        self.request_ops.apply(ctx.request.headers)
        return None

    def on_response(self, ctx: RequestContext, response: Response) -> None:
        self.response_ops.apply(response.headers)
