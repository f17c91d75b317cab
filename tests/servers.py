# Strategy: real peers on loopback only, each a context manager that binds
# port 0 (or holds a port bound) so tests never collide.  Python servers run an
# accept loop in one background thread and one short-lived thread per
# connection (at most `max_connections` at once; extra ones are closed).  On
# exit the listener is closed, every live connection is woken with
# shutdown(SHUT_RDWR) on a dup of its socket, and all threads are joined with
# a bounded timeout.  Every loop is bounded both in iterations and wall time.
# `OpensslServer` runs the real `openssl s_server` binary as a subprocess.
from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeAlias, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

__all__ = [
    "Blackhole",
    "ClosedPort",
    "Handshake",
    "OpensslServer",
    "PlainTextServer",
    "ResetServer",
    "Tarpit",
    "TlsServer",
    "format_address",
]

_T = TypeVar("_T", bound="_Endpoint")

# Bounds shared by the Python servers.
_ACCEPT_POLL = 0.05  # seconds between checks of the stop flag
_MAX_LIFETIME = 3600.0  # a server stops accepting after this long, whatever
_MAX_ACCEPTS = 100_000  # ... or after this many connections
_IO_TIMEOUT = 5.0  # per socket operation inside a connection
_CONN_LIFETIME = 120.0  # a single connection is dropped after this long
_MAX_READS = 100_000  # reads per connection
_JOIN_TIMEOUT = 5.0  # total budget for joining threads on exit


def format_address(host: str, port: int) -> str:
    """``127.0.0.1:443`` or ``[::1]:443``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _rst_close(sock: socket.socket) -> None:
    """Close ``sock`` so the kernel sends a TCP RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------


class _Endpoint:
    """Something with a loopback host/port, usable as a context manager."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def start(self) -> None:
        """Begin serving (called by ``__enter__``)."""

    def close(self) -> None:
        """Stop serving and release everything (called by ``__exit__``)."""

    def __enter__(self: _T) -> _T:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address}>"


class _ThreadedServer(_Endpoint):
    """Accept loop in a thread, one handler thread per connection."""

    def __init__(self, host: str = "127.0.0.1", *, backlog: int = 64, max_connections: int = 32) -> None:
        self.host = host
        self.port = 0
        self.connections = 0  # accepted so far
        self.errors: list[BaseException] = []  # unexpected handler exceptions
        self._backlog = backlog
        self._max_connections = max_connections
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._workers: set[threading.Thread] = set()
        self._wakers: set[socket.socket] = set()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        listener = socket.socket(_family(self.host), socket.SOCK_STREAM)
        self._listener = listener
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(self._backlog)
        listener.settimeout(_ACCEPT_POLL)
        self.port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"{type(self).__name__}-accept", daemon=True
        )
        self._accept_thread.start()

    def close(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            wakers = list(self._wakers)
            workers = list(self._workers)
        for waker in wakers:
            with contextlib.suppress(OSError):
                waker.shutdown(socket.SHUT_RDWR)
        for worker in workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))

    # -- accept loop -------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        give_up = time.monotonic() + _MAX_LIFETIME
        accepted = 0
        while not self._stop.is_set() and accepted < _MAX_ACCEPTS:
            if time.monotonic() > give_up:
                break
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break  # listener closed
            accepted += 1
            with self._lock:
                self.connections += 1
                busy = len(self._workers) >= self._max_connections
            if busy:
                conn.close()
                continue
            self._spawn(conn)

    def _spawn(self, conn: socket.socket) -> None:
        conn.settimeout(_IO_TIMEOUT)
        waker = conn.dup()
        worker = threading.Thread(
            target=self._run_handler,
            args=(conn, waker),
            name=f"{type(self).__name__}-conn",
            daemon=True,
        )
        with self._lock:
            self._wakers.add(waker)
            self._workers.add(worker)
        worker.start()

    def _run_handler(self, conn: socket.socket, waker: socket.socket) -> None:
        try:
            self.handle(conn)
        except Exception as exc:  # keep the server alive, but remember it
            with self._lock:
                self.errors.append(exc)
        finally:
            conn.close()
            with self._lock:
                self._wakers.discard(waker)
                self._workers.discard(threading.current_thread())
            waker.close()

    # -- helpers for handlers ---------------------------------------------

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _drain(self, conn: socket.socket) -> bool:
        """Read and discard until EOF, error, stop or the connection lifetime.

        Returns True only when the peer closed cleanly (EOF / close_notify).
        """
        conn.settimeout(min(_IO_TIMEOUT, 0.5))
        deadline = time.monotonic() + _CONN_LIFETIME
        for _ in range(_MAX_READS):
            if self._stop.is_set() or time.monotonic() > deadline:
                return False
            try:
                if not conn.recv(65536):
                    return not self._stop.is_set()
            except TimeoutError:
                continue
            except OSError:
                return False
        return False


# --------------------------------------------------------------------------
# TLS server (stdlib ssl)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Handshake:
    """What the server saw in one completed handshake."""

    version: str | None
    cipher: str | None
    server_name: str | None
    client_cert_der: bytes | None


def _pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


_SSL_CTRL_MODE = 33  # from <openssl/ssl.h>
_SSL_MODE_NO_AUTO_CHAIN = 0x8


def _disable_auto_chain(ctx: ssl.SSLContext) -> bool:
    """Set SSL_MODE_NO_AUTO_CHAIN on the SSL_CTX behind a stdlib context.

    The stdlib does not expose SSL_CTX_set_mode, so call SSL_CTX_ctrl from the
    libssl that ``_ssl`` is linked against.  CPython's context object starts
    with ``PyObject_HEAD; SSL_CTX *ctx``, so the pointer sits right after the
    object header.  Returns False (and changes nothing) if anything is off.
    """
    try:
        import _ssl  # the C extension; its handle resolves libssl symbols
        import ctypes

        lib = ctypes.CDLL(_ssl.__file__)
        ctrl = lib.SSL_CTX_ctrl
        ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        ctrl.restype = ctypes.c_long
        raw = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    except (AttributeError, ImportError, OSError, TypeError):
        return False
    if not raw or raw % ctypes.sizeof(ctypes.c_void_p):
        return False
    mode = int(ctrl(raw, _SSL_CTRL_MODE, _SSL_MODE_NO_AUTO_CHAIN, None))
    return bool(mode & _SSL_MODE_NO_AUTO_CHAIN)


_LEGACY_VERSIONS = {ssl.TLSVersion.SSLv3, ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1}


class TlsServer(_ThreadedServer):
    """A stdlib ``ssl`` server that sends exactly ``cert_chain``.

    ``cert_chain[0]`` is the leaf matching ``key``; every further certificate
    is sent as given, in order.  With ``client_ca`` a client certificate
    signed by one of those CAs is required (``CERT_REQUIRED``; an empty list
    rejects every client certificate).  A version cap
    below TLS 1.2 also lowers OpenSSL's security level so the old protocol can
    actually be negotiated.

    OpenSSL normally "auto-completes" a leaf-only chain from the context's
    trust store, which here holds ``client_ca``; for that one case we switch
    on SSL_MODE_NO_AUTO_CHAIN through ctypes (``auto_chain_disabled`` says
    whether that worked).  Longer chains are never auto-completed.
    """

    def __init__(
        self,
        cert_chain: Sequence[x509.Certificate],
        key: PrivateKey,
        *,
        host: str = "127.0.0.1",
        min_version: ssl.TLSVersion | None = None,
        max_version: ssl.TLSVersion | None = None,
        client_ca: Sequence[x509.Certificate] | None = None,
        max_connections: int = 32,
    ) -> None:
        if not cert_chain:
            raise ValueError("cert_chain must contain at least the leaf")
        super().__init__(host, max_connections=max_connections)
        self.cert_chain = list(cert_chain)
        self.handshake_log: list[Handshake] = []
        self.handshake_errors: list[BaseException] = []
        self._local = threading.local()  # SNI seen by this handler thread
        self.auto_chain_disabled = False
        self._handshake_cond = threading.Condition(self._lock)
        self.context = self._make_context(key, min_version, max_version, client_ca)

    def _make_context(
        self,
        key: PrivateKey,
        min_version: ssl.TLSVersion | None,
        max_version: ssl.TLSVersion | None,
        client_ca: Sequence[x509.Certificate] | None,
    ) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if max_version in _LEGACY_VERSIONS and min_version is None:
            # The system openssl.cnf may set MinProtocol = TLSv1.2.
            min_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        with warnings.catch_warnings():
            # Legacy versions are requested on purpose; don't warn about them.
            warnings.simplefilter("ignore", DeprecationWarning)
            if {min_version, max_version} & _LEGACY_VERSIONS:
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            if min_version is not None:
                ctx.minimum_version = min_version
            if max_version is not None:
                ctx.maximum_version = max_version
        # No TLS 1.3 session tickets: the server would write them after the
        # client's Finished, racing with clients that close right away.
        ctx.num_tickets = 0
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # load_cert_chain only reads files; they live only for this call.
        with tempfile.TemporaryDirectory(prefix="tlsserver-") as tmp:
            chain_file = Path(tmp, "chain.pem")
            key_file = Path(tmp, "key.pem")
            chain_file.write_bytes(_pem(self.cert_chain))
            key_file.write_bytes(key_pem)
            ctx.load_cert_chain(chain_file, key_file)
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            if client_ca:
                ctx.load_verify_locations(cadata=_pem(client_ca).decode("ascii"))
                if len(self.cert_chain) == 1:
                    self.auto_chain_disabled = _disable_auto_chain(ctx)
        ctx.sni_callback = self._on_sni
        return ctx

    def _on_sni(
        self,
        sock: ssl.SSLSocket | ssl.SSLObject,
        server_name: str | None,
        ctx: ssl.SSLContext,
    ) -> None:
        # Runs inside wrap_socket(), i.e. on the connection's handler thread.
        self._local.sni = server_name

    @property
    def handshakes(self) -> int:
        """Number of handshakes completed so far."""
        with self._lock:
            return len(self.handshake_log)

    def wait_handshakes(self, count: int, timeout: float = 5.0) -> bool:
        """Block until ``count`` handshakes completed; False on timeout.

        The client's side of a handshake can finish slightly before the
        server's, so assert on ``handshakes`` through this.
        """
        with self._handshake_cond:
            return self._handshake_cond.wait_for(lambda: len(self.handshake_log) >= count, timeout=timeout)

    def handle(self, conn: socket.socket) -> None:
        self._local.sni = None
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            with self._lock:
                self.handshake_errors.append(exc)
            return
        with tls:
            cipher = tls.cipher()
            sni: str | None = getattr(self._local, "sni", None)
            record = Handshake(
                version=tls.version(),
                cipher=cipher[0] if cipher else None,
                server_name=sni,
                client_cert_der=tls.getpeercert(binary_form=True),
            )
            with self._handshake_cond:
                self.handshake_log.append(record)
                self._handshake_cond.notify_all()
            if self._drain(tls):
                # Answer the client's close_notify (a peer that just vanished
                # makes this fail, which is fine).
                try:
                    tls.settimeout(0.5)
                    tls.unwrap()
                except (OSError, ValueError):
                    pass


# --------------------------------------------------------------------------
# Non-TLS / misbehaving peers
# --------------------------------------------------------------------------


class PlainTextServer(_ThreadedServer):
    """Accepts, sends ``banner`` and then reads and discards: not TLS at all."""

    def __init__(self, banner: bytes = b"220 hello plain text\r\n", *, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.banner = banner

    def handle(self, conn: socket.socket) -> None:
        if self.banner:
            conn.sendall(self.banner)
        self._drain(conn)


class Tarpit(PlainTextServer):
    """Accepts and never sends a byte; holds each connection until shutdown
    (or until the client closes it)."""

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        super().__init__(b"", host=host)


class ResetServer(_ThreadedServer):
    """Accepts, then aborts the connection with a TCP RST (SO_LINGER 0).

    With ``wait_for_data`` it first waits (up to 5 s) for the client's first
    bytes, e.g. a ClientHello, like a middlebox that resets TLS.
    """

    def __init__(self, *, host: str = "127.0.0.1", wait_for_data: bool = False) -> None:
        super().__init__(host)
        self.wait_for_data = wait_for_data

    def handle(self, conn: socket.socket) -> None:
        if self.wait_for_data:
            with contextlib.suppress(OSError):
                conn.recv(65536)
        _rst_close(conn)


# --------------------------------------------------------------------------
# Ports nobody answers properly
# --------------------------------------------------------------------------


class ClosedPort(_Endpoint):
    """An address where nothing listens: connects are refused (RST).

    The port stays *bound* (but not listening) for the lifetime of the
    context, so no other socket can grab it and a client can never be handed
    it as its own ephemeral port; the kernel still answers SYNs with RST.
    """

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._sock: socket.socket | None = None

    def start(self) -> None:
        self._sock = socket.socket(_family(self.host), socket.SOCK_STREAM)
        self._sock.bind((self.host, 0))
        self.port = self._sock.getsockname()[1]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


class Blackhole(_Endpoint):
    """A port whose connects hang (SYNs silently dropped) until timeout.

    How: a listening socket with ``listen(0)`` that never accepts.  On Linux
    the accept queue counts as full once it holds more than ``backlog``
    entries, so with backlog 0 exactly one connection completes and sits in
    the queue.  We complete that one ourselves ("fillers", non-blocking
    connects) and keep connecting until one does *not* complete within
    `_FILL_PROBE` seconds: that proves the queue is full.  From then on the
    kernel drops every new SYN on the floor (it does not RST), so a client's
    connect() stays in SYN_SENT, retransmitting, until its own timeout.
    """

    _FILL_PROBE = 0.1
    _MAX_FILLERS = 8

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.fillers: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket(_family(self.host), socket.SOCK_STREAM)
        self._listener = listener
        listener.bind((self.host, 0))
        listener.listen(0)
        self.port = listener.getsockname()[1]
        target = listener.getsockname()
        for _ in range(self._MAX_FILLERS):
            filler = socket.socket(_family(self.host), socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(target)
            _, writable, _ = select.select([], [filler], [], self._FILL_PROBE)
            if not writable:
                filler.close()  # still in SYN_SENT: the queue is full
                return
            if filler.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                filler.close()
                break
            self.fillers.append(filler)
        raise RuntimeError(f"Blackhole: accept queue did not fill after {len(self.fillers)} connects")

    def close(self) -> None:
        for filler in self.fillers:
            filler.close()
        self.fillers.clear()
        if self._listener is not None:
            self._listener.close()


# --------------------------------------------------------------------------
# openssl s_server
# --------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a child politely, kill it after 5 s; a no-op if it already exited."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _free_port(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class OpensslServer(_Endpoint):
    """The real ``openssl s_server -www`` as a subprocess.

    ``-www`` answers ``GET /`` with a status page and, unlike the default
    echo mode, never reads stdin (which is /dev/null here).  Output goes to a
    temporary log file (see ``log()``), never to a pipe that could fill up.
    The port is picked by binding port 0 and closing; if s_server dies at
    start (e.g. the port was taken meanwhile) we retry with a new port.
    """

    READY_TIMEOUT = 10.0
    _START_ATTEMPTS = 3

    def __init__(
        self,
        cert_pem_path: str | os.PathLike[str],
        key_pem_path: str | os.PathLike[str],
        chain_pem_path: str | os.PathLike[str] | None = None,
        *,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
        openssl: str = "openssl",
    ) -> None:
        self.host = host
        self.port = 0
        self.cert_pem_path = Path(cert_pem_path)
        self.key_pem_path = Path(key_pem_path)
        self.chain_pem_path = None if chain_pem_path is None else Path(chain_pem_path)
        self.extra_args = list(extra_args)
        self.openssl = openssl
        self.process: subprocess.Popen[bytes] | None = None
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None

    def command(self, port: int) -> list[str]:
        binary = shutil.which(self.openssl) or self.openssl
        cmd = [
            binary,
            "s_server",
            "-accept",
            format_address(self.host, port),
            "-cert",
            str(self.cert_pem_path),
            "-key",
            str(self.key_pem_path),
            "-www",
        ]
        if self.chain_pem_path is not None:
            cmd += ["-cert_chain", str(self.chain_pem_path)]
        return cmd + self.extra_args

    def log(self) -> str:
        """Everything s_server printed so far (stdout and stderr)."""
        if self._log_dir is None:
            return ""
        path = Path(self._log_dir.name, "s_server.log")
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        self._log_dir = tempfile.TemporaryDirectory(prefix="s_server-")
        log_path = Path(self._log_dir.name, "s_server.log")
        for _ in range(self._START_ATTEMPTS):
            self.port = _free_port(self.host)
            with open(log_path, "ab") as log:
                self.process = subprocess.Popen(
                    self.command(self.port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready():
                return
            self._stop_process()
        raise RuntimeError(f"openssl s_server did not come up:\n{self.log()}")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self.READY_TIMEOUT
        for _ in range(1000):
            if self.process.poll() is not None or time.monotonic() > deadline:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def _stop_process(self) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            stop_process(proc)

    def close(self) -> None:
        self._stop_process()
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None
