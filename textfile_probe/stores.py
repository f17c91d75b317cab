"""Certificate files and keystores as one shape: bytes and a password in, certificates out. No I/O.

Strategy: the format is sniffed from the bytes (a keystore's magic number, a PEM armour line, or
DER that parses as a certificate or as PKCS#12), so a file named `.crt` that holds DER still
reads. Every format turns into a flat list of `StoreCert`: which entry (alias), where in that
entry's chain (position), and what kind of entry it is. Failures are `StoreError` with one of the
read reasons of `READ_REASONS`, the label files.py and the metrics use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from . import jks

FORMATS = ("auto", "pem", "der", "pkcs12", "jks", "jceks")

# A file read ends in "ok" or one of these.
READ_REASONS = (
    "not_found",
    "permission_denied",
    "bad_password",
    "password_unavailable",  # password_file unreadable or password_env unset
    "corrupt",
    "unsupported_format",
    "too_large",
)

KEY_ENTRY, TRUSTED_ENTRY, CERT_ENTRY = "private_key", "trusted_cert", "certificate"


class StoreError(Exception):
    """A file could not be read as a certificate store; `reason` is one of READ_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class StoreCert:
    alias: str  # the entry's alias; "" where the format has none (PEM, DER)
    entry: str  # KEY_ENTRY, TRUSTED_ENTRY or CERT_ENTRY
    position: int  # place in the entry's chain (leaf is 0); in a PEM bundle, place in the file
    der: bytes


@dataclass(frozen=True, slots=True)
class Store:
    format: str  # one of FORMATS other than "auto"
    certs: tuple[StoreCert, ...]

    def leaves(self) -> tuple[bytes, ...]:
        """The certificates a server using this file would present: the leaf of every private-key
        entry, or, in a file with no key entries (a PEM or DER certificate), its first certificate."""
        keyed = tuple(c.der for c in self.certs if c.entry == KEY_ENTRY and c.position == 0)
        return keyed or tuple(c.der for c in self.certs[:1])


def sniff(data: bytes) -> str:
    """The format the bytes look like; "" when they look like none we know."""
    if jks.is_keystore(data):
        return "jks" if data[:4] == b"\xfe\xed\xfe\xed" else "jceks"
    if b"-----BEGIN" in data[:65536]:
        return "pem"
    if data[:1] == b"\x30":
        try:
            x509.load_der_x509_certificate(data)
            return "der"
        except ValueError:
            return "pkcs12"
    return ""


def read(data: bytes, password: str | None, fmt: str = "auto") -> Store:
    """Parse a certificate file or keystore; raise StoreError with a read reason."""
    kind = sniff(data) if fmt == "auto" else fmt
    reader = _READERS.get(kind)  # "" (sniffed as nothing we know) has none
    if reader is None:
        raise StoreError("unsupported_format", "not PEM, DER, PKCS#12, JKS or JCEKS")
    return Store(kind, tuple(reader(data, password)))


def _pem_certs(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise StoreError("unsupported_format", "a PEM file without any CERTIFICATE block")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise StoreError("corrupt", f"a CERTIFICATE block does not parse: {exc}") from None


def _pem(data: bytes, _password: str | None) -> list[StoreCert]:
    return [StoreCert("", CERT_ENTRY, i, _der_of(cert)) for i, cert in enumerate(_pem_certs(data))]


def _der(data: bytes, _password: str | None) -> list[StoreCert]:
    try:
        x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise StoreError("corrupt", f"not a DER certificate: {exc}") from None
    return [StoreCert("", CERT_ENTRY, 0, data)]


def _pkcs12(data: bytes, password: str | None) -> list[StoreCert]:
    """Entries as Java sees them (see `_pkcs12_entries`)."""
    alias, chain, trusted, loose = _pkcs12_entries(_load_pkcs12(data, password))
    out = [StoreCert(alias, KEY_ENTRY, i, _der_of(cert)) for i, cert in enumerate(chain)]
    out += [StoreCert(name, TRUSTED_ENTRY, 0, _der_of(cert)) for name, cert in trusted]
    out += [StoreCert("", CERT_ENTRY, i, _der_of(cert)) for i, cert in enumerate(loose)]
    return out


def _pkcs12_entries(
    bundle: pkcs12.PKCS12KeyAndCertificates,
) -> tuple[str, list[x509.Certificate], list[tuple[str, x509.Certificate]], list[x509.Certificate]]:
    """(key alias, key chain, named trusted certificates, the rest). keytool names a trusted-certificate
    bag by its alias and a chain certificate by its subject DN, and Java rebuilds a key's chain by
    issuer name from every certificate in the file (trusted ones too), so a chain is [leaf, its
    issuer, ...] found that way."""
    trusted: list[tuple[str, x509.Certificate]] = []
    loose: list[x509.Certificate] = []
    for extra in bundle.additional_certs:
        name, cert = _name(extra.friendly_name), extra.certificate
        if name and name != cert.subject.rfc4514_string():
            trusted.append((name, cert))
        else:
            loose.append(cert)
    if bundle.cert is None or bundle.key is None:
        return "", [], trusted, ([bundle.cert.certificate] if bundle.cert else []) + loose
    chain = _issuer_walk(bundle.cert.certificate, loose, [cert for _, cert in trusted])
    return _name(bundle.cert.friendly_name), chain, trusted, [cert for cert in loose if cert not in chain]


def _issuer_walk(leaf: x509.Certificate, *pools: list[x509.Certificate]) -> list[x509.Certificate]:
    chain = [leaf]
    while chain[-1].issuer != chain[-1].subject:
        issuer = next((c for pool in pools for c in pool if c.subject == chain[-1].issuer and c not in chain), None)
        if issuer is None:
            break
        chain.append(issuer)
    return chain


def _load_pkcs12(data: bytes, password: str | None) -> pkcs12.PKCS12KeyAndCertificates:
    secret = None if password is None else password.encode()
    try:
        return pkcs12.load_pkcs12(data, secret)
    except ValueError as exc:
        # cryptography says "Invalid password or PKCS12 data" when the structure parsed but the
        # MAC or a decryption failed, and "Could not deserialize PKCS12 data" when it did not parse.
        if "Invalid password" in str(exc):
            detail = "a password is needed" if password is None else "the password is wrong"
            raise StoreError("bad_password", detail) from None
        raise StoreError("corrupt", f"not a PKCS#12 file: {exc}") from None
    except Exception as exc:  # unsupported algorithms surface as other errors (e.g. UnsupportedAlgorithm)
        raise StoreError("unsupported_format", f"PKCS#12 file not supported: {exc}") from None


def _name(friendly: bytes | None) -> str:
    return "" if friendly is None else friendly.decode("utf-8", errors="replace")


def _der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _keystore(data: bytes, password: str | None) -> list[StoreCert]:
    try:
        _, entries = jks.parse(data, password)
    except jks.JksError as exc:
        raise StoreError(exc.reason, str(exc)) from None
    out: list[StoreCert] = []
    for entry in entries:
        kind = KEY_ENTRY if entry.kind == "key" else TRUSTED_ENTRY
        out.extend(StoreCert(entry.alias, kind, i, der) for i, der in enumerate(entry.chain))
    return out


_READERS = {"pem": _pem, "der": _der, "pkcs12": _pkcs12, "jks": _keystore, "jceks": _keystore}


# -- a client certificate from a store ------------------------------------------------------------

PrivateKey = serialization.SSHCertPrivateKeyTypes  # the union of private key types cryptography loads


@dataclass(frozen=True)
class ClientIdentity:
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]  # leaf first


def identity(data: bytes, password: str | None, fmt: str = "auto", alias: str | None = None) -> ClientIdentity:
    """The private key and chain of the store's key entry (the one named `alias`, else the first)."""
    kind = sniff(data) if fmt == "auto" else fmt
    if kind == "pkcs12":
        bundle = _load_pkcs12(data, password)
        _, chain, _, _ = _pkcs12_entries(bundle)
        if bundle.key is None or not chain:
            raise StoreError("unsupported_format", "the PKCS#12 file holds no private key")
        return ClientIdentity(bundle.key, tuple(chain))  # type: ignore[arg-type]
    if kind in ("jks", "jceks"):
        return _keystore_identity(data, password, alias)
    if kind == "pem":
        return _pem_identity(data, password)
    raise StoreError("unsupported_format", f"a {kind or 'file of unknown format'} holds no private key")


def _keystore_identity(data: bytes, password: str | None, alias: str | None) -> ClientIdentity:
    try:
        _, entries = jks.parse(data, password)
        keys = [e for e in entries if e.kind == "key" and (alias is None or e.alias == alias)]
        if not keys:
            raise StoreError("unsupported_format", "no private-key entry" + (f" named {alias!r}" if alias else ""))
        if password is None:
            raise StoreError("bad_password", "a password is needed to decrypt the private key")
        pkcs8 = jks.decrypt_key(keys[0].protected_key, password)
    except jks.JksError as exc:
        raise StoreError(exc.reason, str(exc)) from None
    key = serialization.load_der_private_key(pkcs8, None)
    return ClientIdentity(key, _certs(keys[0].chain))  # type: ignore[arg-type]


def _pem_identity(data: bytes, password: str | None) -> ClientIdentity:
    if b"PRIVATE KEY-----" not in data:
        raise StoreError("unsupported_format", "the PEM file holds no private key")
    try:
        key = serialization.load_pem_private_key(data, None if password is None else password.encode())
    except (ValueError, TypeError) as exc:
        raise StoreError("bad_password", f"the private key does not load: {exc}") from None
    return ClientIdentity(key, tuple(_pem_certs(data)))  # type: ignore[arg-type]


def _certs(ders: Sequence[bytes]) -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_der_x509_certificate(d) for d in ders)
