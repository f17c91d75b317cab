#!/usr/bin/env python3
"""Benchmark one probe cycle of textfile_probe against a local TLS server, next to `openssl s_time`.

Three processes take part, so that each one's CPU can be measured on its own:

* the server (`_server`, started once per run): binds N distinct loopback endpoints (K addresses
  127.0.1.x times P ports), forks `--server-workers` workers that share every listening socket
  (epoll with EPOLLEXCLUSIVE) and complete TLS handshakes with the stdlib `ssl` module and an
  ECDSA P-256 certificate made at run time. Blackholed endpoints are either a tarpit (accepts,
  never speaks) or a listener whose accept queue is full (connects hang in SYN_SENT).
* the client (`_client`, one fresh process per repeat): builds N `Target`s, runs
  `Daemon(config).cycle(targets)` `--cycles-per-client` times and reports, for every cycle, wall
  time, user+sys CPU (getrusage(RUSAGE_SELF) delta around the cycle) and ru_maxrss.
* `openssl s_time -new` (several runs, interleaved with the client runs) against the same server,
  certificate and TLS version, whose CPU per handshake is the reference.

Every loop is bounded in count and time, every process stops by itself (the server also watches
its stdin and its parent, and has a hard lifetime), and only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ipaddress
import json
import os
import random
import re
import resource
import select
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
DNS_NAME = "bench.textfile-probe.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------
# Small helpers shared by all three roles
# ------------------------------------------------------------------------------------------------


def raise_nofile(wanted: int | None = None) -> int:
    """Raise the soft RLIMIT_NOFILE to `wanted` (or the hard limit); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None else min(hard, max(soft, wanted))
    if hard == resource.RLIM_INFINITY and wanted is None:
        target = max(soft, 1 << 20)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_seconds(text: str) -> float:
    """'5', '5s', '500ms', '1m' -> seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    from textfile_probe.config import parse_duration

    return parse_duration(text)


def proc_cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime of the given live processes, from /proc (0 for a process that is gone)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total / CLK_TCK


def source_fingerprint() -> str:
    """sha256 (12 hex digits) of the textfile_probe sources on disk: the code a client imports."""
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec("textfile_probe")
    if spec is None or not spec.submodule_search_locations:
        return "?"
    digest = hashlib.sha256()
    for path in sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def git_state() -> dict[str, str]:
    """HEAD and the files of textfile_probe that differ from it, when the package is a git checkout."""
    import importlib.util

    spec = importlib.util.find_spec("textfile_probe")
    if spec is None or not spec.submodule_search_locations:
        return {}
    package = Path(next(iter(spec.submodule_search_locations)))

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"head": git("rev-parse", "--short", "HEAD"), "modified": git("status", "--porcelain", "--", ".")}


def time_wait_sockets() -> int:
    """TCP sockets in TIME_WAIT on this host (the `tw` field of /proc/net/sockstat)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("tw") + 1])
    return -1


def machine_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) seconds summed over all CPUs since boot, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (parts + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    total = busy + idle + iowait + steal
    return busy / CLK_TCK, steal / CLK_TCK, total / CLK_TCK


# ------------------------------------------------------------------------------------------------
# Layout and certificates
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    kind: str  # "tls", "tarpit" or "backlog"


def layout(
    count: int, first: str, base_port: int, per_address: int, blackholed: int, kind: str, placement: str
) -> list[Endpoint]:
    """`count` distinct address:port endpoints; `blackholed` of them of `kind`, placed as asked."""
    addresses: list[str] = []
    ip = ipaddress.IPv4Address(first)
    needed = -(-count // per_address)
    while len(addresses) < needed:
        if not ip.is_loopback:
            raise SystemExit(f"ran out of 127.0.0.0/8 addresses after {len(addresses)}")
        if int(ip) & 0xFF not in (0, 255):
            addresses.append(str(ip))
        ip += 1
    slots = [(addresses[i // per_address], base_port + i % per_address) for i in range(count)]
    if blackholed <= 0:
        chosen: set[int] = set()
    elif placement == "first":
        chosen = set(range(blackholed))
    elif placement == "last":
        chosen = set(range(count - blackholed, count))
    elif placement == "random":
        chosen = set(random.Random(1).sample(range(count), blackholed))
    else:  # spread: evenly interleaved, e.g. every 10th target for 10 %
        chosen = {(i * count) // blackholed for i in range(blackholed)}
    return [Endpoint(h, p, kind if i in chosen else "tls") for i, (h, p) in enumerate(slots)]


def make_pki(directory: Path, addresses: Sequence[str]) -> dict[str, str]:
    """A P-256 CA and a P-256 leaf for DNS_NAME and every address; returns the PEM file paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "textfile-probe bench CA")])
    usage = {
        "content_commitment": False,
        "key_encipherment": False,
        "data_encipherment": False,
        "key_agreement": False,
        "encipher_only": False,
        "decipher_only": False,
    }
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **usage), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = [x509.DNSName(DNS_NAME)]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DNS_NAME)]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": directory / "ca.pem", "cert": directory / "leaf.pem", "key": directory / "leaf-key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return {k: str(v) for k, v in paths.items()}


# ------------------------------------------------------------------------------------------------
# The server (`cycle.py _server SPEC`)
# ------------------------------------------------------------------------------------------------


@dataclass
class _Conn:
    tls: ssl.SSLSocket
    deadline: float
    mask: int
    handshaken: bool = False


@dataclass
class _Worker:
    """One pre-forked server worker: an epoll loop over every shared listener and its connections."""

    ctx: ssl.SSLContext
    listeners: dict[int, tuple[socket.socket, str]]
    deadline: float
    conn_timeout: float
    tarpit_hold: float
    parent: int
    ep: Any = None
    conns: dict[int, _Conn] = field(default_factory=dict)
    held: collections.deque[tuple[float, socket.socket]] = field(default_factory=collections.deque)
    stats: collections.Counter[str] = field(default_factory=collections.Counter)

    MAX_HELD = 100_000
    ACCEPTS_PER_EVENT = 64

    def run(self) -> None:
        self.ep = select.epoll()
        for fd in self.listeners:
            self.ep.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        self.ep.register(0, select.EPOLLIN)  # stdin: EOF means stop
        next_sweep = 0.0
        while (now := time.monotonic()) < self.deadline:
            if now >= next_sweep:
                if os.getppid() != self.parent:
                    break
                self._sweep(now)
                next_sweep = now + 0.5
            stop = False
            for fd, _events in self.ep.poll(0.25, 1024):
                if fd == 0:
                    stop = not os.read(0, 4096)
                elif fd in self.listeners:
                    self._accept(*self.listeners[fd])
                elif (conn := self.conns.get(fd)) is not None:
                    self._step(fd, conn)
            if stop:
                break
        for fd, conn in list(self.conns.items()):
            self._close(fd, conn)
        while self.held:
            self.held.popleft()[1].close()

    def _accept(self, listener: socket.socket, kind: str) -> None:
        for _ in range(self.ACCEPTS_PER_EVENT):
            try:
                raw, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EMFILE and friends: count, and let the backlog hold the rest
                self.stats["accept_errors"] += 1
                return
            raw.setblocking(False)
            if kind == "tarpit":
                self.stats["tarpit_accepts"] += 1
                self.held.append((time.monotonic() + self.tarpit_hold, raw))
                if len(self.held) > self.MAX_HELD:
                    self.held.popleft()[1].close()
                continue
            self.stats["accepts"] += 1
            tls = self.ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            fd = tls.fileno()
            conn = _Conn(tls, time.monotonic() + self.conn_timeout, select.EPOLLIN)
            self.conns[fd] = conn
            self.ep.register(fd, conn.mask)
            self._step(fd, conn)

    def _step(self, fd: int, conn: _Conn) -> None:
        try:
            if not conn.handshaken:
                conn.tls.do_handshake()
                conn.handshaken = True
                self.stats["handshakes"] += 1
            for _ in range(64):  # after the handshake only a close_notify or EOF is expected
                if not conn.tls.recv(16384):
                    break
            self._close(fd, conn)
        except ssl.SSLWantReadError:
            self._want(fd, conn, select.EPOLLIN)
        except ssl.SSLWantWriteError:
            self._want(fd, conn, select.EPOLLOUT)
        except (ssl.SSLError, OSError):
            self.stats["errors" if not conn.handshaken else "closed_after_handshake"] += 1
            self._close(fd, conn)

    def _want(self, fd: int, conn: _Conn, mask: int) -> None:
        if conn.mask != mask:
            conn.mask = mask
            self.ep.modify(fd, mask)

    def _close(self, fd: int, conn: _Conn) -> None:
        self.conns.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(fd)
        conn.tls.close()

    def _sweep(self, now: float) -> None:
        for fd, conn in list(self.conns.items()):
            if now > conn.deadline:
                self.stats["timeouts"] += 1
                self._close(fd, conn)
        while self.held and self.held[0][0] < now:
            self.held.popleft()[1].close()


def server_ssl_context(spec: dict[str, Any]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(spec["cert"], spec["key"])
    version = ssl.TLSVersion.TLSv1_2 if spec["tls12"] else ssl.TLSVersion.TLSv1_3
    ctx.minimum_version = ctx.maximum_version = version
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_CIPHER_SERVER_PREFERENCE
    # A client that closes right after its Finished is normal for a probe; without this OpenSSL
    # answers the EOF with an alert, which the closed client socket turns into a RST.
    ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    ctx.num_tickets = spec["tickets"]
    if spec["tls12"]:
        ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    return ctx


def server_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    endpoints = [Endpoint(*e) for e in spec["endpoints"]]
    deadline = time.monotonic() + spec["lifetime"]
    raise_nofile()
    ctx = server_ssl_context(spec)
    listeners: dict[int, tuple[socket.socket, str]] = {}
    keep: list[socket.socket] = []  # full-backlog listeners and the connections that fill them
    for ep in endpoints:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ep.host, ep.port))
        except OSError as exc:
            print(f"ERROR cannot bind {ep.host}:{ep.port}: {exc} (try another --base-port)", flush=True)
            return 1
        if ep.kind == "backlog":
            sock.listen(0)  # one connection fills the queue; later SYNs are dropped
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.settimeout(2.0)
            filler.connect((ep.host, ep.port))
            keep += [sock, filler]
        else:
            sock.listen(4096)
            sock.setblocking(False)
            listeners[sock.fileno()] = (sock, ep.kind)
    parent = os.getpid()
    workers: list[int] = []
    for _ in range(spec["workers"]):
        pid = os.fork()
        if pid == 0:
            code = 0
            worker = _Worker(ctx, listeners, deadline, spec["conn_timeout"], spec["tarpit_hold"], parent)
            try:
                worker.run()
            except BaseException:
                code = 1
            finally:
                with contextlib.suppress(OSError):
                    Path(spec["stats_dir"], f"worker-{os.getpid()}.json").write_text(json.dumps(worker.stats))
                os._exit(code)
        workers.append(pid)
    print("READY " + json.dumps({"pid": parent, "workers": workers}), flush=True)
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    while not stop and time.monotonic() < deadline:
        ready, _, _ = select.select([0], [], [], 0.5)
        if ready and not os.read(0, 4096):
            break
    # Workers see the same stdin EOF and exit after writing their stats; then SIGTERM, then SIGKILL.
    pending = set(workers)
    for escalate in (signal.SIGTERM, signal.SIGKILL, None):
        until = time.monotonic() + 5.0
        while pending and time.monotonic() < until:
            for pid in list(pending):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    pending.discard(pid)
            time.sleep(0.05)
        if escalate is None:
            break
        for pid in pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, escalate)
    for sock in keep:
        sock.close()
    return 0


class Server:
    """The server process seen from the orchestrator: start, CPU reading, stop."""

    def __init__(self, spec: dict[str, Any], directory: Path) -> None:
        self.stats_dir = directory / "server-stats"
        self.stats_dir.mkdir()
        spec = {**spec, "stats_dir": str(self.stats_dir)}
        path = directory / "server.json"
        path.write_text(json.dumps(spec))
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "_server", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = ""
        ready_by = time.monotonic() + 120
        while time.monotonic() < ready_by:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                line = self.proc.stdout.readline()
                break
            if self.proc.poll() is not None:
                break
        if not line.startswith("READY "):
            self.stop()
            raise SystemExit(f"the server did not start: {line.strip() or 'no answer'}")
        info = json.loads(line[6:])
        self.pids: list[int] = [info["pid"], *info["workers"]]

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pids)

    def stop(self) -> dict[str, int]:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        totals: collections.Counter[str] = collections.Counter()
        for path in self.stats_dir.glob("worker-*.json"):
            totals.update(json.loads(path.read_text()))
        return dict(totals)


# ------------------------------------------------------------------------------------------------
# The client (`cycle.py _client SPEC`)
# ------------------------------------------------------------------------------------------------


def client_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    nofile = raise_nofile()
    fingerprint = source_fingerprint()
    import asyncio

    from textfile_probe import logs
    from textfile_probe.config import Config, Target, TlsVersion
    from textfile_probe.scheduler import Daemon

    logs.setup(spec["log_level"])
    version = TlsVersion.TLS1_2 if spec["tls12"] else TlsVersion.TLS1_3
    targets = tuple(
        Target(
            name=f"{host}:{port}",
            host=host,
            port=port,
            server_name=host,
            verify=True,
            ca_file=spec["ca"],
            timeout=spec["timeout"],
            interval=max(60.0, spec["timeout"]),
            min_version=version,
            max_version=version,
        )
        for host, port, _kind in spec["endpoints"]
    )
    config = Config(
        path="<bench>",
        output=spec["output"],
        interval=max(60.0, spec["timeout"]),
        timeout=spec["timeout"],
        concurrency=spec["concurrency"],
        log_level=spec["log_level"],
        targets=targets,
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    daemon = Daemon(config)
    cycles: list[dict[str, Any]] = []
    for index in range(spec["cycles"]):
        profiler = None
        if spec.get("profile") and index == spec["cycles"] - 1:
            import cProfile

            profiler = cProfile.Profile()
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        written = loop.run_until_complete(daemon.cycle(targets))
        if profiler is not None:
            profiler.disable()
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        if profiler is not None:
            profiler.dump_stats(spec["profile"])
        results = list(daemon.results.values())
        reasons = collections.Counter(
            "ok" if r.success else f"{r.stage.value if r.stage else '?'}/{r.reason}" for r in results
        )
        cycles.append(
            {
                "wall_s": wall,
                "probe_phase_s": daemon.last_cycle_duration,
                "user_s": after.ru_utime - before.ru_utime,
                "sys_s": after.ru_stime - before.ru_stime,
                "maxrss_kib": after.ru_maxrss,
                "results": len(results),
                "success": sum(r.success for r in results),
                "reasons": dict(reasons),
                "tls_versions": dict(collections.Counter(r.tls_version.label for r in results if r.tls_version)),
                "written": written,
                "output_bytes": Path(spec["output"]).stat().st_size if written else 0,
                "voluntary_switches": after.ru_nvcsw - before.ru_nvcsw,
                "involuntary_switches": after.ru_nivcsw - before.ru_nivcsw,
            }
        )
    loop.close()
    final = resource.getrusage(resource.RUSAGE_SELF)
    summary = {
        "cycles": cycles,
        "rss_before_cycles_kib": rss_before,
        "maxrss_kib": final.ru_maxrss,
        "process_user_s": final.ru_utime,
        "process_sys_s": final.ru_stime,
        "nofile": nofile,
        "source_fingerprint": fingerprint,
    }
    print("RESULT " + json.dumps(summary), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------
# The floor (`cycle.py _floor SPEC`): bare handshakes through the probe's own TLS library
# ------------------------------------------------------------------------------------------------


def floor_main(spec_path: str) -> int:
    """Blocking pyOpenSSL handshakes over memory BIOs, with the probe's context settings mirrored.

    Same library build (the `cryptography` wheel's OpenSSL), same options, same verification
    work, same TLS 1.3 close exchange, but no asyncio, no probe bookkeeping, no metrics: what is
    left is the floor that any design on this TLS engine pays per handshake.
    """
    spec = json.loads(Path(spec_path).read_text())
    from OpenSSL import SSL
    from OpenSSL._util import ffi, lib

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_verify(SSL.VERIFY_PEER, lambda _conn, _cert, _code, _depth, _ok: True)
    ctx.set_cipher_list(b"ALL:@SECLEVEL=0")
    version = SSL.TLS1_2_VERSION if spec["tls12"] else SSL.TLS1_3_VERSION
    ctx.set_min_proto_version(version)
    ctx.set_max_proto_version(version)
    ctx.load_verify_locations(spec["ca"])
    if spec["groups"] and lib.SSL_CTX_set1_curves_list(ctx._context, spec["groups"].encode()) != 1:
        raise SystemExit(f"unknown groups {spec['groups']!r}")
    endpoints = [(h, p) for h, p in spec["endpoints"]]
    count = errors = 0
    group = ""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = time.monotonic() + spec["seconds"]
    while time.monotonic() < deadline and count + errors < 1_000_000:
        host, port = endpoints[(count + errors) % len(endpoints)]
        try:
            with socket.create_connection((host, port), timeout=5.0) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = SSL.Connection(ctx, None)
                conn.set_connect_state()
                packed = ipaddress.ip_address(host).packed
                lib.X509_VERIFY_PARAM_set1_ip(lib.SSL_get0_param(conn._ssl), ffi.from_buffer(packed), len(packed))
                _floor_exchange(sock, conn, SSL)
                if not group and getattr(lib, "Cryptography_HAS_SSL_GET0_GROUP_NAME", False):
                    name = lib.SSL_get0_group_name(conn._ssl)
                    group = ffi.string(name).decode() if name != ffi.NULL else "?"
            count += 1
        except (OSError, SSL.Error):
            errors += 1
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "handshakes": count,
        "errors": errors,
        "elapsed_s": elapsed,
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
        "group": group,
        "groups_setting": spec["groups"] or "library default",
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def _floor_exchange(sock: socket.socket, conn: Any, ssl_mod: Any) -> None:
    """Handshake, then (TLS 1.3) close_notify and read until the server closes, like the probe."""

    def flush() -> None:
        for _ in range(64):
            try:
                sock.sendall(conn.bio_read(16384))
            except ssl_mod.WantReadError:
                return

    for _ in range(64):
        try:
            conn.do_handshake()
            break
        except ssl_mod.WantReadError:
            flush()
            data = sock.recv(16384)
            if not data:
                raise OSError("closed during the handshake") from None
            conn.bio_write(data)
    else:
        raise OSError("handshake did not finish")
    flush()
    if conn.get_protocol_version_name() != "TLSv1.3":
        return
    conn.shutdown()
    flush()
    for _ in range(64):
        data = sock.recv(16384)
        if not data:
            return
        conn.bio_write(data)
        try:
            conn.recv(16384)
        except ssl_mod.WantReadError:
            continue
        except ssl_mod.ZeroReturnError:
            return


def run_floor(
    args: argparse.Namespace,
    endpoints: Sequence[Endpoint],
    pki: dict[str, str],
    directory: Path,
    index: int,
    groups: str,
) -> dict[str, Any]:
    spec = {
        "endpoints": [(e.host, e.port) for e in endpoints[:64]],
        "ca": pki["ca"],
        "tls12": args.tls12,
        "seconds": args.floor_seconds,
        "groups": "" if groups == "default" else groups,
    }
    path = directory / f"floor-{index}-{groups or 'default'}.json"
    path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, str(HERE), "_floor", str(path)],
        capture_output=True,
        text=True,
        timeout=args.floor_seconds + 60,
        check=False,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"error": proc.stderr[-1000:], "groups_setting": groups or "library default"}
    result: dict[str, Any] = json.loads(line[7:])
    return result


# ------------------------------------------------------------------------------------------------
# The orchestrator
# ------------------------------------------------------------------------------------------------


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_client(
    args: argparse.Namespace,
    endpoints: Sequence[Endpoint],
    pki: dict[str, str],
    directory: Path,
    server: Server,
    index: int,
    profile: str | None = None,
) -> dict[str, Any]:
    spec = {
        "endpoints": [(e.host, e.port, e.kind) for e in endpoints],
        "ca": pki["ca"],
        "timeout": args.timeout,
        "concurrency": args.concurrency,
        "tls12": args.tls12,
        "output": str(directory / f"client-{index}.prom"),
        "cycles": args.cycles_per_client,
        "log_level": args.log_level,
        "profile": profile,
    }
    path = directory / f"client-{index}.json"
    path.write_text(json.dumps(spec))
    stderr_path = directory / f"client-{index}.log"
    batches = -(-len(endpoints) // args.concurrency)
    guard = 120 + args.cycles_per_client * (batches * (args.timeout + 2) + len(endpoints) * 0.02)
    server_cpu0, machine0, cpu0, tw0 = server.cpu(), machine_cpu(), children_cpu(), time_wait_sockets()
    started = time.perf_counter()
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(HERE), "_client", str(path)], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        try:
            out, _ = proc.communicate(timeout=guard)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=30)
            raise SystemExit(f"client {index} did not finish within {guard:.0f}s; see {stderr_path}") from None
    elapsed = time.perf_counter() - started
    machine1 = machine_cpu()
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = stderr_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"client {index} failed (exit {proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(line[7:])
    log_lines = stderr_path.read_text(errors="replace").count("\n")
    result.update(
        {
            "process_cpu_incl_startup_s": children_cpu() - cpu0,
            "process_elapsed_s": elapsed,
            "server_cpu_s": server.cpu() - server_cpu0,
            "machine_busy_s": machine1[0] - machine0[0],
            "machine_steal_s": machine1[1] - machine0[1],
            "log_lines": log_lines,
            "time_wait_before": tw0,
            "time_wait_after": time_wait_sockets(),
        }
    )
    return result


STIME_RE = re.compile(r"(\d+) connections in ([\d.]+)s; ([\d.]+) connections/user sec")
STIME_REAL_RE = re.compile(r"(\d+) connections in (\d+) real seconds")


def run_stime(args: argparse.Namespace, target: Endpoint, pki: dict[str, str], seconds: int) -> dict[str, Any]:
    """One `openssl s_time -new` run; its CPU from RUSAGE_CHILDREN and from its own output."""
    command = [
        args.openssl,
        "s_time",
        "-connect",
        f"{target.host}:{target.port}",
        "-new",
        "-time",
        str(seconds),
        "-CAfile",
        pki["ca"],
        "-tls1_2" if args.tls12 else "-tls1_3",
    ]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    elapsed = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = cpu1.ru_utime - cpu0.ru_utime, cpu1.ru_stime - cpu0.ru_stime
    match, real = STIME_RE.search(proc.stdout), STIME_REAL_RE.search(proc.stdout)
    run: dict[str, Any] = {
        "command": " ".join(command),
        "exit": proc.returncode,
        "elapsed_s": elapsed,
        "rusage_user_s": user,
        "rusage_sys_s": system,
    }
    if match:
        connections = int(match.group(1))
        run.update(
            {
                "connections": connections,
                "reported_user_s": float(match.group(2)),
                "reported_connections_per_user_s": float(match.group(3)),
                "reported_real_s": int(real.group(2)) if real else None,
            }
        )
    else:
        run["error"] = (proc.stdout[-500:] + proc.stderr[-500:]).strip()
    return run


def stime_startup(args: argparse.Namespace, pki: dict[str, str]) -> dict[str, float]:
    """CPU of an s_time run that makes no connection (refused port): its fixed startup cost."""
    with socket.socket() as sock:  # a port that was free a moment ago refuses connections
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runs = [run_stime(args, Endpoint("127.0.0.1", port, "tls"), pki, 1) for _ in range(3)]
    return {
        "user_s": statistics.median(r["rusage_user_s"] for r in runs),
        "sys_s": statistics.median(r["rusage_sys_s"] for r in runs),
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(
    args: argparse.Namespace,
    clients: list[dict[str, Any]],
    stimes: list[dict[str, Any]],
    startup: dict[str, float],
    floors: list[dict[str, Any]],
    n: int,
    good: int,
) -> dict[str, Any]:
    headline = [c["cycles"][-1] for c in clients]
    cold = [c["cycles"][0] for c in clients]

    def per_cycle(cycles: list[dict[str, Any]]) -> dict[str, Any]:
        walls = [c["wall_s"] for c in cycles]
        cpu = [(c["user_s"] + c["sys_s"]) / n for c in cycles]
        return {
            "wall_s": walls,
            "wall_s_median": median(walls),
            "probes_per_s": [n / w for w in walls],
            "probes_per_s_median": median([n / w for w in walls]),
            "cpu_per_probe_ms": [x * 1e3 for x in cpu],
            "cpu_per_probe_ms_median": median(cpu) * 1e3,
            "user_per_probe_ms_median": median([c["user_s"] / n for c in cycles]) * 1e3,
            "sys_per_probe_ms_median": median([c["sys_s"] / n for c in cycles]) * 1e3,
            "client_cpu_utilisation": [(c["user_s"] + c["sys_s"]) / c["wall_s"] for c in cycles],
            "render_write_s": [c["wall_s"] - c["probe_phase_s"] for c in cycles],
            "render_write_s_median": median([c["wall_s"] - c["probe_phase_s"] for c in cycles]),
            "success": [c["success"] for c in cycles],
            "reasons": [c["reasons"] for c in cycles],
        }

    server_cpu = [c["server_cpu_s"] / (n * args.cycles_per_client) * 1e3 for c in clients]
    machine = [c["machine_busy_s"] / c["process_elapsed_s"] / (os.cpu_count() or 1) for c in clients]
    ok = [r for r in stimes if "connections" in r and r["connections"] > 0]
    st_total = [(r["rusage_user_s"] + r["rusage_sys_s"]) / r["connections"] * 1e3 for r in ok]
    st_net = [
        max(0.0, r["rusage_user_s"] + r["rusage_sys_s"] - startup["user_s"] - startup["sys_s"]) / r["connections"] * 1e3
        for r in ok
    ]
    st_user = [1e3 / r["reported_connections_per_user_s"] for r in ok if r["reported_connections_per_user_s"] > 0]
    ours = per_cycle(headline)
    ours_user = ours["user_per_probe_ms_median"]
    summary: dict[str, Any] = {
        "headline": ours,
        "cold_first_cycle": per_cycle(cold),
        "peak_rss_mib": [c["maxrss_kib"] / 1024 for c in clients],
        "peak_rss_mib_median": median([c["maxrss_kib"] / 1024 for c in clients]),
        "rss_before_cycles_mib_median": median([c["rss_before_cycles_kib"] / 1024 for c in clients]),
        "server_cpu_per_probe_ms": server_cpu,
        "server_cpu_per_probe_ms_median": median(server_cpu),
        "machine_busy_fraction": machine,
        "expected_success": good,
        "all_succeeded_as_expected": all(s == good for s in ours["success"] + per_cycle(cold)["success"]),
    }
    if ok:
        summary["openssl_s_time"] = {
            "cpu_per_handshake_ms": st_net,
            "cpu_per_handshake_ms_median": median(st_net),
            "cpu_per_handshake_incl_startup_ms_median": median(st_total),
            "user_per_handshake_ms_reported": st_user,
            "user_per_handshake_ms_reported_median": median(st_user),
            "handshakes_per_s_wall": [r["connections"] / r["elapsed_s"] for r in ok],
        }
        summary["ratio_cpu_ours_over_openssl"] = ours["cpu_per_probe_ms_median"] / median(st_net)
        summary["ratio_user_ours_over_openssl_reported"] = ours_user / median(st_user)
    by_groups: dict[str, list[float]] = {}
    negotiated: dict[str, str] = {}
    for f in floors:
        if f.get("handshakes"):
            by_groups.setdefault(f["groups_setting"], []).append((f["user_s"] + f["sys_s"]) / f["handshakes"] * 1e3)
            negotiated[f["groups_setting"]] = f["group"]
    if by_groups:
        summary["floor_cpu_per_handshake_ms"] = by_groups
        summary["floor_cpu_per_handshake_ms_median"] = {k: median(v) for k, v in by_groups.items()}
        summary["floor_negotiated_group"] = negotiated
        if "library default" in by_groups:
            summary["ratio_cpu_ours_over_floor"] = ours["cpu_per_probe_ms_median"] / median(
                by_groups["library default"]
            )
    if args.blackholed > 0:
        summary["blackhole_budget_s"] = args.budget
        summary["blackhole_within_budget"] = [w <= args.budget for w in ours["wall_s"]]
    return summary


def fmt_list(values: Sequence[float], spec: str = ".3g") -> str:
    return " ".join(format(v, spec) for v in values)


def print_table(args: argparse.Namespace, n: int, good: int, summary: dict[str, Any]) -> None:
    h, c = summary["headline"], summary["cold_first_cycle"]
    version = "TLS1.2" if args.tls12 else "TLS1.3"
    title = f"N={n} concurrency={args.concurrency} {version} timeout={args.timeout:g}s repeats={args.repeat}"
    if args.blackholed > 0:
        title += f" blackholed={n - good} ({args.blackhole_kind}, {args.blackhole_placement})"
    rows = [
        ("cycle wall s", f"{h['wall_s_median']:.3f}", fmt_list(h["wall_s"], ".3f")),
        ("probes/s", f"{h['probes_per_s_median']:.0f}", fmt_list(h["probes_per_s"], ".0f")),
        ("client CPU ms/probe", f"{h['cpu_per_probe_ms_median']:.3f}", fmt_list(h["cpu_per_probe_ms"], ".3f")),
        ("  user / sys", f"{h['user_per_probe_ms_median']:.3f} / {h['sys_per_probe_ms_median']:.3f}", ""),
        (
            "client CPU / wall (cores)",
            f"{median(h['client_cpu_utilisation']):.2f}",
            fmt_list(h["client_cpu_utilisation"], ".2f") + " (1.0 = the client's one core is the bottleneck)",
        ),
        ("  of wall: render+write s", f"{h['render_write_s_median']:.3f}", fmt_list(h["render_write_s"], ".3f")),
        ("peak RSS MiB", f"{summary['peak_rss_mib_median']:.1f}", fmt_list(summary["peak_rss_mib"], ".1f")),
        ("success", f"{good} expected", fmt_list(h["success"], "d")),
        ("cold 1st cycle wall s", f"{c['wall_s_median']:.3f}", fmt_list(c["wall_s"], ".3f")),
        ("cold 1st cycle CPU ms/probe", f"{c['cpu_per_probe_ms_median']:.3f}", fmt_list(c["cpu_per_probe_ms"], ".3f")),
        ("server CPU ms/probe", f"{summary['server_cpu_per_probe_ms_median']:.3f}", ""),
        ("machine busy (all CPUs)", fmt_list([median(summary["machine_busy_fraction"])], ".0%"), ""),
    ]
    st = summary.get("openssl_s_time")
    if st:
        rows += [
            (
                "s_time CPU ms/handshake",
                f"{st['cpu_per_handshake_ms_median']:.3f}",
                fmt_list(st["cpu_per_handshake_ms"], ".3f") + " (rusage user+sys, startup subtracted)",
            ),
            (
                "s_time user ms/handshake",
                f"{st['user_per_handshake_ms_reported_median']:.3f}",
                fmt_list(st["user_per_handshake_ms_reported"], ".3f") + " (1/'connections/user sec')",
            ),
            ("ratio ours/openssl CPU", f"{summary['ratio_cpu_ours_over_openssl']:.2f}x", "user+sys vs user+sys"),
            ("ratio ours/openssl user", f"{summary['ratio_user_ours_over_openssl_reported']:.2f}x", "user vs user"),
        ]
    for number, (name, value) in enumerate(summary.get("floor_cpu_per_handshake_ms_median", {}).items()):
        rows.append(
            (
                f"floor CPU ms/hs, groups #{number + 1}",
                f"{value:.3f}",
                fmt_list(summary["floor_cpu_per_handshake_ms"][name], ".3f")
                + f" (bare pyOpenSSL loop; groups {name}; negotiated {summary['floor_negotiated_group'][name]})",
            )
        )
    if "ratio_cpu_ours_over_floor" in summary:
        rows.append(("ratio ours/floor CPU", f"{summary['ratio_cpu_ours_over_floor']:.2f}x", ""))
    if args.blackholed > 0:
        verdict = "PASS" if all(summary["blackhole_within_budget"]) else "FAIL"
        rows.append(("wall within budget", f"{verdict} <= {args.budget:g}s", ""))
    print(f"\ntextfile_probe cycle benchmark: {title}")
    print(f"(headline = cycle {args.cycles_per_client} of {args.cycles_per_client} in each fresh client)")
    for name, med, all_values in rows:
        print(f"  {name:<32} {med:>16}   {all_values}")
    reasons = collections.Counter[str]()
    for r in h["reasons"]:
        reasons.update(r)
    if not summary["all_succeeded_as_expected"]:
        print(f"  WARNING: success differs from {good} in some cycle; outcomes over all runs: {dict(reasons)}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/cycle.py",
        description="Benchmark Daemon.cycle over N distinct loopback TLS targets against openssl s_time.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--targets", type=int, default=1000, help="N, distinct address:port targets")
    parser.add_argument("--concurrency", type=int, default=256, help="Config.concurrency")
    parser.add_argument("--repeat", type=int, default=5, help="client runs (a fresh process each)")
    parser.add_argument("--cycles-per-client", type=int, default=2, help="cycles per client; the last is reported")
    parser.add_argument("--timeout", type=parse_seconds, default=5.0, help="per-target timeout, e.g. 5s")
    parser.add_argument("--tls12", action="store_true", help="TLS 1.2 on both sides instead of TLS 1.3")
    parser.add_argument("--blackholed", type=float, default=0.0, help="fraction of targets that never answer")
    parser.add_argument(
        "--blackhole-kind",
        choices=("tarpit", "backlog"),
        default="tarpit",
        help="tarpit: accepts and never speaks; backlog: accept queue full, connect hangs",
    )
    parser.add_argument(
        "--blackhole-placement",
        choices=("spread", "first", "last", "random"),
        default="spread",
        help="where the blackholed targets sit in the target list",
    )
    parser.add_argument("--budget", type=float, help="wall-time goal with blackholes; %(default)s means --timeout + 1s")
    parser.add_argument("--server-workers", type=int, default=2, help="server processes sharing the listeners")
    parser.add_argument("--server-tickets", type=int, default=0, help="TLS 1.3 session tickets the server sends")
    parser.add_argument("--first-address", default="127.0.1.1", help="first server address (127.0.0.0/8)")
    parser.add_argument("--base-port", type=int, default=20000, help="first server port on every address")
    parser.add_argument("--ports-per-address", type=int, default=250, help="P; addresses = ceil(N / P)")
    parser.add_argument("--stime-runs", type=int, default=3, help="openssl s_time runs (0: none)")
    parser.add_argument("--stime-seconds", type=int, default=5, help="-time of each s_time run")
    parser.add_argument("--openssl", default="openssl", help="the openssl binary")
    parser.add_argument("--floor-runs", type=int, default=1, help="bare pyOpenSSL reference runs per group setting")
    parser.add_argument("--floor-seconds", type=float, default=3.0, help="length of each floor run")
    parser.add_argument(
        "--floor-groups",
        default="default,*X25519:X25519MLKEM768:P-256:P-384",
        help="comma-separated OpenSSL group lists for the floor ('default': the library's; '*' marks the groups "
        "that get a key share)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="textfile_probe logging in the client (to a file), as the daemon does",
    )
    parser.add_argument("--profile", metavar="PSTATS", help="also run one client under cProfile (last cycle)")
    parser.add_argument("--json", metavar="PATH", help="write every raw number here")
    parser.add_argument("--max-seconds", type=float, default=3600, help="hard lifetime of the server process")
    args = parser.parse_args(argv)
    if not 1 <= args.targets <= 60_000 or args.concurrency < 1 or args.repeat < 1 or args.cycles_per_client < 1:
        parser.error("need 1 <= --targets <= 60000, --concurrency >= 1, --repeat >= 1, --cycles-per-client >= 1")
    if not 0 <= args.blackholed < 1:
        parser.error("--blackholed is a fraction in [0, 1)")
    if not ipaddress.IPv4Address(args.first_address).is_loopback:
        parser.error("--first-address must be in 127.0.0.0/8")
    if not (args.base_port >= 1024 and args.base_port + args.ports_per_address <= 65536):
        parser.error("--base-port/--ports-per-address out of range")
    if args.budget is None:
        args.budget = args.timeout + 1.0
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    n = args.targets
    blackholed = round(n * args.blackholed)
    good = n - blackholed
    nofile = raise_nofile()
    if nofile < n + 2 * blackholed + 1024:
        raise SystemExit(f"RLIMIT_NOFILE {nofile} is too low for {n} listeners; raise the hard limit")
    endpoints = layout(
        n,
        args.first_address,
        args.base_port,
        args.ports_per_address,
        blackholed,
        args.blackhole_kind,
        args.blackhole_placement,
    )
    tls_endpoints = [e for e in endpoints if e.kind == "tls"]
    clients: list[dict[str, Any]] = []
    stimes: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    floor_groups = [g.strip() for g in args.floor_groups.split(",") if g.strip()]
    startup = {"user_s": 0.0, "sys_s": 0.0}
    profile_top: list[str] = []
    fingerprint, git = source_fingerprint(), git_state()
    modified = " ".join(Path(line.split()[-1]).name for line in git.get("modified", "").splitlines())
    print(f"textfile_probe sources {fingerprint} (git {git.get('head', '?')}, modified: {modified or 'none'})")
    with tempfile.TemporaryDirectory(prefix="textfile-probe-bench-") as tmp:
        directory = Path(tmp)
        pki = make_pki(directory, sorted({e.host for e in endpoints}))
        spec = {
            "endpoints": [(e.host, e.port, e.kind) for e in endpoints],
            "cert": pki["cert"],
            "key": pki["key"],
            "tls12": args.tls12,
            "tickets": args.server_tickets,
            "workers": args.server_workers,
            "lifetime": args.max_seconds,
            "conn_timeout": 30.0,
            "tarpit_hold": args.timeout * 2 + 5,
        }
        print(
            f"server: {len(endpoints)} endpoints on {len({e.host for e in endpoints})} addresses "
            f"({endpoints[0].host}..{endpoints[-1].host}, ports {args.base_port}..), {args.server_workers} workers",
            flush=True,
        )
        server = Server(spec, directory)
        try:
            if args.stime_runs:
                startup = stime_startup(args, pki)
            for index in range(max(args.repeat, args.stime_runs, args.floor_runs)):
                if index < args.repeat:
                    clients.append(run_client(args, endpoints, pki, directory, server, index))
                    last = clients[-1]["cycles"][-1]
                    print(
                        f"client {index}: wall {last['wall_s']:.3f}s, "
                        f"cpu {(last['user_s'] + last['sys_s']) / n * 1e3:.3f} ms/probe, "
                        f"success {last['success']}/{n}, maxrss {clients[-1]['maxrss_kib'] / 1024:.1f} MiB, "
                        f"TIME_WAIT {clients[-1]['time_wait_before']}->{clients[-1]['time_wait_after']}",
                        flush=True,
                    )
                if index < args.stime_runs:
                    # A different destination each run keeps TIME_WAIT 4-tuples apart.
                    target = tls_endpoints[(index * 7919) % len(tls_endpoints)]
                    stimes.append(run_stime(args, target, pki, args.stime_seconds))
                    st = stimes[-1]
                    print(
                        f"s_time {index}: {st.get('connections', 0)} handshakes to {target.host}:{target.port}, "
                        f"user+sys {st['rusage_user_s'] + st['rusage_sys_s']:.2f}s {st.get('error', '')}",
                        flush=True,
                    )
                for groups in floor_groups if index < args.floor_runs else ():
                    floors.append(run_floor(args, tls_endpoints, pki, directory, index, groups))
                    f = floors[-1]
                    cpu = (f["user_s"] + f["sys_s"]) / f["handshakes"] * 1e3 if f.get("handshakes") else float("nan")
                    print(
                        f"floor {index} ({f['groups_setting']}): {f.get('handshakes', 0)} handshakes, "
                        f"{cpu:.3f} ms CPU each, {f.get('errors', '?')} errors, group {f.get('group', '?')} "
                        f"{f.get('error', '')}",
                        flush=True,
                    )
            if args.profile:
                run_client(args, endpoints, pki, directory, server, args.repeat, profile=args.profile)
                profile_top = top_functions(args.profile)
        finally:
            server_stats = server.stop()
    summary = summarize(args, clients, stimes, startup, floors, n, good)
    seen = sorted({fingerprint, source_fingerprint(), *(c["source_fingerprint"] for c in clients)})
    print_table(args, n, good, summary)
    if len(seen) > 1:
        print(f"  WARNING: textfile_probe changed on disk during the run: sources {' '.join(seen)}")
    if profile_top:
        print(f"\ncProfile of one more cycle ({args.profile}), top by own time:")
        print("\n".join(profile_top))
    report = {
        "args": vars(args),
        "n": n,
        "blackholed": blackholed,
        "python": sys.version,
        "ssl_openssl_server": ssl.OPENSSL_VERSION,
        "openssl_cli": subprocess.run([args.openssl, "version"], capture_output=True, text=True).stdout.strip(),
        "client_openssl": client_openssl_version(),
        "source_fingerprints": seen,
        "git": git,
        "cpus": os.cpu_count(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "clients": clients,
        "s_time_startup": startup,
        "s_time": stimes,
        "floor": floors,
        "server_stats": server_stats,
        "summary": summary,
        "profile_top": profile_top,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"\nraw numbers: {args.json}")
    return 0 if summary["all_succeeded_as_expected"] else 1


def client_openssl_version() -> str:
    from OpenSSL import SSL

    return SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode()


def top_functions(path: str, limit: int = 25) -> list[str]:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(path, stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    lines = out.getvalue().splitlines()
    start = next((i for i, x in enumerate(lines) if x.lstrip().startswith("ncalls")), 0)
    return [x for x in lines[start:] if x.strip()]


def _entry(argv: Sequence[str]) -> int:
    if argv[:1] == ["_server"]:
        return server_main(argv[1])
    if argv[:1] == ["_client"]:
        return client_main(argv[1])
    if argv[:1] == ["_floor"]:
        return floor_main(argv[1])
    return main(argv)


if __name__ == "__main__":
    sys.exit(_entry(sys.argv[1:]))
