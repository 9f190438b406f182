"""Upstream failures and the status each maps to."""

from __future__ import annotations


class UpstreamError(Exception):
    """An upstream request failed before a response could be relayed."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError, TimeoutError):
    def __init__(self, message: str = "upstream timed out") -> None:
        super().__init__(504, "upstream_timeout", message)


class UpstreamConnectError(UpstreamError, ConnectionError):
    def __init__(self, message: str = "cannot connect to upstream") -> None:
        super().__init__(502, "upstream_unreachable", message)


class UpstreamUnavailable(UpstreamError):
    def __init__(self, message: str = "no healthy upstream target", retry_after: int = 1) -> None:
        super().__init__(503, "upstream_unavailable", message, retry_after)
