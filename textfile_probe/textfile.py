"""The atomic write of the .prom file.

A reader (node_exporter) must never see a partial or empty file, and a failed write must leave
the previous file untouched. So: write a temporary file in the same directory whose name does not
end in `.prom` (node_exporter ignores it), fsync it, set mode 0644, rename it over the target,
then fsync the directory so the rename survives a crash. The temporary file is removed on failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def write_atomic(path: str | os.PathLike[str], data: bytes | Iterable[bytes], mode: int = 0o644) -> None:
    """Replace `path` with `data` (bytes, or chunks of bytes) atomically.

    Raises OSError and leaves `path` as it was on failure.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            for chunk in (data,) if isinstance(data, bytes) else data:
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def remove_stale_temps(path: str | os.PathLike[str]) -> None:
    """Remove temporary files a killed earlier run left next to `path`."""
    target = Path(path)
    for stale in target.parent.glob(f".{target.name}.*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
