"""Pure functions over certificates: what we export and print about each one.

Certificates arrive as DER. `describe` turns one into a `CertInfo` (cached by DER, since thousands
of targets often serve the same few certificates); the chain helpers compute blackbox_exporter's
expiry semantics over tuples of CertInfo. Nothing here does I/O.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True, slots=True)
class CertInfo:
    """The facts about one certificate that metrics and the human view use."""

    fingerprint_sha256: str  # lowercase hex of sha256(DER)
    subject: str  # RFC 4514, as blackbox_exporter prints it
    issuer: str
    subject_cn: str
    issuer_cn: str
    serial: str  # lowercase hex
    not_before: float  # Unix seconds
    not_after: float
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    key: str  # e.g. "EC P-256", "RSA 2048"
    signature_algorithm: str

    @property
    def self_issued(self) -> bool:
        return self.subject == self.issuer


def _common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def _key_description(cert: x509.Certificate) -> str:
    try:
        key = cert.public_key()
    except (ValueError, TypeError):
        return "unknown"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {_CURVE_NAMES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size}"
    return type(key).__name__


_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def _names(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return (), ()
    dns = tuple(str(n) for n in san.get_values_for_type(x509.DNSName))
    ips = tuple(str(n) for n in san.get_values_for_type(x509.IPAddress))
    return dns, ips


def _signature_algorithm(cert: x509.Certificate) -> str:
    oid = cert.signature_algorithm_oid
    return getattr(oid, "_name", None) or oid.dotted_string


@functools.lru_cache(maxsize=4096)
def describe(der: bytes) -> CertInfo:
    """Parse DER into CertInfo; raises ValueError on a certificate cryptography cannot read."""
    cert = x509.load_der_x509_certificate(der)
    dns, ips = _names(cert)
    return CertInfo(
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        subject_cn=_common_name(cert.subject),
        issuer_cn=_common_name(cert.issuer),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        dns_names=dns,
        ip_addresses=ips,
        key=_key_description(cert),
        signature_algorithm=_signature_algorithm(cert),
    )


def earliest_expiry(chain: Sequence[CertInfo]) -> float | None:
    """Earliest notAfter over the certificates the server sent (probe_ssl_earliest_cert_expiry)."""
    return min((c.not_after for c in chain), default=None)


def chain_expiry(verified: Sequence[CertInfo]) -> float | None:
    """Earliest notAfter of the verified chain, trust anchor included; None if nothing verified.

    blackbox_exporter takes the maximum of this over every verified chain Go found; OpenSSL
    builds exactly one chain, so the maximum is that chain's value.
    """
    return min((c.not_after for c in verified), default=None)
