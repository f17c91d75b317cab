"""sd_notify: the datagram protocol against real AF_UNIX sockets, the STATUS= line, and what a real daemon says.

`Listener` plays systemd's side: it binds a datagram socket (a path, or a name in the abstract namespace), asks the
kernel for each sender's credentials as systemd does (SO_PASSCRED), and records every datagram with its arrival time
from a reader thread, so the gaps between watchdog pings are measured where they land, not when the test looks.
Daemon tests run `python -m textfile_probe run` with NOTIFY_SOCKET and a 400 ms WATCHDOG_USEC against loopback
servers; every wait is bounded and the process is always killed in a `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding
from pki import Pki, write_pem
from servers import ClosedPort, Tarpit, TlsServer

from textfile_probe import config
from textfile_probe.certs import describe
from textfile_probe.config import StoreSpec
from textfile_probe.files import read_file
from textfile_probe.probe import ProbeResult
from textfile_probe.scheduler import Daemon, status_line
from textfile_probe.sdnotify import Notifier

WATCHDOG_USEC = 400_000
WAIT = 10.0  # bound for any one wait; the happy path takes a fraction of it
POLL = 0.02
STOP_TIMEOUT = 5.0
_CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid


# --------------------------------------------------------------------------
# systemd's side of the socket
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    at: float  # time.monotonic() on arrival
    pid: int  # the sender, from SCM_CREDENTIALS
    fields: dict[str, str]

    def __contains__(self, assignment: str) -> bool:
        key, _, value = assignment.partition("=")
        return self.fields.get(key) == value


class Listener:
    """A bound AF_UNIX datagram socket that records what arrives, until closed."""

    def __init__(self, address: str) -> None:
        self.notify_socket = "@" + address[1:] if address.startswith("\0") else address
        self.messages: list[Message] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(address)
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        deadline = time.monotonic() + 600  # never outlive a hung test by much
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                data, ancillary, _flags, _addr = self._sock.recvmsg(4096, socket.CMSG_SPACE(_CREDENTIALS.size))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = next(
                (_CREDENTIALS.unpack(d[: _CREDENTIALS.size])[0] for lvl, kind, d in ancillary
                 if lvl == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS),
                -1,
            )  # fmt: skip
            fields = dict(line.partition("=")[::2] for line in data.decode().split("\n") if line)
            self.messages.append(Message(time.monotonic(), pid, fields))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def wait_for(self, check: Callable[[list[Message]], bool], what: str, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if check(list(self.messages)):
                return
            if process.poll() is not None and not check(list(self.messages)):
                raise AssertionError(f"daemon exited {process.returncode} waiting for {what}: {self.messages}")
            time.sleep(POLL)
        raise AssertionError(f"timed out after {WAIT}s waiting for {what}: {self.messages}")

    def index(self, assignment: str, after: int = -1) -> int:
        """Position of the first message after `after` that carries `assignment`."""
        return next(i for i, m in enumerate(self.messages) if i > after and assignment in m)


@contextlib.contextmanager
def listener(address: str) -> Iterator[Listener]:
    bound = Listener(address)
    try:
        yield bound
    finally:
        bound.close()


def count(assignment: str) -> Callable[[list[Message]], int]:
    return lambda messages: sum(assignment in m for m in messages)


# --------------------------------------------------------------------------
# The daemon as a subprocess
# --------------------------------------------------------------------------


def write_config(path: Path, output: Path, targets: list[dict[str, Any]], **settings: Any) -> Path:
    document = {"output": str(output), "log_level": "debug", **settings, "targets": targets}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def target(name: str, server: TlsServer | Tarpit | ClosedPort, trust: Path) -> dict[str, Any]:
    return {"name": name, "address": server.address, "server_name": "localhost", "ca_file": str(trust)}


@contextlib.contextmanager
def daemon(cfg: Path, notify: Listener, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "NOTIFY_SOCKET": notify.notify_socket, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    env.pop("WATCHDOG_PID", None)
    log = cfg.parent / "stderr.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "textfile_probe", "run", "--config", str(cfg), *extra],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, cwd=cfg.parent,
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=STOP_TIMEOUT)


def terminate(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit within {STOP_TIMEOUT}s of SIGTERM")


@pytest.fixture(scope="module")
def trust(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pem(tmp_path_factory.mktemp("sdnotify-trust") / "root.pem", pki.root)


# --------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------


def test_notify_reaches_a_socket_path_and_the_abstract_namespace(tmp_path: Path) -> None:
    abstract = "\0textfile-probe-test-" + uuid.uuid4().hex
    for address in (str(tmp_path / "notify"), abstract):
        with listener(address) as bound:
            notifier = Notifier.from_environment({"NOTIFY_SOCKET": bound.notify_socket})
            assert notifier.send("READY=1\nSTATUS=two lines, one datagram")
            deadline = time.monotonic() + WAIT
            while not bound.messages and time.monotonic() < deadline:
                time.sleep(POLL)
        assert [m.fields for m in bound.messages] == [{"READY": "1", "STATUS": "two lines, one datagram"}]
        assert bound.messages[0].pid == os.getpid()


def test_without_notify_socket_nothing_is_sent_and_there_is_no_watchdog() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "400000"})
    assert notifier == Notifier(None, None)
    assert notifier.send("READY=1") is False


def test_a_failed_send_is_logged_at_debug_and_never_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    unusable = ["vsock:2:1234", "relative/path"]
    assert all(Notifier.from_environment({"NOTIFY_SOCKET": raw}).address is None for raw in unusable)
    with caplog.at_level(logging.DEBUG, logger="textfile_probe"):
        assert Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}).send("READY=1") is False
        assert Notifier.from_environment({"NOTIFY_SOCKET": "/" + "x" * 200}).send("READY=1") is False  # path too long
    failures = [r for r in caplog.records if r.getMessage() == "sd_notify failed"]
    assert len(failures) == 2 and {r.levelno for r in failures} == {logging.DEBUG}


def test_a_full_receive_queue_drops_messages_instead_of_blocking(tmp_path: Path) -> None:
    path = str(tmp_path / "full")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as never_read:
        never_read.bind(path)
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
        started = time.monotonic()
        sent = [notifier.send("WATCHDOG=1") for _ in range(2000)]  # the queue holds far fewer (net.unix.max_dgram_qlen)
        assert time.monotonic() - started < 5.0
    assert sent[0] and not sent[-1]


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "400000"}, 0.4),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_comes_from_watchdog_usec_for_this_pid(environ: dict[str, str], interval: float) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "/run/systemd/notify", **environ}, pid=4242)
    assert notifier.watchdog_interval == interval


# --------------------------------------------------------------------------
# The STATUS= line
# --------------------------------------------------------------------------


def test_status_line_counts_failures_and_names_the_earliest_expiry(pki: Pki, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    names = ["db1", "web", "down", "old"]
    cfg.write_text(yaml.safe_dump({"targets": [{"name": n, "address": f"h{i}:1"} for i, n in enumerate(names)]}))
    db1, web, down, old = config.load(cfg).targets
    now = pki.now.timestamp()

    def chain(days: float) -> tuple[Any, ...]:
        return (describe(pki.leaf(valid_for=timedelta(days=days)).cert.public_bytes(Encoding.DER)),)

    results = [
        ProbeResult(db1, True, 0.1, peer_chain=chain(23.4)),
        ProbeResult(web, True, 0.1, peer_chain=chain(80)),
        ProbeResult(down, False, 1.0),
    ]
    assert status_line(results, 12, now) == "12 targets, 1 failing, next expiry in 23.4 days (db1)"
    assert status_line(results[2:], 1, now) == "1 target, 1 failing"
    assert status_line([], 0, now, config_ok=False) == (
        "0 targets, 0 failing; config reload failed, running the previous config"
    )
    expired = [ProbeResult(old, False, 0.1, peer_chain=chain(-2.5)), *results]
    assert status_line(expired, 4, now) == "4 targets, 2 failing, expired 2.5 days ago (old)"

    store = tmp_path / "truststore.pem"
    write_pem(store, pki.leaf(valid_for=timedelta(days=9.5)))
    watched = [read_file(str(store), StoreSpec(str(store))), read_file("/nonexistent.jks", StoreSpec("/x"))]
    assert status_line(results, 12, now, files=watched) == (
        f"12 targets, 1 failing, 2 files (1 unreadable), next expiry in 9.5 days ({store})"
    )


# --------------------------------------------------------------------------
# A real daemon
# --------------------------------------------------------------------------


def test_daemon_says_ready_status_watchdog_reloading_and_stopping(pki: Pki, trust: Path, tmp_path: Path) -> None:
    leaf = pki.leaf(valid_for=timedelta(days=23.4, hours=1))
    output = tmp_path / "probe.prom"
    cfg = tmp_path / "config.yml"
    settings = {"interval": "1s", "timeout": "1s"}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(TlsServer(pki.chain_for(leaf), leaf.key))
        closed = stack.enter_context(ClosedPort())
        notify = stack.enter_context(listener(str(tmp_path / "notify")))
        write_config(cfg, output, [target("db1", server, trust)], **settings)
        process = stack.enter_context(daemon(cfg, notify))

        # Ready before the first cycle, then a STATUS= after it; the watchdog pings meanwhile.
        notify.wait_for(lambda ms: any("STATUS" in m.fields and "failing" in m.fields["STATUS"] for m in ms),
                        "a STATUS= after the first cycle", process)  # fmt: skip
        first = notify.messages[0]
        assert "READY=1" in first and first.fields["STATUS"] == "started, 1 target, first cycle running"
        assert any("STATUS=1 target, 0 failing, next expiry in 23.4 days (db1)" in m for m in notify.messages)
        notify.wait_for(lambda ms: count("WATCHDOG=1")(ms) >= 4, "four watchdog pings", process)

        # A good reload: RELOADING=1 with our CLOCK_MONOTONIC, then READY=1 with the new config's status.
        write_config(cfg, output, [target("db1", server, trust), target("closed", closed, trust)], **settings)
        before_hup = time.monotonic_ns() // 1000
        process.send_signal(signal.SIGHUP)
        notify.wait_for(lambda ms: count("READY=1")(ms) == 2, "READY=1 after the reload", process)
        reloading = notify.index("RELOADING=1")
        assert reloading < notify.index("READY=1", after=reloading)
        assert before_hup <= int(notify.messages[reloading].fields["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
        notify.wait_for(lambda ms: any("STATUS=2 targets, 1 failing, next expiry in 23.4 days (db1)" in m for m in ms),
                        "a STATUS= counting the new, failing target", process)  # fmt: skip

        # A bad reload is refused; the daemon goes on, READY=1 again, and the status says so.
        cfg.write_text("targets: [{address: no-port}]\n", encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        notify.wait_for(lambda ms: count("READY=1")(ms) == 3, "READY=1 after the refused reload", process)
        assert count("RELOADING=1")(notify.messages) == 2
        assert notify.messages[-1].fields["STATUS"].endswith("; config reload failed, running the previous config")

        assert terminate(process) == 0
        stopping = notify.index("STOPPING=1")
        pings_before = count("WATCHDOG=1")(notify.messages[:stopping])
        time.sleep(0.3)  # nothing may trail the exit but what was already in flight

    assert pings_before >= 4
    assert {m.pid for m in notify.messages} == {process.pid}, "NotifyAccess=main: only the main process may speak"
    assert [m for m in notify.messages[stopping + 1 :] if "WATCHDOG=1" not in m] == []


def test_daemon_notifies_the_abstract_namespace_and_feeds_the_watchdog_through_a_long_cycle(
    pki: Pki, trust: Path, tmp_path: Path
) -> None:
    output = tmp_path / "probe.prom"
    cycle_timeout = 2.0
    with contextlib.ExitStack() as stack:
        tarpit = stack.enter_context(Tarpit())
        notify = stack.enter_context(listener("\0textfile-probe-test-" + uuid.uuid4().hex))
        cfg = write_config(
            tmp_path / "config.yml",
            output,
            [target("stuck", tarpit, trust)],
            interval="10s",
            timeout=f"{cycle_timeout}s",
        )
        process = stack.enter_context(daemon(cfg, notify))
        # The first cycle sits on the tarpit for the whole timeout; the pings must not pause meanwhile.
        notify.wait_for(lambda ms: any("STATUS=1 target, 1 failing" in m for m in ms), "the long cycle's end", process)
        assert terminate(process) == 0
        notify.wait_for(count("STOPPING=1"), "STOPPING=1", process)

    messages = notify.messages
    ready, done = messages[notify.index("READY=1")].at, messages[notify.index("STATUS=1 target, 1 failing")].at
    pings = [m.at for m in messages if "WATCHDOG=1" in m and ready <= m.at <= done]
    assert done - ready >= cycle_timeout * 0.9
    gaps = [b - a for a, b in zip([ready, *pings], [*pings, done], strict=True)]
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"the watchdog went unfed for {max(gaps):.3f}s during the cycle"
    assert len(pings) >= int(cycle_timeout / (WATCHDOG_USEC / 2e6)) - 2


def test_once_sends_nothing(trust: Path, tmp_path: Path) -> None:
    with ClosedPort() as closed, listener(str(tmp_path / "notify")) as notify:
        cfg = write_config(tmp_path / "config.yml", tmp_path / "probe.prom", [target("closed", closed, trust)])
        with daemon(cfg, notify, "--once") as process:
            assert process.wait(timeout=30) == 0
        time.sleep(0.2)
    assert notify.messages == []


# --------------------------------------------------------------------------
# The watchdog is fed by the loop itself
# --------------------------------------------------------------------------


def test_a_wedged_event_loop_stops_feeding_the_watchdog(tmp_path: Path) -> None:
    """The reason the pings come from a task and not a thread: a blocked loop must look dead to systemd."""
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"output: {tmp_path / 'out.prom'}\ntargets: []\n")
    said: list[tuple[float, str]] = []
    interval, wedge = 0.2, 0.6

    async def scenario() -> tuple[float, float]:
        daemon = Daemon(config.load(cfg))
        running = asyncio.ensure_future(daemon.run(str(cfg), lambda m: said.append((time.monotonic(), m)), interval))
        await asyncio.sleep(0.35)
        blocked = time.monotonic()
        time.sleep(wedge)  # a blocking call on the loop: exactly what must starve the watchdog
        unblocked = time.monotonic()
        await asyncio.sleep(0.35)
        daemon._request_stop()
        assert await asyncio.wait_for(running, STOP_TIMEOUT) == 0
        return blocked, unblocked

    blocked, unblocked = asyncio.run(scenario())
    pings = [at for at, message in said if message == "WATCHDOG=1"]
    assert [at for at in pings if blocked < at < unblocked] == []
    assert sum(at <= blocked for at in pings) >= 2 and sum(at >= unblocked for at in pings) >= 2
    assert said[0][1].startswith("READY=1\n") and said[1][1] == "WATCHDOG=1"
    assert "STOPPING=1\nSTATUS=stopping" in [message for _, message in said]
