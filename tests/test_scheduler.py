"""Daemon state changes on reload, without subprocesses (test_daemon.py covers the real process)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from pki import Pki, write_pem

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


def _file_reads(text: str) -> dict[str, str]:
    """path -> reason of every textfile_probe_file_read_success sample."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        s.labels["path"]: s.labels["reason"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "textfile_probe_file_read_success"
    }


def test_a_config_with_only_files_still_writes_on_schedule(tmp_path: Path, pki: Pki) -> None:
    out, path, cert = tmp_path / "a.prom", tmp_path / "c.yml", tmp_path / "leaf.pem"
    write_pem(cert, pki.leaf())
    path.write_text(f"output: {out}\ninterval: 0.2s\nfiles: ['{cert}']\n")
    daemon = Daemon(config.load(path))

    async def writes_seen() -> int:
        task = asyncio.ensure_future(daemon.run(str(path)))
        seen: set[tuple[int, int]] = set()
        for _ in range(100):  # at most 5 s, until three distinct writes were seen
            await asyncio.sleep(0.05)
            if out.exists():
                stat = out.stat()
                seen.add((stat.st_ino, stat.st_mtime_ns))  # every atomic write is a new file
            if len(seen) >= 3:
                break
        daemon._request_stop()
        await task
        return len(seen)

    assert asyncio.run(writes_seen()) >= 3
    assert _file_reads(out.read_text()) == {str(cert): "ok"}
    assert daemon._watcher.reads == 1  # nothing changed, so one parse across all those cycles


def test_reload_watches_the_new_files_at_once(tmp_path: Path, pki: Pki) -> None:
    out, path, cert = tmp_path / "a.prom", tmp_path / "c.yml", tmp_path / "leaf.pem"
    write_pem(cert, pki.leaf())
    path.write_text(f"output: {out}\nfiles: ['{tmp_path / 'gone.pem'}']\n")
    daemon = Daemon(config.load(path))
    asyncio.run(daemon.cycle([]))
    assert _file_reads(out.read_text()) == {str(tmp_path / "gone.pem"): "not_found"}
    path.write_text(f"output: {out}\nfiles: ['{cert}']\n")
    assert daemon.reload(str(path))
    asyncio.run(daemon.cycle([]))
    assert _file_reads(out.read_text()) == {str(cert): "ok"}
