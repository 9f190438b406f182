"""``gatewayd_tls_certificate_expiry_timestamp_seconds{listener}``: when the certificate each
TLS listener serves stops being valid (its notAfter, as a Unix time), for the alerts that warn
14 and 7 days before.

The certificate files are read once per serving config (a successful reload re-reads them, as
the listeners do), not on every scrape; a certificate replaced on disk without a reload keeps
showing the old date, which is the one clients still see. A file that cannot be read or parsed
is left out (the listener could not have loaded it either).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from cryptography import x509
from prometheus_client.core import GaugeMetricFamily

from gatewayd.config.schema import GatewayConfig

log = logging.getLogger("gatewayd.observability")


def not_after(pem: bytes) -> float:
    """The notAfter of the first certificate of a PEM chain (the listener's own), Unix time."""
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


class CertificateExpiry:
    """A scrape-time collector over the serving config's listeners."""

    def __init__(self, config: Callable[[], GatewayConfig | None]) -> None:
        self.config = config
        self._read_for: GatewayConfig | None = None
        self._expiry: list[tuple[str, float]] = []

    def describe(self) -> list[Any]:
        return []

    def expiry(self) -> list[tuple[str, float]]:
        config = self.config()
        if config is None:
            return []
        if config is not self._read_for:
            found = []
            for listener in config.listen:
                if listener.tls is None:
                    continue
                try:
                    found.append((listener.address, not_after(listener.tls.cert.read_bytes())))
                except (OSError, ValueError) as exc:
                    log.warning(
                        "cannot read a listener's certificate",
                        extra={"listener": listener.address, "reason": str(exc)},
                    )
            self._read_for, self._expiry = config, found
        return self._expiry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gatewayd_tls_certificate_expiry_timestamp_seconds",
            "When the certificate a TLS listener serves expires (notAfter, Unix time)",
            labels=["listener"],
        )
        for address, when in self.expiry():
            family.add_metric([address], when)
        yield family
