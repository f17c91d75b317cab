# Strategy: the real servers from Debian's packages, each started with a configuration written into
# its own temporary directory (never /etc, never a system service) and a certificate made at test
# time by pki.py: a leaf for localhost/127.0.0.1 signed by the Pki intermediate, served together
# with that intermediate. Each server is a context manager yielding `Endpoint(host, port, info)`.
#
# Every instance listens on a loopback address of its own, picked at random in 127.0.0.0/8, so it
# can take the protocol's standard ports (25, 143, 5432, ...: what STARTTLS inference keys on)
# without colliding with anything else on the machine; a standard port that cannot be bound there
# (not root, or taken) is replaced by a free one, and `info["ports"]` says which port is which.
# Start-up waits are bounded (the ports are polled, the process is watched); on exit, whatever
# happened, the server gets its stop signal and then its whole process group SIGKILL. `require`
# skips a test only when the server binary is absent: a server that is installed but does not
# start fails the test.
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from cryptography.hazmat.primitives import hashes
from pki import Issued, Pki, write_key, write_pem

__all__ = [
    "PACKAGES",
    "Endpoint",
    "TlsFiles",
    "dovecot_server",
    "fingerprint",
    "inn_server",
    "inspircd_server",
    "log_tail",
    "mariadb_server",
    "postfix_server",
    "postgres_server",
    "prosody_server",
    "require",
    "slapd_server",
    "vsftpd_server",
]

START_TIMEOUT = 60.0  # seconds for a server to accept connections once launched
SETUP_TIMEOUT = 120.0  # seconds for one set-up command (initdb, mariadb-install-db, makehistory)
STOP_TIMEOUT = 10.0  # seconds between the stop signal and SIGKILL to the process group
_START_ATTEMPTS = 3  # a port seen free may be taken before the server binds it: try elsewhere
_POLL = 0.05  # seconds between readiness checks

# Where Debian puts daemons that are not on PATH, and which package brings each binary.
_SEARCH_DIRS = ("/usr/sbin", "/usr/lib/postfix/sbin", "/usr/lib/news/bin", "/usr/lib/postgresql/*/bin")
PACKAGES = {
    "postfix": "postfix",
    "master": "postfix",
    "dovecot": "dovecot-imapd dovecot-pop3d dovecot-managesieved dovecot-lmtpd",
    "vsftpd": "vsftpd",
    "slapd": "slapd",
    "postgres": "postgresql",
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
    "prosody": "prosody",
    "nnrpd": "inn2",
    "inspircd": "inspircd",
}


class Endpoint(NamedTuple):
    """A running server: where to connect, and what else a test may need.

    `info` holds `ports` (name -> port, the main one included), `tls` (TlsFiles), `startup_seconds`
    (configure + launch until ready), `log` and `output` (the server's log and its stdout/stderr),
    and per server extras documented on each context manager.
    """

    host: str
    port: int
    info: Mapping[str, Any]


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate files, and the leaf they hold."""

    leaf: Issued
    chain: Path  # leaf + intermediate, PEM
    key: Path
    ca: Path  # the Pki root: the trust anchor for probes
    ca_bundle: Path  # intermediate + root, for servers that verify client certificates


def fingerprint(issued: Issued) -> str:
    """Lowercase hex SHA-256 of the DER certificate, as CertInfo.fingerprint_sha256 has it."""
    return issued.cert.fingerprint(hashes.SHA256()).hex()


def log_tail(endpoint: Endpoint, limit: int = 3000) -> str:
    """The end of a running server's log and output, for assertion messages."""
    paths = dict.fromkeys(p for p in (endpoint.info.get("log"), endpoint.info.get("output")) if p is not None)
    return "\n".join(f"--- {path}:\n{_tail(path, limit)}" for path in paths)


def require(binary: str) -> str:
    """The path of a server binary; skip the test (naming the Debian package) only if it is absent."""
    found = shutil.which(binary)
    for pattern in _SEARCH_DIRS:
        if found:
            break
        candidates = sorted(glob.glob(os.path.join(pattern, binary)), key=_version_order, reverse=True)
        found = next((c for c in candidates if os.access(c, os.X_OK)), None)
    if not found:
        package = PACKAGES.get(binary, binary)
        pytest.skip(f"{binary} is not installed (Debian package {package}; see .ci/debian-packages-starttls)")
    return found


def _version_order(path: str) -> list[tuple[int, str]]:
    """Sort key that puts /usr/lib/postgresql/16 after /usr/lib/postgresql/9."""
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", path)]


# --------------------------------------------------------------------------
# Shared plumbing: work directory, TLS files, users, addresses, processes
# --------------------------------------------------------------------------


@contextlib.contextmanager
def _workdir(name: str) -> Iterator[Path]:
    """A fresh directory under /tmp that daemons which drop privileges can still traverse."""
    path = Path(tempfile.mkdtemp(prefix=f"realserver-{name}-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_tls(pki: Pki, directory: Path, owner: str | None = None) -> TlsFiles:
    """Write a fresh localhost leaf with its chain and key, and the trust anchors, into `directory`."""
    leaf = pki.leaf()
    files = TlsFiles(
        leaf=leaf,
        chain=write_pem(directory / "chain.pem", *pki.chain_for(leaf)),
        key=write_key(directory / "key.pem", leaf),
        ca=write_pem(directory / "ca.pem", pki.root),
        ca_bundle=write_pem(directory / "ca-bundle.pem", pki.intermediate, pki.root),
    )
    files.key.chmod(0o600)
    if owner is not None:
        for path in (files.chain, files.key, files.ca, files.ca_bundle):
            shutil.chown(path, owner, _primary_group(owner))
    return files


def _primary_group(user: str) -> int:
    return pwd.getpwnam(user).pw_gid


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that run a command as `user` (without root's supplementary groups)."""
    if user is None or os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _loopback_address() -> str:
    """A random address in 127.0.0.0/8 other than 127.0.0.x and Debian's 127.0.1.1, or 127.0.0.1
    where the rest of 127.0.0.0/8 is not usable (some sandboxes)."""
    address = f"127.{1 + secrets.randbelow(254)}.{secrets.randbelow(256)}.{1 + secrets.randbelow(254)}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return "127.0.0.1"
    return address


def _pick_ports(host: str, wanted: Mapping[str, int | None]) -> dict[str, int]:
    """The standard port for each name where it can be bound on `host`, else a free one.

    All sockets stay open until every name has its port, so the free ones are distinct."""
    ports: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        for name, standard in wanted.items():
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, standard or 0))
            except OSError:  # below 1024 without root, or taken
                sock.bind((host, 0))
            ports[name] = sock.getsockname()[1]
    return ports


def _run_setup(cmd: Sequence[str], log: Path, *, user: str | None = None, env: Mapping[str, str] | None = None) -> None:
    """Run a one-off set-up command (bounded); raise with its output if it fails."""
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        done = subprocess.run(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=SETUP_TIMEOUT,
            env=None if env is None else {**os.environ, **env},
            cwd="/",
            check=False,
            **_as_user(user),
        )
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {done.returncode}:\n{_tail(log)}")


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return f"(no log at {path})"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes], stop_signal: signal.Signals) -> None:
    """Ask the server to stop (its own shutdown tears its children down fastest), then SIGKILL
    whatever is left of the process group it leads."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(stop_signal)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT)
    # Children that outlive their leader (or ignore SIGTERM) must not outlive the fixture.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=STOP_TIMEOUT)


@dataclass
class _Launch:
    """How `_serve` starts one server whose configuration has been written."""

    cmd: list[str]
    user: str | None = None  # run as this user (for daemons that will not run as root)
    env: Mapping[str, str] | None = None
    log: Path | None = None  # the server's own log, shown when it fails to start
    ready_marker: str | None = None  # a line that must appear in `log` (else the output) once ready
    stop_signal: signal.Signals = signal.SIGTERM


def _wait_ready(proc: subprocess.Popen[bytes], host: str, ports: Sequence[int], launch: _Launch, out: Path) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    waiting = list(ports)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        waiting = [port for port in waiting if not _port_open(host, port)]
        marked = launch.ready_marker is None or launch.ready_marker in _tail(launch.log or out, 1 << 20)
        if not waiting and marked:
            return True
        time.sleep(_POLL)
    return False


@contextlib.contextmanager
def _serve(
    name: str, work: Path, wanted: Mapping[str, int | None], configure: Callable[[str, dict[str, int]], _Launch]
) -> Iterator[tuple[str, dict[str, int], float, Path]]:
    """Start a server; yield its address, ports, start-up seconds and output file.

    `wanted` maps port names to standard ports (None: any free port). `configure(host, ports)` writes
    the configuration and says how to launch. A server that dies or is not ready in time is retried
    on another address; the last failures are raised with the server's output.
    """
    output = work / f"{name}.out"
    failures: list[str] = []
    for _ in range(_START_ATTEMPTS):
        host = _loopback_address()
        ports = _pick_ports(host, wanted)
        started = time.monotonic()
        launch = configure(host, ports)
        with open(output, "ab") as out:
            proc = subprocess.Popen(
                launch.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=None if launch.env is None else {**os.environ, **launch.env},
                cwd=str(work),
                start_new_session=True,
                **_as_user(launch.user),
            )
        try:
            if _wait_ready(proc, host, list(ports.values()), launch, output):
                yield host, ports, time.monotonic() - started, output
                return
            code = proc.poll()
            state = f"exited with {code}" if code is not None else f"was not ready within {START_TIMEOUT:g}s"
            extra = f"\n--- {launch.log}:\n{_tail(launch.log)}" if launch.log else ""
            failures.append(f"{name} on {host} {ports} {state}:\n{_tail(output)}{extra}")
        finally:
            _stop(proc, launch.stop_signal)
    raise RuntimeError("\n\n".join(failures))


def _endpoint(main: str, host: str, ports: dict[str, int], files: TlsFiles, startup: float, **extra: Any) -> Endpoint:
    return Endpoint(host, ports[main], {"ports": ports, "tls": files, "startup_seconds": startup, **extra})


# --------------------------------------------------------------------------
# Postfix: SMTP with STARTTLS, without TLS, and with a client certificate required
# --------------------------------------------------------------------------

_POSTFIX_MAIN = """\
compatibility_level = 3.6
queue_directory = {work}/queue
data_directory = {work}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {work}/postfix.log
maillog_file_prefixes = {work}
inet_interfaces = all
inet_protocols = ipv4
myhostname = localhost.localdomain
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
relay_domains =
smtpd_banner = $myhostname ESMTP textfile-probe test
smtpd_tls_chain_files = {key}, {chain}
smtpd_tls_CAfile = {ca_bundle}
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
"""

# One master, four smtpd services: the same main.cf, overridden per port. No chroot (column 5 "n").
# Each service names its address here because Postfix accepts in inet_interfaces only addresses
# configured on an interface, and 127.x.y.z is merely routed to lo: main.cf says "all".
_POSTFIX_MASTER = """\
{host}:{smtp} inet n - n - - smtpd
{host}:{submission} inet n - n - - smtpd
{host}:{smtp_plain} inet n - n - - smtpd -o smtpd_tls_security_level=none
{host}:{smtp_ccert} inet n - n - - smtpd -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_ask_ccert=yes -o smtpd_tls_req_ccert=yes
anvil unix - - n - 1 anvil
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
proxymap unix - - n - - proxymap
postlog unix-dgram n - n - 1 postlogd
"""


_POSTFIX_PRIVATE_QUEUES = ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming")
_POSTFIX_PRIVATE_QUEUES += ("private", "saved", "trace")
# The queue layout of Postfix's postfix-files: (directory, owner, group, mode). `postfix check`
# would make it too, but takes two seconds (post-install runs postconf two dozen times).
_POSTFIX_DIRECTORIES = (
    *((f"queue/{d}", "postfix", "root", 0o700) for d in _POSTFIX_PRIVATE_QUEUES),
    ("queue/maildrop", "postfix", "postdrop", 0o730),
    ("queue/public", "postfix", "postdrop", 0o710),
    ("queue/pid", "root", "root", 0o755),
    ("data", "postfix", "postfix", 0o700),
)


def _postfix_directories(work: Path) -> None:
    (work / "queue").mkdir(mode=0o755)
    for name, owner, group, mode in _POSTFIX_DIRECTORIES:
        path = work / name
        path.mkdir()
        shutil.chown(path, owner, group)
        path.chmod(mode)


@contextlib.contextmanager
def postfix_server(pki: Pki) -> Iterator[Endpoint]:
    """One Postfix master with four smtpd ports: `smtp` (25) and `submission` (587) offer STARTTLS,
    `smtp_plain` has no TLS, `smtp_ccert` requires a client certificate issued by the Pki
    (smtpd_tls_req_ccert). `info["client_cert"]`/`info["client_key"]` are such a certificate."""
    master = require("master")
    with _workdir("postfix") as work:
        files = write_tls(pki, work)
        client = pki.leaf("probe-client", dns=(), ips=(), client=True)
        client_cert = write_pem(work / "client.pem", client, pki.intermediate)
        client_key = write_key(work / "client-key.pem", client)
        conf = work / "conf"
        conf.mkdir()
        _postfix_directories(work)
        env = {"MAIL_CONFIG": str(conf)}

        def configure(host: str, ports: dict[str, int]) -> _Launch:
            main_cf = _POSTFIX_MAIN.format(work=work, key=files.key, chain=files.chain, ca_bundle=files.ca_bundle)
            (conf / "main.cf").write_text(main_cf)
            (conf / "master.cf").write_text(_POSTFIX_MASTER.format(host=host, **ports))
            # Postfix waits (in 0.3 s steps) until a file written within the last second "cools down".
            for written in ("main.cf", "master.cf"):
                os.utime(conf / written, (time.time() - 60, time.time() - 60))
            # master stays in the foreground unless asked to detach; -s keeps its stdout. Errors go
            # to maillog_file only.
            return _Launch([master, "-c", str(conf), "-s"], env=env, log=work / "postfix.log")

        wanted = {"smtp": 25, "submission": 587, "smtp_plain": None, "smtp_ccert": None}
        with _serve("postfix", work, wanted, configure) as (host, ports, startup, out):
            yield _endpoint(
                "smtp",
                host,
                ports,
                files,
                startup,
                log=work / "postfix.log",
                output=out,
                client_cert=client_cert,
                client_key=client_key,
            )


# --------------------------------------------------------------------------
# Dovecot: IMAP, POP3, ManageSieve and LMTP, each offering STARTTLS
# --------------------------------------------------------------------------

_DOVECOT_CONF = """\
base_dir = {work}/run
state_dir = {work}/state
log_path = {work}/dovecot.log
protocols = imap pop3 lmtp sieve
listen = {host}
{tls}
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:{work}/mail/%u
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={work}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service managesieve-login {{
  inet_listener sieve {{
    port = {sieve}
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    port = {lmtp}
  }}
}}
"""


@contextlib.contextmanager
def dovecot_server(pki: Pki, *, tls: bool = True) -> Iterator[Endpoint]:
    """Dovecot with `imap` (143), `pop3` (110), `sieve` (ManageSieve, 4190) and `lmtp` (24), all
    offering STARTTLS; with `tls=False` (`ssl = no`) none offers it."""
    dovecot = require("dovecot")
    with _workdir("dovecot") as work:
        files = write_tls(pki, work)
        settings = f"ssl = yes\nssl_cert = <{files.chain}\nssl_key = <{files.key}\nssl_min_protocol = TLSv1.2"

        def configure(host: str, ports: dict[str, int]) -> _Launch:
            conf = _DOVECOT_CONF.format(work=work, host=host, tls=settings if tls else "ssl = no", **ports)
            (work / "dovecot.conf").write_text(conf)
            # Dovecot lets its login processes wind down for up to 6 s after SIGTERM; nothing in this
            # throwaway instance needs a clean shutdown.
            return _Launch([dovecot, "-F", "-c", str(work / "dovecot.conf")], stop_signal=signal.SIGKILL)

        wanted = {"imap": 143, "pop3": 110, "sieve": 4190, "lmtp": 24}
        with _serve("dovecot", work, wanted, configure) as (host, ports, startup, out):
            yield _endpoint("imap", host, ports, files, startup, log=work / "dovecot.log", output=out)


# --------------------------------------------------------------------------
# vsftpd: FTP with AUTH TLS
# --------------------------------------------------------------------------

_VSFTPD_CONF = """\
listen=YES
listen_ipv6=NO
listen_address={host}
listen_port={ftp}
background=NO
anonymous_enable=YES
local_enable=NO
write_enable=NO
ssl_enable={ssl}
allow_anon_ssl=YES
force_anon_logins_ssl=NO
force_anon_data_ssl=NO
rsa_cert_file={chain}
rsa_private_key_file={key}
ssl_ciphers=HIGH
require_ssl_reuse=NO
secure_chroot_dir={work}/empty
anon_root={work}/empty
seccomp_sandbox=NO
xferlog_enable=NO
vsftpd_log_file={work}/vsftpd.log
log_ftp_protocol=YES
syslog_enable=NO
ftpd_banner=textfile-probe test FTP
"""


@contextlib.contextmanager
def vsftpd_server(pki: Pki, *, tls: bool = True) -> Iterator[Endpoint]:
    """vsftpd on `ftp` (21) offering AUTH TLS; with `tls=False` (`ssl_enable=NO`) it does not."""
    vsftpd = require("vsftpd")
    with _workdir("vsftpd") as work:
        files = write_tls(pki, work)
        (work / "empty").mkdir(mode=0o555)

        def configure(host: str, ports: dict[str, int]) -> _Launch:
            conf = work / "vsftpd.conf"
            ssl = "YES" if tls else "NO"
            conf.write_text(
                _VSFTPD_CONF.format(host=host, ssl=ssl, chain=files.chain, key=files.key, work=work, **ports)
            )
            conf.chmod(0o600)  # vsftpd refuses a configuration file others may write
            return _Launch([vsftpd, str(conf)])

        with _serve("vsftpd", work, {"ftp": 21}, configure) as (host, ports, startup, out):
            yield _endpoint("ftp", host, ports, files, startup, log=work / "vsftpd.log", output=out)


# --------------------------------------------------------------------------
# slapd: LDAP with StartTLS on one port, LDAPS (TLS from the first byte) on another
# --------------------------------------------------------------------------

_SLAPD_CONF = """\
include /etc/ldap/schema/core.schema
pidfile {work}/slapd.pid
argsfile {work}/slapd.args
{tls}
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
suffix "dc=example,dc=org"
rootdn "cn=admin,dc=example,dc=org"
directory {work}/db
maxsize 10485760
"""


@contextlib.contextmanager
def slapd_server(pki: Pki, *, tls: bool = True) -> Iterator[Endpoint]:
    """OpenLDAP's slapd: `ldap` (389) answers the StartTLS extended operation, `ldaps` (636) is TLS
    from the first byte. With `tls=False` slapd has no certificate and no `ldaps` port."""
    slapd = require("slapd")
    with _workdir("slapd") as work:
        files = write_tls(pki, work)
        (work / "db").mkdir()
        settings = (
            f"TLSCertificateFile {files.chain}\nTLSCertificateKeyFile {files.key}\nTLSCACertificateFile {files.ca}"
        )

        def configure(host: str, ports: dict[str, int]) -> _Launch:
            (work / "slapd.conf").write_text(_SLAPD_CONF.format(work=work, tls=settings if tls else ""))
            urls = " ".join(f"{name}://{host}:{port}/" for name, port in ports.items())
            # -d keeps slapd in the foreground; level 256 (stats) logs connections and operations.
            return _Launch([slapd, "-f", str(work / "slapd.conf"), "-h", urls, "-d", "256"])

        wanted: dict[str, int | None] = {"ldap": 389, "ldaps": 636} if tls else {"ldap": 389}
        with _serve("slapd", work, wanted, configure) as (host, ports, startup, out):
            yield _endpoint("ldap", host, ports, files, startup, log=out, output=out)


# --------------------------------------------------------------------------
# PostgreSQL: SSLRequest, with ssl=on (or off), as the postgres user
# --------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server(pki: Pki, *, tls: bool = True) -> Iterator[Endpoint]:
    """A PostgreSQL cluster made by initdb in a temporary directory, run as `postgres` on `postgres`
    (5432) with `ssl=on` (`tls=False`: off). `info["setup_seconds"]` is the initdb time."""
    postgres = require("postgres")
    initdb = str(Path(postgres).resolve().with_name("initdb"))  # /usr/local/bin/postgres may be a link
    user = "postgres"
    with _workdir("postgres") as work:
        files = write_tls(pki, work, owner=user)  # postgres insists on owning a 0600 key
        data, sockets = work / "data", work / "sockets"
        sockets.mkdir()
        _chown_tree(work, user)
        started = time.monotonic()
        initdb_cmd = [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "--no-locale"]
        _run_setup(initdb_cmd, work / "setup.log", user=user)
        setup_seconds = time.monotonic() - started

        def configure(host: str, ports: dict[str, int]) -> _Launch:
            settings = {
                "listen_addresses": host,
                "port": ports["postgres"],
                "unix_socket_directories": sockets,
                "ssl": "on" if tls else "off",
                "ssl_cert_file": files.chain,
                "ssl_key_file": files.key,
                "fsync": "off",
            }
            cmd = [postgres, "-D", str(data)]
            for key, value in settings.items():
                cmd += ["-c", f"{key}={value}"]
            # The port opens before recovery ends; the log says when connections are served. SIGINT is
            # the "fast" shutdown (SIGTERM waits for every client to leave).
            ready = "database system is ready to accept connections"
            return _Launch(cmd, user=user, ready_marker=ready, stop_signal=signal.SIGINT)

        with _serve("postgres", work, {"postgres": 5432}, configure) as (host, ports, startup, out):
            yield _endpoint("postgres", host, ports, files, startup, log=out, output=out, setup_seconds=setup_seconds)


# --------------------------------------------------------------------------
# MariaDB: the TLS capability flag in the greeting, then SSLRequest
# --------------------------------------------------------------------------


@contextlib.contextmanager
def mariadb_server(pki: Pki, *, require_secure_transport: bool = False, tls: bool = True) -> Iterator[Endpoint]:
    """MariaDB on `mysql` (3306) with a data directory made by mariadb-install-db; mariadbd starts as
    root and drops to `mysql`. `tls=False` starts it with --skip-ssl. `info["setup_seconds"]` is the
    mariadb-install-db time."""
    mariadbd = require("mariadbd")
    install_db = require("mariadb-install-db")
    user = "mysql"
    with _workdir("mariadb") as work:
        files = write_tls(pki, work, owner=user)
        data = work / "data"
        data.mkdir()
        _chown_tree(work, user)
        started = time.monotonic()
        _run_setup(
            [
                install_db,
                "--no-defaults",
                f"--datadir={data}",
                f"--user={user}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ],
            work / "setup.log",
        )
        setup_seconds = time.monotonic() - started

        def configure(host: str, ports: dict[str, int]) -> _Launch:
            cmd = [
                mariadbd,
                "--no-defaults",
                f"--datadir={data}",
                f"--user={user}",
                f"--port={ports['mysql']}",
                f"--bind-address={host}",
                f"--socket={work}/mysqld.sock",
                f"--pid-file={work}/mysqld.pid",
                f"--log-error={work}/error.log",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                f"--require-secure-transport={'ON' if require_secure_transport else 'OFF'}",
            ]
            if tls:
                cmd += [f"--ssl-cert={files.chain}", f"--ssl-key={files.key}", f"--ssl-ca={files.ca}"]
            else:
                cmd += ["--skip-ssl"]
            return _Launch(cmd, log=work / "error.log", ready_marker="ready for connections")

        with _serve("mariadb", work, {"mysql": 3306}, configure) as (host, ports, startup, out):
            log = work / "error.log"
            yield _endpoint("mysql", host, ports, files, startup, log=log, output=out, setup_seconds=setup_seconds)


# --------------------------------------------------------------------------
# Prosody: XMPP client-to-server and server-to-server STARTTLS
# --------------------------------------------------------------------------

_PROSODY_CONF = """\
pidfile = "{work}/prosody.pid"
data_path = "{work}/data"
log = {{ debug = "{work}/prosody.log" }}
interfaces = {{ "{host}" }}
local_interfaces = {{ "{host}" }}
c2s_ports = {{ {c2s} }}
s2s_ports = {{ {s2s} }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
component_ports = {{ }}
modules_enabled = {{ {modules} }}
modules_disabled = {{ "posix", "admin_shell", "s2s_bidi" }}
s2s_secure_auth = false
authentication = "internal_hashed"
certificates = "{work}/certs"
{tls}
VirtualHost "localhost"
"""


@contextlib.contextmanager
def prosody_server(pki: Pki, *, tls: bool = True) -> Iterator[Endpoint]:
    """Prosody serving the XMPP domain `localhost` (`info["domain"]`) on `c2s` (5222) and `s2s` (5269),
    run as `prosody`. Both require STARTTLS; with `tls=False` neither offers it (no mod_tls)."""
    prosody = require("prosody")
    user = "prosody"
    with _workdir("prosody") as work:
        files = write_tls(pki, work, owner=user)
        (work / "data").mkdir()
        (work / "certs").mkdir()
        settings = (
            f'ssl = {{ certificate = "{files.chain}", key = "{files.key}" }}\n'
            "c2s_require_encryption = true\ns2s_require_encryption = true"
        )
        no_tls = "c2s_require_encryption = false\ns2s_require_encryption = false"
        # With mod_tls loaded but no certificate Prosody still advertises STARTTLS: leave it out.
        modules = ", ".join(f'"{m}"' for m in ("tls", "saslauth", "dialback", "disco", "ping") if tls or m != "tls")

        def configure(host: str, ports: dict[str, int]) -> _Launch:
            conf = _PROSODY_CONF.format(work=work, host=host, tls=settings if tls else no_tls, modules=modules, **ports)
            (work / "prosody.cfg.lua").write_text(conf)
            _chown_tree(work, user)
            return _Launch([prosody, "--config", str(work / "prosody.cfg.lua"), "-F"], user=user)

        with _serve("prosody", work, {"c2s": 5222, "s2s": 5269}, configure) as (host, ports, startup, out):
            log = work / "prosody.log"
            yield _endpoint("c2s", host, ports, files, startup, log=log, output=out, domain="localhost")


# --------------------------------------------------------------------------
# INN: nnrpd (the NNTP reader server) with STARTTLS, standalone, as the news user
# --------------------------------------------------------------------------

_INN_CONF = """\
organization: "textfile-probe tests"
pathhost: localhost
domain: localdomain
fromhost: localhost.localdomain
server: localhost
mta: "/usr/sbin/sendmail -oi -oem %s"
pathnews: /usr/lib/news
pathbin: /usr/lib/news/bin
pathcontrol: /usr/lib/news/bin/control
pathfilter: /etc/news/filter
pathetc: {work}/etc
pathdb: {work}/db
pathrun: {work}/run
pathspool: {work}/spool
pathlog: {work}/log
pathtmp: {work}/tmp
pathoverview: {work}/spool/overview
pathhttp: {work}/http
pathincoming: {work}/spool/incoming
patharchive: {work}/spool/archive
patharticles: {work}/spool/articles
pathoutgoing: {work}/spool/outgoing
enableoverview: true
ovmethod: tradindexed
hismethod: hisv6
nnrpdloadlimit: 0
readerswhenstopped: true
noreader: false
{tls}
"""

_INN_READERS = """\
auth "everyone" {
    hosts: "*"
    default: "<everyone>"
}
access "everyone" {
    users: "*"
    newsgroups: "*"
    access: RPA
}
"""

_INN_STORAGE = """\
method trash {
    newsgroups: *
    class: 0
}
"""


@contextlib.contextmanager
def inn_server(pki: Pki, *, tls: bool = True) -> Iterator[Endpoint]:
    """INN's reader server nnrpd as a standalone daemon (no innd) on `nntp` (119), configured
    through INNCONF, run as `news`, offering STARTTLS; with `tls=False` it has no certificate."""
    nnrpd = require("nnrpd")
    bin_dir = Path(nnrpd).parent
    user = "news"
    with _workdir("inn") as work:
        files = write_tls(pki, work, owner=user)
        settings = f"tlscapath: {work}/tls\ntlscafile: {files.ca}\ntlscertfile: {files.chain}\ntlskeyfile: {files.key}"
        for sub in ("etc", "db", "run", "spool", "spool/overview", "log", "tmp", "http", "tls"):
            (work / sub).mkdir()
        (work / "etc" / "inn.conf").write_text(_INN_CONF.format(work=work, tls=settings if tls else ""))
        (work / "etc" / "readers.conf").write_text(_INN_READERS)
        (work / "etc" / "storage.conf").write_text(_INN_STORAGE)
        (work / "db" / "active").write_text("test.group 0000000000 0000000001 y\n")
        (work / "db" / "newsgroups").write_text("test.group\tA group for tests.\n")
        _chown_tree(work, user)
        env = {"INNCONF": str(work / "etc" / "inn.conf")}
        # nnrpd reports configuration errors only to syslog: innconfval says them here first.
        _run_setup([str(bin_dir / "innconfval"), "-C"], work / "setup.log", user=user, env=env)
        # nnrpd turns readers away (400) without an overview database; this makes an empty one.
        _run_setup([str(bin_dir / "makehistory"), "-O", "-x"], work / "setup.log", user=user, env=env)

        def configure(host: str, ports: dict[str, int]) -> _Launch:
            # -D: standalone daemon; -f: in the foreground.
            return _Launch([nnrpd, "-D", "-f", "-b", host, "-p", str(ports["nntp"])], user=user, env=env)

        with _serve("nnrpd", work, {"nntp": 119}, configure) as (host, ports, startup, out):
            yield _endpoint("nntp", host, ports, files, startup, log=out, output=out)


# --------------------------------------------------------------------------
# InspIRCd: IRC STARTTLS (the starttls module over a gnutls TLS profile)
# --------------------------------------------------------------------------

# Host name lookups stay on, against a resolver that is not there (1 s timeout), so each client
# first gets the NOTICE lines real networks send, and STARTTLS is answered only after the lookup.
_INSPIRCD_CONF = """\
<server name="irc.localhost" description="textfile-probe test" network="Test">
<admin name="test" nick="test" email="test@localhost">
<bind address="{host}" port="{irc}" type="clients">
<connect name="main" allow="*" timeout="60" pingfreq="120" localmax="100" globalmax="100"
         resolvehostnames="yes" useident="no">
<dns server="127.0.0.1" timeout="1">
<pid file="{work}/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{work}/inspircd.log">
<files motd="{work}/motd.txt">
<module name="cap">
{tls}
"""

_INSPIRCD_TLS = """\
<module name="ssl_gnutls">
<module name="starttls">
<sslprofile name="Clients" provider="gnutls" certfile="{chain}" keyfile="{key}" cafile=""
            dhfile="" crlfile="" hash="sha256" requestclientcert="no">
<starttls provider="Clients">
"""


@contextlib.contextmanager
def inspircd_server(pki: Pki, *, tls: bool = True) -> Iterator[Endpoint]:
    """InspIRCd with the starttls module on a plain client port `irc` (6667), run as `irc` (it
    refuses root); with `tls=False` neither TLS nor the starttls module is loaded."""
    inspircd = require("inspircd")
    user = "irc"
    with _workdir("inspircd") as work:
        files = write_tls(pki, work, owner=user)
        settings = _INSPIRCD_TLS.format(chain=files.chain, key=files.key) if tls else ""
        (work / "motd.txt").write_text("textfile-probe test\n")

        def configure(host: str, ports: dict[str, int]) -> _Launch:
            conf = _INSPIRCD_CONF.format(work=work, host=host, tls=settings, **ports)
            (work / "inspircd.conf").write_text(conf)
            _chown_tree(work, user)
            return _Launch([inspircd, "--config", str(work / "inspircd.conf"), "--nofork", "--nopid"], user=user)

        with _serve("inspircd", work, {"irc": 6667}, configure) as (host, ports, startup, out):
            yield _endpoint("irc", host, ports, files, startup, log=work / "inspircd.log", output=out)
