# Strategy: prove the keystores.py fixture makes what it claims, using only
# keytool, openssl and cryptography (never our product code).  Every store is
# built once per module, in a small thread pool (each keytool call is a JVM
# start), together with keytool's listing of it; tests then compare that
# listing with the certificates that went in.  Whole file: a few seconds.
from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from keystores import (
    KEYTOOL,
    OPENSSL,
    Corruption,
    KeytoolEntry,
    KeytoolError,
    StoreType,
    add_secret_key,
    corrupt,
    keytool,
    keytool_list,
    make_keystore,
    make_pkcs12,
    make_truststore_bulk,
    many_certs,
    openssl_pkcs12,
    pem_bundle,
    sha256_hex,
    wrong_password,
)
from pki import Issued, Pki

pytestmark = pytest.mark.skipif(KEYTOOL is None, reason="keytool not on PATH (needs a JDK, e.g. openjdk-17-jdk)")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl not on PATH")

PASSWORD = "store-password"
KEY_PASSWORD = "key-password"
STORE_TYPES: tuple[StoreType, ...] = ("JKS", "JCEKS", "PKCS12")
TRUSTED_ATTR = "2.16.840.1.113894.746875.1.1"  # Oracle's "trusted key usage" PKCS#12 bag attribute
BULK = 120

# --------------------------------------------------------------------------
# Fixture: every store, built once, with keytool's view of it
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    path: Path
    store_type: StoreType | None
    entries: list[KeytoolEntry]

    def by_alias(self) -> dict[str, KeytoolEntry]:
        return {e.alias: e for e in self.entries}


@dataclass(frozen=True)
class Built:
    pki: Pki
    leaf: Issued
    bulk: list[x509.Certificate]
    stores: dict[str, Store]


def _jobs(pki: Pki, leaf: Issued, bulk: list[x509.Certificate], d: Path) -> dict[str, Callable[[], Path]]:
    chain = pki.chain_for(leaf)
    root, inter = pki.root.cert, pki.intermediate.cert

    def keystore(t: StoreType) -> Callable[[], Path]:
        def build() -> Path:
            path = make_keystore(d / f"node.{t}", t, password=PASSWORD, leaf=leaf, chain=chain, trusted=[root])
            return add_secret_key(path, PASSWORD) if t == "JCEKS" else path

        return build

    jobs: dict[str, Callable[[], Path]] = {t: keystore(t) for t in STORE_TYPES}
    jobs["trust-PKCS12"] = lambda: make_keystore(d / "trust.p12", "PKCS12", password=PASSWORD, trusted=[root, inter])
    jobs["trust-JKS"] = lambda: make_keystore(d / "trust.jks", "JKS", password=PASSWORD, trusted=[root, inter])
    jobs["keypass-JKS"] = lambda: make_keystore(
        d / "keypass.jks", "JKS", password=PASSWORD, key_password=KEY_PASSWORD, leaf=leaf, chain=chain
    )
    jobs["bulk-PKCS12"] = lambda: make_truststore_bulk(d / "bulk.p12", "PKCS12", bulk, PASSWORD)
    jobs["p12-helper"] = lambda: make_pkcs12(d / "helper.p12", leaf, chain, PASSWORD, alias="web", trusted=[inter])
    if OPENSSL is not None:
        jobs["openssl"] = lambda: openssl_pkcs12(d / "openssl.p12", leaf, chain, PASSWORD)
        jobs["openssl-legacy"] = lambda: openssl_pkcs12(d / "legacy.p12", leaf, chain, PASSWORD, legacy=True)
    return jobs


def _store_type(name: str) -> StoreType | None:
    suffix = name.rsplit("-", 1)[-1]
    return suffix if suffix in STORE_TYPES else None


@pytest.fixture(scope="module")
def built(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Built:
    d = tmp_path_factory.mktemp("keystores")
    leaf = pki.leaf()
    bulk = many_certs(BULK, issuer=pki.intermediate)

    def build_and_list(item: tuple[str, Callable[[], Path]]) -> tuple[str, Store]:
        name, job = item
        path, store_type = job(), _store_type(name)
        return name, Store(path, store_type, keytool_list(path, PASSWORD, store_type))

    with ThreadPoolExecutor(max_workers=4) as pool:
        stores = dict(pool.map(build_and_list, _jobs(pki, leaf, bulk, d).items()))
    return Built(pki, leaf, bulk, stores)


def _fps(*certs: x509.Certificate | Issued) -> tuple[str, ...]:
    return tuple(sha256_hex(c) for c in certs)


# --------------------------------------------------------------------------
# Key stores: aliases, entry types, fingerprints as keytool sees them
# --------------------------------------------------------------------------


@pytest.mark.parametrize("store_type", STORE_TYPES)
def test_keystore_entries_match_inputs(built: Built, store_type: StoreType) -> None:
    entries = built.stores[store_type].by_alias()
    expected_aliases = {"node", "ca-0"} | ({"secret"} if store_type == "JCEKS" else set())
    assert set(entries) == expected_aliases
    assert entries["node"].entry_type == "PrivateKeyEntry"
    assert entries["ca-0"] == KeytoolEntry("ca-0", "trustedCertEntry", _fps(built.pki.root))
    chain = _fps(built.leaf, built.pki.intermediate)
    if store_type == "PKCS12":
        # Java rebuilds PKCS12 chains by issuer name on load: the trusted root joins the chain.
        chain += _fps(built.pki.root)
    assert entries["node"].sha256 == chain


def test_jceks_secret_key_is_a_secret_key_entry(built: Built) -> None:
    assert built.stores["JCEKS"].by_alias()["secret"] == KeytoolEntry("secret", "SecretKeyEntry", ())


def test_jks_cannot_hold_a_secret_key(tmp_path: Path) -> None:
    with pytest.raises(KeytoolError):
        add_secret_key(tmp_path / "s.jks", PASSWORD, store_type="JKS")


@pytest.mark.parametrize("name", ["trust-PKCS12", "trust-JKS"])
def test_truststore_holds_only_trusted_entries(built: Built, name: str) -> None:
    root, inter = built.pki.root, built.pki.intermediate
    assert sorted(built.stores[name].entries) == [
        KeytoolEntry("ca-0", "trustedCertEntry", _fps(root)),
        KeytoolEntry("ca-1", "trustedCertEntry", _fps(inter)),
    ]


def test_make_pkcs12_uses_alias_and_links_chain_to_trusted_intermediate(built: Built) -> None:
    entries = built.stores["p12-helper"].by_alias()
    assert set(entries) == {"web", "ca-0"}
    assert entries["web"].sha256 == _fps(built.leaf, built.pki.intermediate)
    assert entries["ca-0"].sha256 == _fps(built.pki.intermediate)


def test_bulk_truststore_has_every_certificate(built: Built) -> None:
    entries = built.stores["bulk-PKCS12"].by_alias()
    assert len(entries) == BULK
    assert {e.entry_type for e in entries.values()} == {"trustedCertEntry"}
    assert [entries[f"ca-{i}"].sha256 for i in range(BULK)] == [_fps(c) for c in built.bulk]


# --------------------------------------------------------------------------
# Passwords
# --------------------------------------------------------------------------


def test_jks_key_password_protects_the_key(built: Built, tmp_path: Path) -> None:
    path = built.stores["keypass-JKS"].path
    args = ["-certreq", "-alias", "node", "-keystore", str(path), "-storetype", "JKS", "-storepass", PASSWORD]
    keytool(*args, "-keypass", KEY_PASSWORD, "-file", str(tmp_path / "ok.csr"))
    with pytest.raises(KeytoolError, match="Cannot recover key"):
        keytool(*args, "-keypass", PASSWORD, "-file", str(tmp_path / "bad.csr"))


@pytest.mark.parametrize("store_type", STORE_TYPES)
def test_wrong_password_makes_keytool_fail(built: Built, store_type: StoreType) -> None:
    with pytest.raises(KeytoolError, match="password was incorrect"):
        keytool_list(built.stores[store_type].path, wrong_password(PASSWORD), store_type)


def test_unsupported_passwords_are_refused_before_keytool(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ValueError, match="at least 6"):
        make_keystore(tmp_path / "a.jks", "JKS", password="short", trusted=[pki.root.cert])
    with pytest.raises(ValueError, match="PKCS12"):
        make_keystore(tmp_path / "a.p12", "PKCS12", password=PASSWORD, key_password=KEY_PASSWORD, leaf=pki.leaf())


# --------------------------------------------------------------------------
# Damaged files
# --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("store_type", STORE_TYPES)
def test_corrupt_copy_makes_keytool_fail(built: Built, store_type: StoreType, how: Corruption, tmp_path: Path) -> None:
    original = built.stores[store_type].path
    damaged = corrupt(original, tmp_path / f"bad.{store_type}", how=how)
    assert damaged.read_bytes() != original.read_bytes()
    with pytest.raises(KeytoolError):
        keytool_list(damaged, PASSWORD, store_type)


# --------------------------------------------------------------------------
# File layout: really Java's
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("store_type", "magic"), [("JKS", b"\xfe\xed\xfe\xed"), ("JCEKS", b"\xce\xce\xce\xce")])
def test_proprietary_store_magic(built: Built, store_type: StoreType, magic: bytes) -> None:
    assert built.stores[store_type].path.read_bytes()[:4] == magic


def _pkcs12_info(path: Path, *, legacy: bool = False) -> str:
    cmd = [str(OPENSSL), "pkcs12", "-info", "-nokeys", "-in", str(path), "-passin", f"pass:{PASSWORD}"]
    cmd += ["-legacy"] if legacy else []
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout + done.stderr


def _bags_by_friendly_name(info: str) -> dict[str, str]:
    """Each "Bag Attributes" block of ``openssl pkcs12 -info``, keyed by its friendlyName."""
    blocks = info.split("Bag Attributes")[1:]
    return {m.group(1): b for b in blocks if (m := re.search(r"friendlyName: (.*)", b))}


@needs_openssl
def test_pkcs12_has_java17_layout(built: Built) -> None:
    info = _pkcs12_info(built.stores["PKCS12"].path)
    assert "MAC: sha256" in info
    assert re.search(r"Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC", info)
    bags = _bags_by_friendly_name(info)
    assert TRUSTED_ATTR in bags["ca-0"]
    assert TRUSTED_ATTR not in bags["node"]


@needs_openssl
def test_openssl_pkcs12_is_read_by_keytool(built: Built) -> None:
    for name in ("openssl", "openssl-legacy"):
        # CA certs that openssl adds carry no trusted attribute: Java shows only the key entry.
        assert built.stores[name].entries == [
            KeytoolEntry("node", "PrivateKeyEntry", _fps(built.leaf, built.pki.intermediate))
        ]
    assert "MAC: sha1" in _pkcs12_info(built.stores["openssl-legacy"].path, legacy=True)


# --------------------------------------------------------------------------
# PEM bundles
# --------------------------------------------------------------------------


def test_pem_bundle_of_120_distinct_certs(tmp_path: Path, pki: Pki) -> None:
    certs = many_certs(BULK)
    path = pem_bundle(tmp_path / "bundle.pem", certs)
    loaded = x509.load_pem_x509_certificates(path.read_bytes())
    assert loaded == certs
    assert len({sha256_hex(c) for c in loaded}) == BULK
    assert len({c.subject for c in loaded}) == BULK
    issued = many_certs(3, issuer=pki.intermediate)
    assert {c.issuer for c in issued} == {pki.intermediate.cert.subject}
