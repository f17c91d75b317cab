"""Failure stages and reasons.

Every way a probe can fail is a `ProbeError` carrying the stage it failed in and a short, stable
reason. Code that talks to the network raises these (or lets OS/TLS errors escape); the single
function `classify` turns whatever escaped into a (stage, reason) pair, so the mapping from errors to
label values lives in one place.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import socket

from OpenSSL import SSL


class Stage(str, enum.Enum):
    """Where a probe stopped. The values are the `stage` label values."""

    SETUP = "setup"
    DNS = "dns"
    CONNECT = "connect"
    STARTTLS = "starttls"
    HANDSHAKE = "handshake"
    VERIFY = "verify"


class ProbeError(Exception):
    """A probe failure with a known stage and reason."""

    def __init__(self, stage: Stage, reason: str, detail: str = "") -> None:
        super().__init__(f"{stage.value}: {reason}" + (f": {detail}" if detail else ""))
        self.stage = stage
        self.reason = reason
        self.detail = detail


class ConfigError(Exception):
    """The configuration is invalid; the message names file, line, YAML path and expectation."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


# OS errors by errno, the same table for every stage that touches a socket.
_ERRNO_REASONS = {
    errno.ECONNREFUSED: "refused",
    errno.ECONNRESET: "reset",
    errno.EPIPE: "reset",
    errno.ETIMEDOUT: "timeout",
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETUNREACH: "unreachable",
    errno.EADDRNOTAVAIL: "unreachable",
    errno.EAFNOSUPPORT: "unreachable",
}

_GAI_REASONS = {
    socket.EAI_NONAME: "nxdomain",
    socket.EAI_AGAIN: "temporary_failure",
}


# OpenSSL error reason strings (lower-cased substrings) seen during a handshake, first match wins.
_TLS_REASONS = (
    ("certificate required", "client_cert_required"),
    ("alert bad certificate", "client_cert_rejected"),
    ("alert unknown ca", "client_cert_rejected"),
    ("alert certificate", "client_cert_rejected"),
    ("alert handshake failure", "handshake_failure"),
    ("protocol version", "protocol_version"),
    ("unsupported protocol", "protocol_version"),
    ("no protocols available", "protocol_version"),
    ("no shared cipher", "no_shared_cipher"),
    ("no ciphers available", "no_shared_cipher"),
    ("insufficient security", "no_shared_cipher"),
    ("wrong version number", "not_tls"),
    ("packet length too long", "not_tls"),
    ("record layer failure", "not_tls"),
    ("http request", "not_tls"),
    ("unknown protocol", "not_tls"),
    ("record length", "not_tls"),
    ("unexpected eof", "closed"),
)

# X.509 verification error codes (OpenSSL's X509_V_ERR_*) to reasons; the order is the
# priority when a chain has several problems: the most urgent to act on comes first.
VERIFY_REASONS: dict[int, str] = {
    10: "expired",  # CERT_HAS_EXPIRED
    9: "not_yet_valid",  # CERT_NOT_YET_VALID
    23: "revoked",  # CERT_REVOKED
    18: "self_signed",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "unknown_ca",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "unknown_ca",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    2: "unknown_ca",  # UNABLE_TO_GET_ISSUER_CERT
    21: "unknown_ca",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE (incomplete chain)
    62: "hostname_mismatch",  # HOSTNAME_MISMATCH
    64: "hostname_mismatch",  # IP_ADDRESS_MISMATCH
    7: "bad_signature",  # CERT_SIGNATURE_FAILURE
    24: "invalid_ca",  # INVALID_CA
    26: "invalid_purpose",  # INVALID_PURPOSE
    25: "path_length_exceeded",  # PATH_LENGTH_EXCEEDED
    22: "chain_too_long",  # CERT_CHAIN_TOO_LONG
}
_VERIFY_PRIORITY = {code: rank for rank, code in enumerate(VERIFY_REASONS)}


def verify_reason(codes: list[int] | tuple[int, ...]) -> str:
    """The reason label for a set of verification error codes: 'ok' when there are none."""
    if not codes:
        return "ok"
    worst = min(codes, key=lambda code: _VERIFY_PRIORITY.get(code, len(_VERIFY_PRIORITY)))
    return VERIFY_REASONS.get(worst, "invalid")


def tls_reason(message: str) -> str:
    """The reason label for an OpenSSL handshake error message."""
    lowered = message.lower()
    return next((reason for needle, reason in _TLS_REASONS if needle in lowered), "tls_error")


def classify(stage: Stage, exc: BaseException) -> tuple[Stage, str]:
    """Map an exception raised during `stage` to the (stage, reason) pair that labels it."""
    if isinstance(exc, ProbeError):
        return exc.stage, exc.reason
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return stage, "timeout"
    if isinstance(exc, SSL.Error):
        return stage, tls_reason(str(exc))
    if isinstance(exc, socket.gaierror):
        return Stage.DNS, _GAI_REASONS.get(exc.errno or 0, "resolve_failed")
    if isinstance(exc, OSError) and exc.errno in _ERRNO_REASONS:
        return stage, _ERRNO_REASONS[exc.errno]
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return stage, "reset"
    return stage, "error"
