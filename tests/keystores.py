# Strategy: make *real* Java keystores for tests of our keystore reader, and an
# independent oracle to check that reader against.  Every JKS / JCEKS / PKCS12
# file below is written by the real `keytool` (Java 17), so it has Java's exact
# layout (PKCS12: PBES2/AES-256 + HmacSHA256 MAC, trusted certificates tagged
# with Oracle's trusted-key-usage bag attribute; JKS/JCEKS: Sun's proprietary
# formats).  Python (`cryptography`) only prepares *inputs*: a throw-away
# PKCS#12 holding the key entry, which `keytool -importkeystore` copies into the
# target store, and PEM files for `keytool -importcert`.  `keytool_list` parses
# `keytool -list -v` so tests can compare our reader with keytool's own view.
#
# Cost: each keytool call starts a JVM (~0.2-0.5 s), so build stores once in a
# module/session fixture; the builders are independent and path-based, so they
# can also run in a thread pool.  Nothing here imports pytest.
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal, NamedTuple, TypeAlias, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from pki import Issued, PrivateKey, write_pem

__all__ = [
    "KEYTOOL",
    "OPENSSL",
    "TRUSTED_ALIAS",
    "Corruption",
    "EntryType",
    "KeytoolEntry",
    "KeytoolError",
    "StoreType",
    "add_secret_key",
    "corrupt",
    "keytool",
    "keytool_list",
    "make_keystore",
    "make_pkcs12",
    "make_truststore_bulk",
    "many_certs",
    "openssl_pkcs12",
    "parse_keytool_list",
    "pem_bundle",
    "sha256_hex",
    "wrong_password",
]

StoreType: TypeAlias = Literal["JKS", "JCEKS", "PKCS12"]
EntryType: TypeAlias = Literal["PrivateKeyEntry", "trustedCertEntry", "SecretKeyEntry"]
Corruption: TypeAlias = Literal["flip", "truncate"]

KEYTOOL: str | None = shutil.which("keytool")
OPENSSL: str | None = shutil.which("openssl")
TIMEOUT = 60.0
# keytool refuses to create a store (or set a key password) shorter than this.
MIN_PASSWORD = 6
# Alias of the i-th `trusted` certificate; keytool lower-cases aliases anyway.
TRUSTED_ALIAS = "ca-{}"
# Quick-starting client JVM, and English output whatever the host locale.
_JVM_FLAGS = (
    "-J-XX:TieredStopAtLevel=1",
    "-J-XX:+UseSerialGC",
    "-J-XX:-UsePerfData",
    "-J-Duser.language=en",
    "-J-Duser.country=US",
)

# --------------------------------------------------------------------------
# Running the tools
# --------------------------------------------------------------------------


class KeytoolError(subprocess.CalledProcessError):
    """A failed keytool/openssl run whose message includes the tool's output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    try:
        # stdin is /dev/null, so a tool asking for a password fails at once.
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=True, stdin=subprocess.DEVNULL, env=env
        )
    except subprocess.CalledProcessError as exc:
        raise KeytoolError(exc.returncode, exc.cmd, exc.stdout, exc.stderr) from None


def keytool(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``keytool args...``; raise `KeytoolError` (a CalledProcessError) on failure."""
    if KEYTOOL is None:
        raise FileNotFoundError("keytool not found on PATH (install a JDK, e.g. openjdk-17-jdk-headless)")
    return _run([KEYTOOL, *_JVM_FLAGS, *args], timeout)


def _openssl(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    if OPENSSL is None:
        raise FileNotFoundError("openssl not found on PATH")
    return _run([OPENSSL, *args], timeout)


def _check_password(password: str, what: str = "store password") -> None:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"keytool needs a {what} of at least {MIN_PASSWORD} characters, got {password!r}")


# --------------------------------------------------------------------------
# Building stores
# --------------------------------------------------------------------------


def _ca_certs(leaf: Issued, chain: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """``chain`` without a leading copy of the leaf (accepts `Pki.chain_for` output)."""
    return list(chain[1:] if chain and chain[0] == leaf.cert else chain)


def _import_key_entry(
    tmp: Path,
    path: Path,
    store_type: StoreType,
    leaf: Issued,
    cas: list[x509.Certificate],
    *,
    alias: str,
    pw: str,
    key_pw: str,
) -> None:
    src = tmp / "source.p12"
    src_pass = "source-password"
    enc = serialization.BestAvailableEncryption(src_pass.encode())
    src.write_bytes(pkcs12.serialize_key_and_certificates(b"source", leaf.key, leaf.cert, cas, enc))
    args = ["-importkeystore", "-noprompt", "-srckeystore", str(src), "-srcstoretype", "PKCS12"]
    args += ["-srcstorepass", src_pass, "-srcalias", "source", "-destalias", alias]
    args += ["-destkeystore", str(path), "-deststoretype", store_type, "-deststorepass", pw]
    if store_type != "PKCS12":  # keytool ignores (and warns about) -destkeypass for PKCS12
        args += ["-destkeypass", key_pw]
    keytool(*args)


def _import_trusted(tmp: Path, path: Path, store_type: StoreType, cert: x509.Certificate, alias: str, pw: str) -> None:
    pem = write_pem(tmp / f"{alias}.pem", cert)
    keytool(
        "-importcert", "-noprompt", "-trustcacerts", "-alias", alias, "-file", str(pem),
        "-keystore", str(path), "-storetype", store_type, "-storepass", pw,
    )  # fmt: skip


def make_keystore(
    path: str | Path,
    store_type: StoreType,
    *,
    password: str,
    leaf: Issued | None = None,
    chain: Sequence[x509.Certificate] = (),
    trusted: Sequence[x509.Certificate] = (),
    key_password: str | None = None,
    alias: str = "node",
) -> Path:
    """Write a fresh ``store_type`` keystore at ``path`` (replacing any file), built by keytool.

    With ``leaf``: one PrivateKeyEntry ``alias`` holding ``leaf.key`` and the chain
    ``leaf.cert`` + ``chain`` (``chain`` may start with the leaf, as `Pki.chain_for`
    returns it).  Each ``trusted[i]`` becomes a trustedCertEntry ``ca-<i>``.
    ``key_password`` (default: ``password``) protects the key entry in JKS/JCEKS;
    PKCS12 as written by keytool has one password only, so a different one is an error.
    The key entry travels through a PKCS#12 file, and Java rebuilds PKCS12 chains
    by issuer name on every load: CAs come out ordered bottom-up, a CA that issued
    nothing in the chain is dropped, and in a PKCS12 target a trusted root of the
    same file is appended to the key entry's chain.
    """
    out = Path(path)
    key_password = password if key_password is None else key_password
    _check_password(password)
    _check_password(key_password, "key password")
    if store_type == "PKCS12" and key_password != password:
        raise ValueError("keytool cannot write a PKCS12 key entry with its own key password")
    if leaf is None and not trusted:
        raise ValueError("nothing to store: give a leaf, trusted certificates, or both")
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="keystores-") as tmp_name:
        tmp = Path(tmp_name)
        if leaf is not None:
            cas = _ca_certs(leaf, chain)
            _import_key_entry(tmp, out, store_type, leaf, cas, alias=alias, pw=password, key_pw=key_password)
        for i, cert in enumerate(trusted):
            _import_trusted(tmp, out, store_type, cert, TRUSTED_ALIAS.format(i), password)
    return out


def make_pkcs12(
    path: str | Path,
    leaf: Issued,
    chain: Sequence[x509.Certificate],
    password: str,
    alias: str = "node",
    trusted: Sequence[x509.Certificate] = (),
) -> Path:
    """A Java 17 PKCS12 keystore made by keytool: see `make_keystore`."""
    return make_keystore(path, "PKCS12", password=password, leaf=leaf, chain=chain, trusted=trusted, alias=alias)


def make_truststore_bulk(
    path: str | Path, store_type: StoreType, certs: Sequence[x509.Certificate], password: str
) -> Path:
    """A truststore of many certificates (aliases ``ca-<i>``) in ONE keytool call.

    `cryptography` writes a Java-style PKCS#12 truststore as the source; keytool's
    ``-importkeystore`` then writes ``path`` itself, so the result has the same layout
    as `make_keystore(trusted=...)` without one JVM start per certificate.
    """
    if not hasattr(pkcs12, "serialize_java_truststore"):  # cryptography < 45: one keytool call per cert
        return make_keystore(path, store_type, password=password, trusted=certs)
    _check_password(password)
    out = Path(path)
    out.unlink(missing_ok=True)
    bags = [pkcs12.PKCS12Certificate(c, TRUSTED_ALIAS.format(i).encode()) for i, c in enumerate(certs)]
    src_pass = "source-password"
    enc = serialization.BestAvailableEncryption(src_pass.encode())
    with tempfile.TemporaryDirectory(prefix="keystores-") as tmp_name:
        src = Path(tmp_name) / "source.p12"
        src.write_bytes(pkcs12.serialize_java_truststore(bags, enc))
        keytool(
            "-importkeystore", "-noprompt", "-srckeystore", str(src), "-srcstoretype", "PKCS12",
            "-srcstorepass", src_pass, "-destkeystore", str(out), "-deststoretype", store_type,
            "-deststorepass", password,
        )  # fmt: skip
    return out


def add_secret_key(
    path: str | Path,
    password: str,
    *,
    alias: str = "secret",
    store_type: StoreType = "JCEKS",
    key_password: str | None = None,
) -> Path:
    """Add an AES-128 SecretKeyEntry ``alias`` (keytool -genseckey) to an existing or new store.

    JCEKS and PKCS12 can hold secret keys; JKS cannot (keytool fails).
    """
    out = Path(path)
    args = ["-genseckey", "-noprompt", "-keyalg", "AES", "-keysize", "128", "-alias", alias]
    args += ["-keystore", str(out), "-storetype", store_type, "-storepass", password]
    if store_type != "PKCS12":
        args += ["-keypass", password if key_password is None else key_password]
    keytool(*args)
    return out


def openssl_pkcs12(
    path: str | Path,
    leaf: Issued,
    chain: Sequence[x509.Certificate],
    password: str,
    *,
    alias: str = "node",
    legacy: bool = False,
) -> Path:
    """A PKCS#12 made by ``openssl pkcs12 -export`` (not Java): CA certs carry no trusted attribute.

    ``legacy=True`` gives the old RC2/3DES + SHA-1 MAC layout many existing files have.
    """
    out = Path(path)
    with tempfile.TemporaryDirectory(prefix="keystores-") as tmp_name:
        tmp = Path(tmp_name)
        key = tmp / "key.pem"
        key.write_bytes(leaf.key_pem())
        cert = write_pem(tmp / "cert.pem", leaf)
        args = ["pkcs12", "-export", "-inkey", str(key), "-in", str(cert), "-name", alias]
        cas = _ca_certs(leaf, chain)
        if cas:
            args += ["-certfile", str(write_pem(tmp / "cas.pem", *cas))]
        args += ["-passout", f"pass:{password}", "-out", str(out)]
        _openssl(*args, *(["-legacy"] if legacy else []))
    return out


# --------------------------------------------------------------------------
# Broken inputs
# --------------------------------------------------------------------------


def corrupt(path: str | Path, dest: str | Path | None = None, *, how: Corruption = "flip") -> Path:
    """Write a damaged copy of ``path`` (default ``<path>.<how>``) and return it.

    ``flip`` inverts one bit in the middle of the file (caught by the JKS/JCEKS
    digest or the PKCS12 MAC); ``truncate`` keeps only the first half.
    """
    src = Path(path)
    out = Path(dest) if dest is not None else src.with_name(f"{src.name}.{how}")
    data = bytearray(src.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        raise ValueError(f"unknown corruption {how!r}")
    out.write_bytes(bytes(data))
    return out


def wrong_password(password: str) -> str:
    """A password that is certainly not ``password`` (a wrong-password case needs no file)."""
    return password + "-wrong"


# --------------------------------------------------------------------------
# PEM bundles
# --------------------------------------------------------------------------


def many_certs(
    n: int,
    *,
    issuer: Issued | None = None,
    now: datetime | None = None,
    prefix: str = "bundle",
) -> list[x509.Certificate]:
    """``n`` distinct certificates, fast: one shared P-256 key, CN ``<prefix>-0000``.., serials 1..n.

    Self-signed unless ``issuer`` is given; valid from a day before ``now`` for a year.
    """
    ref = datetime.now(timezone.utc) if now is None else now
    key: PrivateKey = ec.generate_private_key(ec.SECP256R1())
    signer = key if issuer is None else issuer.key
    certs = []
    for i in range(n):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{prefix}-{i:04d}")])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name if issuer is None else issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(i + 1)
            .not_valid_before(ref - timedelta(days=1))
            .not_valid_after(ref + timedelta(days=365))
        )
        certs.append(builder.sign(signer, hashes.SHA256()))
    return certs


def pem_bundle(path: str | Path, certs: Iterable[x509.Certificate | Issued]) -> Path:
    """Write ``certs`` (in order) into one PEM file."""
    return write_pem(path, *certs)


# --------------------------------------------------------------------------
# Oracle: keytool's own view of a store
# --------------------------------------------------------------------------


class KeytoolEntry(NamedTuple):
    """One entry as ``keytool -list -v`` shows it.

    ``sha256`` holds lower-case hex SHA-256 fingerprints (no colons), in keytool's
    order: the whole chain for a PrivateKeyEntry (``sha256[0]`` is the entry's own
    certificate, then its issuers), exactly one for a trustedCertEntry, none for a
    SecretKeyEntry.  ``alias`` is as keytool prints it, i.e. lower-cased.
    """

    alias: str
    entry_type: EntryType
    sha256: tuple[str, ...]


_ALIAS_RE = re.compile(r"^Alias name: (.*)$", re.MULTILINE)
_TYPE_RE = re.compile(r"^Entry type: (\w+)$", re.MULTILINE)
_CHAIN_RE = re.compile(r"^Certificate chain length: (\d+)$", re.MULTILINE)
_SHA256_RE = re.compile(r"^\s+SHA256: ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})$", re.MULTILINE)
_COUNT_RE = re.compile(r"^Your keystore contains (\d+) entr", re.MULTILINE)


def _parse_entry(alias: str, block: str) -> KeytoolEntry:
    kind = _TYPE_RE.search(block)
    if kind is None or kind.group(1) not in ("PrivateKeyEntry", "trustedCertEntry", "SecretKeyEntry"):
        raise ValueError(f"keytool -list -v: no known entry type for {alias!r}:\n{block}")
    entry_type = cast(EntryType, kind.group(1))
    fps = tuple(m.replace(":", "").lower() for m in _SHA256_RE.findall(block))
    length = _CHAIN_RE.search(block)
    expected = {"trustedCertEntry": 1, "SecretKeyEntry": 0}.get(entry_type, int(length.group(1)) if length else -1)
    if len(fps) != expected:
        raise ValueError(f"keytool -list -v: {alias!r} has {len(fps)} fingerprints, expected {expected}:\n{block}")
    return KeytoolEntry(alias, entry_type, fps)


def parse_keytool_list(text: str) -> list[KeytoolEntry]:
    """Parse the stdout of ``keytool -list -v`` (English locale) into entries, in keytool's order."""
    parts = _ALIAS_RE.split(text)
    entries = [_parse_entry(alias, block) for alias, block in zip(parts[1::2], parts[2::2], strict=True)]
    count = _COUNT_RE.search(text)
    if count is None or int(count.group(1)) != len(entries):
        raise ValueError(f"keytool -list -v: entry count does not match {len(entries)} parsed entries:\n{text}")
    return entries


def keytool_list(path: str | Path, password: str, store_type: StoreType | None = None) -> list[KeytoolEntry]:
    """keytool's view of ``path``: every entry with its fingerprints (see `KeytoolEntry`).

    ``store_type=None`` lets keytool detect the type.  A wrong password or a damaged
    file raises `KeytoolError`.
    """
    args = ["-list", "-v", "-keystore", str(path), "-storepass", password]
    if store_type is not None:
        args += ["-storetype", store_type]
    return parse_keytool_list(keytool(*args).stdout)


def sha256_hex(cert: x509.Certificate | Issued) -> str:
    """Lower-case hex SHA-256 fingerprint, in the form `KeytoolEntry.sha256` uses."""
    c = cert.cert if isinstance(cert, Issued) else cert
    return c.fingerprint(hashes.SHA256()).hex()
