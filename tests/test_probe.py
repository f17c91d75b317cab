"""The probe against real TLS servers on loopback, with certificates made at test time."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from pki import Issued, Pki, make_ca, write_key, write_pem
from servers import Blackhole, ClosedPort, OpensslServer, PlainTextServer, ResetServer, Tarpit, TlsServer

from textfile_probe.config import Config, Target, TlsVersion
from textfile_probe.errors import Stage
from textfile_probe.probe import ProbeResult, probe
from textfile_probe.scheduler import Daemon


@pytest.fixture(scope="module")
def trust(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_pem(tmp_path_factory.mktemp("trust") / "root.pem", pki.root))


def target(address: str, trust: str | None, **overrides: Any) -> Target:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    settings: dict[str, Any] = {"name": "t", "server_name": "localhost", "ca_file": trust, "timeout": 3.0, **overrides}
    return Target(host=host, port=int(port), **settings)


def run(t: Target) -> ProbeResult:
    return asyncio.run(probe(t))


def ts(cert: x509.Certificate) -> float:
    return cert.not_valid_after_utc.timestamp()


def fingerprints(result_chain: Sequence[Any]) -> list[str]:
    return [c.fingerprint_sha256 for c in result_chain]


def fp(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex()


def test_valid_chain_succeeds_with_full_chain_and_expiries(pki: Pki, trust: str) -> None:
    leaf = pki.leaf()
    with TlsServer(pki.chain_for(leaf), leaf.key) as server:
        result = run(target(server.address, trust))
    assert (result.success, result.stage, result.reason, result.verify_result) == (True, None, None, "ok")
    assert fingerprints(result.peer_chain) == [fp(leaf.cert), fp(pki.intermediate.cert)]
    assert fingerprints(result.verified_chain) == [fp(leaf.cert), fp(pki.intermediate.cert), fp(pki.root.cert)]
    assert result.tls_version is TlsVersion.TLS1_3
    assert result.cipher is not None and result.cipher.startswith("TLS_")
    assert result.ip_protocol == 4
    assert [name for name, _ in result.phases] == ["dns", "connect", "handshake"]
    assert result.peer_chain[0].not_after == ts(leaf.cert)
    assert result.peer_chain[0].subject_cn == "localhost"
    assert result.peer_chain[0].dns_names == ("localhost",)


def test_expired_leaf_fails_verify_but_reports_the_chain(pki: Pki, trust: str) -> None:
    leaf = pki.leaf(valid_for=timedelta(days=-3))
    with TlsServer(pki.chain_for(leaf), leaf.key) as server:
        strict = run(target(server.address, trust))
        relaxed = run(target(server.address, trust, verify=False))
    assert (strict.success, strict.stage, strict.reason) == (False, Stage.VERIFY, "expired")
    assert strict.peer_chain[0].not_after == ts(leaf.cert)
    assert strict.verified_chain == ()
    assert (relaxed.success, relaxed.stage, relaxed.verify_result) == (True, None, "expired")


def test_not_yet_valid_leaf(pki: Pki, trust: str) -> None:
    now = pki.now
    leaf = pki.leaf(not_before=now + timedelta(days=2), not_after=now + timedelta(days=90))
    with TlsServer(pki.chain_for(leaf), leaf.key) as server:
        result = run(target(server.address, trust))
    assert (result.success, result.stage, result.reason) == (False, Stage.VERIFY, "not_yet_valid")


def test_self_signed_leaf(pki: Pki, trust: str) -> None:
    leaf = pki.leaf(signer="self")
    with TlsServer([leaf.cert], leaf.key) as server:
        result = run(target(server.address, trust))
    assert (result.stage, result.reason, len(result.peer_chain)) == (Stage.VERIFY, "self_signed", 1)


@pytest.mark.parametrize("server_name", ["db.example.com", "127.0.0.2"])
def test_wrong_host_name_or_ip(pki: Pki, trust: str, server_name: str) -> None:
    leaf = pki.leaf()
    with TlsServer(pki.chain_for(leaf), leaf.key) as server:
        result = run(target(server.address, trust, server_name=server_name))
    assert (result.success, result.stage, result.reason) == (False, Stage.VERIFY, "hostname_mismatch")


def test_ip_address_is_verified_against_ip_san(pki: Pki, trust: str) -> None:
    leaf = pki.leaf()
    with TlsServer(pki.chain_for(leaf), leaf.key) as server:
        result = run(target(server.address, trust, server_name="127.0.0.1"))
    assert result.success, result


def test_intermediate_expiring_before_leaf_sets_earliest_expiry(pki: Pki, trust: str) -> None:
    short = make_ca(
        "Short-lived Intermediate",
        not_before=pki.now - timedelta(days=10),
        not_after=pki.now + timedelta(days=5),
        issuer=pki.root,
    )
    leaf = pki.leaf(signer=short, valid_for=timedelta(days=60))
    with TlsServer([leaf.cert, short.cert], leaf.key) as server:
        result = run(target(server.address, trust))
    assert result.success, result
    assert min(c.not_after for c in result.peer_chain) == ts(short.cert)
    assert min(c.not_after for c in result.verified_chain) == ts(short.cert)


def test_server_sending_only_the_leaf_is_unknown_ca(pki: Pki, trust: str) -> None:
    leaf = pki.leaf()
    with TlsServer([leaf.cert], leaf.key) as server:
        result = run(target(server.address, trust))
    assert (result.stage, result.reason, len(result.peer_chain)) == (Stage.VERIFY, "unknown_ca", 1)


def test_untrusted_ca_with_system_store(pki: Pki) -> None:
    leaf = pki.leaf()
    with TlsServer(pki.chain_for(leaf), leaf.key) as server:
        result = run(target(server.address, None))
    assert (result.stage, result.reason) == (Stage.VERIFY, "unknown_ca")


@pytest.mark.parametrize(
    ("server_versions", "expected", "cipher_prefix"),
    [
        ((ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2), TlsVersion.TLS1_2, "TLS_ECDHE_ECDSA_WITH_"),
        ((ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3), TlsVersion.TLS1_3, "TLS_AES_"),
    ],
)
def test_tls12_and_tls13_only_servers(
    pki: Pki,
    trust: str,
    server_versions: tuple[ssl.TLSVersion, ssl.TLSVersion],
    expected: TlsVersion,
    cipher_prefix: str,
) -> None:
    leaf = pki.leaf()
    low, high = server_versions
    with TlsServer(pki.chain_for(leaf), leaf.key, min_version=low, max_version=high) as server:
        result = run(target(server.address, trust))
    assert result.success, result
    assert result.tls_version is expected
    assert result.cipher is not None and result.cipher.startswith(cipher_prefix)


def test_version_mismatch_is_a_handshake_failure(pki: Pki, trust: str) -> None:
    leaf = pki.leaf()
    tls13 = ssl.TLSVersion.TLSv1_3
    with TlsServer(pki.chain_for(leaf), leaf.key, min_version=tls13, max_version=tls13) as server:
        result = run(target(server.address, trust, max_version=TlsVersion.TLS1_2))
    assert (result.success, result.stage, result.reason) == (False, Stage.HANDSHAKE, "protocol_version")


@pytest.fixture(scope="module")
def client_files(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("client")
    client = pki.leaf("probe-client", dns=(), ips=(), client=True)
    return str(write_pem(directory / "client.pem", client, pki.intermediate)), str(
        write_key(directory / "k.pem", client)
    )


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_server_requiring_client_cert(
    pki: Pki, trust: str, client_files: tuple[str, str], version: ssl.TLSVersion
) -> None:
    leaf = pki.leaf()
    cert, key = client_files
    with TlsServer(
        pki.chain_for(leaf), leaf.key, client_ca=[pki.root.cert], min_version=version, max_version=version
    ) as server:
        without = run(target(server.address, trust))
        with_cert = run(target(server.address, trust, client_cert=cert, client_key=key))
    assert with_cert.success, with_cert
    assert (without.success, without.stage) == (False, Stage.HANDSHAKE)
    # TLS 1.2 says only "handshake failure"; the server having asked for a certificate tells us why.
    assert without.reason == "client_cert_required"
    # The server's certificate was received before it turned us away: expiry is still known.
    assert fingerprints(without.peer_chain)[:1] == [fp(leaf.cert)]


def test_client_cert_from_unknown_ca_is_rejected(pki: Pki, trust: str, tmp_path: Path) -> None:
    leaf = pki.leaf()
    stranger = pki.leaf("stranger", dns=(), ips=(), client=True, signer="self")
    cert = write_pem(tmp_path / "c.pem", stranger)
    key = write_key(tmp_path / "k.pem", stranger)
    with TlsServer(pki.chain_for(leaf), leaf.key, client_ca=[pki.root.cert]) as server:
        result = run(target(server.address, trust, client_cert=str(cert), client_key=str(key)))
    assert (result.success, result.stage, result.reason) == (False, Stage.HANDSHAKE, "client_cert_rejected")


def test_ipv6_loopback(pki: Pki, trust: str) -> None:
    leaf = pki.leaf()
    with TlsServer(pki.chain_for(leaf), leaf.key, host="::1") as server:
        result = run(target(server.address, trust, server_name="::1"))
    assert result.success, result
    assert result.ip_protocol == 6


def test_host_name_is_resolved(pki: Pki, trust: str) -> None:
    leaf = pki.leaf()
    with TlsServer(pki.chain_for(leaf), leaf.key) as server:
        result = run(target(f"localhost:{server.port}", trust, ip_protocol="ip4"))
    assert result.success, result
    assert dict(result.phases)["dns"] >= 0


def test_ip_protocol_mismatch_is_a_dns_failure(trust: str) -> None:
    result = run(target("127.0.0.1:1", trust, ip_protocol="ip6"))
    assert (result.stage, result.reason) == (Stage.DNS, "no_address")


def test_openssl_s_server_peer(pki: Pki, trust: str, tmp_path: Path) -> None:
    leaf = pki.leaf()
    cert = write_pem(tmp_path / "leaf.pem", leaf)
    key = write_key(tmp_path / "leaf.key", leaf)
    chain = write_pem(tmp_path / "chain.pem", pki.intermediate)
    with OpensslServer(cert, key, chain) as server:
        result = run(target(server.address, trust))
    assert result.success, result
    assert fingerprints(result.peer_chain) == [fp(leaf.cert), fp(pki.intermediate.cert)]


def test_closed_port_is_refused(trust: str) -> None:
    with ClosedPort() as closed:
        result = run(target(closed.address, trust))
    assert (result.success, result.stage, result.reason) == (False, Stage.CONNECT, "refused")


def test_tarpit_times_out_in_handshake(trust: str) -> None:
    with Tarpit() as tarpit:
        result = run(target(tarpit.address, trust, timeout=0.5))
    assert (result.stage, result.reason) == (Stage.HANDSHAKE, "timeout")
    assert 0.5 <= result.duration < 2.0


def test_blackhole_times_out_in_connect(trust: str) -> None:
    with Blackhole() as hole:
        result = run(target(hole.address, trust, timeout=0.5))
    assert (result.stage, result.reason) == (Stage.CONNECT, "timeout")


def test_plain_text_server_is_not_tls(trust: str) -> None:
    with PlainTextServer() as plain:
        result = run(target(plain.address, trust))
    assert (result.stage, result.reason) == (Stage.HANDSHAKE, "not_tls")


def test_reset_after_client_hello_is_a_handshake_reset(trust: str) -> None:
    with ResetServer(wait_for_data=True) as reset:
        result = run(target(reset.address, trust))
    assert (result.stage, result.reason) == (Stage.HANDSHAKE, "reset")


def test_reset_right_after_accept(trust: str) -> None:
    # The RST can beat the client's own view of the finished connect: either stage is the truth.
    with ResetServer() as reset:
        result = run(target(reset.address, trust))
    assert result.stage in {Stage.CONNECT, Stage.HANDSHAKE}
    assert result.reason in {"reset", "closed"}


def test_hostile_subject_is_carried_verbatim(pki: Pki, trust: str) -> None:
    leaf = pki.leaf(subject_extra='evil "quoted" \\ back\nslash')
    with TlsServer(pki.chain_for(leaf), leaf.key) as server:
        result = run(target(server.address, trust))
    assert result.success
    assert 'evil \\"quoted\\" \\\\ back\nslash' in result.peer_chain[0].subject


def test_a_dead_target_does_not_delay_the_others(pki: Pki, trust: str, tmp_path: Path) -> None:
    leaf: Issued = pki.leaf()
    with TlsServer(pki.chain_for(leaf), leaf.key) as server, Tarpit() as tarpit:
        dead = [
            Target(name=f"dead{i}", host="127.0.0.1", port=tarpit.port, server_name="localhost", timeout=1.0)
            for i in range(6)
        ]
        live = [target(server.address, trust, name=f"live{i}") for i in range(4)]
        config = Config(output=str(tmp_path / "out.prom"), concurrency=16, targets=tuple(dead + live))
        daemon = Daemon(config)
        started = time.monotonic()
        assert asyncio.run(daemon.cycle(config.targets))
        elapsed = time.monotonic() - started
    assert {n: r.success for n, r in daemon.results.items()} == {
        t.name: t.name.startswith("live") for t in config.targets
    }
    # Six 1-second timeouts in parallel: about one timeout, far from the six-second sum.
    assert elapsed < 3.0
