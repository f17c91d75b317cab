"""One probe of one target: resolve, connect, handshake, verify. Never raises.

`probe(target)` is the only entry point. It times each phase, keeps whatever it learned before a
failure (a chain received before verification failed is still reported), and turns any error into
a (stage, reason) pair through `errors.classify`, so callers only ever see a `ProbeResult`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from dataclasses import dataclass, field

from . import starttls, tls
from .certs import CertInfo, describe
from .config import Target, TlsVersion
from .errors import ProbeError, Stage, classify, verify_reason

# After the handshake, how long to wait for a late TLS 1.3 rejection of our client certificate.
CONFIRM_WAIT = 1.0

_FAMILIES = {"ip4": socket.AF_INET, "ip6": socket.AF_INET6, "auto": socket.AF_UNSPEC}


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Everything one probe learned. `stage`/`reason` are None on success."""

    target: Target
    success: bool
    duration: float
    stage: Stage | None = None
    reason: str | None = None
    detail: str = ""
    phases: tuple[tuple[str, float], ...] = ()  # ("dns"|"connect"|"handshake", seconds)
    ip_protocol: int | None = None
    tls_version: TlsVersion | None = None
    cipher: str | None = None
    peer_chain: tuple[CertInfo, ...] = ()
    verified_chain: tuple[CertInfo, ...] = ()
    verify_result: str | None = None  # "ok" or a verification reason; None if no chain seen


@dataclass
class _Progress:
    """What a probe has learned so far; survives a timeout or an error mid-way."""

    stage: Stage = Stage.DNS
    phases: dict[str, float] = field(default_factory=dict)
    ip_protocol: int | None = None
    handshake: tls.Handshake | None = None
    confirming: bool = False  # the handshake is done; a timeout now is not a failure


async def probe(target: Target) -> ProbeResult:
    """Probe one target within its timeout; the result says how far it got and why it stopped."""
    start = time.perf_counter()
    progress = _Progress()
    failure: tuple[Stage, str, str] | None = None
    try:
        await asyncio.wait_for(_run(target, progress), target.timeout)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if progress.handshake is None or progress.stage is not Stage.HANDSHAKE or not _is_timeout(exc):
            stage, reason = classify(progress.stage, exc)
            failure = (stage, reason, str(exc) if not isinstance(exc, ProbeError) else exc.detail)
    return _result(target, progress, failure, time.perf_counter() - start)


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError | asyncio.TimeoutError)


async def _run(target: Target, progress: _Progress) -> None:
    progress.stage = Stage.SETUP
    ctx = tls.context_for(tls.TlsSettings.of(target))
    loop = asyncio.get_running_loop()
    progress.stage = Stage.DNS

    started = time.perf_counter()
    family, sockaddr = await _resolve(loop, target)
    progress.phases["dns"] = time.perf_counter() - started
    progress.ip_protocol = 6 if family == socket.AF_INET6 else 4

    progress.stage = Stage.CONNECT
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        await loop.sock_connect(sock, sockaddr)
        progress.phases["connect"] = time.perf_counter() - started

        early = b""
        if target.starttls != "none":
            progress.stage = Stage.STARTTLS
            started = time.perf_counter()
            early = await starttls.negotiate(sock, target.starttls, target.server_name)
            progress.phases["starttls"] = time.perf_counter() - started

        progress.stage = Stage.HANDSHAKE
        have_cert = target.client_cert is not None or target.client_keystore is not None
        conn = tls.new_connection(ctx, target.server_name, have_cert, target.verify_hostname)
        started = time.perf_counter()
        try:
            progress.handshake = await tls.handshake(sock, conn, early)
        except tls.HandshakeError as exc:
            progress.handshake = exc.partial
            raise
        progress.phases["handshake"] = time.perf_counter() - started
        progress.confirming = True
        await tls.confirm(sock, conn, CONFIRM_WAIT)


async def _resolve(
    loop: asyncio.AbstractEventLoop, target: Target
) -> tuple[int, tuple[str, int] | tuple[str, int, int, int]]:
    """Resolve the target's host; IP literals skip the resolver."""
    wanted = _FAMILIES[target.ip_protocol]
    family = _literal_family(target.host)
    if family is not None:
        if wanted not in (socket.AF_UNSPEC, family):
            raise ProbeError(Stage.DNS, "no_address", f"{target.host} is not an {target.ip_protocol} address")
        return family, ((target.host, target.port) if family == socket.AF_INET else (target.host, target.port, 0, 0))
    infos = await loop.getaddrinfo(target.host, target.port, family=wanted, type=socket.SOCK_STREAM)
    if not infos:
        raise ProbeError(Stage.DNS, "no_address", target.host)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr  # type: ignore[return-value]


@functools.lru_cache(maxsize=65536)
def _literal_family(host: str) -> int | None:
    """AF_INET/AF_INET6 for an IP literal (no zone), None for a name the resolver must look up."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _result(
    target: Target, progress: _Progress, failure: tuple[Stage, str, str] | None, duration: float
) -> ProbeResult:
    hs = progress.handshake
    peer: tuple[CertInfo, ...] = ()
    verified: tuple[CertInfo, ...] = ()
    verify = None
    if hs is not None:
        try:
            peer = tuple(describe(der) for der in hs.peer_chain)
            verified = tuple(describe(der) for der in hs.verified_chain)
        except ValueError as exc:  # a certificate OpenSSL accepted but cryptography cannot parse
            failure = failure or (Stage.HANDSHAKE, "bad_certificate", str(exc))
        verify = verify_reason(hs.verify_errors) if hs.peer_chain else "no_certificate"
        if failure is None and target.verify and verify != "ok":
            failure = (Stage.VERIFY, verify, "")
    stage, reason, detail = failure if failure else (None, None, "")
    return ProbeResult(
        target=target,
        success=failure is None,
        duration=duration,
        stage=stage,
        reason=reason,
        detail=detail,
        phases=tuple(progress.phases.items()),
        ip_protocol=progress.ip_protocol,
        tls_version=hs.version if hs else None,
        cipher=hs.cipher if hs else None,
        peer_chain=peer,
        verified_chain=verified,
        verify_result=verify,
    )
