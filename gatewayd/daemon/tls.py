"""TLS contexts for listeners. A context is kept per listener and its certificate re-read on
reload, so new handshakes use the new certificate while open connections go on."""

from __future__ import annotations

import ssl

from gatewayd.config.errors import ConfigError
from gatewayd.config.schema import TLSConfig

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def load_into(ctx: ssl.SSLContext, tls: TLSConfig, path: str) -> None:
    ctx.minimum_version = _VERSIONS[tls.min_version]
    try:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError.single(path, f"cannot load certificate/key: {reason}") from None


def make_context(tls: TLSConfig, path: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(["http/1.1"])
    load_into(ctx, tls, path)
    return ctx
