"""Daemon state changes on reload, without subprocesses (test_daemon.py covers the real process)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from textfile_probe import config
from textfile_probe.scheduler import Daemon


def test_reload_switching_output_removes_the_abandoned_file_and_applies_log_level(tmp_path: Path) -> None:
    first, second, path = tmp_path / "a.prom", tmp_path / "b.prom", tmp_path / "c.yml"
    path.write_text(f"output: {first}\nlog_level: info\ntargets: []\n")
    daemon = Daemon(config.load(path))
    assert asyncio.run(daemon.write())
    path.write_text(f"output: {second}\nlog_level: debug\ntargets: []\n")
    assert daemon.reload(str(path))
    assert not first.exists()
    assert logging.getLogger("textfile_probe").level == logging.DEBUG
    assert asyncio.run(daemon.write()) and second.exists()


def test_failed_reload_keeps_config_and_does_not_fake_a_cycle(tmp_path: Path) -> None:
    out, path = tmp_path / "a.prom", tmp_path / "c.yml"
    path.write_text(f"output: {out}\ntargets: [{{address: '127.0.0.1:1'}}]\n")
    daemon = Daemon(config.load(path))
    before = daemon.config
    path.write_text("targets: [{address: nope}]\n")
    assert not daemon.reload(str(path))
    assert daemon.config is before and not daemon.config_ok
    assert asyncio.run(daemon.write())
    text = out.read_text()
    assert "textfile_probe_config_last_reload_successful 0.0\n" in text
    assert "textfile_probe_last_cycle_timestamp_seconds 0.0\n" in text


def test_targets_that_were_slow_start_first(tmp_path: Path) -> None:
    from textfile_probe.probe import ProbeResult

    path = tmp_path / "c.yml"
    targets = "[{address: 'a:1'}, {address: 'b:1'}, {address: 'c:1'}]"
    path.write_text(f"output: {tmp_path / 'a.prom'}\ntargets: {targets}\n")
    daemon = Daemon(config.load(path))
    a, b, _ = daemon.config.targets
    daemon.results = {"a:1": ProbeResult(a, True, 0.01), "b:1": ProbeResult(b, False, 5.0)}
    # b timed out last cycle: it starts first; c has no history and keeps its place after the known ones.
    assert [t.name for t in daemon._slowest_first(daemon.config.targets)] == ["b:1", "a:1", "c:1"]
