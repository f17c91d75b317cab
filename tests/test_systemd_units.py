"""The systemd units in systemd/: what they run, the sandbox they share, and what systemd-analyze says of them.

The first tests read the unit files themselves (no systemd needed). The rest run Debian's `systemd-analyze` (package
`systemd`): `security --offline=true` must score each service at 2.0 or lower, and `verify` must print nothing.
`verify` checks that every Exec binary exists, so it runs with `--root` on a throwaway tree holding the host's unit
directory (for the targets our units name), fake executables at the paths the units use, and our units; a copy with
a typo proves that tree would report a problem. `systemd-sysusers --root` creates the user from our sysusers.d file
in a throwaway /etc. Those tests are skipped only when the tool is absent (both come in the same package).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from textfile_probe.cli import DEFAULT_CONFIG
from textfile_probe.config import DEFAULT_OUTPUT

UNITS = Path(__file__).resolve().parent.parent / "systemd"
DAEMON, ONCE, TIMER = (UNITS / f"textfile-probe{suffix}" for suffix in (".service", "-once.service", ".timer"))
SYSUSERS = UNITS / "textfile-probe.sysusers"
SERVICES = (DAEMON, ONCE)
BINARY = "/opt/textfile-probe/bin/textfile-probe"
MAX_EXPOSURE = 2.0
ANALYZE, MAKE_USERS = shutil.which("systemd-analyze"), shutil.which("systemd-sysusers")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is absent (Debian package: systemd)")
# What only one of the two services says; everything else in [Service] is the sandbox they must share.
OWN_KEYS = {
    *("Type", "ExecStart", "ExecReload", "WatchdogSec", "Restart", "RestartSec", "RestartPreventExitStatus"),
    *("TimeoutStopSec", "TimeoutStartSec"),
}

Unit = dict[str, list[tuple[str, str]]]


def parse(path: Path) -> Unit:
    """Sections -> (key, value) in order; systemd allows a key more than once, so no dict per section."""
    unit: Unit = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            unit.setdefault(section, [])
            continue
        key, _, value = line.partition("=")
        unit[section].append((key, value))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= appears {len(found)} times"
    return found[0]


def run(*args: str, tool: str | None = ANALYZE) -> subprocess.CompletedProcess[str]:
    assert tool is not None
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False)


# --------------------------------------------------------------------------
# The unit files
# --------------------------------------------------------------------------


def test_the_daemon_unit_runs_the_daemon_as_a_notify_service_with_a_watchdog() -> None:
    unit = parse(DAEMON)
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "ExecStart") == f"{BINARY} run --config {DEFAULT_CONFIG}"
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert re.fullmatch(r"\d+s", one(unit, "Service", "WatchdogSec"))
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "RestartPreventExitStatus") == "2"  # config errors: a restart cannot help
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_the_timer_runs_one_cycle_through_the_oneshot_unit_instead_of_the_daemon() -> None:
    once, timer = parse(ONCE), parse(TIMER)
    assert one(once, "Service", "Type") == "oneshot"
    assert one(once, "Service", "ExecStart") == f"{BINARY} run --once --config {DEFAULT_CONFIG}"
    assert values(once, "Service", "TimeoutStartSec"), "a oneshot waits forever by default"
    assert one(timer, "Timer", "Unit") == ONCE.name
    assert one(timer, "Unit", "Conflicts") == DAEMON.name
    assert one(timer, "Install", "WantedBy") == "timers.target"


def test_both_services_share_one_sandbox_that_may_write_only_the_textfile_directory() -> None:
    daemon, once = ([(k, v) for k, v in parse(path)["Service"] if k not in OWN_KEYS] for path in SERVICES)
    assert daemon == once
    service = parse(DAEMON)
    assert one(service, "Service", "ReadWritePaths") == os.path.dirname(DEFAULT_OUTPUT)
    assert one(service, "Service", "ProtectSystem") == "strict"
    assert one(service, "Service", "UMask") == "0022"  # the .prom must be readable by node_exporter
    assert one(service, "Service", "User") == "textfile-probe"
    assert one(service, "Service", "CapabilityBoundingSet") == ""
    assert one(service, "Service", "RestrictAddressFamilies") == "AF_INET AF_INET6 AF_UNIX"
    # cffi callbacks (pyOpenSSL's verify and info callbacks) need write+execute memory: see the unit's comment.
    assert values(service, "Service", "MemoryDenyWriteExecute") == []


# --------------------------------------------------------------------------
# systemd-analyze
# --------------------------------------------------------------------------


def exposure(unit: Path) -> float:
    done = run("security", "--offline=true", "--no-pager", str(unit))
    match = re.search(rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)", done.stdout)
    assert match, f"no overall exposure in:\n{done.stdout}\n{done.stderr}"
    return float(match.group(1))


@needs_analyze
@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_security_exposure_is_at_most_2(unit: Path) -> None:
    assert exposure(unit) <= MAX_EXPOSURE


@needs_analyze
def test_an_unhardened_service_scores_far_above_the_bound(tmp_path: Path) -> None:
    """The parse above is not vacuous: the same command scores a bare service high."""
    bare = tmp_path / "bare.service"
    bare.write_text(f"[Service]\nExecStart={BINARY} run\n", encoding="utf-8")
    assert exposure(bare) > 8.0


def fake_root(tmp_path: Path, units: list[Path]) -> Path:
    """A tree `verify --root` accepts: the host's system units, fake executables at our units' paths, our units."""
    root = tmp_path / "root"
    host_units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib")):
        (root / link).symlink_to(target)
    for executable in (root / BINARY.lstrip("/"), root / "usr/bin/kill"):
        executable.parent.mkdir(parents=True, exist_ok=True)
        executable.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
        executable.chmod(0o755)
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, system / unit.name)
    return root


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    units = [DAEMON, ONCE, TIMER]
    root = fake_root(tmp_path, units)
    done = run("verify", f"--root={root}", "--man=no", *(u.name for u in units))
    assert (done.returncode, done.stdout + done.stderr) == (0, "")

    # The same tree reports a misspelt key: a clean run above means clean units, not a blind check.
    typo = root / "etc/systemd/system/typo.service"
    typo.write_text(DAEMON.read_text(encoding="utf-8").replace("ProtectHome=", "ProtectHom="), encoding="utf-8")
    done = run("verify", f"--root={root}", "--man=no", typo.name)
    assert "Unknown key 'ProtectHom'" in done.stdout + done.stderr


@pytest.mark.skipif(MAKE_USERS is None, reason="systemd-sysusers is absent (Debian package: systemd)")
def test_sysusers_creates_the_system_user_and_group_the_services_run_as(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n", encoding="utf-8")
    (etc / "group").write_text("root:x:0:\n", encoding="utf-8")
    done = run(f"--root={tmp_path}", str(SYSUSERS), tool=MAKE_USERS)
    assert done.returncode == 0, done.stderr
    users = {line.split(":")[0]: line.split(":") for line in (etc / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (etc / "group").read_text().splitlines()}
    for path in SERVICES:
        user, group = one(parse(path), "Service", "User"), one(parse(path), "Service", "Group")
        assert 0 < int(users[user][2]) < 1000, "a system user"
        assert users[user][3] == groups[group][2] and users[user][6].endswith("nologin")
