"""Every metric name and help text, and the rendering of results into exposition text. No I/O.

Families are rebuilt from the latest results on every render (client_python's value objects in a
fresh registry), so a target removed from the config disappears at the next write. Names under
`probe_` keep blackbox_exporter's meaning; everything else lives under `textfile_probe_`.
Label values come from peers (certificate subjects), so they are cleaned of control characters
(newlines are escaped by the exposition format itself) and bounded in length.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from OpenSSL import SSL
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from . import __version__
from .certs import chain_expiry, earliest_expiry
from .probe import ProbeResult

NS = "textfile_probe"
MAX_LABEL_LENGTH = 512
_UNSAFE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f\ud800-\udfff]")

HELP = {
    "probe_success": "Whether the probe succeeded: connected, handshake done, and verified unless verify is false",
    "probe_duration_seconds": "How long the probe took to complete in seconds",
    "probe_dns_lookup_time_seconds": "Returns the time taken for probe dns lookup in seconds",
    "probe_ip_protocol": "Specifies whether probe ip protocol is IP4 or IP6",
    "probe_ssl_earliest_cert_expiry": "Returns earliest SSL cert expiry date",
    "probe_ssl_last_chain_expiry_timestamp_seconds": "Returns last SSL chain expiry in timestamp seconds",
    "probe_ssl_last_chain_info": "Contains SSL leaf certificate information",
    "probe_tls_version_info": "Contains the TLS version used",
    "probe_tls_cipher_info": "Contains the TLS cipher negotiated during handshake",
    f"{NS}_cert_not_after_timestamp_seconds": "notAfter of each certificate the server sent, as a Unix timestamp",
    f"{NS}_cert_not_before_timestamp_seconds": "notBefore of each certificate the server sent, as a Unix timestamp",
    f"{NS}_verify_success": "Whether the sent chain verified against trust store and server name; reason says why not",
    f"{NS}_failure_info": "Present with value 1 when the probe failed: the stage it failed in and why",
    f"{NS}_phase_duration_seconds": "Duration of each probe phase in seconds",
    f"{NS}_cycle_duration_seconds": "How long the last probe cycle took in seconds",
    f"{NS}_last_cycle_timestamp_seconds": "When the last probe cycle ended, as a Unix timestamp",
    f"{NS}_targets": "Number of configured targets",
    f"{NS}_targets_failed": "Number of targets whose last probe failed",
    f"{NS}_config_last_reload_successful": "Whether the last configuration load succeeded",
    f"{NS}_config_last_reload_success_timestamp_seconds": "When the configuration was last loaded successfully",
    f"{NS}_build_info": "Build information of textfile-probe",
}


@dataclass(frozen=True)
class Health:
    """The daemon's own state, written with every file."""

    cycle_duration: float
    last_cycle_end: float
    config_ok: bool
    config_loaded_at: float


def clean(value: str) -> str:
    """A label value that cannot break the file: no control characters, bounded length."""
    return _UNSAFE.sub("\ufffd", value)[:MAX_LABEL_LENGTH]


class _Families:
    """Gauge families keyed by name, in first-use order."""

    def __init__(self) -> None:
        self._families: dict[str, GaugeMetricFamily] = {}

    def add(self, name: str, labels: dict[str, str], value: float) -> None:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = GaugeMetricFamily(name, HELP[name])
        # Samples of one family may carry different static labels, so add samples directly.
        family.add_sample(name, {k: clean(v) for k, v in labels.items()}, value)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


def _target_samples(out: _Families, result: ProbeResult) -> None:
    base = {"target": result.target.name, **dict(result.target.labels)}
    out.add("probe_success", base, 1.0 if result.success else 0.0)
    out.add("probe_duration_seconds", base, result.duration)
    phases = dict(result.phases)
    if "dns" in phases:
        out.add("probe_dns_lookup_time_seconds", base, phases["dns"])
    if result.ip_protocol is not None:
        out.add("probe_ip_protocol", base, float(result.ip_protocol))
    for phase, seconds in result.phases:
        out.add(f"{NS}_phase_duration_seconds", {**base, "phase": phase}, seconds)
    if result.stage is not None:
        out.add(
            f"{NS}_failure_info",
            {**base, "stage": result.stage.value, "reason": result.reason or ""},
            1.0,
        )
    if result.tls_version is not None:
        out.add("probe_tls_version_info", {**base, "version": result.tls_version.label}, 1.0)
    if result.cipher:
        out.add("probe_tls_cipher_info", {**base, "cipher": result.cipher}, 1.0)
    _chain_samples(out, base, result)


def _chain_samples(out: _Families, base: dict[str, str], result: ProbeResult) -> None:
    chain = result.peer_chain
    if not chain:
        return
    out.add("probe_ssl_earliest_cert_expiry", base, earliest_expiry(chain) or 0.0)
    last_chain = chain_expiry(result.verified_chain)
    if last_chain is not None:
        out.add("probe_ssl_last_chain_expiry_timestamp_seconds", base, last_chain)
    leaf = chain[0]
    leaf_labels = {
        "fingerprint_sha256": leaf.fingerprint_sha256,
        "subject": leaf.subject,
        "issuer": leaf.issuer,
        "subjectalternative": ",".join(leaf.dns_names),
        "serialnumber": leaf.serial,
    }
    out.add("probe_ssl_last_chain_info", {**base, **leaf_labels}, 1.0)
    ok = result.verify_result == "ok"
    out.add(f"{NS}_verify_success", {**base, "reason": result.verify_result or ""}, 1.0 if ok else 0.0)
    for position, cert in enumerate(chain):
        labels = {
            **base,
            "position": str(position),
            "subject_cn": cert.subject_cn,
            "issuer_cn": cert.issuer_cn,
            "serial": cert.serial,
            "fingerprint_sha256": cert.fingerprint_sha256,
        }
        out.add(f"{NS}_cert_not_after_timestamp_seconds", labels, cert.not_after)
        out.add(f"{NS}_cert_not_before_timestamp_seconds", labels, cert.not_before)


def _health_samples(out: _Families, results: Sequence[ProbeResult], health: Health, targets: int) -> None:
    out.add(f"{NS}_cycle_duration_seconds", {}, health.cycle_duration)
    out.add(f"{NS}_last_cycle_timestamp_seconds", {}, health.last_cycle_end)
    out.add(f"{NS}_targets", {}, float(targets))
    out.add(f"{NS}_targets_failed", {}, float(sum(not r.success for r in results)))
    out.add(f"{NS}_config_last_reload_successful", {}, 1.0 if health.config_ok else 0.0)
    out.add(f"{NS}_config_last_reload_success_timestamp_seconds", {}, health.config_loaded_at)
    build = {
        "version": __version__,
        "python": platform.python_version(),
        "openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(errors="replace"),
    }
    out.add(f"{NS}_build_info", build, 1.0)


def families(results: Iterable[ProbeResult], health: Health | None, targets: int | None = None) -> list[Metric]:
    """All metric families for these results (ordered as given) and the daemon's health."""
    out = _Families()
    results = list(results)
    for result in results:
        _target_samples(out, result)
    if health is not None:
        _health_samples(out, results, health, len(results) if targets is None else targets)
    return list(out)


class _Snapshot(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def render(results: Iterable[ProbeResult], health: Health | None, targets: int | None = None) -> bytes:
    """The exposition text for these results, from a fresh registry (never the default one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families(results, health, targets)))
    return generate_latest(registry)
