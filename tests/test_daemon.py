"""The daemon as a real subprocess: signals, reloads, failed writes, exit codes and its log format.

Each test runs `python -m textfile_probe run --config CFG` against loopback servers with short intervals, captures
stderr to a file, and polls the .prom file with a bounded deadline.  The process is always killed in a `finally`.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from pki import Pki, write_pem
from prometheus_client.parser import text_string_to_metric_families
from servers import ClosedPort, Tarpit, TlsServer

T = TypeVar("T")
Labels = tuple[tuple[str, str], ...]
Metrics = dict[tuple[str, Labels], float]

LOG_LINE = re.compile(r"^ts=\S+ level=(debug|info|warning|error) msg=")
POLL = 0.05  # seconds between looks at the file or the log
WAIT = 10.0  # default bound for any one wait; the happy path takes a fraction of it
STOP_TIMEOUT = 5.0  # how long a daemon may take to exit after SIGTERM before it is killed
RELOAD_OK = ("textfile_probe_config_last_reload_successful", ())
LAST_CYCLE = ("textfile_probe_last_cycle_timestamp_seconds", ())


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "textfile_probe", "run", "--config", str(config), *extra]


def write_config(path: Path, output: Path, targets: list[dict[str, Any]], **settings: Any) -> Path:
    document = {"output": str(output), "log_level": "debug", **settings, "targets": targets}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def parse(text: str) -> Metrics:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def read_metrics(path: Path) -> Metrics | None:
    """The file's samples, or None while it does not exist (writes are atomic: it is never partial)."""
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None


def success(metrics: Metrics) -> dict[str, float]:
    """probe_success by target."""
    return {dict(labels)["target"]: value for (name, labels), value in metrics.items() if name == "probe_success"}


def temp_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(".*.tmp"))


class DaemonProcess:
    """A running `textfile-probe run`, its stderr in a file."""

    def __init__(self, process: subprocess.Popen[bytes], stderr_path: Path) -> None:
        self.process = process
        self.stderr_path = stderr_path

    def log(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        assert self.process.poll() is None, f"daemon already exited {self.process.returncode}:\n{self.log()}"
        self.process.send_signal(sig)

    def wait_until(self, check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
        """Poll `check` until it returns a truthy value (and return it); fail if the daemon exits or time is up."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / POLL) + 2):
            value = check()
            if value:
                return value
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode} waiting for {what}:\n{self.log()}")
            if time.monotonic() > deadline:
                break
            time.sleep(POLL)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; log:\n{self.log()}")

    def wait_for_file(self, path: Path, what: str, accept: Callable[[Metrics], bool]) -> Metrics:
        def check() -> Metrics | None:
            metrics = read_metrics(path)
            return metrics if metrics is not None and accept(metrics) else None

        return self.wait_until(check, what)

    def assert_logfmt(self) -> None:
        lines = self.log().splitlines()
        assert lines, "the daemon logged nothing"
        bad = [line for line in lines if not LOG_LINE.match(line)]
        assert not bad, "stderr lines that are not logfmt:\n" + "\n".join(bad)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        return self.process.returncode


@contextlib.contextmanager
def daemon(config: Path, workdir: Path) -> Iterator[DaemonProcess]:
    stderr_path = workdir / "stderr.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            command(config), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, cwd=workdir
        )
    running = DaemonProcess(process, stderr_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def trust(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_pem(tmp_path_factory.mktemp("daemon-trust") / "root.pem", pki.root))


@pytest.fixture
def good_server(pki: Pki) -> Iterator[TlsServer]:
    leaf = pki.leaf()
    with TlsServer(pki.chain_for(leaf), leaf.key) as server:
        yield server


def tls_target(name: str, server: TlsServer | Tarpit | ClosedPort, trust: str) -> dict[str, Any]:
    return {"name": name, "address": server.address, "server_name": "localhost", "ca_file": trust}


# --------------------------------------------------------------------------
# SIGHUP
# --------------------------------------------------------------------------


def test_sighup_with_a_bad_config_keeps_probing_then_a_fixed_config_applies(
    pki: Pki, trust: str, tmp_path: Path
) -> None:
    leaf = pki.leaf()
    output = tmp_path / "out" / "probe.prom"
    output.parent.mkdir()
    cfg = tmp_path / "config.yml"
    with contextlib.ExitStack() as stack:
        keep, old, new = (stack.enter_context(TlsServer(pki.chain_for(leaf), leaf.key)) for _ in range(3))
        settings = {"interval": "1s", "timeout": "1s"}
        write_config(cfg, output, [tls_target("keep", keep, trust), tls_target("old", old, trust)], **settings)
        proc = stack.enter_context(daemon(cfg, tmp_path))
        proc.wait_for_file(output, "the first file", lambda m: success(m) == {"keep": 1.0, "old": 1.0})

        # A config that parses as YAML but does not validate: the daemon must keep the one it has.
        cfg.write_text(yaml.safe_dump({"output": str(output), "targets": [{"address": "no-port"}]}), encoding="utf-8")
        proc.signal(signal.SIGHUP)
        failed = proc.wait_for_file(output, "reload_successful 0", lambda m: m.get(RELOAD_OK) == 0.0)
        assert success(failed) == {"keep": 1.0, "old": 1.0}
        assert "config reload failed" in proc.log()

        # The old targets keep being probed on the old schedule, and the file keeps saying the reload failed.
        seen = keep.handshakes, old.handshakes
        proc.wait_until(
            lambda: keep.handshakes >= seen[0] + 2 and old.handshakes >= seen[1] + 2, "two more cycles of old config"
        )
        later = proc.wait_for_file(
            output, "a file written after those cycles", lambda m: m.get(LAST_CYCLE, 0.0) > failed[LAST_CYCLE]
        )
        assert later[RELOAD_OK] == 0.0
        assert success(later) == {"keep": 1.0, "old": 1.0}

        # Fixed: "old" removed, "new" added.
        write_config(cfg, output, [tls_target("keep", keep, trust), tls_target("new", new, trust)], **settings)
        proc.signal(signal.SIGHUP)
        fixed = proc.wait_for_file(output, "reload_successful 1 with the new target", lambda m: "new" in success(m))
        assert fixed[RELOAD_OK] == 1.0
        assert success(fixed) == {"keep": 1.0, "new": 1.0}
        assert fixed[("textfile_probe_targets", ())] == 2.0
        assert not [key for key in fixed if ("target", "old") in key[1]], "a removed target is still in the file"
        assert new.wait_handshakes(1)

        assert proc.stop() == 0
        proc.assert_logfmt()


# --------------------------------------------------------------------------
# SIGTERM
# --------------------------------------------------------------------------


def test_sigterm_mid_cycle_exits_promptly_and_keeps_the_last_complete_file(
    pki: Pki, trust: str, good_server: TlsServer, tmp_path: Path
) -> None:
    output = tmp_path / "out" / "probe.prom"
    output.parent.mkdir()
    cfg = tmp_path / "config.yml"
    settings = {"interval": "10s", "timeout": "5s"}
    with Tarpit() as tarpit:
        # First a quick cycle writes a complete file; then a reload adds the tarpit, and the cycle it starts at once
        # hangs on it for up to its 5 s timeout.  SIGTERM lands inside that cycle.
        write_config(cfg, output, [tls_target("fast", good_server, trust)], **settings)
        with daemon(cfg, tmp_path) as proc:
            proc.wait_for_file(output, "the first file", lambda m: success(m) == {"fast": 1.0})
            before = output.read_bytes()
            before_mtime = output.stat().st_mtime_ns
            write_config(
                cfg, output, [tls_target("fast", good_server, trust), tls_target("stuck", tarpit, trust)], **settings
            )
            handshakes = good_server.handshakes
            proc.signal(signal.SIGHUP)
            proc.wait_until(
                lambda: tarpit.connections >= 1 and good_server.handshakes > handshakes,
                "the reload cycle to reach the tarpit",
            )
            time.sleep(0.2)  # well inside the 5 s the tarpit holds the cycle
            assert proc.process.poll() is None
            sent = time.monotonic()
            proc.signal(signal.SIGTERM)
            try:
                code = proc.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no exit within {STOP_TIMEOUT}s of SIGTERM:\n{proc.log()}")
            took = time.monotonic() - sent
            assert code == 0, proc.log()
            assert took < 2.0, f"exit took {took:.2f}s after SIGTERM"

            assert output.read_bytes() == before, "the last complete file was replaced"
            assert output.stat().st_mtime_ns == before_mtime
            assert success(parse(before.decode())) == {"fast": 1.0}
            assert temp_files(output.parent) == []
            assert "cycle cancelled by a stop request" in proc.log()
            proc.assert_logfmt()


# --------------------------------------------------------------------------
# --once exit codes
# --------------------------------------------------------------------------


def test_once_exits_1_when_the_output_directory_is_missing(tmp_path: Path) -> None:
    with ClosedPort() as closed:
        cfg = write_config(
            tmp_path / "config.yml",
            tmp_path / "missing" / "probe.prom",
            [{"name": "closed", "address": closed.address}],
            timeout="2s",
        )
        done = subprocess.run(command(cfg, "--once"), capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1, done.stderr
    assert not (tmp_path / "missing").exists()
    errors = [line for line in done.stderr.splitlines() if "level=error" in line]
    assert errors and "cannot write the output file" in errors[0], done.stderr
    bad = [line for line in done.stderr.splitlines() if not LOG_LINE.match(line)]
    assert not bad, bad


def test_once_exits_2_on_a_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yml"
    cfg.write_text(yaml.safe_dump({"output": str(tmp_path / "probe.prom"), "targets": [{"address": "no-port"}]}))
    done = subprocess.run(command(cfg, "--once"), capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    assert f"{cfg}:" in done.stderr and "targets[0].address" in done.stderr, done.stderr
    assert not (tmp_path / "probe.prom").exists()


# --------------------------------------------------------------------------
# A failed write
# --------------------------------------------------------------------------


def test_a_failed_write_keeps_the_daemon_alive_and_it_recovers(
    trust: str, good_server: TlsServer, tmp_path: Path
) -> None:
    directory = tmp_path / "out"
    directory.mkdir()
    output = directory / "probe.prom"
    cfg = write_config(
        tmp_path / "config.yml", output, [tls_target("fast", good_server, trust)], interval="1s", timeout="1s"
    )
    with daemon(cfg, tmp_path) as proc:
        proc.wait_for_file(output, "the first file", lambda m: success(m) == {"fast": 1.0})

        # Root ignores a read-only directory, so take the directory away and put a plain file in its place.
        shutil.rmtree(directory)
        directory.write_text("not a directory\n")

        def error_lines() -> list[str]:
            return [line for line in proc.log().splitlines() if " level=error " in line]

        errors = proc.wait_until(error_lines, "a level=error line about the failed write")
        assert 'msg="cannot write the output file; the previous file is kept"' in errors[0], errors
        assert f"path={output}" in errors[0], errors
        handshakes = good_server.handshakes
        proc.wait_until(lambda: good_server.handshakes > handshakes, "another cycle after the failed write")
        assert proc.process.poll() is None

        directory.unlink()
        directory.mkdir()
        recovered = proc.wait_for_file(output, "the file written again", lambda m: success(m) == {"fast": 1.0})
        assert recovered[RELOAD_OK] == 1.0
        assert temp_files(directory) == []
        assert proc.process.poll() is None

        assert proc.stop() == 0
        proc.assert_logfmt()


# --------------------------------------------------------------------------
# Log format
# --------------------------------------------------------------------------


def test_logs_are_logfmt_lines_whatever_a_peer_says(
    pki: Pki, trust: str, good_server: TlsServer, tmp_path: Path
) -> None:
    """Failures carry peer- and OS-provided text in `detail`; each event must still be one logfmt line."""
    output = tmp_path / "probe.prom"
    with ClosedPort() as closed, Tarpit() as tarpit:
        targets = [
            tls_target("fast", good_server, trust),
            tls_target("closed", closed, trust),
            tls_target("stuck", tarpit, trust),
            {"name": 'odd "name" with\\backslash', "address": good_server.address, "server_name": "wrong.invalid"},
        ]
        cfg = write_config(tmp_path / "config.yml", output, targets, interval="1s", timeout="500ms")
        with daemon(cfg, tmp_path) as proc:
            proc.wait_for_file(output, "the first file with every target", lambda m: len(success(m)) == 4)
            first = read_metrics(output)
            assert first is not None
            proc.wait_for_file(output, "a second cycle", lambda m: m.get(LAST_CYCLE, 0.0) > first[LAST_CYCLE])
            assert proc.stop() == 0
            log = proc.log()
            proc.assert_logfmt()
    levels = {match.group(1) for match in map(LOG_LINE.match, log.splitlines()) if match}
    assert {"info", "warning", "debug"} <= levels, log


def test_sighup_rediscovers_cassandra_and_rereads_a_replaced_keystore(pki: Pki, trust: str, tmp_path: Path) -> None:
    """The running daemon: a cassandra.yaml edited to turn on client encryption yields its native target at the
    next SIGHUP; a keystore rewritten on disk is re-read at the next cycle, without any signal."""
    served, renewed = pki.leaf(), pki.leaf()
    output = tmp_path / "out" / "probe.prom"
    output.parent.mkdir()
    keystore = write_pem(tmp_path / "node.pem", *pki.chain_for(served))
    cassandra = tmp_path / "cassandra.yaml"
    match = "textfile_probe_served_cert_matches_file"

    def node_yaml(enabled: bool, port: int) -> None:
        cassandra.write_text(
            f"rpc_address: 127.0.0.1\nnative_transport_port: {port}\n"
            f"client_encryption_options:\n  enabled: {str(enabled).lower()}\n"
            "  ssl_context_factory:\n    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory\n"
            f"  keystore: {keystore}\n  truststore: {trust}\n"
        )

    with TlsServer(pki.chain_for(served), served.key) as node:
        node_yaml(False, node.port)
        cfg = tmp_path / "config.yml"
        document = {"output": str(output), "interval": "1s", "timeout": "1s", "discover": {"cassandra": str(cassandra)}}
        cfg.write_text(yaml.safe_dump(document), encoding="utf-8")
        with daemon(cfg, tmp_path) as proc:
            first = proc.wait_for_file(output, "a file with no target", lambda m: LAST_CYCLE in m)
            assert success(first) == {}

            node_yaml(True, node.port)
            proc.signal(signal.SIGHUP)
            found = proc.wait_for_file(
                output, "the discovered native target", lambda m: "cassandra/native" in success(m)
            )
            assert success(found) == {"cassandra/native": 1.0}
            assert found[(match, (("path", str(keystore)), ("target", "cassandra/native")))] == 1.0

            write_pem(keystore, *pki.chain_for(renewed))  # renewed on disk; the node still serves the old one
            changed = proc.wait_for_file(
                output,
                "the mismatch",
                lambda m: m.get((match, (("path", str(keystore)), ("target", "cassandra/native")))) == 0.0,
            )
            assert success(changed) == {"cassandra/native": 1.0}
