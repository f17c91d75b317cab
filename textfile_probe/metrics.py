"""Every metric name, help text and the samples it takes from a result. No I/O.

`TARGET_FAMILIES` is the table: name, help, and a function from one probe result to its samples
(extra labels, value). Rendering walks the table one family at a time over all results and hands
out each family's exposition text (client_python's value objects in a fresh registry, never the
default one) as a separate chunk, so memory holds one family of samples at a time, not every
sample of 10,000 targets at once. Families are rebuilt from the latest results on every render, so
a removed target disappears at the next write. Names under `probe_` keep blackbox_exporter's
meaning; the rest live under `textfile_probe_`. Label values that come from peers are cleaned of
control characters (newlines are escaped by the format itself) and bounded in length.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from OpenSSL import SSL
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from . import __version__
from .certs import CertInfo, chain_expiry, earliest_expiry
from .files import FileResult
from .probe import ProbeResult

NS = "textfile_probe"
MAX_LABEL_LENGTH = 512
_UNSAFE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f\ud800-\udfff]")

Samples = Iterable[tuple[dict[str, str], float]]


def clean(value: str) -> str:
    """A label value that cannot break the file: no control characters, bounded length."""
    if value.isprintable() and len(value) <= MAX_LABEL_LENGTH:
        return value  # the common case, without the regex
    return _UNSAFE.sub("\ufffd", value)[:MAX_LABEL_LENGTH]


def _one(value: float | None, **labels: str) -> Samples:
    return () if value is None else ((labels, value),)


def _dns(r: ProbeResult) -> Samples:
    return _one(dict(r.phases).get("dns"))


def _phases(r: ProbeResult) -> Samples:
    return (({"phase": phase}, seconds) for phase, seconds in r.phases)


def _failure(r: ProbeResult) -> Samples:
    return _one(1.0, stage=r.stage.value, reason=r.reason or "") if r.stage else ()


def _leaf_info(r: ProbeResult) -> Samples:
    if not r.peer_chain:
        return ()
    leaf = r.peer_chain[0]
    return _one(
        1.0,
        fingerprint_sha256=leaf.fingerprint_sha256,
        subject=leaf.subject,
        issuer=leaf.issuer,
        subjectalternative=",".join(leaf.dns_names),
        serialnumber=leaf.serial,
    )


def _verify(r: ProbeResult) -> Samples:
    if not r.peer_chain:
        return ()
    return _one(1.0 if r.verify_result == "ok" else 0.0, reason=r.verify_result or "")


def _cert_labels(position: int, cert: CertInfo) -> dict[str, str]:
    return {
        "position": str(position),
        "subject_cn": cert.subject_cn,
        "issuer_cn": cert.issuer_cn,
        "serial": cert.serial,
        "fingerprint_sha256": cert.fingerprint_sha256,
    }


def _per_cert(field: str) -> Callable[[ProbeResult], Samples]:
    def samples(r: ProbeResult) -> Samples:
        for position, cert in enumerate(r.peer_chain):
            yield _cert_labels(position, cert), getattr(cert, field)

    return samples


_Family = tuple[str, str, Callable[[ProbeResult], Samples]]

TARGET_FAMILIES: tuple[_Family, ...] = (
    ("probe_success", "Whether the probe succeeded: connected, handshake done, and verified unless verify is false",
     lambda r: _one(1.0 if r.success else 0.0)),
    ("probe_duration_seconds", "How long the probe took to complete in seconds", lambda r: _one(r.duration)),
    ("probe_dns_lookup_time_seconds", "Returns the time taken for probe dns lookup in seconds", _dns),
    ("probe_ip_protocol", "Specifies whether probe ip protocol is IP4 or IP6",
     lambda r: _one(None if r.ip_protocol is None else float(r.ip_protocol))),
    (f"{NS}_phase_duration_seconds", "Duration of each probe phase in seconds", _phases),
    ("probe_tls_version_info", "Contains the TLS version used",
     lambda r: _one(1.0, version=r.tls_version.label) if r.tls_version else ()),
    ("probe_tls_cipher_info", "Contains the TLS cipher negotiated during handshake",
     lambda r: _one(1.0, cipher=r.cipher) if r.cipher else ()),
    ("probe_ssl_earliest_cert_expiry", "Returns earliest SSL cert expiry date",
     lambda r: _one(earliest_expiry(r.peer_chain))),
    ("probe_ssl_last_chain_expiry_timestamp_seconds", "Returns last SSL chain expiry in timestamp seconds",
     lambda r: _one(chain_expiry(r.verified_chain))),
    ("probe_ssl_last_chain_info", "Contains SSL leaf certificate information", _leaf_info),
    (f"{NS}_verify_success", "Whether the sent chain verified against trust store and server name; reason says why not",
     _verify),
    (f"{NS}_cert_not_after_timestamp_seconds", "notAfter of each certificate the server sent, as a Unix timestamp",
     _per_cert("not_after")),
    (f"{NS}_cert_not_before_timestamp_seconds", "notBefore of each certificate the server sent, as a Unix timestamp",
     _per_cert("not_before")),
    (f"{NS}_failure_info", "Present with value 1 when the probe failed: the stage it failed in and why", _failure),
)  # fmt: skip


def _file_read(f: FileResult) -> Samples:
    return _one(1.0 if f.ok else 0.0, format=f.format, reason=f.reason)


def _file_cert(field: str) -> Callable[[FileResult], Samples]:
    def samples(f: FileResult) -> Samples:
        for entry, cert in f.certs:
            labels = {"alias": entry.alias, "entry": entry.entry, **_cert_labels(entry.position, cert)}
            yield labels, getattr(cert, field)

    return samples


FILE_FAMILIES: tuple[tuple[str, str, Callable[[FileResult], Samples]], ...] = (
    (f"{NS}_file_read_success", "Whether the certificate file or keystore was read; reason says why not",
     _file_read),
    (f"{NS}_file_modified_timestamp_seconds", "When the file was last modified, as a Unix timestamp",
     lambda f: _one(f.modified)),
    (f"{NS}_file_cert_not_after_timestamp_seconds", "notAfter of each certificate in the file, as a Unix timestamp",
     _file_cert("not_after")),
    (f"{NS}_file_cert_not_before_timestamp_seconds", "notBefore of each certificate in the file, as a Unix timestamp",
     _file_cert("not_before")),
)  # fmt: skip

_MATCH = f"{NS}_served_cert_matches_file"
_MATCH_HELP = "Whether the leaf the endpoint serves is the certificate of the paired keystore or file on disk"


def served_matches(result: ProbeResult, files: dict[str, FileResult]) -> float | None:
    """1 if the served leaf is a leaf of the target's paired store, 0 if not, None if either side
    is unknown (no paired store, no certificate received, or the file could not be read)."""
    spec = result.target.keystore
    read = files.get(spec.path) if spec is not None else None
    if read is None or not read.ok or not result.peer_chain:
        return None
    return 1.0 if result.peer_chain[0].fingerprint_sha256 in read.leaves else 0.0


def _file_families(files: Sequence[FileResult]) -> Iterator[Metric]:
    for name, help_text, samples_of in FILE_FAMILIES:
        family = GaugeMetricFamily(name, help_text)
        for read in files:
            base = {"path": clean(read.path), **dict(read.spec.labels)}
            for labels, value in samples_of(read):
                family.add_sample(name, {**base, **{k: clean(v) for k, v in labels.items()}}, value)
        if family.samples:
            yield family


def _match_family(files: Sequence[FileResult], results: Sequence[ProbeResult]) -> Iterator[Metric]:
    by_path = {f.path: f for f in files}
    family = GaugeMetricFamily(_MATCH, _MATCH_HELP)
    for result in results:
        match = served_matches(result, by_path)
        if match is not None and result.target.keystore is not None:
            labels = {"target": clean(result.target.name), **dict(result.target.labels)}
            family.add_sample(_MATCH, {**labels, "path": clean(result.target.keystore.path)}, match)
    if family.samples:
        yield family


@dataclass(frozen=True)
class Health:
    """The daemon's own state, written with every file."""

    cycle_duration: float
    last_cycle_end: float
    config_ok: bool
    config_loaded_at: float


def _health_families(
    results: Sequence[ProbeResult], health: Health, targets: int, files: Sequence[FileResult] = ()
) -> Iterator[Metric]:
    build = {
        "version": __version__,
        "python": platform.python_version(),
        "openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(errors="replace"),
    }
    rows: tuple[tuple[str, str, dict[str, str], float], ...] = (
        ("cycle_duration_seconds", "How long the last probe cycle took in seconds", {}, health.cycle_duration),
        ("last_cycle_timestamp_seconds", "When the last probe cycle ended, as a Unix timestamp", {},
         health.last_cycle_end),
        ("targets", "Number of configured targets", {}, float(targets)),
        ("targets_failed", "Number of targets whose last probe failed", {}, float(sum(not r.success for r in results))),
        ("files", "Number of certificate files and keystores watched", {}, float(len(files))),
        ("files_unreadable", "Number of watched files that could not be read", {}, float(sum(not f.ok for f in files))),
        ("config_last_reload_successful", "Whether the last configuration load succeeded", {},
         1.0 if health.config_ok else 0.0),
        ("config_last_reload_success_timestamp_seconds", "When the configuration was last loaded successfully", {},
         health.config_loaded_at),
        ("build_info", "Build information of textfile-probe", build, 1.0),
    )  # fmt: skip
    for suffix, help_text, labels, value in rows:
        family = GaugeMetricFamily(f"{NS}_{suffix}", help_text)
        family.add_sample(f"{NS}_{suffix}", labels, value)
        yield family


# Targets per rendered slice of a family: bounds the samples held at once (memory), whatever N is.
SLICE = 256


def _family_slices(results: Sequence[ProbeResult], targets: int | None) -> Iterator[Metric]:
    """Each non-empty family in table order, in slices of SLICE targets; later slices of a family
    come as families of the same name (their header is dropped when rendered)."""
    for name, help_text, samples_of in TARGET_FAMILIES:
        for start in range(0, len(results), SLICE):
            family = GaugeMetricFamily(name, help_text)
            for result in results[start : start + SLICE]:
                base = {"target": clean(result.target.name), **dict(result.target.labels)}
                for labels, value in samples_of(result):
                    # Samples of one family may carry different static labels, so add samples directly.
                    family.add_sample(name, {**base, **{k: clean(v) for k, v in labels.items()}}, value)
            if family.samples:
                yield family


def families(
    results: Sequence[ProbeResult],
    health: Health | None,
    targets: int | None = None,
    files: Sequence[FileResult] = (),
) -> Iterator[Metric]:
    """The metric families (target families possibly in several slices), the files', then the
    daemon's health."""
    yield from _family_slices(results, targets)
    yield from _file_families(files)
    yield from _match_family(files, results)
    if health is not None:
        yield from _health_families(results, health, len(results) if targets is None else targets, files)


class _One(Collector):
    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterable[Metric]:
        return (self._metric,)


class FileText:
    """The file families' text, rendered again only when the results differ from last time. The
    file watcher hands out the very same FileResult objects while nothing changed, so a cycle over
    an unchanged directory of a thousand keystores renders nothing for them."""

    def __init__(self) -> None:
        self._files: tuple[FileResult, ...] = ()
        self._text = b""

    def __call__(self, files: Sequence[FileResult]) -> bytes:
        if len(files) != len(self._files) or any(a is not b for a, b in zip(files, self._files, strict=True)):
            self._text = b"".join(_text(family) for family in _file_families(files))
            self._files = tuple(files)
        return self._text


def render_chunks(
    results: Sequence[ProbeResult],
    health: Health | None,
    targets: int | None = None,
    files: Sequence[FileResult] = (),
    file_text: FileText | None = None,
) -> Iterator[bytes]:
    """The exposition text in chunks, each rendered by client_python from its own fresh registry.

    A family rendered in several slices keeps only the first slice's HELP/TYPE lines, so the
    concatenation is exactly the text one registry holding every sample would give.
    """
    previous = ""
    for family in _family_slices(results, targets):
        text = _text(family)
        yield _without_header(text) if family.name == previous else text
        previous = family.name
    yield (file_text or FileText())(files)
    for family in _match_family(files, results):
        yield _text(family)
    if health is not None:
        for family in _health_families(results, health, len(results) if targets is None else targets, files):
            yield _text(family)


def _text(family: Metric) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_One(family))
    return generate_latest(registry)


def _without_header(text: bytes) -> bytes:
    # generate_latest writes exactly "# HELP ...\n# TYPE ...\n" first (help text is escaped).
    help_end = text.index(b"\n") + 1
    type_end = text.index(b"\n", help_end) + 1
    assert text.startswith(b"# HELP ") and text[help_end:].startswith(b"# TYPE "), text[:200]
    return text[type_end:]


def render(
    results: Sequence[ProbeResult],
    health: Health | None,
    targets: int | None = None,
    files: Sequence[FileResult] = (),
) -> bytes:
    """The whole exposition text at once (for small outputs: `probe --format prom`, tests)."""
    return b"".join(render_chunks(results, health, targets, files))
