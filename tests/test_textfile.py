"""The atomic write: whole file or the previous one, never a partial or a stray temp file."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from textfile_probe import textfile


def test_writes_file_with_mode_0644_and_no_temp_left(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        textfile.write_atomic(tmp_path / "x.prom", b"a 1\n")
    finally:
        os.umask(old)
    path = tmp_path / "x.prom"
    assert path.read_bytes() == b"a 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["x.prom"]


def test_replaces_atomically_via_rename(tmp_path: Path) -> None:
    path = tmp_path / "x.prom"
    textfile.write_atomic(path, b"a 1\n")
    inode = path.stat().st_ino
    textfile.write_atomic(path, b"a 2\n")
    assert path.read_bytes() == b"a 2\n"
    assert path.stat().st_ino != inode  # a new file was renamed over, not rewritten in place


def test_temp_name_is_ignored_by_node_exporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(os.fspath(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    textfile.write_atomic(tmp_path / "x.prom", b"a 1\n")
    (temp,) = seen
    assert Path(temp).parent == tmp_path and not temp.endswith(".prom")


def test_disk_full_keeps_previous_file_and_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.prom"
    textfile.write_atomic(path, b"good 1\n")

    def full(fd: int, data: bytes | memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        textfile.write_atomic(path, b"new 2\n" * 1000)
    assert path.read_bytes() == b"good 1\n"
    assert os.listdir(tmp_path) == ["x.prom"]


def test_fsync_failure_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.prom"
    textfile.write_atomic(path, b"good 1\n")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        textfile.write_atomic(path, b"new 2\n")
    assert path.read_bytes() == b"good 1\n"
    assert os.listdir(tmp_path) == ["x.prom"]


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        textfile.write_atomic(tmp_path / "absent" / "x.prom", b"a 1\n")


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    textfile.write_atomic(tmp_path / "x.prom", b"0123456789\n")
    assert (tmp_path / "x.prom").read_bytes() == b"0123456789\n"


def test_stale_temps_from_a_killed_run_are_removed(tmp_path: Path) -> None:
    (tmp_path / "x.prom").write_text("a 1\n")
    (tmp_path / ".x.prom.12345.tmp").write_text("partial")
    (tmp_path / ".other.prom.1.tmp").write_text("not ours")
    textfile.remove_stale_temps(tmp_path / "x.prom")
    assert sorted(os.listdir(tmp_path)) == [".other.prom.1.tmp", "x.prom"]
