#!/usr/bin/env python3
"""Benchmark the per-cycle cost of watching a directory of certificate files when nothing changed.

Builds a directory of N files at run time (PEM certificates, PEM bundles, PKCS#12 made by
cryptography, and copies of one JKS and one JCEKS made by keytool when a JRE is there), then in
one process measures, each over `--repeat` rounds:

* first read: `FileWatcher.refresh` on a fresh watcher (every file parsed);
* unchanged: `refresh` again on the warm watcher (every file stat()ed, none parsed);
* render: turning the results into exposition text from scratch (what a cycle does after a change);
* render_unchanged: a refresh plus the daemon's cached file text (what a cycle does when nothing changed);
* floor: `os.stat` of every file plus the directory listing, the least any change check can cost;
* one changed: a single file touched between rounds (one parse plus N stats).

The reference is the floor, measured in the same rounds, so the ratio holds on a noisy machine.
Wall time and process CPU (time.process_time) are both reported; medians of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from textfile_probe.config import StoreSpec
from textfile_probe.files import FileWatcher
from textfile_probe.metrics import FileText, render


def _certs(count: int) -> list[tuple[x509.Certificate, ec.EllipticCurvePrivateKey]]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    out = []
    for i in range(count):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-{i:05d}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(i + 1)
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30 + i % 300))
            .sign(key, hashes.SHA256())
        )
        out.append((cert, key))
    return out


def _keytool_stores(work: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> list[Path]:
    """One JKS and one JCEKS made by keytool from a PKCS#12, or none without a JRE."""
    if shutil.which("keytool") is None:
        return []
    source = work / "source.p12"
    source.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"node", key, cert, None, serialization.BestAvailableEncryption(b"pw1234")
        )
    )
    stores = []
    for kind in ("JKS", "JCEKS"):
        out = work / f"store.{kind.lower()}"
        subprocess.run(
            ["keytool", "-importkeystore", "-noprompt", "-srckeystore", str(source), "-srcstoretype", "PKCS12",
             "-srcstorepass", "pw1234", "-destkeystore", str(out), "-deststoretype", kind,
             "-deststorepass", "pw1234", "-destkeypass", "pw1234"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        stores.append(out)
    return stores


def build(directory: Path, count: int) -> dict[str, int]:
    """N files in `directory`: 70% single PEM, 10% PEM bundles of 5, 10% PKCS#12, 10% JKS/JCEKS copies."""
    certs = _certs(max(count, 10))
    kinds: dict[str, int] = {}
    stores = _keytool_stores(directory.parent, *certs[0])
    encryption = serialization.BestAvailableEncryption(b"pw1234")
    for i in range(count):
        cert, key = certs[i]
        slot = i % 10
        if slot == 0 and stores:
            source = stores[(i // 10) % len(stores)]
            path = directory / f"f{i:05d}{source.suffix}"
            shutil.copyfile(source, path)
        elif slot == 1:
            path = directory / f"f{i:05d}.p12"
            path.write_bytes(pkcs12.serialize_key_and_certificates(b"node", key, cert, None, encryption))
        elif slot == 2:
            path = directory / f"f{i:05d}.pem"
            path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c, _ in certs[i : i + 5]))
        else:
            path = directory / f"f{i:05d}.pem"
            path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kinds[path.suffix] = kinds.get(path.suffix, 0) + 1
    return kinds


def _timed(action: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def _floor(directory: Path) -> None:
    with os.scandir(directory) as entries:
        for entry in entries:
            os.stat(entry.path)


def run(count: int, repeat: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        directory = Path(tmp) / "certs"
        directory.mkdir()
        kinds = build(directory, count)
        os.environ["BENCH_PW"] = "pw1234"
        specs = [StoreSpec(path=str(directory), password_env="BENCH_PW")]
        rows: dict[str, list[tuple[float, float]]] = {
            name: [] for name in ("first", "unchanged", "render", "render_unchanged", "floor", "one_changed")
        }
        reads = []
        for round_ in range(repeat):
            watcher = FileWatcher()
            rows["first"].append(_timed(lambda: watcher.refresh(specs)))  # noqa: B023
            results = watcher.refresh(specs)
            before = watcher.reads
            rows["unchanged"].append(_timed(lambda: watcher.refresh(specs)))  # noqa: B023
            assert watcher.reads == before, "an unchanged refresh parsed a file"
            rows["render"].append(_timed(lambda: render([], None, files=results)))  # noqa: B023
            cached = FileText()
            cached(results)
            rows["render_unchanged"].append(_timed(lambda: cached(watcher.refresh(specs))))  # noqa: B023
            rows["floor"].append(_timed(lambda: _floor(directory)))
            touched = directory / sorted(os.listdir(directory))[round_ % count]
            os.utime(touched, ns=(time.time_ns(), time.time_ns() + round_ + 1))
            rows["one_changed"].append(_timed(lambda: watcher.refresh(specs)))  # noqa: B023
            reads.append(watcher.reads - before)
        failed = [r for r in results if not r.ok]
        certificates = sum(len(r.certs) for r in results)
    summary = {
        name: {"wall_ms": statistics.median(w for w, _ in values) * 1000,
               "cpu_ms": statistics.median(c for _, c in values) * 1000}
        for name, values in rows.items()
    }  # fmt: skip
    return {
        "files": count,
        "kinds": kinds,
        "certificates": certificates,
        "unreadable": len(failed),
        "parses_per_one_changed_round": reads,
        "repeat": repeat,
        "median": summary,
        "unchanged_over_floor_cpu": summary["unchanged"]["cpu_ms"] / max(summary["floor"]["cpu_ms"], 1e-9),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    if not 1 <= args.files <= 100_000 or not 1 <= args.repeat <= 100:
        parser.error("--files from 1 to 100000, --repeat from 1 to 100")
    result = run(args.files, args.repeat)
    print(f"{result['files']} files {result['kinds']}, {result['certificates']} certificates, "
          f"{result['unreadable']} unreadable; medians of {result['repeat']} rounds")  # fmt: skip
    print(f"{'':14}{'wall ms':>10}{'cpu ms':>10}")
    for name, figures in result["median"].items():  # type: ignore[attr-defined]
        print(f"{name:14}{figures['wall_ms']:10.2f}{figures['cpu_ms']:10.2f}")
    print(f"unchanged refresh / stat floor (CPU): {result['unchanged_over_floor_cpu']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result["unreadable"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
