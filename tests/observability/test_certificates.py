"""CertificateExpiry (gatewayd/observability/certificates.py): each TLS listener's notAfter, read
once per serving config."""

from __future__ import annotations

import datetime
from pathlib import Path

import trustme
from prometheus_client import CollectorRegistry

from gatewayd.config.schema import GatewayConfig
from gatewayd.observability.certificates import CertificateExpiry, not_after
from gatewayd.observability.metrics import Metrics

NAME = "gatewayd_tls_certificate_expiry_timestamp_seconds"


def issue(path: Path, days: int) -> float:
    """A key and certificate chain in one PEM file (key first, as trustme writes it)."""
    expires = datetime.datetime(2031, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(days=days)
    cert = trustme.CA().issue_cert("127.0.0.1", not_after=expires)
    cert.private_key_and_cert_chain_pem.write_to_path(str(path))
    return expires.timestamp()


def listeners(pem: Path) -> GatewayConfig:
    return GatewayConfig(
        listen=[
            {"address": "127.0.0.1:8443", "tls": {"cert": str(pem), "key": str(pem)}},
            {"address": "127.0.0.1:8080"},
        ]
    )


def test_each_tls_listener_exports_its_certificate_expiry(tmp_path: Path) -> None:
    pem = tmp_path / "a.pem"
    expires = issue(pem, 3)
    assert not_after(pem.read_bytes()) == expires
    serving = [listeners(pem)]
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.add_collector(CertificateExpiry(lambda: serving[0]))
    assert registry.get_sample_value(NAME, {"listener": "127.0.0.1:8443"}) == expires
    assert registry.get_sample_value(NAME, {"listener": "127.0.0.1:8080"}) is None
    renewed = issue(pem, 90)  # replaced on disk, not reloaded: clients still get the old one
    assert registry.get_sample_value(NAME, {"listener": "127.0.0.1:8443"}) == expires
    serving[0] = listeners(pem)  # a reload: the listeners read it again, and so do we
    assert registry.get_sample_value(NAME, {"listener": "127.0.0.1:8443"}) == renewed
    metrics.close()
    assert registry.get_sample_value(NAME, {"listener": "127.0.0.1:8443"}) is None


def test_an_unreadable_certificate_is_left_out(tmp_path: Path) -> None:
    pem = tmp_path / "bad.pem"
    pem.write_text("not a certificate")
    registry = CollectorRegistry()
    registry.register(CertificateExpiry(lambda: listeners(pem)))
    assert registry.get_sample_value(NAME, {"listener": "127.0.0.1:8443"}) is None
    registry.register(CertificateExpiry(lambda: None))  # before the first config: nothing
