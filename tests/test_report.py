"""The human view of `textfile-probe probe`: days left computed at a frozen time."""

from __future__ import annotations

from freezegun import freeze_time

from textfile_probe.certs import CertInfo
from textfile_probe.config import Target, TlsVersion
from textfile_probe.errors import Stage
from textfile_probe.probe import ProbeResult
from textfile_probe.report import render_text

LEAF = CertInfo(
    fingerprint_sha256="ab" * 32,
    subject="CN=db1.example.com,O=Example",
    issuer="CN=Example CA",
    subject_cn="db1.example.com",
    issuer_cn="Example CA",
    serial="1f",
    not_before=1_767_225_600.0,  # 2026-01-01
    not_after=1_798_761_600.0,  # 2027-01-01
    dns_names=("db1.example.com",),
    ip_addresses=("10.0.0.1",),
    key="RSA 2048",
    signature_algorithm="sha256WithRSAEncryption",
)
TARGET = Target(name="db1", host="10.0.0.1", port=9142, server_name="db1.example.com")


@freeze_time("2026-12-02 00:00:00")
def test_text_view_shows_chain_and_days_left() -> None:
    result = ProbeResult(
        target=TARGET,
        success=True,
        duration=0.0123,
        phases=(("dns", 0.0), ("connect", 0.001), ("handshake", 0.01)),
        ip_protocol=4,
        tls_version=TlsVersion.TLS1_2,
        cipher="TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        peer_chain=(LEAF,),
        verify_result="ok",
    )
    assert render_text(result) == (
        "target:      db1 (10.0.0.1:9142, server name db1.example.com)\n"
        "result:      OK\n"
        "timing:      12.3 ms (dns 0.0 ms, connect 1.0 ms, handshake 10.0 ms)\n"
        "ip protocol: IPv4\n"
        "tls:         TLS 1.2, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n"
        "verify:      ok\n"
        "chain sent by the server (1 certificates):\n"
        "  [0] CN=db1.example.com,O=Example\n"
        "      issuer:    CN=Example CA\n"
        "      validity:  2026-01-01 00:00:00 UTC to 2027-01-01 00:00:00 UTC (30.0 days left)\n"
        "      key:       RSA 2048, signed with sha256WithRSAEncryption\n"
        "      serial:    1f\n"
        f"      sha256:    {'ab' * 32}\n"
        "      names:     DNS:db1.example.com, IP:10.0.0.1\n"
    )


@freeze_time("2027-02-01 00:00:00")
def test_text_view_marks_expired_and_failure() -> None:
    result = ProbeResult(
        target=TARGET,
        success=False,
        duration=0.01,
        stage=Stage.VERIFY,
        reason="expired",
        peer_chain=(LEAF,),
        verify_result="expired",
    )
    text = render_text(result)
    assert "result:      FAILED at verify: expired\n" in text
    assert "verify:      FAILED: expired\n" in text
    assert "(EXPIRED)" in text
