"""Certificate files on disk: expand the configured paths, read what changed, keep the rest.

Strategy: every cycle each configured path (a file, a glob or a directory) is expanded and each
file is stat()ed; a file is read and parsed again only when its device, inode, size or mtime
changed, or when its password did (a password file is stat()ed the same way). So a directory of
a thousand unchanged keystores costs a thousand stat calls per cycle, not a thousand parses.
Every failure becomes a `FileResult` with a read reason (stores.READ_REASONS); nothing raises.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .certs import CertInfo, describe
from .config import StoreSpec
from .stores import ClientIdentity, Store, StoreCert, StoreError, identity, read, sniff

MAX_FILE_SIZE = 16 * 1024 * 1024  # a certificate store is kilobytes; refuse to parse a disk image

Stamp = tuple[int, int, int, int]  # (device, inode, size, mtime in ns)


@dataclass(frozen=True, slots=True)
class FileResult:
    path: str
    spec: StoreSpec
    reason: str  # "ok" or one of stores.READ_REASONS
    detail: str = ""
    format: str = ""
    certs: tuple[tuple[StoreCert, CertInfo], ...] = ()
    leaves: frozenset[str] = frozenset()  # SHA-256 fingerprints a server using this file would present
    modified: float | None = None  # mtime, when the file could be stat()ed

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def stamp_of(path: str) -> Stamp | int:
    """What identifies a file's current contents without reading it; the errno if it cannot be stat()ed."""
    try:
        return _stamp(os.stat(path))
    except OSError as exc:
        return exc.errno or 0


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "not_found"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission_denied"
    return "corrupt"  # EIO and friends: the bytes cannot be had


class PasswordError(Exception):
    pass


def password_of(spec: StoreSpec) -> str | None:
    """The store's password from its one source, or None if it has none; PasswordError if the
    source cannot give it. A password file's trailing newline is not part of the password."""
    if spec.password is not None:
        return spec.password
    if spec.password_env is not None:
        value = os.environ.get(spec.password_env)
        if value is None:
            raise PasswordError(f"the environment variable {spec.password_env} is not set")
        return value
    if spec.password_file is not None:
        try:
            return read_bytes(spec.password_file)[0][:65536].decode("utf-8").rstrip("\r\n")
        except (_ReadError, UnicodeDecodeError) as exc:
            raise PasswordError(f"cannot read password_file {spec.password_file}: {exc}") from None
    return None


def _password_stamp(spec: StoreSpec) -> object:
    """What must stay the same for a cached read to stay valid, as far as the password goes."""
    if spec.password_file is None:
        return os.environ.get(spec.password_env) if spec.password_env else None
    return stamp_of(spec.password_file)


class _ReadError(Exception):
    def __init__(self, reason: str, detail: str, modified: float | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.modified = reason, detail, modified


def read_bytes(path: str) -> tuple[bytes, os.stat_result]:
    """A regular file's bytes (at most MAX_FILE_SIZE). Opened non-blocking, so a FIFO or a device
    put where a keystore should be is refused at once instead of hanging the daemon."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _ReadError(_reason(exc), exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _ReadError("unsupported_format", "not a regular file", st.st_mtime)
        if st.st_size > MAX_FILE_SIZE:
            raise _ReadError("too_large", f"{st.st_size} bytes", st.st_mtime)
        chunks, total = [], 0
        while total <= MAX_FILE_SIZE and (chunk := os.read(fd, 1 << 20)):
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)[: MAX_FILE_SIZE + 1], st
    except OSError as exc:
        raise _ReadError(_reason(exc), exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


def read_file(path: str, spec: StoreSpec) -> FileResult:
    """Read and parse one file now, whatever changed."""
    try:
        data, st = read_bytes(path)
    except _ReadError as exc:
        return FileResult(path, spec, exc.reason, exc.detail, modified=exc.modified)
    fmt = spec.format if spec.format != "auto" else sniff(data)
    try:
        store = read(data, password_of(spec), fmt)
    except PasswordError as exc:
        return FileResult(path, spec, "password_unavailable", str(exc), fmt, modified=st.st_mtime)
    except StoreError as exc:
        return FileResult(path, spec, exc.reason, exc.detail, fmt, modified=st.st_mtime)
    return _parsed(path, spec, store, st.st_mtime)


def _parsed(path: str, spec: StoreSpec, store: Store, modified: float) -> FileResult:
    try:
        certs = tuple((c, describe(c.der)) for c in store.certs)
    except ValueError as exc:  # e.g. a damaged certificate in a JKS read without its integrity check
        return FileResult(
            path, spec, "corrupt", f"a certificate does not parse: {exc}", store.format, modified=modified
        )
    leaves = frozenset(describe(der).fingerprint_sha256 for der in store.leaves())
    return FileResult(path, spec, "ok", "", store.format, certs, leaves, modified)


def load_identity(spec: StoreSpec) -> ClientIdentity:
    """A client certificate and key from a store; StoreError (with a read reason) if it cannot."""
    try:
        data, _ = read_bytes(spec.path)
    except _ReadError as exc:
        raise StoreError(exc.reason, f"{spec.path}: {exc.detail}") from None
    try:
        return identity(data, password_of(spec), spec.format, spec.alias)
    except PasswordError as exc:
        raise StoreError("password_unavailable", str(exc)) from None


def expand(spec: StoreSpec) -> Iterator[str]:
    """The files a spec names: itself, every regular file directly in a directory, or a glob's
    matches (sorted). A plain path that does not exist is still yielded, to be reported."""
    if glob.has_magic(spec.path):
        yield from sorted(p for p in glob.iglob(spec.path) if os.path.isfile(p))
    elif os.path.isdir(spec.path):
        with os.scandir(spec.path) as entries:
            yield from sorted(e.path for e in entries if e.is_file() and not e.name.startswith("."))
    else:
        yield spec.path


class FileWatcher:
    """The latest FileResult per file, re-read only when the file (or its password) changed."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Stamp, object, StoreSpec, FileResult]] = {}
        self.reads = 0  # parses done so far, for tests and the benchmark

    def refresh(self, specs: Iterable[StoreSpec]) -> list[FileResult]:
        results: list[FileResult] = []
        seen: set[str] = set()
        for spec in specs:
            for path in expand(spec):
                if path not in seen:
                    seen.add(path)
                    results.append(self._current(path, spec))
        for gone in self._cache.keys() - seen:
            del self._cache[gone]
        return results

    def _current(self, path: str, spec: StoreSpec) -> FileResult:
        try:
            stamp = _stamp(os.stat(path))
        except OSError as exc:
            self._cache.pop(path, None)
            return FileResult(path, spec, _reason(exc), exc.strerror or str(exc))
        password = _password_stamp(spec)
        cached = self._cache.get(path)
        if cached is not None and cached[:3] == (stamp, password, spec):
            return cached[3]
        self.reads += 1
        result = read_file(path, spec)
        self._cache[path] = (stamp, password, spec, result)
        return result
