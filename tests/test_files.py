"""files.py: which paths a spec names, re-reading only what changed, and every failure as a read reason.

Files are real: PEM/DER from `pki`, PKCS#12 from `openssl pkcs12 -export`, one JKS from keytool. Change
detection is driven through the filesystem itself (os.utime with explicit nanoseconds, rename over a file)
and observed through `FileWatcher.reads`, the count of parses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from keystores import KEYTOOL, OPENSSL, make_keystore, openssl_pkcs12, wrong_password
from pki import Issued, Pki, write_pem

from textfile_probe import files
from textfile_probe.config import StoreSpec
from textfile_probe.stores import StoreError

PASSWORD = "store-password"
NOBODY = 65534

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl not on PATH")


def _spec(
    path: Path | str, *, password: str | None = None, password_file: str | None = None, password_env: str | None = None
) -> StoreSpec:
    return StoreSpec(str(path), password=password, password_file=password_file, password_env=password_env)


def _fp(issued: Issued) -> str:
    return issued.cert.fingerprint(hashes.SHA256()).hex()


def _reasons(results: list[files.FileResult]) -> dict[str, str]:
    return {Path(r.path).name: r.reason for r in results}


@pytest.fixture(scope="module")
def p12(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An openssl-made PKCS#12 protected by PASSWORD; tests copy it before touching anything."""
    if OPENSSL is None:
        pytest.skip("openssl not on PATH")
    leaf = pki.leaf()
    return openssl_pkcs12(tmp_path_factory.mktemp("p12") / "client.p12", leaf, pki.chain_for(leaf), PASSWORD)


@pytest.fixture
def store(p12: Path, tmp_path: Path) -> Path:
    return Path(shutil.copyfile(p12, tmp_path / "client.p12"))


# --------------------------------------------------------------------------
# Which files a spec names
# --------------------------------------------------------------------------


def test_directory_spec_reads_regular_files_in_order_skipping_subdirectories_and_dotfiles(
    pki: Pki, tmp_path: Path
) -> None:
    b, a = pki.leaf(cn="b"), pki.leaf(cn="a")
    write_pem(tmp_path / "b.pem", b)
    (tmp_path / "a.crt").write_bytes(a.cert.public_bytes(serialization.Encoding.DER))
    write_pem(tmp_path / ".hidden.pem", pki.leaf())
    (tmp_path / "sub").mkdir()
    write_pem(tmp_path / "sub" / "c.pem", pki.leaf())
    spec = _spec(tmp_path)
    assert list(files.expand(spec)) == [str(tmp_path / "a.crt"), str(tmp_path / "b.pem")]
    results = files.FileWatcher().refresh([spec])
    assert [(Path(r.path).name, r.reason, r.format) for r in results] == [
        ("a.crt", "ok", "der"),
        ("b.pem", "ok", "pem"),
    ]
    assert [r.leaves for r in results] == [frozenset({_fp(a)}), frozenset({_fp(b)})]
    assert all(r.spec == spec for r in results)


def test_glob_spec_matches_only_files_in_sorted_order(pki: Pki, tmp_path: Path) -> None:
    for name in ("x2.pem", "x1.pem", "x3.txt"):
        write_pem(tmp_path / name, pki.leaf())
    (tmp_path / "x4.pem").mkdir()
    spec = _spec(tmp_path / "x*.pem")
    assert list(files.expand(spec)) == [str(tmp_path / "x1.pem"), str(tmp_path / "x2.pem")]
    assert _reasons(files.FileWatcher().refresh([spec])) == {"x1.pem": "ok", "x2.pem": "ok"}


def test_missing_plain_path_is_reported_as_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pem"
    spec = _spec(missing)
    assert list(files.expand(spec)) == [str(missing)]
    watcher = files.FileWatcher()
    (result,) = watcher.refresh([spec])
    assert (result.path, result.reason, result.certs) == (str(missing), "not_found", ())
    assert watcher.reads == 0
    assert files.read_file(str(missing), spec).reason == "not_found"
    with pytest.raises(StoreError) as info:
        files.load_identity(spec)
    assert info.value.reason == "not_found"


def test_ok_result_describes_the_file(pki: Pki, tmp_path: Path) -> None:
    leaf = pki.leaf()
    path = write_pem(tmp_path / "chain.pem", leaf, pki.intermediate)
    result = files.read_file(str(path), _spec(path))
    assert (result.ok, result.format, result.modified) == (True, "pem", path.stat().st_mtime)
    assert [info.fingerprint_sha256 for _, info in result.certs] == [_fp(leaf), _fp(pki.intermediate)]
    assert result.leaves == frozenset({_fp(leaf)})


# --------------------------------------------------------------------------
# Re-read only on change
# --------------------------------------------------------------------------


def test_unchanged_files_are_not_parsed_again(pki: Pki, tmp_path: Path) -> None:
    for name in ("a.pem", "b.pem"):
        write_pem(tmp_path / name, pki.leaf())
    watcher, specs = files.FileWatcher(), [_spec(tmp_path)]
    first = watcher.refresh(specs)
    assert watcher.reads == 2
    assert watcher.refresh(specs) == first
    assert watcher.refresh(specs) == first
    assert watcher.reads == 2


def test_new_mtime_causes_exactly_one_reread(pki: Pki, tmp_path: Path) -> None:
    for name in ("a.pem", "b.pem"):
        write_pem(tmp_path / name, pki.leaf())
    watcher, specs = files.FileWatcher(), [_spec(tmp_path)]
    watcher.refresh(specs)
    st = (tmp_path / "a.pem").stat()
    os.utime(tmp_path / "a.pem", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    watcher.refresh(specs)
    assert watcher.reads == 3
    watcher.refresh(specs)
    assert watcher.reads == 3


def _same_size_leaf(pki: Pki, size: int) -> Issued:
    """A new leaf whose PEM has exactly `size` bytes (signature and serial lengths vary a little)."""
    for _ in range(500):
        leaf = pki.leaf()
        if len(leaf.cert_pem()) == size:
            return leaf
    raise AssertionError(f"no leaf with a PEM of {size} bytes in 500 tries")


def test_file_replaced_by_rename_with_same_size_and_mtime_is_reread(pki: Pki, tmp_path: Path) -> None:
    old = pki.leaf()
    path = write_pem(tmp_path / "server.pem", old)
    watcher, specs = files.FileWatcher(), [_spec(path)]
    assert watcher.refresh(specs)[0].leaves == {_fp(old)}
    before = path.stat()
    new = _same_size_leaf(pki, before.st_size)
    staged = write_pem(tmp_path / "server.pem.new", new)
    os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(staged, path)
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ino != before.st_ino
    assert watcher.refresh(specs)[0].leaves == {_fp(new)}
    assert watcher.reads == 2


@needs_openssl
def test_changed_password_file_is_reread_and_bad_password_becomes_ok(store: Path, tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(wrong_password(PASSWORD))
    watcher, specs = files.FileWatcher(), [_spec(store, password_file=str(password_file))]
    assert _reasons(watcher.refresh(specs)) == {"client.p12": "bad_password"}
    assert _reasons(watcher.refresh(specs)) == {"client.p12": "bad_password"}
    assert watcher.reads == 1
    password_file.write_text(PASSWORD + "\n")
    assert _reasons(watcher.refresh(specs)) == {"client.p12": "ok"}
    assert watcher.reads == 2


@needs_openssl
def test_changed_password_env_is_reread(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFP_TEST_STORE_PASSWORD", PASSWORD)
    watcher, specs = files.FileWatcher(), [_spec(store, password_env="TFP_TEST_STORE_PASSWORD")]
    assert _reasons(watcher.refresh(specs)) == {"client.p12": "ok"}
    monkeypatch.setenv("TFP_TEST_STORE_PASSWORD", wrong_password(PASSWORD))
    assert _reasons(watcher.refresh(specs)) == {"client.p12": "bad_password"}
    monkeypatch.delenv("TFP_TEST_STORE_PASSWORD")
    assert _reasons(watcher.refresh(specs)) == {"client.p12": "password_unavailable"}
    assert watcher.reads == 3


def test_removed_spec_and_deleted_file_disappear_from_the_next_refresh(pki: Pki, tmp_path: Path) -> None:
    directory, single = tmp_path / "dir", tmp_path / "single.pem"
    directory.mkdir()
    for name in ("a.pem", "b.pem"):
        write_pem(directory / name, pki.leaf())
    write_pem(single, pki.leaf())
    watcher = files.FileWatcher()
    both = [_spec(directory), _spec(single)]
    assert _reasons(watcher.refresh(both)) == {"a.pem": "ok", "b.pem": "ok", "single.pem": "ok"}
    assert _reasons(watcher.refresh(both[:1])) == {"a.pem": "ok", "b.pem": "ok"}
    (directory / "a.pem").unlink()
    assert _reasons(watcher.refresh(both[:1])) == {"b.pem": "ok"}
    assert watcher.reads == 3
    # Forgotten, not just hidden: bringing the unchanged file back parses it again.
    assert _reasons(watcher.refresh(both)) == {"b.pem": "ok", "single.pem": "ok"}
    assert watcher.reads == 4


# --------------------------------------------------------------------------
# Passwords
# --------------------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("ending", ["\n", "\r\n", ""], ids=["LF", "CRLF", "none"])
def test_password_file_line_ending_is_not_part_of_the_password(store: Path, tmp_path: Path, ending: str) -> None:
    password_file = tmp_path / "password"
    password_file.write_bytes((PASSWORD + ending).encode())
    spec = _spec(store, password_file=str(password_file))
    assert files.password_of(spec) == PASSWORD
    assert files.read_file(str(store), spec).reason == "ok"


@needs_openssl
def test_missing_password_file_is_password_unavailable(store: Path, tmp_path: Path) -> None:
    spec = _spec(store, password_file=str(tmp_path / "no-such-password"))
    with pytest.raises(files.PasswordError):
        files.password_of(spec)
    assert files.read_file(str(store), spec).reason == "password_unavailable"
    with pytest.raises(StoreError) as info:
        files.load_identity(spec)
    assert info.value.reason == "password_unavailable"


@needs_openssl
def test_password_env_set_and_unset(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(store, password_env="TFP_TEST_STORE_PASSWORD")
    monkeypatch.setenv("TFP_TEST_STORE_PASSWORD", PASSWORD)
    assert files.password_of(spec) == PASSWORD
    assert files.read_file(str(store), spec).reason == "ok"
    monkeypatch.delenv("TFP_TEST_STORE_PASSWORD")
    result = files.read_file(str(store), spec)
    assert (result.reason, result.modified) == ("password_unavailable", store.stat().st_mtime)
    assert "TFP_TEST_STORE_PASSWORD" in result.detail


def test_password_sources(tmp_path: Path) -> None:
    assert files.password_of(_spec(tmp_path / "x")) is None
    assert files.password_of(_spec(tmp_path / "x", password="inline")) == "inline"


# --------------------------------------------------------------------------
# Client identity from a spec
# --------------------------------------------------------------------------


@needs_openssl
def test_load_identity_from_pkcs12_with_password_file(pki: Pki, store: Path, tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    ident = files.load_identity(_spec(store, password_file=str(password_file)))
    assert ident.chain[0].issuer == pki.intermediate.cert.subject
    assert ident.key.public_key() == ident.chain[0].public_key()
    password_file.write_text(wrong_password(PASSWORD))
    with pytest.raises(StoreError) as info:
        files.load_identity(_spec(store, password_file=str(password_file)))
    assert info.value.reason == "bad_password"


def test_load_identity_from_pem_with_certificate_and_key(pki: Pki, tmp_path: Path) -> None:
    leaf = pki.leaf(client=True)
    path = tmp_path / "client.pem"
    path.write_bytes(leaf.cert_pem() + leaf.key_pem())
    ident = files.load_identity(_spec(path))
    assert (ident.chain[0], ident.key.public_key()) == (leaf.cert, leaf.cert.public_key())


# --------------------------------------------------------------------------
# Files that must not be read
# --------------------------------------------------------------------------

_READ_AS_NOBODY = f"""
import os, sys
from textfile_probe import files
from textfile_probe.config import StoreSpec
os.setgroups([])
os.setresgid({NOBODY}, {NOBODY}, {NOBODY})
os.setresuid({NOBODY}, {NOBODY}, {NOBODY})
print(" ".join(files.read_file(p, StoreSpec(p)).reason for p in sys.argv[1:]))
"""


@pytest.fixture
def world_traversable_dir() -> Iterator[Path]:
    """A directory anyone may enter (pytest's own tmp_path is 0700, which would deny for the wrong reason)."""
    path = Path(tempfile.mkdtemp(prefix="textfile-probe-perm-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path)


def test_file_the_reader_may_not_open_is_permission_denied(pki: Pki, world_traversable_dir: Path) -> None:
    """As root (CI), permissions are bypassed, so the read runs in a child process that imports the product as
    root and then drops to nobody (65534) before opening anything; the interpreter itself (under /root/.pyenv
    here) need not be readable by nobody that way. A 0644 file in the same directory must read fine."""
    secret = write_pem(world_traversable_dir / "secret.pem", pki.leaf())
    public = write_pem(world_traversable_dir / "public.pem", pki.leaf())
    secret.chmod(0o600)
    public.chmod(0o644)
    if os.geteuid() != 0:
        secret.chmod(0o000)
        reasons = [files.read_file(str(p), _spec(p)).reason for p in (secret, public)]
    else:
        done = subprocess.run(
            [sys.executable, "-c", _READ_AS_NOBODY, str(secret), str(public)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        reasons = done.stdout.split()
    assert reasons == ["permission_denied", "ok"]


def test_file_over_the_size_limit_is_too_large_without_reading_it(tmp_path: Path) -> None:
    huge, limit = tmp_path / "huge.pem", tmp_path / "limit.pem"
    with open(huge, "wb") as handle:
        handle.truncate(files.MAX_FILE_SIZE + 1)  # sparse: no 16 MB written
    with open(limit, "wb") as handle:
        handle.truncate(files.MAX_FILE_SIZE)
    result = files.read_file(str(huge), _spec(huge))
    assert (result.reason, result.modified) == ("too_large", huge.stat().st_mtime)
    assert _reasons(files.FileWatcher().refresh([_spec(huge)])) == {"huge.pem": "too_large"}
    # At the limit the file is read; sixteen megabytes of zeros are no certificate format.
    assert files.read_file(str(limit), _spec(limit)).reason == "unsupported_format"


def test_character_device_is_not_a_regular_file() -> None:
    result = files.read_file("/dev/zero", _spec("/dev/zero"))
    assert (result.reason, result.detail) == ("unsupported_format", "not a regular file")


def _without_blocking(fifo: Path, call: Callable[[], object]) -> object:
    """`call()`'s result (or exception); fails the test if it is still blocked after a second, after
    opening the FIFO for writing once so that the blocked open() returns and the thread ends."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(1.0)
    blocked = thread.is_alive()
    if blocked:
        with contextlib.suppress(OSError):  # ENXIO if it was not waiting in open() after all
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5.0)
    assert not blocked, "blocked opening a FIFO (open() without O_NONBLOCK waits for a writer)"
    return outcome[0]


FIFO_CALLS: dict[str, Callable[[Path], object]] = {
    "read_file": lambda p: files.read_file(str(p), _spec(p)).reason,
    "FileWatcher.refresh": lambda p: [r.reason for r in files.FileWatcher().refresh([_spec(p)])],
    "load_identity": lambda p: files.load_identity(_spec(p)),
}
FIFO_EXPECTED = {"read_file": "unsupported_format", "FileWatcher.refresh": ["unsupported_format"]}


@pytest.mark.parametrize("name", list(FIFO_CALLS))
def test_fifo_is_refused_without_blocking(tmp_path: Path, name: str) -> None:
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    outcome = _without_blocking(fifo, lambda: FIFO_CALLS[name](fifo))
    if name == "load_identity":
        assert isinstance(outcome, StoreError) and outcome.reason == "unsupported_format", outcome
    else:
        assert outcome == FIFO_EXPECTED[name]


def test_fifo_in_a_directory_or_glob_is_not_listed(pki: Pki, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.pem")
    write_pem(tmp_path / "real.pem", pki.leaf())
    for spec in (_spec(tmp_path), _spec(tmp_path / "*.pem")):
        assert list(files.expand(spec)) == [str(tmp_path / "real.pem")]


# --------------------------------------------------------------------------
# A keystore read without its password: nothing may raise
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def truststore(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if KEYTOOL is None:
        pytest.skip("keytool not on PATH (needs a JDK, e.g. openjdk-17-jdk-headless)")
    path = tmp_path_factory.mktemp("jks") / "trust.jks"
    return make_keystore(path, "JKS", password=PASSWORD, trusted=[pki.root.cert])


def test_jks_without_password_holding_an_unparsable_certificate_is_corrupt_not_an_exception(
    pki: Pki, truststore: Path, tmp_path: Path
) -> None:
    """Without a password the JKS digest is not checked, so damaged certificate bytes reach files.py."""
    data = bytearray(truststore.read_bytes())
    start = bytes(data).find(pki.root.cert.public_bytes(serialization.Encoding.DER))
    assert start > 0
    data[start + 1] ^= 0x01  # the certificate's outer length-of-length: 0x82 -> 0x83
    damaged = tmp_path / "damaged.jks"
    damaged.write_bytes(bytes(data))
    with_password = files.read_file(str(damaged), _spec(damaged, password=PASSWORD))
    assert with_password.reason == "bad_password"  # the digest notices the change
    assert files.read_file(str(damaged), _spec(damaged)).reason == "corrupt"
    assert _reasons(files.FileWatcher().refresh([_spec(damaged)])) == {"damaged.jks": "corrupt"}
