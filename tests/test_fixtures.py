# Strategy: prove the test fixtures behave before anything relies on them.
# Each test drives one pki.py / servers.py helper with a plain client (stdlib
# ssl, or pyOpenSSL where the exact received chain must be seen) over
# loopback, with short timeouts so the whole file stays around 2-3 seconds.
from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from OpenSSL import SSL
from pki import Pki, make_ca, write_key, write_pem
from servers import (
    Blackhole,
    ClosedPort,
    OpensslServer,
    PlainTextServer,
    ResetServer,
    Tarpit,
    TlsServer,
)

TIMEOUT = 3.0

# --------------------------------------------------------------------------
# Client helpers
# --------------------------------------------------------------------------


def client_context(
    pki: Pki,
    *,
    min_version: ssl.TLSVersion | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=pki.trust_pem().decode("ascii"))
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def tls_connect(host: str, port: int, ctx: ssl.SSLContext, server_name: str = "localhost") -> ssl.SSLSocket:
    raw = socket.create_connection((host, port), timeout=TIMEOUT)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_name)
    except BaseException:
        raw.close()
        raise


def received_chain(host: str, port: int) -> list[x509.Certificate]:
    """The certificates the server sent, unverified, in order (pyOpenSSL)."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
        raw.setblocking(False)
        conn = SSL.Connection(ctx, raw)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        deadline = time.monotonic() + TIMEOUT
        for _ in range(1000):
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                remaining = deadline - time.monotonic()
                assert remaining > 0, "handshake timed out"
                select.select([raw], [], [], remaining)
        chain = conn.get_peer_cert_chain(as_cryptography=True)
    return list(chain or [])


def assert_chain(got: Sequence[x509.Certificate], want: Sequence[x509.Certificate]) -> None:
    assert [c.subject.rfc4514_string() for c in got] == [c.subject.rfc4514_string() for c in want]
    assert list(got) == list(want)


# --------------------------------------------------------------------------
# pki.py
# --------------------------------------------------------------------------


def test_pki_chain_passes_strict_rfc5280_verification(pki: Pki) -> None:
    leaf = pki.leaf()
    chain = pki.chain_for(leaf)
    assert chain == [leaf.cert, pki.intermediate.cert]
    assert pki.chain_for(leaf, include_root=True)[-1] == pki.root.cert
    verifier = (
        PolicyBuilder().store(Store([pki.root.cert])).time(pki.now).build_server_verifier(x509.DNSName("localhost"))
    )
    verified = verifier.verify(leaf.cert, chain[1:])
    assert verified[-1] == pki.root.cert

    client = pki.leaf("probe-client", dns=("probe-client.test",), ips=(), client=True)
    client_verifier = PolicyBuilder().store(Store([pki.root.cert])).time(pki.now).build_client_verifier()
    client_verifier.verify(client.cert, [pki.intermediate.cert])


def test_pki_leaf_fields(pki: Pki) -> None:
    odd = 'Acme "Q" \\ Ltd\nline2, =+;<>#'
    leaf = pki.leaf(
        "svc.test",
        dns=("svc.test", "*.svc.test"),
        ips=("127.0.0.2",),
        valid_for=-timedelta(days=2),
        serial=4242,
        subject_extra=odd,
        signer="root",
    )
    cert = leaf.cert
    assert cert.serial_number == 4242
    assert cert.not_valid_after_utc == pki.now - timedelta(days=2)
    assert cert.not_valid_before_utc < cert.not_valid_after_utc
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert org == odd
    assert leaf.subject_cn == "svc.test"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["svc.test", "*.svc.test"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.2"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert pki.chain_for(leaf) == [cert]

    selfsigned = pki.leaf(signer="self", key_type="rsa", client=True)
    assert selfsigned.cert.issuer == selfsigned.cert.subject
    assert isinstance(selfsigned.key, rsa.RSAPrivateKey)
    assert pki.chain_for(selfsigned) == [selfsigned.cert]
    client_eku = selfsigned.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(client_eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert b"BEGIN PRIVATE KEY" in selfsigned.key_pem()
    assert selfsigned.cert_pem().startswith(b"-----BEGIN CERTIFICATE-----")


def test_make_ca_intermediate_links_to_issuer(pki: Pki) -> None:
    sub = make_ca(
        "Sub CA",
        not_before=pki.now - timedelta(days=1),
        not_after=pki.now + timedelta(days=1),
        issuer=pki.intermediate,
    )
    aki = sub.cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ski = pki.intermediate.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.value.key_identifier == ski.value.digest
    bc = sub.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    assert sub.cert.issuer == pki.intermediate.cert.subject


# --------------------------------------------------------------------------
# TlsServer
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["leaf", "leaf+intermediate", "leaf+inter+root"])
def test_tls_server_sends_exactly_the_given_chain(pki: Pki, shape: str) -> None:
    leaf = pki.leaf()
    chain = {
        "leaf": [leaf.cert],
        "leaf+intermediate": pki.chain_for(leaf),
        "leaf+inter+root": pki.chain_for(leaf, include_root=True),
    }[shape]
    with TlsServer(chain, leaf.key) as server:
        assert_chain(received_chain(server.host, server.port), chain)
        ctx = client_context(pki)
        if shape == "leaf":
            with pytest.raises(ssl.SSLCertVerificationError):
                tls_connect(server.host, server.port, ctx)
        else:
            with tls_connect(server.host, server.port, ctx) as tls:
                assert tls.version() == "TLSv1.3"
        assert server.wait_handshakes(2 if shape != "leaf" else 1)
        assert server.handshake_log[0].server_name == "localhost"


def test_tls_server_ipv6_and_many_connections(pki: Pki) -> None:
    leaf = pki.leaf()
    with TlsServer(pki.chain_for(leaf), leaf.key, host="::1") as server:
        assert server.address == f"[::1]:{server.port}"
        ctx = client_context(pki)
        socks = [tls_connect("::1", server.port, ctx) for _ in range(5)]
        for tls in socks:
            tls.close()
        assert server.wait_handshakes(5)
        assert server.handshakes == 5


def test_tls_server_answers_close_notify_promptly(pki: Pki) -> None:
    leaf = pki.leaf()
    with TlsServer(pki.chain_for(leaf), leaf.key) as server:
        tls = tls_connect(server.host, server.port, client_context(pki))
        started = time.monotonic()
        raw = tls.unwrap()  # sends close_notify, waits for the server's
        raw.close()
        assert time.monotonic() - started < 1.0


def test_tls12_only_server_refuses_tls13_only_client(pki: Pki) -> None:
    leaf = pki.leaf()
    with TlsServer(pki.chain_for(leaf), leaf.key, max_version=ssl.TLSVersion.TLSv1_2) as server:
        ctx13 = client_context(pki, min_version=ssl.TLSVersion.TLSv1_3)
        with pytest.raises(ssl.SSLError):
            tls_connect(server.host, server.port, ctx13)
        # The server survived the failed handshake and still speaks TLS 1.2.
        with tls_connect(server.host, server.port, client_context(pki)) as tls:
            assert tls.version() == "TLSv1.2"
        assert server.wait_handshakes(1)
        assert server.handshake_errors


@pytest.mark.skipif(not ssl.HAS_TLSv1_1, reason="OpenSSL built without TLS 1.1")
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls_server_can_speak_legacy_tls11(pki: Pki) -> None:
    leaf = pki.leaf()
    old = ssl.TLSVersion.TLSv1_1
    with TlsServer(pki.chain_for(leaf), leaf.key, max_version=old) as server:
        ctx = client_context(pki, min_version=old, max_version=old)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with tls_connect(server.host, server.port, ctx) as tls:
            assert tls.version() == "TLSv1.1"


def test_client_cert_required(pki: Pki, tmp_path: Path) -> None:
    leaf = pki.leaf()
    client = pki.leaf("probe-client", dns=(), ips=(), client=True)
    with TlsServer(pki.chain_for(leaf), leaf.key, client_ca=[pki.root.cert]) as server:
        # Without a certificate: TLS 1.3 reports the rejection on first read.
        with pytest.raises(ssl.SSLError), tls_connect(server.host, server.port, client_context(pki)) as tls:
            tls.recv(1)
        ctx = client_context(pki)
        ctx.load_cert_chain(
            write_pem(tmp_path / "client.pem", client, pki.intermediate),
            write_key(tmp_path / "client.key", client),
        )
        with tls_connect(server.host, server.port, ctx) as tls:
            tls.sendall(b"ping")
        assert server.wait_handshakes(1)
        der = client.cert.public_bytes(serialization.Encoding.DER)
        assert server.handshake_log[0].client_cert_der == der


def test_leaf_only_chain_is_not_completed_from_client_ca(pki: Pki) -> None:
    leaf = pki.leaf()
    with TlsServer([leaf.cert], leaf.key, client_ca=[pki.root.cert, pki.intermediate.cert]) as server:
        assert server.auto_chain_disabled
        assert_chain(received_chain(server.host, server.port), [leaf.cert])


# --------------------------------------------------------------------------
# OpensslServer
# --------------------------------------------------------------------------


def test_openssl_s_server_answers(pki: Pki, tmp_path: Path) -> None:
    leaf = pki.leaf()
    cert = write_pem(tmp_path / "cert.pem", leaf)
    key = write_key(tmp_path / "key.pem", leaf)
    chain = write_pem(tmp_path / "chain.pem", pki.intermediate)
    with OpensslServer(cert, key, chain) as server:
        with tls_connect(server.host, server.port, client_context(pki)) as tls:
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = tls.recv(4096)
        assert reply.startswith(b"HTTP/1.0 200")
        assert server.process is not None and server.process.poll() is None
    assert server.process is None


# --------------------------------------------------------------------------
# Misbehaving peers
# --------------------------------------------------------------------------


def test_plain_text_server_is_not_tls(pki: Pki) -> None:
    with PlainTextServer() as server:
        with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as s:
            assert s.recv(100) == b"220 hello plain text\r\n"
        with pytest.raises(ssl.SSLError):
            tls_connect(server.host, server.port, client_context(pki))


def test_tarpit_sends_nothing() -> None:
    with Tarpit() as server, socket.create_connection((server.host, server.port), timeout=0.5) as s:
        s.sendall(b"\x16\x03\x01\x00\x05hello")
        with pytest.raises(TimeoutError):
            s.recv(1)


@pytest.mark.parametrize("wait_for_data", [False, True])
def test_reset_server_resets(wait_for_data: bool) -> None:
    with (
        ResetServer(wait_for_data=wait_for_data) as server,
        socket.create_connection((server.host, server.port), timeout=TIMEOUT) as s,
    ):
        try:
            s.sendall(b"\x16\x03\x01\x00\x05hello")
            data = s.recv(1)
        except (ConnectionResetError, BrokenPipeError):
            return
        assert data == b""


def test_blackhole_connect_times_out() -> None:
    with Blackhole() as hole:
        assert hole.fillers
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            socket.create_connection((hole.host, hole.port), timeout=1.0)
        assert time.monotonic() - started >= 0.9


def test_closed_port_refuses() -> None:
    with ClosedPort() as closed:
        assert closed.address == f"127.0.0.1:{closed.port}"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((closed.host, closed.port), timeout=TIMEOUT)


def test_servers_shut_down_promptly_with_clients_still_connected(pki: Pki) -> None:
    leaf = pki.leaf()
    before = set(threading.enumerate())
    started = time.monotonic()
    with TlsServer(pki.chain_for(leaf), leaf.key) as tls_server, Tarpit(host="::1") as tarpit:
        held = [
            tls_connect(tls_server.host, tls_server.port, client_context(pki)),
            socket.create_connection((tarpit.host, tarpit.port), timeout=TIMEOUT),
            socket.create_connection((tls_server.host, tls_server.port), timeout=TIMEOUT),  # no handshake
        ]
        assert tls_server.wait_handshakes(1)
    assert time.monotonic() - started < 1.5
    assert set(threading.enumerate()) <= before
    for sock in held:
        sock.close()
