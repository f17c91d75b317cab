"""Metric rendering: exact exposition text from hand-built results; hostile labels stay inside quotes."""

from __future__ import annotations

import platform
import re
from dataclasses import replace

import pytest
from OpenSSL import SSL
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from textfile_probe import __version__, metrics
from textfile_probe.certs import CertInfo
from textfile_probe.config import StoreSpec, Target, TlsVersion
from textfile_probe.errors import Stage
from textfile_probe.files import FileResult
from textfile_probe.metrics import Health, clean, render
from textfile_probe.probe import ProbeResult
from textfile_probe.stores import CERT_ENTRY, KEY_ENTRY, TRUSTED_ENTRY, StoreCert


def cert(cn: str, not_after: float, *, issuer: str = "CA", subject: str | None = None) -> CertInfo:
    return CertInfo(
        fingerprint_sha256=f"{cn}-fp",
        subject=subject or f"CN={cn}",
        issuer=f"CN={issuer}",
        subject_cn=cn,
        issuer_cn=issuer,
        serial="1a",
        not_before=1_700_000_000.0,
        not_after=not_after,
        dns_names=(cn, f"www.{cn}"),
        ip_addresses=(),
        key="EC P-256",
        signature_algorithm="ecdsa-with-SHA256",
    )


LEAF = cert("db1", 1_800_000_000.0, issuer="Inter")
INTER = cert("Inter", 1_790_000_000.0, issuer="Root")  # expires before the leaf
ROOT = cert("Root", 2_000_000_000.0, issuer="Root")
TARGET = Target(name="cassandra", host="10.1.2.3", port=9142, server_name="db1", labels=(("dc", "east"),))

OK = ProbeResult(
    target=TARGET,
    success=True,
    duration=0.25,
    phases=(("dns", 0.0), ("connect", 0.001), ("handshake", 0.004)),
    ip_protocol=4,
    tls_version=TlsVersion.TLS1_3,
    cipher="TLS_AES_128_GCM_SHA256",
    peer_chain=(LEAF, INTER),
    verified_chain=(LEAF, INTER, ROOT),
    verify_result="ok",
)


def test_successful_probe_renders_exactly() -> None:
    assert render([OK], None).decode() == EXPECTED_OK


EXPECTED_OK = """\
# HELP probe_success Whether the probe succeeded: connected, handshake done, and verified unless verify is false
# TYPE probe_success gauge
probe_success{dc="east",target="cassandra"} 1.0
# HELP probe_duration_seconds How long the probe took to complete in seconds
# TYPE probe_duration_seconds gauge
probe_duration_seconds{dc="east",target="cassandra"} 0.25
# HELP probe_dns_lookup_time_seconds Returns the time taken for probe dns lookup in seconds
# TYPE probe_dns_lookup_time_seconds gauge
probe_dns_lookup_time_seconds{dc="east",target="cassandra"} 0.0
# HELP probe_ip_protocol Specifies whether probe ip protocol is IP4 or IP6
# TYPE probe_ip_protocol gauge
probe_ip_protocol{dc="east",target="cassandra"} 4.0
# HELP textfile_probe_phase_duration_seconds Duration of each probe phase in seconds
# TYPE textfile_probe_phase_duration_seconds gauge
textfile_probe_phase_duration_seconds{dc="east",phase="dns",target="cassandra"} 0.0
textfile_probe_phase_duration_seconds{dc="east",phase="connect",target="cassandra"} 0.001
textfile_probe_phase_duration_seconds{dc="east",phase="handshake",target="cassandra"} 0.004
# HELP probe_tls_version_info Contains the TLS version used
# TYPE probe_tls_version_info gauge
probe_tls_version_info{dc="east",target="cassandra",version="TLS 1.3"} 1.0
# HELP probe_tls_cipher_info Contains the TLS cipher negotiated during handshake
# TYPE probe_tls_cipher_info gauge
probe_tls_cipher_info{cipher="TLS_AES_128_GCM_SHA256",dc="east",target="cassandra"} 1.0
# HELP probe_ssl_earliest_cert_expiry Returns earliest SSL cert expiry date
# TYPE probe_ssl_earliest_cert_expiry gauge
probe_ssl_earliest_cert_expiry{dc="east",target="cassandra"} 1.79e+09
# HELP probe_ssl_last_chain_expiry_timestamp_seconds Returns last SSL chain expiry in timestamp seconds
# TYPE probe_ssl_last_chain_expiry_timestamp_seconds gauge
probe_ssl_last_chain_expiry_timestamp_seconds{dc="east",target="cassandra"} 1.79e+09
# HELP probe_ssl_last_chain_info Contains SSL leaf certificate information
# TYPE probe_ssl_last_chain_info gauge
probe_ssl_last_chain_info{dc="east",fingerprint_sha256="db1-fp",issuer="CN=Inter",serialnumber="1a",subject="CN=db1",subjectalternative="db1,www.db1",target="cassandra"} 1.0
# HELP textfile_probe_verify_success Whether the sent chain verified against trust store and server name; reason says why not
# TYPE textfile_probe_verify_success gauge
textfile_probe_verify_success{dc="east",reason="ok",target="cassandra"} 1.0
# HELP textfile_probe_cert_not_after_timestamp_seconds notAfter of each certificate the server sent, as a Unix timestamp
# TYPE textfile_probe_cert_not_after_timestamp_seconds gauge
textfile_probe_cert_not_after_timestamp_seconds{dc="east",fingerprint_sha256="db1-fp",issuer_cn="Inter",position="0",serial="1a",subject_cn="db1",target="cassandra"} 1.8e+09
textfile_probe_cert_not_after_timestamp_seconds{dc="east",fingerprint_sha256="Inter-fp",issuer_cn="Root",position="1",serial="1a",subject_cn="Inter",target="cassandra"} 1.79e+09
# HELP textfile_probe_cert_not_before_timestamp_seconds notBefore of each certificate the server sent, as a Unix timestamp
# TYPE textfile_probe_cert_not_before_timestamp_seconds gauge
textfile_probe_cert_not_before_timestamp_seconds{dc="east",fingerprint_sha256="db1-fp",issuer_cn="Inter",position="0",serial="1a",subject_cn="db1",target="cassandra"} 1.7e+09
textfile_probe_cert_not_before_timestamp_seconds{dc="east",fingerprint_sha256="Inter-fp",issuer_cn="Root",position="1",serial="1a",subject_cn="Inter",target="cassandra"} 1.7e+09
"""  # noqa: E501


def test_verify_failure_keeps_expiry_but_drops_last_chain_expiry() -> None:
    failed = ProbeResult(
        target=Target(name="x", host="h", port=1, server_name="h", verify=True),
        success=False,
        duration=0.1,
        stage=Stage.VERIFY,
        reason="expired",
        peer_chain=(LEAF,),
        verify_result="expired",
    )
    text = render([failed], None).decode()
    assert 'probe_success{target="x"} 0.0' in text
    assert 'probe_ssl_earliest_cert_expiry{target="x"} 1.8e+09' in text
    assert "probe_ssl_last_chain_expiry_timestamp_seconds" not in text  # never blackbox's year-1 value
    assert 'textfile_probe_verify_success{reason="expired",target="x"} 0.0' in text
    assert 'textfile_probe_failure_info{reason="expired",stage="verify",target="x"} 1.0' in text


def test_connect_failure_has_no_tls_series() -> None:
    refused = ProbeResult(
        target=Target(name="x", host="h", port=1, server_name="h"),
        success=False,
        duration=0.1,
        stage=Stage.CONNECT,
        reason="refused",
        phases=(("dns", 0.0),),
        ip_protocol=6,
    )
    names = {f.name for f in text_string_to_metric_families(render([refused], None).decode())}
    assert names == {
        "probe_success",
        "probe_duration_seconds",
        "probe_dns_lookup_time_seconds",
        "probe_ip_protocol",
        "textfile_probe_phase_duration_seconds",
        "textfile_probe_failure_info",
    }


def test_health_series() -> None:
    text = render(
        [OK],
        Health(cycle_duration=1.5, last_cycle_end=1_750_000_000.0, config_ok=False, config_loaded_at=1_740_000_000.0),
        3,
        files=[_file("/a.pem", format="pem"), _file("/b.jks", reason="not_found"), _file("/c.jks", reason="corrupt")],
    ).decode()
    openssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    for line in (
        "textfile_probe_cycle_duration_seconds 1.5",
        "textfile_probe_last_cycle_timestamp_seconds 1.75e+09",
        "textfile_probe_targets 3.0",
        "textfile_probe_targets_failed 0.0",
        "textfile_probe_files 3.0",
        "textfile_probe_files_unreadable 2.0",
        "textfile_probe_config_last_reload_successful 0.0",
        "textfile_probe_config_last_reload_success_timestamp_seconds 1.74e+09",
        f'textfile_probe_build_info{{openssl="{openssl}",python="{platform.python_version()}",'
        f'version="{__version__}"}} 1.0',
    ):
        assert line + "\n" in text


def test_hostile_label_values_cannot_break_the_format() -> None:
    nasty = 'O=evil "quoted" \\ back\nslash\r\x00\x1b[31m,CN=db1'
    hostile = ProbeResult(
        target=TARGET,
        success=True,
        duration=0.1,
        peer_chain=(cert("db1", 1.0, subject=nasty),),
        verify_result="ok",
    )
    text = render([hostile], None).decode()
    assert "\r" not in text and "\x00" not in text and "\x1b" not in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (sample,) = families["probe_ssl_last_chain_info"].samples
    assert sample.labels["subject"] == clean(nasty) == 'O=evil "quoted" \\ back\nslash\ufffd\ufffd\ufffd[31m,CN=db1'
    # Every line is a comment or a complete sample: the newline in the subject stayed escaped.
    sample_line = re.compile(r'^[a-z_]+(\{([a-z_][a-z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? [0-9.e+-]+$')
    assert all(line.startswith("# ") or sample_line.match(line) for line in text.splitlines())


def test_label_values_are_bounded() -> None:
    assert len(clean("x" * 10_000)) == 512


def test_removed_target_disappears() -> None:
    other = ProbeResult(target=Target(name="other", host="h", port=1, server_name="h"), success=True, duration=0.1)
    assert 'target="other"' in render([OK, other], None).decode()
    assert 'target="other"' not in render([OK], None).decode()


def test_sliced_rendering_equals_one_registry_per_family(monkeypatch: pytest.MonkeyPatch) -> None:
    many = [replace(OK, target=replace(TARGET, name=f"t{i}", keystore=StoreSpec("/ks.pem"))) for i in range(7)]
    files = [_file("/ks.pem", (StoreCert("", CERT_ENTRY, 0, b""), LEAF), format="pem", leaves=frozenset({"db1-fp"}))]
    health = Health(cycle_duration=1.0, last_cycle_end=2.0, config_ok=True, config_loaded_at=3.0)
    monkeypatch.setattr(metrics, "SLICE", 3)
    # Sliced target families, the files' cached text, the match and the health, as the daemon writes them.
    sliced = b"".join(metrics.render_chunks(many, health, None, files, metrics.FileText()))
    # The same samples, each family whole in one fresh registry: what an unsliced render writes.
    merged: dict[str, Metric] = {}
    for family in metrics.families(many, health, None, files):
        merged.setdefault(family.name, GaugeMetricFamily(family.name, family.documentation)).samples.extend(
            family.samples
        )
    whole = b""
    for family in merged.values():
        registry = CollectorRegistry(auto_describe=False)
        registry.register(metrics._One(family))
        whole += generate_latest(registry)
    assert sliced == whole
    assert sliced.count(b"# TYPE probe_success gauge\n") == 1
    assert sliced.count(b"probe_success{") == 7
    assert sliced.count(b"textfile_probe_served_cert_matches_file{") == 7
    assert b"textfile_probe_files 1.0\n" in sliced


def _file(path: str, *certs: tuple[StoreCert, CertInfo], reason: str = "ok", **kw: object) -> FileResult:
    spec = StoreSpec(path=path, labels=(("team", "db"),))
    return FileResult(path, spec, reason, certs=certs, **kw)  # type: ignore[arg-type]


def test_file_series_render_exactly() -> None:
    keystore = _file(
        "/etc/cassandra/keystore.jks",
        (StoreCert("node", KEY_ENTRY, 0, b""), LEAF),
        (StoreCert("node", KEY_ENTRY, 1, b""), INTER),
        (StoreCert("ca-0", TRUSTED_ENTRY, 0, b""), ROOT),
        format="jks",
        leaves=frozenset({"db1-fp"}),
        modified=1_750_000_000.0,
    )
    missing = _file("/etc/cassandra/truststore.jks", reason="not_found")
    paired = replace(OK, target=replace(TARGET, keystore=StoreSpec("/etc/cassandra/keystore.jks")))
    text = render([paired], None, files=[keystore, missing]).decode()
    file_part = text[text.index("# HELP textfile_probe_file_read_success") :]
    ks = 'path="/etc/cassandra/keystore.jks",team="db"'
    cert_labels = [
        f'alias="node",entry="private_key",fingerprint_sha256="db1-fp",issuer_cn="Inter",{ks[:-10]}'
        f',position="0",serial="1a",subject_cn="db1",team="db"',
        f'alias="node",entry="private_key",fingerprint_sha256="Inter-fp",issuer_cn="Root",{ks[:-10]}'
        f',position="1",serial="1a",subject_cn="Inter",team="db"',
        f'alias="ca-0",entry="trusted_cert",fingerprint_sha256="Root-fp",issuer_cn="Root",{ks[:-10]}'
        f',position="0",serial="1a",subject_cn="Root",team="db"',
    ]
    expected = (
        "# HELP textfile_probe_file_read_success Whether the certificate file or keystore was read; "
        "reason says why not\n"
        "# TYPE textfile_probe_file_read_success gauge\n"
        f'textfile_probe_file_read_success{{format="jks",{ks[:-10]},reason="ok",team="db"}} 1.0\n'
        'textfile_probe_file_read_success{format="",path="/etc/cassandra/truststore.jks",reason="not_found",'
        'team="db"} 0.0\n'
        "# HELP textfile_probe_file_modified_timestamp_seconds When the file was last modified, as a Unix timestamp\n"
        "# TYPE textfile_probe_file_modified_timestamp_seconds gauge\n"
        f"textfile_probe_file_modified_timestamp_seconds{{{ks}}} 1.75e+09\n"
        "# HELP textfile_probe_file_cert_not_after_timestamp_seconds notAfter of each certificate in the file, "
        "as a Unix timestamp\n"
        "# TYPE textfile_probe_file_cert_not_after_timestamp_seconds gauge\n"
        f"textfile_probe_file_cert_not_after_timestamp_seconds{{{cert_labels[0]}}} 1.8e+09\n"
        f"textfile_probe_file_cert_not_after_timestamp_seconds{{{cert_labels[1]}}} 1.79e+09\n"
        f"textfile_probe_file_cert_not_after_timestamp_seconds{{{cert_labels[2]}}} 2e+09\n"
        "# HELP textfile_probe_file_cert_not_before_timestamp_seconds notBefore of each certificate in the file, "
        "as a Unix timestamp\n"
        "# TYPE textfile_probe_file_cert_not_before_timestamp_seconds gauge\n"
        f"textfile_probe_file_cert_not_before_timestamp_seconds{{{cert_labels[0]}}} 1.7e+09\n"
        f"textfile_probe_file_cert_not_before_timestamp_seconds{{{cert_labels[1]}}} 1.7e+09\n"
        f"textfile_probe_file_cert_not_before_timestamp_seconds{{{cert_labels[2]}}} 1.7e+09\n"
        "# HELP textfile_probe_served_cert_matches_file Whether the leaf the endpoint serves is the certificate of "
        "the paired keystore or file on disk\n"
        "# TYPE textfile_probe_served_cert_matches_file gauge\n"
        'textfile_probe_served_cert_matches_file{dc="east",path="/etc/cassandra/keystore.jks",target="cassandra"} 1.0\n'
    )
    assert file_part == expected


def test_served_match_is_zero_for_another_leaf_and_absent_when_unknown() -> None:
    paired = replace(OK, target=replace(TARGET, keystore=StoreSpec("/ks.p12")))
    renewed = _file("/ks.p12", format="pkcs12", leaves=frozenset({"renewed-fp"}))
    assert metrics.served_matches(paired, {"/ks.p12": renewed}) == 0.0
    assert metrics.served_matches(paired, {"/ks.p12": replace(renewed, leaves=frozenset({"db1-fp"}))}) == 1.0
    assert metrics.served_matches(paired, {"/ks.p12": _file("/ks.p12", reason="bad_password")}) is None
    assert metrics.served_matches(paired, {}) is None
    assert metrics.served_matches(replace(paired, peer_chain=()), {"/ks.p12": renewed}) is None
    assert metrics.served_matches(OK, {"/ks.p12": renewed}) is None  # no pairing


def test_hostile_alias_and_path_cannot_break_the_format() -> None:
    hostile = 'a"b\\c\nd\x00e'
    read = _file(f"/tmp/{hostile}.jks", (StoreCert(hostile, TRUSTED_ENTRY, 0, b""), ROOT), format="jks")
    text = render([], None, files=[read]).decode()
    parsed = {s.name: s.labels for f in text_string_to_metric_families(text) for s in f.samples}
    assert parsed["textfile_probe_file_cert_not_after_timestamp_seconds"]["alias"] == 'a"b\\c\nd\ufffde'
    assert parsed["textfile_probe_file_read_success"]["path"] == '/tmp/a"b\\c\nd\ufffde.jks'
