"""Our .prom output against the real consumers: promtool's linter and node_exporter's textfile collector.

One `textfile-probe run --once` (a real subprocess) against a valid chain, a closed port, an expired leaf and a leaf
whose subject holds `"`, `\\` and a newline writes the file that every test here reads.  The promtool and
node_exporter tests are skipped only when their binary is missing (CI installs both); everything else always runs.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from oneshot import run_once
from pki import Issued, Pki, write_pem
from prometheus_client.parser import text_string_to_metric_families
from servers import ClosedPort, TlsServer, stop_process

PROMTOOL = shutil.which("promtool")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
HOSTILE_SUBJECT_EXTRA = 'Evil "Quoted" \\ Backslash\nNew line'
OUTPUT_NAME = "textfile_probe.prom"

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float
    timestamp: object


@dataclass(frozen=True)
class Output:
    """What the --once run produced, and the certificates it probed."""

    path: Path
    text: str
    good: Issued
    expired: Issued
    hostile: Issued
    intermediate: Issued
    expected_success: dict[str, float]
    root_not_after: float


def samples(text: str) -> list[Sample]:
    """Every sample of an exposition text, via prometheus_client's own parser."""
    return [
        Sample(s.name, dict(s.labels), s.value, s.timestamp)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def find(all_samples: list[Sample], name: str, **labels: str) -> list[Sample]:
    return [s for s in all_samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def series(all_samples: list[Sample], names: set[str]) -> dict[tuple[str, Labels], float]:
    """(name, labels without empty values) -> value, for the samples whose name is in `names`."""
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if v != ""))): s.value
        for s in all_samples
        if s.name in names
    }


def one(all_samples: list[Sample], name: str, **labels: str) -> Sample:
    found = find(all_samples, name, **labels)
    assert len(found) == 1, f"expected one {name}{labels}, found {found}"
    return found[0]


def not_after(issued: Issued) -> float:
    return issued.cert.not_valid_after_utc.timestamp()


@pytest.fixture(scope="module")
def output(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Output:
    base = tmp_path_factory.mktemp("integration")
    textfile_dir = base / "textfile"
    textfile_dir.mkdir()
    trust = write_pem(base / "root.pem", pki.root)
    good = pki.leaf()
    bundle_dir = base / "certs"
    bundle_dir.mkdir()
    expired = pki.leaf(valid_for=timedelta(days=-3))
    hostile = pki.leaf(subject_extra=HOSTILE_SUBJECT_EXTRA)
    with contextlib.ExitStack() as stack:
        good_server = stack.enter_context(TlsServer(pki.chain_for(good), good.key))
        expired_server = stack.enter_context(TlsServer(pki.chain_for(expired), expired.key))
        hostile_server = stack.enter_context(TlsServer(pki.chain_for(hostile), hostile.key))
        closed = stack.enter_context(ClosedPort())
        # Files: the good server's chain (paired with its target), a bundle holding the hostile certificate,
        # and a path that does not exist; node_exporter must take their series too.
        write_pem(bundle_dir / "good.pem", *pki.chain_for(good))
        write_pem(bundle_dir / "bundle.pem", hostile, pki.intermediate, pki.root)
        config = {
            "output": str(textfile_dir / OUTPUT_NAME),
            "timeout": "3s",
            "interval": "1m",
            "defaults": {"ca_file": str(trust)},
            "targets": [
                # Static labels on one target only: node_exporter must accept a family whose samples differ in
                # label names (it pads the missing ones with "").
                {
                    "name": "good",
                    "address": good_server.address,
                    "server_name": "localhost",
                    "labels": {"team": "edge"},
                    "keystore": str(bundle_dir / "good.pem"),
                },
                {"name": "expired", "address": expired_server.address, "server_name": "localhost"},
                {"name": "hostile", "address": hostile_server.address, "server_name": "localhost"},
                {"name": "closed", "address": closed.address, "server_name": "localhost"},
            ],
            "files": [str(bundle_dir / "*.pem"), {"path": str(base / "missing.jks"), "labels": {"team": "db"}}],
        }
        run_once(base, config)
    path = textfile_dir / OUTPUT_NAME
    return Output(
        path=path,
        text=path.read_text(encoding="utf-8"),
        good=good,
        expired=expired,
        hostile=hostile,
        intermediate=pki.intermediate,
        expected_success={"good": 1.0, "expired": 0.0, "hostile": 1.0, "closed": 0.0},
        root_not_after=not_after(pki.root),
    )


# --------------------------------------------------------------------------
# The file itself
# --------------------------------------------------------------------------


def test_file_has_no_duplicate_series_and_no_timestamps(output: Output) -> None:
    parsed = samples(output.text)
    assert parsed, "the file holds no samples"
    keys = [(s.name, tuple(sorted(s.labels.items()))) for s in parsed]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    assert not duplicates, f"duplicate series: {duplicates}"
    stamped = [s for s in parsed if s.timestamp is not None]
    assert not stamped, f"samples with timestamps (node_exporter rejects them): {stamped}"
    assert not list(output.path.parent.glob(".*.tmp")), "a temporary file was left behind"


def test_file_has_the_expected_values(output: Output) -> None:
    parsed = samples(output.text)
    for target, value in output.expected_success.items():
        assert one(parsed, "probe_success", target=target).value == value, target
    assert one(parsed, "probe_ssl_earliest_cert_expiry", target="good").value == not_after(output.good)
    assert one(parsed, "probe_ssl_earliest_cert_expiry", target="expired").value == not_after(output.expired)
    assert not find(parsed, "probe_ssl_earliest_cert_expiry", target="closed")


def test_file_has_the_certificate_files(output: Output) -> None:
    parsed = samples(output.text)
    read = {(s.labels["path"].rsplit("/", 1)[-1], s.labels["reason"]): s.value
            for s in find(parsed, "textfile_probe_file_read_success")}  # fmt: skip
    assert read == {("bundle.pem", "ok"): 1.0, ("good.pem", "ok"): 1.0, ("missing.jks", "not_found"): 0.0}
    assert one(parsed, "textfile_probe_file_read_success", reason="not_found").labels["team"] == "db"
    bundle = sorted(
        (s.labels["position"], s.labels["subject_cn"], s.value)
        for s in find(parsed, "textfile_probe_file_cert_not_after_timestamp_seconds")
        if s.labels["path"].endswith("/bundle.pem")
    )
    assert bundle == [
        ("0", "localhost", not_after(output.hostile)),
        ("1", "textfile-probe Test Intermediate CA", not_after(output.intermediate)),
        ("2", "textfile-probe Test Root CA", output.root_not_after),
    ]
    assert one(parsed, "textfile_probe_served_cert_matches_file", target="good").value == 1.0
    assert not find(parsed, "textfile_probe_served_cert_matches_file", target="expired")


# --------------------------------------------------------------------------
# promtool
# --------------------------------------------------------------------------


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus')")
def test_promtool_check_metrics_accepts_the_file(output: Output) -> None:
    assert PROMTOOL is not None
    with output.path.open("rb") as stdin:
        done = subprocess.run([PROMTOOL, "check", "metrics"], stdin=stdin, capture_output=True, timeout=30, check=False)
    printed = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, f"promtool check metrics exited {done.returncode}:\n{printed}"
    assert printed.strip() == "", f"promtool printed lint output:\n{printed}"


# --------------------------------------------------------------------------
# node_exporter
# --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _scrape(url: str, deadline: float, process: subprocess.Popen[bytes]) -> str | None:
    """GET `url` until it answers 200, the process dies, or `deadline`; None if it never answered."""
    for _ in range(200):
        if process.poll() is not None or time.monotonic() > deadline:
            return None
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                body: bytes = response.read()
                return body.decode("utf-8")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    return None


@contextlib.contextmanager
def node_exporter(textfile_dir: Path, log_path: Path) -> Iterator[str]:
    """Run node_exporter with only the textfile collector on a free loopback port; yield its /metrics text."""
    assert NODE_EXPORTER is not None
    for _attempt in range(3):  # the port may be taken between picking and binding it
        port = _free_port()
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    NODE_EXPORTER,
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--collector.disable-defaults",
                    "--collector.textfile",
                    f"--collector.textfile.directory={textfile_dir}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            text = _scrape(f"http://127.0.0.1:{port}/metrics", time.monotonic() + 10.0, process)
            if text is not None:
                yield text
                return
        finally:
            stop_process(process)
    raise AssertionError(f"node_exporter never answered:\n{log_path.read_text(errors='replace')}")


@pytest.mark.skipif(
    NODE_EXPORTER is None, reason="node_exporter not installed (Debian package 'prometheus-node-exporter')"
)
def test_node_exporter_reads_the_file(output: Output, tmp_path: Path) -> None:
    log_path = tmp_path / "node_exporter.log"
    with node_exporter(output.path.parent, log_path) as text:
        scraped = samples(text)
    log = log_path.read_text(errors="replace")

    assert one(scraped, "node_textfile_scrape_error").value == 0.0, log
    assert "level=error" not in log, log
    # node_exporter 1.5 labels the file by its full path; accept a bare name too.
    names = {str(output.path), OUTPUT_NAME}
    mtimes = [s for s in find(scraped, "node_textfile_mtime_seconds") if s.labels.get("file") in names]
    assert len(mtimes) == 1, (
        f"no node_textfile_mtime_seconds for {output.path}: {find(scraped, 'node_textfile_mtime_seconds')}"
    )
    assert abs(mtimes[0].value - output.path.stat().st_mtime) < 2.0

    # Every series of ours comes through unchanged, and nothing else appears under our names.
    ours = samples(output.text)
    names = {s.name for s in ours}
    assert series(scraped, names) == series(ours, names)

    for target, value in output.expected_success.items():
        assert one(scraped, "probe_success", target=target).value == value, target
    assert one(scraped, "probe_success", target="good").labels.get("team") == "edge"
    assert one(scraped, "probe_ssl_earliest_cert_expiry", target="good").value == not_after(output.good)
    assert one(scraped, "probe_ssl_earliest_cert_expiry", target="expired").value == not_after(output.expired)
    positions = {
        s.labels["position"]: s.value
        for s in find(scraped, "textfile_probe_cert_not_after_timestamp_seconds", target="good")
    }
    assert positions == {"0": not_after(output.good), "1": not_after(output.intermediate)}
    failures = {
        s.labels["target"]: (s.labels["stage"], s.labels["reason"])
        for s in find(scraped, "textfile_probe_failure_info")
    }
    assert failures == {"closed": ("connect", "refused"), "expired": ("verify", "expired")}

    # The hostile subject survives our escaping, node_exporter's parse and re-exposition, and the parse here.
    subject = output.hostile.cert.subject.rfc4514_string()
    assert '"' in subject and "\\" in subject and "\n" in subject
    info = one(scraped, "probe_ssl_last_chain_info", target="hostile")
    assert info.labels["subject"] == subject
    assert one(scraped, "textfile_probe_cert_not_after_timestamp_seconds", target="hostile", position="0").value == (
        not_after(output.hostile)
    )
