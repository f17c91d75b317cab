# Strategy: build throw-away X.509 PKIs in memory with `cryptography` so tests
# can describe exactly the certificates they need (expired, wrong name, missing
# intermediate, odd subject strings, ...) instead of shipping fixture files.
# Everything here is pure except the explicit `write_pem` / `write_key`
# helpers.  EC P-256 keys are cheap to generate; RSA-2048 keys are not, so they
# come from a small per-process pool that is reused round-robin.
from __future__ import annotations

import ipaddress
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

__all__ = [
    "Issued",
    "Pki",
    "PrivateKey",
    "Signer",
    "generate_key",
    "make_ca",
    "make_leaf",
    "write_key",
    "write_pem",
]

# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------

_RSA_POOL_SIZE = 4
_rsa_pool: list[rsa.RSAPrivateKey] = []
_rsa_cursor = itertools.count()
_rsa_lock = threading.Lock()


def generate_key(key_type: str = "ec") -> PrivateKey:
    """Return a fresh P-256 key, or an RSA-2048 key from the per-process pool.

    The pool holds up to four RSA keys handed out round-robin, so a root, an
    intermediate and a leaf built in a row still get distinct keys.
    """
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        with _rsa_lock:
            slot = next(_rsa_cursor) % _RSA_POOL_SIZE
            if slot >= len(_rsa_pool):
                _rsa_pool.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
            return _rsa_pool[slot]
    raise ValueError(f"unknown key_type {key_type!r} (expected 'ec' or 'rsa')")


# --------------------------------------------------------------------------
# Issued certificate + key
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate together with its private key."""

    cert: x509.Certificate
    key: PrivateKey = field(repr=False)

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def subject_cn(self) -> str:
        attrs = self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else ""


# Who signs a `Pki.leaf`: one of the Pki's CAs, the leaf itself, or any CA.
Signer: TypeAlias = Literal["intermediate", "root", "self"] | Issued


def _as_cert(item: Issued | x509.Certificate) -> x509.Certificate:
    return item.cert if isinstance(item, Issued) else item


def _ski(key: PrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _aki(issuer_key: PrivateKey) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(issuer_key))


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    """A KeyUsage extension with the named bits set and every other one clear."""
    bits = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
            "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip
    return x509.KeyUsage(**{bit: allowed.get(bit, False) for bit in bits})


def _random_serial() -> int:
    return x509.random_serial_number()


# --------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------


def make_ca(
    cn: str,
    *,
    not_before: datetime,
    not_after: datetime,
    issuer: Issued | None = None,
    key_type: str = "ec",
) -> Issued:
    """A root CA (``issuer is None``) or an intermediate signed by ``issuer``."""
    key = generate_key(key_type)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "textfile-probe tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    signing_key = key if issuer is None else issuer.key
    issuer_name = subject if issuer is None else issuer.cert.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(_random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(_ski(key), critical=False)
        .add_extension(_aki(signing_key), critical=False)
    )
    return Issued(builder.sign(signing_key, hashes.SHA256()), key)


def make_leaf(
    issuer: Issued | None,
    *,
    cn: str,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    not_before: datetime,
    not_after: datetime,
    key_type: str = "ec",
    client: bool = False,
    serial: int | None = None,
    subject_extra: str | None = None,
    both_usages: bool = False,
) -> Issued:
    """An end-entity certificate; ``issuer is None`` makes it self-signed.

    Its extended key usage is serverAuth, clientAuth with ``client``, or both with ``both_usages``
    (a Cassandra node's certificate serves and authenticates internode connections).

    ``subject_extra`` is stored verbatim (quotes, backslashes, newlines, ...)
    as the subject's O attribute, for tests of label/escaping code.
    """
    key = generate_key(key_type)
    attrs: list[x509.NameAttribute[str]] = []
    if subject_extra is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject_extra))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    subject = x509.Name(attrs)
    signing_key = key if issuer is None else issuer.key
    issuer_name = subject if issuer is None else issuer.cert.subject
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(_random_serial() if serial is None else serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=is_rsa), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                if both_usages
                else [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(_ski(key), critical=False)
        .add_extension(_aki(signing_key), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(signing_key, hashes.SHA256()), key)


# --------------------------------------------------------------------------
# File helpers (the only I/O in this module)
# --------------------------------------------------------------------------


def write_pem(path: str | Path, *items: Issued | x509.Certificate) -> Path:
    """Write the certificates of ``items`` (in order) as one PEM bundle."""
    out = Path(path)
    out.write_bytes(b"".join(_as_cert(i).public_bytes(serialization.Encoding.PEM) for i in items))
    return out


def write_key(path: str | Path, issued: Issued) -> Path:
    """Write the unencrypted PKCS#8 PEM private key of ``issued``."""
    out = Path(path)
    out.write_bytes(issued.key_pem())
    return out


# --------------------------------------------------------------------------
# Scenario helper
# --------------------------------------------------------------------------


class Pki:
    """A root CA, an intermediate under it, and a reference time ``now``.

    ``pki.leaf()`` gives a server certificate for localhost/127.0.0.1/::1
    signed by the intermediate, valid from a day ago for 90 days; every
    knob of `make_leaf` can be overridden, validity either as absolute
    datetimes or as ``valid_for`` (from ``now`` to expiry; negative means
    already expired) and ``age`` (how long before ``now``/expiry it started).
    """

    def __init__(self, now: datetime | None = None, *, key_type: str = "ec") -> None:
        ref = datetime.now(timezone.utc) if now is None else now
        if ref.tzinfo is None:
            ref = ref.replace(tzinfo=timezone.utc)
        # Certificates have one-second resolution; keep `now` comparable.
        self.now: datetime = ref.replace(microsecond=0)
        self.root: Issued = make_ca(
            "textfile-probe Test Root CA",
            not_before=self.now - timedelta(days=3650),
            not_after=self.now + timedelta(days=3650),
            key_type=key_type,
        )
        self.intermediate: Issued = make_ca(
            "textfile-probe Test Intermediate CA",
            not_before=self.now - timedelta(days=1825),
            not_after=self.now + timedelta(days=1825),
            issuer=self.root,
            key_type=key_type,
        )

    @property
    def cas(self) -> tuple[Issued, Issued]:
        return (self.intermediate, self.root)

    def leaf(
        self,
        cn: str = "localhost",
        *,
        dns: Sequence[str] = ("localhost",),
        ips: Sequence[str] = ("127.0.0.1", "::1"),
        valid_for: timedelta = timedelta(days=90),
        age: timedelta = timedelta(days=1),
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        signer: Signer = "intermediate",
        key_type: str = "ec",
        client: bool = False,
        serial: int | None = None,
        subject_extra: str | None = None,
        both_usages: bool = False,
    ) -> Issued:
        """A leaf certificate; see the class docstring for the defaults."""
        expiry = self.now + valid_for if not_after is None else not_after
        start = min(self.now, expiry) - age if not_before is None else not_before
        issuer: Issued | None
        if signer == "intermediate":
            issuer = self.intermediate
        elif signer == "root":
            issuer = self.root
        elif signer == "self":
            issuer = None
        elif isinstance(signer, Issued):
            issuer = signer
        else:
            raise ValueError(f"unknown signer {signer!r}")
        return make_leaf(
            issuer,
            cn=cn,
            dns=dns,
            ips=ips,
            not_before=start,
            not_after=expiry,
            key_type=key_type,
            client=client,
            serial=serial,
            subject_extra=subject_extra,
            both_usages=both_usages,
        )

    def chain_for(self, leaf: Issued | x509.Certificate, *, include_root: bool = False) -> list[x509.Certificate]:
        """``leaf`` followed by the CAs of this Pki that issued it, bottom-up.

        The root is left out unless ``include_root`` (servers normally do not
        send it).  A leaf issued by anything else yields just ``[leaf]``.
        """
        chain = [_as_cert(leaf)]
        by_subject = {ca.cert.subject: ca.cert for ca in self.cas}
        for _ in range(len(by_subject)):
            current = chain[-1]
            parent = by_subject.get(current.issuer)
            if parent is None or parent in chain or current.issuer == current.subject:
                break
            chain.append(parent)
        if not include_root and len(chain) > 1 and chain[-1] == self.root.cert:
            chain.pop()
        return chain

    def trust_pem(self) -> bytes:
        """The root CA as PEM, for ``cadata=`` or a CA bundle file."""
        return self.root.cert_pem()
