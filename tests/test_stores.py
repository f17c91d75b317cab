"""stores.read / stores.identity / jks.parse / jks.decrypt_key against real keystores made by keytool and openssl.

Every JKS, JCEKS and PKCS12 file here is written by keytool at test time (once per module, in a thread
pool, since each keytool call starts a JVM), and `keytool -list -v` is the oracle for what the reader must
return. The trusted entry "ca-1" is a deliberately large certificate (more than half of each file), so the
bit that `keystores.corrupt` flips in the middle of a file always lands inside that certificate's bytes and
the outcome of the corruption tests does not depend on the random sizes of the other certificates.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from keystores import (
    KEYTOOL,
    OPENSSL,
    Corruption,
    KeytoolEntry,
    StoreType,
    add_secret_key,
    corrupt,
    keytool_list,
    make_keystore,
    many_certs,
    openssl_pkcs12,
    pem_bundle,
    wrong_password,
)
from pki import Issued, Pki

from textfile_probe import jks, stores

PASSWORD = "store-password"
KEY_PASSWORD = "key-password"
ALIAS = "Node-Key"  # keytool stores it lower-cased
STORE_TYPES: tuple[StoreType, ...] = ("JKS", "JCEKS", "PKCS12")
KIND = {stores.KEY_ENTRY: "PrivateKeyEntry", stores.TRUSTED_ENTRY: "trustedCertEntry"}
BUNDLE = 120

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl not on PATH")

View = set[tuple[str, str, tuple[str, ...]]]  # (alias lower-cased, keytool entry type, chain fingerprints)

# --------------------------------------------------------------------------
# Fixture: every store, built once, with keytool's listing of it
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    pki: Pki
    leaf: Issued
    rsa_leaf: Issued
    big: x509.Certificate
    paths: dict[str, Path]
    listings: dict[str, list[KeytoolEntry]]

    def data(self, name: str) -> bytes:
        return self.paths[name].read_bytes()


def _big_cert(pki: Pki) -> x509.Certificate:
    """A self-signed certificate of about 6 KB: an unknown non-critical extension holding a long UTF8String."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "textfile-probe large trusted cert")])
    filler = b"A" * 6000
    value = b"\x0c\x82" + len(filler).to_bytes(2, "big") + filler
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(pki.now - timedelta(days=1))
        .not_valid_after(pki.now + timedelta(days=365))
        .add_extension(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), value), critical=False)
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def built(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Built:
    if KEYTOOL is None:
        pytest.skip("keytool not on PATH (needs a JDK, e.g. openjdk-17-jdk-headless)")
    d = tmp_path_factory.mktemp("stores")
    leaf, rsa_leaf, big = pki.leaf(), pki.leaf(key_type="rsa"), _big_cert(pki)
    chain, trusted = pki.chain_for(leaf), [pki.root.cert, big]
    paths: dict[str, Path] = {}
    listings: dict[str, list[KeytoolEntry]] = {}

    def main(store_type: StoreType) -> Callable[[], None]:
        def build() -> None:
            path = make_keystore(
                d / f"main.{store_type}",
                store_type,
                password=PASSWORD,
                leaf=leaf,
                chain=chain,
                trusted=trusted,
                alias=ALIAS,
            )
            paths[store_type], listings[store_type] = path, keytool_list(path, PASSWORD, store_type)
            if store_type == "JCEKS":  # the same store plus a SecretKeyEntry
                secret = d / "secret.JCEKS"
                shutil.copyfile(path, secret)
                add_secret_key(secret, PASSWORD)
                paths["JCEKS-secret"], listings["JCEKS-secret"] = secret, keytool_list(secret, PASSWORD, "JCEKS")

        return build

    def key_only(name: str, store_type: StoreType, issued: Issued, key_password: str | None = None) -> None:
        paths[name] = make_keystore(
            d / f"{name}.ks",
            store_type,
            password=PASSWORD,
            leaf=issued,
            chain=pki.chain_for(issued),
            key_password=key_password,
            alias=ALIAS,
        )

    def openssl_job(name: str, *, legacy: bool) -> None:
        paths[name] = openssl_pkcs12(d / f"{name}.p12", leaf, chain, PASSWORD, legacy=legacy)

    jobs: list[Callable[[], None]] = [main(t) for t in ("JCEKS", "PKCS12", "JKS")]
    jobs.append(lambda: key_only("JKS-keypass", "JKS", leaf, KEY_PASSWORD))
    jobs.append(lambda: key_only("JCEKS-rsa", "JCEKS", rsa_leaf))
    jobs.append(lambda: key_only("JKS-rsa", "JKS", rsa_leaf))
    if OPENSSL is not None:
        jobs.append(lambda: openssl_job("openssl", legacy=False))
        jobs.append(lambda: openssl_job("openssl-legacy", legacy=True))
    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    return Built(pki, leaf, rsa_leaf, big, paths, listings)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _fp(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _cert_fp(cert: x509.Certificate | Issued) -> str:
    return _fp((cert.cert if isinstance(cert, Issued) else cert).public_bytes(serialization.Encoding.DER))


def our_view(store: stores.Store) -> View:
    """The reader's certificates grouped by (alias, entry), each group's chain in position order."""
    groups: dict[tuple[str, str], list[stores.StoreCert]] = {}
    for cert in store.certs:
        groups.setdefault((cert.alias.lower(), cert.entry), []).append(cert)
    view: View = set()
    for (alias, entry), certs in groups.items():
        certs.sort(key=lambda c: c.position)
        assert [c.position for c in certs] == list(range(len(certs))), f"positions of {alias!r} have gaps"
        view.add((alias, KIND.get(entry, entry), tuple(_fp(c.der) for c in certs)))
    return view


def keytool_view(entries: list[KeytoolEntry]) -> View:
    """keytool's certificate entries (secret keys hold no certificate), in the same shape as `our_view`."""
    return {(e.alias.lower(), e.entry_type, e.sha256) for e in entries if e.entry_type != "SecretKeyEntry"}


def read_error(data: bytes, password: str | None) -> str:
    with pytest.raises(stores.StoreError) as info:
        stores.read(data, password)
    return info.value.reason


# --------------------------------------------------------------------------
# Entries as keytool sees them
# --------------------------------------------------------------------------


@pytest.mark.parametrize("store_type", STORE_TYPES)
def test_reader_returns_exactly_keytools_entries_and_chains(built: Built, store_type: StoreType) -> None:
    expected = keytool_view(built.listings[store_type])
    assert len(expected) == 3  # the key entry and two trusted certificates
    store = stores.read(built.data(store_type), PASSWORD)
    assert store.format == store_type.lower()
    assert our_view(store) == expected


@pytest.mark.parametrize("store_type", STORE_TYPES)
def test_keystore_leaves_are_the_key_entrys_leaf(built: Built, store_type: StoreType) -> None:
    store = stores.read(built.data(store_type), PASSWORD)
    assert [_fp(der) for der in store.leaves()] == [_cert_fp(built.leaf)]


def test_jceks_secret_key_entry_is_skipped_and_every_certificate_entry_still_read(built: Built) -> None:
    listing = built.listings["JCEKS-secret"]
    assert KeytoolEntry("secret", "SecretKeyEntry", ()) in listing
    data = built.data("JCEKS-secret")
    store = stores.read(data, PASSWORD)
    assert our_view(store) == keytool_view(listing) == keytool_view(built.listings["JCEKS"])
    assert "secret" not in {c.alias for c in store.certs}
    # The digest covers the secret entry too, so the password check still works after stepping over it.
    assert read_error(data, wrong_password(PASSWORD)) == "bad_password"
    assert our_view(stores.read(data, None)) == keytool_view(listing)


def test_jceks_secret_key_store_still_gives_the_identity(built: Built) -> None:
    ident = stores.identity(built.data("JCEKS-secret"), PASSWORD)
    assert ident.key.public_key() == built.leaf.cert.public_key()


# --------------------------------------------------------------------------
# Passwords
# --------------------------------------------------------------------------


@pytest.mark.parametrize("store_type", STORE_TYPES)
def test_wrong_password_is_bad_password(built: Built, store_type: StoreType) -> None:
    assert read_error(built.data(store_type), wrong_password(PASSWORD)) == "bad_password"


@pytest.mark.parametrize("store_type", ["JKS", "JCEKS"])
def test_jks_and_jceks_without_password_list_certificates_unchecked(built: Built, store_type: StoreType) -> None:
    data = built.data(store_type)
    assert stores.read(data, None).certs == stores.read(data, PASSWORD).certs


def test_pkcs12_without_password_is_bad_password(built: Built) -> None:
    assert read_error(built.data("PKCS12"), None) == "bad_password"


# --------------------------------------------------------------------------
# Damaged copies
# --------------------------------------------------------------------------


def _flip_lands_in_big_cert(built: Built, data: bytes) -> bool:
    big = built.big.public_bytes(serialization.Encoding.DER)
    start = data.find(big)
    return start >= 0 and start <= len(data) // 2 < start + len(big)


@pytest.mark.parametrize("store_type", ["JKS", "JCEKS"])
def test_jks_flipped_body_bit_is_bad_password_because_digest_cannot_tell_it_from_a_wrong_password(
    built: Built, store_type: StoreType, tmp_path: Path
) -> None:
    """Certificates are opaque bytes to the format; only the SHA-1 over password + body notices a change."""
    original = built.data(store_type)
    assert _flip_lands_in_big_cert(built, original)
    damaged = corrupt(built.paths[store_type], tmp_path / "flip", how="flip").read_bytes()
    assert read_error(damaged, PASSWORD) == "bad_password"


@pytest.mark.parametrize("store_type", ["JKS", "JCEKS"])
def test_jks_flipped_body_bit_goes_unnoticed_without_password(
    built: Built, store_type: StoreType, tmp_path: Path
) -> None:
    assert _flip_lands_in_big_cert(built, built.data(store_type))
    damaged = corrupt(built.paths[store_type], tmp_path / "flip", how="flip").read_bytes()
    good, bad = stores.read(built.data(store_type), None).certs, stores.read(damaged, None).certs
    assert [(c.alias, c.entry, c.position) for c in bad] == [(c.alias, c.entry, c.position) for c in good]
    assert [c.der == d.der for c, d in zip(good, bad, strict=True)].count(False) == 1


@pytest.mark.parametrize("store_type", ["JKS", "JCEKS"])
def test_jks_flipped_entry_count_is_corrupt_even_with_the_right_password(built: Built, store_type: StoreType) -> None:
    """The structure is walked before the digest is checked: one entry fewer leaves bytes after the digest."""
    data = bytearray(built.data(store_type))
    assert data[8:12] == b"\x00\x00\x00\x03"
    data[11] ^= 0x01
    assert read_error(bytes(data), PASSWORD) == "corrupt"


@pytest.mark.parametrize("password", [PASSWORD, None])
@pytest.mark.parametrize("store_type", STORE_TYPES)
def test_truncated_store_is_corrupt(built: Built, store_type: StoreType, password: str | None, tmp_path: Path) -> None:
    damaged = corrupt(built.paths[store_type], tmp_path / "half", how="truncate").read_bytes()
    assert read_error(damaged, password) == "corrupt"


@pytest.mark.parametrize("password", [PASSWORD, None])
def test_pkcs12_flipped_bit_is_bad_password_because_the_mac_cannot_tell_it_from_a_wrong_password(
    built: Built, password: str | None, tmp_path: Path
) -> None:
    """The middle of the file is inside the MAC-protected authSafe; OpenSSL reports "invalid password or data"."""
    damaged = corrupt(built.paths["PKCS12"], tmp_path / "flip", how="flip").read_bytes()
    assert read_error(damaged, password) == "bad_password"


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("store_type", STORE_TYPES)
def test_damaged_store_identity_raises_only_store_error(
    built: Built, store_type: StoreType, how: Corruption, tmp_path: Path
) -> None:
    damaged = corrupt(built.paths[store_type], tmp_path / how, how=how).read_bytes()
    with pytest.raises(stores.StoreError) as info:
        stores.identity(damaged, PASSWORD)
    assert info.value.reason == ("corrupt" if how == "truncate" else "bad_password")


# --------------------------------------------------------------------------
# Not a store at all
# --------------------------------------------------------------------------


def _pem_with_broken_certificate_block(issued: Issued) -> bytes:
    lines = issued.cert_pem().splitlines(keepends=True)
    return b"".join(lines[:3] + lines[5:])  # two base64 lines gone: the block no longer decodes


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("random bytes", lambda leaf: b"\x00" + random.Random(1).randbytes(4095), "unsupported_format"),
        ("empty file", lambda leaf: b"", "unsupported_format"),
        ("text file", lambda leaf: b"# not a certificate\nhello = world\n" * 20, "unsupported_format"),
        ("PEM private key only", lambda leaf: leaf.key_pem(), "unsupported_format"),
        ("PEM broken CERTIFICATE block", _pem_with_broken_certificate_block, "corrupt"),
        # A leading SEQUENCE tag that is no certificate is taken for PKCS#12, which does not parse.
        ("DER-looking garbage", lambda leaf: b"\x30" + random.Random(2).randbytes(4095), "corrupt"),
    ],
)
def test_non_store_input_is_refused_with_its_reason(
    pki: Pki, name: str, make: Callable[[Issued], bytes], reason: str
) -> None:
    data = make(pki.leaf())
    for password in (None, PASSWORD):
        assert read_error(data, password) == reason, name


def test_pem_bundle_of_120_certificates_in_file_order(tmp_path: Path) -> None:
    certs = many_certs(BUNDLE)
    store = stores.read(pem_bundle(tmp_path / "bundle.pem", certs).read_bytes(), None)
    assert store.format == "pem"
    assert [c.position for c in store.certs] == list(range(BUNDLE))
    assert [_fp(c.der) for c in store.certs] == [_cert_fp(c) for c in certs]
    assert {(c.alias, c.entry) for c in store.certs} == {("", stores.CERT_ENTRY)}
    assert store.leaves() == (store.certs[0].der,)


def test_single_der_certificate(pki: Pki) -> None:
    leaf = pki.leaf()
    der = leaf.cert.public_bytes(serialization.Encoding.DER)
    store = stores.read(der, None)
    assert store.format == "der"
    assert store.certs == (stores.StoreCert("", stores.CERT_ENTRY, 0, der),)
    assert store.leaves() == (der,)


@needs_openssl
@pytest.mark.parametrize("name", ["openssl", "openssl-legacy"])
def test_openssl_pkcs12_key_entry_and_chain(built: Built, name: str) -> None:
    store = stores.read(built.data(name), PASSWORD)
    assert store.format == "pkcs12"
    chain = (_cert_fp(built.leaf), _cert_fp(built.pki.intermediate))
    assert our_view(store) == {("node", "PrivateKeyEntry", chain)}
    assert [_fp(der) for der in store.leaves()] == [_cert_fp(built.leaf)]
    assert read_error(built.data(name), wrong_password(PASSWORD)) == "bad_password"


# --------------------------------------------------------------------------
# Client identity: the key entry's key and chain
# --------------------------------------------------------------------------

IDENTITY_STORES = ["JKS", "JCEKS", "PKCS12", "JKS-rsa", "JCEKS-rsa", "openssl", "openssl-legacy"]


def _leaf_of(built: Built, name: str) -> Issued:
    return built.rsa_leaf if name.endswith("-rsa") else built.leaf


@pytest.mark.parametrize("name", IDENTITY_STORES)
def test_identity_key_belongs_to_the_leaf_and_chain_starts_with_it(built: Built, name: str) -> None:
    if name not in built.paths:
        pytest.skip("openssl not on PATH")
    leaf = _leaf_of(built, name)
    ident = stores.identity(built.data(name), PASSWORD)
    assert type(ident.key) is type(leaf.key)
    assert ident.key.public_key() == leaf.cert.public_key()
    assert ident.chain[0] == leaf.cert


@pytest.mark.parametrize("name", ["JKS", "JCEKS", "PKCS12", "openssl"])
def test_identity_chain_is_the_key_entrys_chain_as_read_lists_it(built: Built, name: str) -> None:
    """A client presents the whole chain; it must be the one `read` (and keytool) shows for the key entry."""
    if name not in built.paths:
        pytest.skip("openssl not on PATH")
    data = built.data(name)
    key_chain = [c.der for c in stores.read(data, PASSWORD).certs if c.entry == stores.KEY_ENTRY]
    ident = stores.identity(data, PASSWORD)
    assert [_cert_fp(c) for c in ident.chain] == [_fp(der) for der in key_chain]
    assert len(ident.chain) >= 2  # leaf and intermediate at least


def test_identity_selects_the_key_entry_by_alias(built: Built) -> None:
    data = built.data("JKS")
    assert stores.identity(data, PASSWORD, alias=ALIAS.lower()).chain[0] == built.leaf.cert
    with pytest.raises(stores.StoreError) as info:
        stores.identity(data, PASSWORD, alias="no-such-alias")
    assert info.value.reason == "unsupported_format"


@pytest.mark.parametrize("password", ["wrong", None])
@pytest.mark.parametrize("store_type", STORE_TYPES)
def test_identity_with_wrong_or_no_password_is_bad_password(
    built: Built, store_type: StoreType, password: str | None
) -> None:
    with pytest.raises(stores.StoreError) as info:
        stores.identity(built.data(store_type), None if password is None else wrong_password(PASSWORD))
    assert info.value.reason == "bad_password"


def test_jks_key_with_its_own_password_decrypts_with_it_but_identity_only_tries_the_store_password(
    built: Built,
) -> None:
    """StoreSpec has no key password: identity() decrypts with the store password, which fails here."""
    data = built.data("JKS-keypass")
    assert our_view(stores.read(data, PASSWORD)) == {
        (ALIAS.lower(), "PrivateKeyEntry", (_cert_fp(built.leaf), _cert_fp(built.pki.intermediate)))
    }
    with pytest.raises(stores.StoreError) as info:
        stores.identity(data, PASSWORD)
    assert info.value.reason == "bad_password"
    _, entries = jks.parse(data, PASSWORD)
    (entry,) = entries
    pkcs8 = jks.decrypt_key(entry.protected_key, KEY_PASSWORD)
    key = serialization.load_der_private_key(pkcs8, None)
    assert key.public_key() == built.leaf.cert.public_key()
    with pytest.raises(jks.JksError) as jks_info:
        jks.decrypt_key(entry.protected_key, PASSWORD)
    assert jks_info.value.reason == "bad_password"


def test_jceks_decrypt_key_with_wrong_password_is_bad_password(built: Built) -> None:
    _, entries = jks.parse(built.data("JCEKS"), PASSWORD)
    (key_entry,) = [e for e in entries if e.kind == "key"]
    with pytest.raises(jks.JksError) as info:
        jks.decrypt_key(key_entry.protected_key, wrong_password(PASSWORD))
    assert info.value.reason == "bad_password"


def _encrypted_key_pem(issued: Issued, password: str) -> bytes:
    enc = serialization.BestAvailableEncryption(password.encode())
    return issued.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


@pytest.mark.parametrize("key_first", [False, True])
def test_pem_identity_from_certificate_and_key(pki: Pki, key_first: bool) -> None:
    leaf = pki.leaf()
    parts = [leaf.cert_pem() + pki.intermediate.cert_pem(), leaf.key_pem()]
    ident = stores.identity(b"".join(reversed(parts) if key_first else parts), None)
    assert ident.key.public_key() == leaf.cert.public_key()
    assert ident.chain == (leaf.cert, pki.intermediate.cert)


def test_pem_identity_with_encrypted_key(pki: Pki) -> None:
    leaf = pki.leaf()
    data = leaf.cert_pem() + _encrypted_key_pem(leaf, PASSWORD)
    assert stores.identity(data, PASSWORD).key.public_key() == leaf.cert.public_key()
    for password in (wrong_password(PASSWORD), None):
        with pytest.raises(stores.StoreError) as info:
            stores.identity(data, password)
        assert info.value.reason == "bad_password"


@pytest.mark.parametrize("certificates", [b"", b"broken"], ids=["no certificate", "broken certificate"])
def test_pem_identity_without_a_usable_certificate_is_a_store_error(pki: Pki, certificates: bytes) -> None:
    leaf = pki.leaf()
    data = leaf.key_pem() + (_pem_with_broken_certificate_block(leaf) if certificates else b"")
    with pytest.raises(stores.StoreError) as info:
        stores.identity(data, None)
    assert info.value.reason == ("corrupt" if certificates else "unsupported_format")


def test_identity_of_a_certificate_only_file_is_unsupported_format(pki: Pki) -> None:
    leaf = pki.leaf()
    for data in (leaf.cert_pem(), leaf.cert.public_bytes(serialization.Encoding.DER)):
        with pytest.raises(stores.StoreError) as info:
            stores.identity(data, None)
        assert info.value.reason == "unsupported_format"


# --------------------------------------------------------------------------
# Hostile keystores: bounded work, JksError, nothing else
# --------------------------------------------------------------------------


def _utf(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def _store(magic: int, count: int, body: bytes, version: int = 2) -> bytes:
    return struct.pack(">III", magic, version, count) + body


def _secret_entry(serialized: bytes) -> bytes:
    """A JCEKS holding one secret-key entry whose Java serialization stream is `serialized`."""
    entry = struct.pack(">I", 3) + _utf("s") + bytes(8) + b"\xac\xed\x00\x05" + serialized
    return _store(jks.JCEKS_MAGIC, 1, entry + bytes(20))


_CLASS_DESC_A = b"\x72" + _utf("A") + bytes(8) + b"\x02" + b"\x00\x00" + b"\x78"  # serializable, no fields, no annots
_HANDLE_0 = b"\x71" + struct.pack(">I", 0x7E0000)  # TC_REFERENCE to the first handle

HOSTILE = {
    "header claims 2**31 entries": _store(jks.JKS_MAGIC, 2**31, bytes(64)),
    "certificate length 2**32-1": _store(
        jks.JKS_MAGIC, 1, struct.pack(">I", 2) + _utf("a") + bytes(8) + _utf("X.509") + b"\xff" * 4 + bytes(64)
    ),
    "protected key length 2**32-1": _store(jks.JKS_MAGIC, 1, struct.pack(">I", 1) + _utf("a") + bytes(8) + b"\xff" * 4),
    "chain of 2**32-1 certificates": _store(
        jks.JKS_MAGIC,
        1,
        struct.pack(">I", 1) + _utf("a") + bytes(8) + struct.pack(">I", 1) + b"k" + b"\xff" * 4,
        version=1,
    ),
    "TC_OBJECT nested 10,000 deep": _secret_entry(b"\x73" * 10_000),
    "TC_ARRAY nested 10,000 deep": _secret_entry(b"\x75" * 10_000),
    "class annotations nested 10,000 deep": _secret_entry((b"\x72" + _utf("A") + bytes(8) + b"\x02\x00\x00") * 10_000),
    "TC_LONGSTRING of 2**63 bytes": _secret_entry(b"\x7c" + b"\x7f" + b"\xff" * 7),
    "primitive array of 2**32-1 longs": _secret_entry(
        b"\x75\x72" + _utf("[J") + bytes(8) + b"\x02\x00\x00\x78\x70" + b"\xff" * 4
    ),
}


@pytest.mark.parametrize("data", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_keystore_raises_jks_error_quickly(data: bytes) -> None:
    start = time.perf_counter()
    with pytest.raises(jks.JksError):
        jks.parse(data, None)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(stores.StoreError):
        stores.read(data, PASSWORD)


CYCLIC = {
    # The class description's superclass is a back-reference to itself.
    "class is its own superclass": _secret_entry(b"\x73" + _CLASS_DESC_A + _HANDLE_0),
    # A's superclass B names A (still being read) as its superclass.
    "two classes are each other's superclass": _secret_entry(
        b"\x73" + _CLASS_DESC_A + b"\x72" + _utf("B") + bytes(8) + b"\x02\x00\x00\x78" + _HANDLE_0
    ),
}


@pytest.mark.parametrize("data", list(CYCLIC.values()), ids=list(CYCLIC))
def test_cyclic_class_hierarchy_raises_jks_error_instead_of_looping(data: bytes) -> None:
    """Run in a child process with a time and memory cap, so a loop fails the test instead of hanging the run."""
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from textfile_probe import jks\n"
        "try:\n"
        "    jks.parse(sys.stdin.buffer.read(), None)\n"
        "except jks.JksError as exc:\n"
        "    print('JksError', exc.reason)\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, timeout=2)
    except subprocess.TimeoutExpired:
        pytest.fail("jks.parse did not return within 2 s: it loops over the cyclic superclass chain")
    assert done.stdout.decode().split() == ["JksError", "corrupt"], done.stderr.decode()[-2000:]
