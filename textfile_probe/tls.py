"""The TLS client: pyOpenSSL driven through memory BIOs over a non-blocking asyncio socket.

Why this engine (measured, see docs/design.md): OpenSSL from the cryptography wheel costs less CPU
per handshake than the stdlib `ssl` on the system OpenSSL, pyOpenSSL returns the chain exactly as
the server sent it on every Python, and a TLS object over memory BIOs needs far less memory per
connection than asyncio's TLS transport.

Verification runs inside the handshake but never aborts it: the verify callback records every
(depth, error) OpenSSL reports and accepts, so the chain and its expiry are known even when it is
untrusted, expired or for another host. The probe decides afterwards what the errors mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
from dataclasses import dataclass, field

from cryptography import x509
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from . import files
from .ciphers import iana_name
from .config import StoreSpec, Target, TlsVersion
from .errors import ProbeError, Stage, tls_reason
from .stores import StoreError

_READ_SIZE = 16384
_GROUPS = b"X25519:P-256:P-384:P-521:X448:ffdhe2048:ffdhe3072:ffdhe4096"

_OPENSSL_VERSIONS = {
    TlsVersion.TLS1_0: SSL.TLS1_VERSION,
    TlsVersion.TLS1_1: SSL.TLS1_1_VERSION,
    TlsVersion.TLS1_2: SSL.TLS1_2_VERSION,
    TlsVersion.TLS1_3: SSL.TLS1_3_VERSION,
}
_VERSION_BY_NAME = {f"TLSv1.{v.value - 0x0301}": v for v in TlsVersion} | {"TLSv1": TlsVersion.TLS1_0}


@dataclass(frozen=True)
class TlsSettings:
    """The parts of a target that shape its SSL context; targets that share them share a context.

    `stamps` identify the current contents of the files named (stat results), so a CA bundle or
    keystore replaced on disk gets a new context at the next probe, without a reload."""

    ca_file: str | None
    client_cert: str | None
    client_key: str | None
    min_version: TlsVersion | None
    max_version: TlsVersion | None
    truststore: StoreSpec | None = None
    client_keystore: StoreSpec | None = None
    stamps: tuple[object, ...] = ()

    @classmethod
    def of(cls, target: Target) -> TlsSettings:
        paths = [p for p in (target.ca_file, target.client_cert, target.client_key) if p]
        paths += [s.path for s in (target.truststore, target.client_keystore) if s is not None]
        return cls(
            target.ca_file,
            target.client_cert,
            target.client_key,
            target.min_version,
            target.max_version,
            target.truststore,
            target.client_keystore,
            tuple(files.stamp_of(p) for p in paths),
        )


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a handshake told us; after a failure, what it told us before failing."""

    version: TlsVersion | None
    cipher: str
    peer_chain: tuple[bytes, ...]  # DER, in the order the server sent them
    verified_chain: tuple[bytes, ...]  # DER, leaf to trust anchor; empty unless verification passed
    verify_errors: tuple[int, ...]  # X509_V_ERR_* codes, in the order OpenSSL reported them


class HandshakeError(ProbeError):
    """The handshake failed; `partial` keeps the certificates received before it did."""

    def __init__(self, reason: str, detail: str, partial: Handshake) -> None:
        super().__init__(Stage.HANDSHAKE, reason, detail)
        self.partial = partial


@dataclass
class _State:
    """Per-connection notes taken by OpenSSL callbacks."""

    have_cert: bool
    verify_errors: list[int] = field(default_factory=list)
    cert_requested: bool = False


def _record_verify_error(conn: SSL.Connection, _cert: crypto.X509, code: int, _depth: int, _ok: int) -> bool:
    if code:
        conn.get_app_data().verify_errors.append(code)
    return True


def _note_state(conn: SSL.Connection, where: int, _ret: int) -> None:
    # The only way pyOpenSSL lets a client learn that the server asked for a certificate.
    if where & SSL.SSL_CB_CONNECT_LOOP and conn.get_state_string().endswith(b"certificate request"):
        conn.get_app_data().cert_requested = True


@functools.lru_cache(maxsize=256)
def context_for(settings: TlsSettings) -> SSL.Context:
    """Build (once per distinct settings) the client context; raises ProbeError(setup) on bad files."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # A probe mostly waits on its peer; let OpenSSL free the record buffers while it does.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_verify(SSL.VERIFY_PEER, _record_verify_error)
    ctx.set_info_callback(_note_state)  # on the context: one C callback, not one per connection
    # Probing must see what old servers offer, so allow what OpenSSL can still speak.
    ctx.set_cipher_list(b"ALL:@SECLEVEL=0")
    # One classic key share: a probe needs no post-quantum secrecy, and computing an ML-KEM share
    # for every handshake costs CPU that most servers then ignore.
    _lib.SSL_CTX_set1_curves_list(ctx._context, _GROUPS)
    ctx.set_min_proto_version(_OPENSSL_VERSIONS[settings.min_version or TlsVersion.TLS1_0])
    if settings.max_version:
        ctx.set_max_proto_version(_OPENSSL_VERSIONS[settings.max_version])
    try:
        if settings.ca_file:
            ctx.load_verify_locations(settings.ca_file)
        elif settings.truststore is None:
            ctx.set_default_verify_paths()
    except SSL.Error as exc:
        raise ProbeError(Stage.SETUP, "bad_ca_file", str(exc)) from None
    if settings.truststore is not None:
        _trust_store(ctx, settings.truststore)
    if settings.client_keystore is not None:
        _client_identity(ctx, settings.client_keystore)
    if settings.client_cert:
        try:
            ctx.use_certificate_chain_file(settings.client_cert)
            ctx.use_privatekey_file(settings.client_key or settings.client_cert)
            ctx.check_privatekey()
        except SSL.Error as exc:
            raise ProbeError(Stage.SETUP, "bad_client_cert", str(exc)) from None
    return ctx


def _trust_store(ctx: SSL.Context, spec: StoreSpec) -> None:
    read = files.read_file(spec.path, spec)
    if not read.ok:
        raise ProbeError(Stage.SETUP, "bad_truststore", f"{spec.path}: {read.reason}: {read.detail}")
    if not read.certs:
        raise ProbeError(Stage.SETUP, "bad_truststore", f"{spec.path}: holds no certificate")
    store = ctx.get_cert_store()
    assert store is not None  # a client context always has one
    for entry, _info in read.certs:
        store.add_cert(crypto.X509.from_cryptography(x509.load_der_x509_certificate(entry.der)))


def _client_identity(ctx: SSL.Context, spec: StoreSpec) -> None:
    try:
        found = files.load_identity(spec)
        ctx.use_certificate(crypto.X509.from_cryptography(found.chain[0]))
        for cert in found.chain[1:]:
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(cert))
        ctx.use_privatekey(crypto.PKey.from_cryptography_key(found.key))
        ctx.check_privatekey()
    except StoreError as exc:
        raise ProbeError(Stage.SETUP, "bad_client_keystore", f"{spec.path}: {exc.reason}: {exc.detail}") from None
    except (SSL.Error, TypeError, ValueError) as exc:
        raise ProbeError(Stage.SETUP, "bad_client_keystore", f"{spec.path}: {exc}") from None


@functools.lru_cache(maxsize=65536)
def _expected_name(server_name: str) -> tuple[bytes, bool]:
    """(bytes OpenSSL checks, whether they are a packed IP address), computed once per name."""
    try:
        return ipaddress.ip_address(server_name).packed, True
    except ValueError:
        return server_name.encode("idna"), False


def _expect_name(conn: SSL.Connection, server_name: str) -> None:
    """Ask OpenSSL to check the certificate against server_name."""
    # pyOpenSSL has no public call for this; it is what CPython's ssl module does in C.
    name, is_ip = _expected_name(server_name)
    param = _lib.SSL_get0_param(conn._ssl)
    if is_ip:
        ok = _lib.X509_VERIFY_PARAM_set1_ip(param, _ffi.from_buffer(name), len(name))
    else:
        _lib.X509_VERIFY_PARAM_set_hostflags(param, _lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)
        ok = _lib.X509_VERIFY_PARAM_set1_host(param, name, len(name))
    if ok != 1:
        raise ProbeError(Stage.SETUP, "bad_server_name", server_name)


def new_connection(ctx: SSL.Context, server_name: str, have_cert: bool, check_name: bool = True) -> SSL.Connection:
    """A client TLS object over memory BIOs, set up to send SNI and (unless told not to) check
    the certificate against `server_name`."""
    conn = SSL.Connection(ctx, None)
    conn.set_app_data(_State(have_cert))
    conn.set_connect_state()
    name, is_ip = _expected_name(server_name)
    if check_name:
        _expect_name(conn, server_name)
    if not is_ip:
        conn.set_tlsext_host_name(name)  # SNI is never an IP address
    return conn


async def _flush(loop: asyncio.AbstractEventLoop, sock: socket.socket, conn: SSL.Connection) -> None:
    while True:
        try:
            data = conn.bio_read(_READ_SIZE)
        except SSL.WantReadError:
            return
        await loop.sock_sendall(sock, data)


async def _receive(loop: asyncio.AbstractEventLoop, sock: socket.socket, conn: SSL.Connection) -> bool:
    data = await loop.sock_recv(sock, _READ_SIZE)
    if data:
        conn.bio_write(data)
    return bool(data)


async def handshake(sock: socket.socket, conn: SSL.Connection, early: bytes = b"") -> Handshake:
    """Run the handshake over a connected non-blocking socket; raise HandshakeError/OSError.

    `early` holds bytes already read from the socket (past a STARTTLS dialogue)."""
    loop = asyncio.get_running_loop()
    if early:
        conn.bio_write(early)
    try:
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                await _flush(loop, sock, conn)
                if not await _receive(loop, sock, conn):
                    raise HandshakeError("closed", "peer closed the connection", _describe(conn)) from None
    except SSL.Error as exc:
        reason = tls_reason(str(exc))
        if _turned_away(conn, reason):
            reason = "client_cert_required"
        raise HandshakeError(reason, str(exc), _describe(conn)) from None
    except ConnectionResetError as exc:
        reason = "client_cert_required" if _turned_away(conn, "reset") else "reset"
        raise HandshakeError(reason, str(exc), _describe(conn)) from None
    await _flush(loop, sock, conn)
    return _describe(conn)


def _turned_away(conn: SSL.Connection, reason: str) -> bool:
    """Did a server that asked for a client certificate end the handshake because we had none?"""
    state: _State = conn.get_app_data()
    return reason in ("handshake_failure", "closed", "reset") and state.cert_requested and not state.have_cert


async def confirm(sock: socket.socket, conn: SSL.Connection, wait: float) -> None:
    """Wait for the server's verdict on our client certificate, when TLS 1.3 defers it.

    In TLS 1.3 a server checks the client's certificate only after the client's Finished, so a
    rejection arrives after the client believes the handshake is done. When the server asked for
    a certificate we read its next record: an alert raises SSL.Error; anything else (a session
    ticket, data) or `wait` seconds of silence means it accepted us.
    """
    if conn.get_protocol_version_name() != "TLSv1.3" or not conn.get_app_data().cert_requested:
        return
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(_verdict(loop, sock, conn), wait)
    except (TimeoutError, asyncio.TimeoutError):
        return
    except ConnectionResetError as exc:
        reason = "client_cert_required" if _turned_away(conn, "reset") else "client_cert_rejected"
        raise ProbeError(Stage.HANDSHAKE, reason, str(exc)) from None


async def _verdict(loop: asyncio.AbstractEventLoop, sock: socket.socket, conn: SSL.Connection) -> None:
    if await _receive(loop, sock, conn):
        with contextlib.suppress(SSL.WantReadError, SSL.ZeroReturnError):
            conn.recv(_READ_SIZE)  # an alert in this record raises SSL.Error


def _describe(conn: SSL.Connection) -> Handshake:
    errors = tuple(conn.get_app_data().verify_errors)
    peer = conn.get_peer_cert_chain() or []
    verified = (conn.get_verified_chain() or []) if not errors else []
    return Handshake(
        version=_VERSION_BY_NAME.get(conn.get_protocol_version_name()),
        cipher=iana_name(conn.get_cipher_name() or ""),
        peer_chain=tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in peer),
        verified_chain=tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in verified),
        verify_errors=errors,
    )
