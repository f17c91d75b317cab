"""The daemon loop: schedule probes, run them concurrently, write the file, handle signals.

Strategy: one asyncio loop. A `schedule.Scheduler` holds one job per distinct interval; a job only
marks its targets due, and the loop runs every due target in one cycle of at most `concurrency`
workers, so a slow target holds one worker for at most its timeout and never delays the rest.
After each cycle the file is re-rendered from the latest result of every configured target.
SIGTERM/SIGINT cancel an in-flight cycle (nothing is written, so the last file stays whole);
SIGHUP reloads the config after the current cycle, keeping the old one if the new one is bad.
Supervision goes out through `notify` (sd_notify messages, see `run`); the watchdog is fed by a
task on the same loop, so a wedged loop stops feeding it and systemd restarts the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence

import schedule

from . import config as config_mod
from . import logs, tls
from .certs import earliest_expiry
from .config import Config, Target
from .errors import ConfigError
from .files import FileResult, FileWatcher
from .metrics import FileText, Health, clean, render_chunks
from .probe import ProbeResult, probe
from .textfile import remove_stale_temps, write_atomic

log = logging.getLogger("textfile_probe")

Notify = Callable[[str], object]  # takes one sd_notify message; whatever it returns is ignored
_DAY = 86400.0


def _quiet(_message: str) -> None:
    """The `notify` of a daemon nobody supervises."""


def _targets(count: int) -> str:
    return f"{count} target{'' if count == 1 else 's'}"


def status_line(
    results: Sequence[ProbeResult],
    targets: int,
    now: float,
    config_ok: bool = True,
    files: Sequence[FileResult] = (),
) -> str:
    """One line for `systemctl status`: targets, failures, files, the earliest certificate expiry
    and whose (a target's name, or a watched file's path).

    One line it stays: target names are printable text (config.py refuses anything else), and a
    path's control characters are replaced.
    """
    text = f"{_targets(targets)}, {sum(not r.success for r in results)} failing"
    if files:
        unreadable = sum(not f.ok for f in files)
        text += f", {len(files)} file{'' if len(files) == 1 else 's'}" + (
            f" ({unreadable} unreadable)" if unreadable else ""
        )
    expiries = [(when, r.target.name) for r in results if (when := earliest_expiry(r.peer_chain)) is not None]
    expiries += [(min(c.not_after for _, c in f.certs), f.path) for f in files if f.certs]
    if expiries:
        when, name = min(expiries)
        days = (when - now) / _DAY
        text += f", next expiry in {days:.1f} days" if days >= 0 else f", expired {-days:.1f} days ago"
        text += f" ({clean(name)})"
    return text if config_ok else text + "; config reload failed, running the previous config"


class Daemon:
    """Holds the current config and the latest result per target."""

    def __init__(self, config: Config, loaded_at: float | None = None, log_level: str | None = None) -> None:
        self.config = config
        self.log_level_override = log_level
        self.results: dict[str, ProbeResult] = {}
        self.files: list[FileResult] = []
        self._watcher = FileWatcher()
        self._file_text = FileText()
        self._files_due = True
        self.config_ok = True
        self.config_loaded_at = time.time() if loaded_at is None else loaded_at
        self.last_cycle_duration = 0.0
        self.last_cycle_end = 0.0
        self._scheduler = schedule.Scheduler()
        self._due: dict[str, Target] = {}
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._notify: Notify = _quiet
        self._plan()

    # -- scheduling -------------------------------------------------------------------------

    def _plan(self) -> None:
        self._scheduler.clear()
        by_interval: dict[float, list[Target]] = {}
        for target in self.config.targets:
            by_interval.setdefault(target.interval, []).append(target)
        for interval, targets in by_interval.items():
            # schedule annotates intervals as int but builds a timedelta, so sub-second values work.
            self._scheduler.every(interval).seconds.do(self._mark_due, targets)  # type: ignore[arg-type]
        if self.config.files:
            self._scheduler.every(self.config.interval).seconds.do(self._mark_files_due)  # type: ignore[arg-type]

    def _mark_files_due(self) -> None:
        self._files_due = True

    def _mark_due(self, targets: Sequence[Target]) -> None:
        self._due.update((t.name, t) for t in targets)

    # -- one cycle --------------------------------------------------------------------------

    async def cycle(self, targets: Sequence[Target]) -> bool:
        """Probe `targets` concurrently, record the results, write the file; True if written."""
        started = time.perf_counter()
        pending = iter(self._slowest_first(targets))

        async def worker() -> None:
            for target in pending:
                self._record(await probe(target))  # replacing the old result frees it at once

        workers = min(self.config.concurrency, len(targets))
        await asyncio.gather(*(worker() for _ in range(workers)), self.refresh_files())
        self.last_cycle_duration = time.perf_counter() - started
        self.last_cycle_end = time.time()
        return await self.write()

    def _slowest_first(self, targets: Sequence[Target]) -> list[Target]:
        """Order by last duration, longest first (LPT): targets that timed out last time start at
        once and wait in parallel with the rest, instead of starting late and ending the cycle one
        timeout after everything else. Unknown targets keep their config order, after those."""
        last = self.results

        def duration(target: Target) -> float:
            result = last.get(target.name)
            return -result.duration if result is not None else 0.0

        return sorted(targets, key=duration)

    def _record(self, result: ProbeResult) -> None:
        name = result.target.name
        before = self.results.get(name)
        self.results[name] = result
        state = (result.success, result.stage, result.reason)
        if before is not None and (before.success, before.stage, before.reason) == state:
            log.debug(
                "probe done",
                extra={
                    "target": name,
                    "success": result.success,
                    "duration": f"{result.duration:.4f}",
                },
            )
        elif result.success:
            log.info("probe succeeded", extra={"target": name, "verify": result.verify_result})
        else:
            stage = result.stage.value if result.stage else ""
            log.warning(
                "probe failed",
                extra={
                    "target": name,
                    "stage": stage,
                    "reason": result.reason,
                    "detail": result.detail,
                },
            )

    async def refresh_files(self) -> None:
        """Re-read the watched files that changed (in a thread: a changed keystore takes a parse),
        and log each file whose read status changed."""
        self._files_due = False
        before = {f.path: f.reason for f in self.files}
        self.files = await asyncio.to_thread(self._watcher.refresh, self.config.files)
        for read in self.files:
            if before.get(read.path, "ok") != read.reason:
                if read.ok:
                    log.info("file readable again", extra={"path": read.path})
                else:
                    log.warning(
                        "cannot read file", extra={"path": read.path, "reason": read.reason, "detail": read.detail}
                    )

    def current_results(self) -> list[ProbeResult]:
        return [self.results[t.name] for t in self.config.targets if t.name in self.results]

    async def write(self) -> bool:
        health = Health(self.last_cycle_duration, self.last_cycle_end, self.config_ok, self.config_loaded_at)
        chunks = render_chunks(self.current_results(), health, len(self.config.targets), self.files, self._file_text)
        try:
            await asyncio.to_thread(write_atomic, self.config.output, chunks)
        except OSError as exc:
            log.error(
                "cannot write the output file; the previous file is kept",
                extra={"path": self.config.output, "error": exc},
            )
            return False
        return True

    # -- the loop ---------------------------------------------------------------------------

    def reload(self, path: str) -> bool:
        """Load `path`; on success switch to it, else keep the current config. True on success."""
        try:
            new = config_mod.load(path)
        except ConfigError as exc:
            self.config_ok = False
            for message in exc.messages:
                log.error("config reload failed; keeping the previous config", extra={"error": message})
            return False
        tls.context_for.cache_clear()
        old_output = self.config.output
        self.config, self.config_ok, self.config_loaded_at = new, True, time.time()
        logs.set_level(self.log_level_override or new.log_level)
        if new.output != old_output:
            # node_exporter would keep serving the abandoned file next to the new one.
            with contextlib.suppress(OSError):
                os.unlink(old_output)
        names = {t.name for t in new.targets}
        self.results = {k: v for k, v in self.results.items() if k in names}
        self._files_due = True
        self._plan()
        for warning in new.warnings:
            log.warning("config warning", extra={"warning": warning})
        log.info("config reloaded", extra={"targets": len(new.targets)})
        return True

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)

    def _request_stop(self) -> None:
        if not self._stop.is_set():
            self._notify("STOPPING=1\nSTATUS=stopping")  # at once, not after the cycle is cancelled
        self._stop.set()

    def status(self) -> str:
        return status_line(self.current_results(), len(self.config.targets), time.time(), self.config_ok, self.files)

    async def run(self, config_path: str, notify: Notify | None = None, watchdog: float | None = None) -> int:
        """Run until SIGTERM/SIGINT; return the process exit code.

        `notify` gets sd_notify messages. READY=1 is sent once the config is loaded and the signal
        handlers are in place, before the first cycle: a cycle can take a whole timeout (and more
        with many targets), readiness means "running and answering signals", not "every target
        healthy", and a slow first cycle must not run into systemd's start timeout. STATUS= follows
        every cycle; RELOADING=1 (with MONOTONIC_USEC=) and READY=1 bracket a SIGHUP reload, which
        ends in READY=1 whether the new config was taken or refused (the daemon runs either way);
        STOPPING=1 goes out as soon as SIGTERM/SIGINT arrives. With `watchdog` (seconds, from
        WATCHDOG_USEC) a task on this loop sends WATCHDOG=1 every half interval.
        """
        self._notify = notify or _quiet
        self.install_signal_handlers()
        remove_stale_temps(self.config.output)
        self._notify(f"READY=1\nSTATUS=started, {_targets(len(self.config.targets))}, first cycle running")
        feeder = asyncio.ensure_future(self._feed_watchdog(watchdog)) if watchdog else None
        try:
            await self._loop(config_path)
        finally:
            if feeder is not None:
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
        log.info("stopping")
        return 0

    async def _loop(self, config_path: str) -> None:
        due: Iterable[Target] = self.config.targets
        while not self._stop.is_set():
            if self._reload.is_set():
                self._reload.clear()
                self._notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}\nSTATUS=reloading")
                if self.reload(config_path):
                    due = self.config.targets
                else:
                    await self.write()
                self._notify(f"READY=1\nSTATUS={self.status()}")
            batch = list(due) or self._take_due()
            due = ()
            if batch or self._files_due:
                if not await self._run_cycle(batch):
                    break
                self._notify(f"STATUS={self.status()}")
            await self._sleep(self._scheduler.idle_seconds)

    async def _feed_watchdog(self, interval: float) -> None:
        """WATCHDOG=1 every half interval, while this loop runs: through sleeps and long cycles
        alike, and never from a thread, so a blocked loop stops feeding and gets restarted."""
        while True:
            self._notify("WATCHDOG=1")
            await asyncio.sleep(interval / 2)

    def _take_due(self) -> list[Target]:
        self._scheduler.run_pending()
        batch, self._due = list(self._due.values()), {}
        return batch

    async def _run_cycle(self, batch: list[Target]) -> bool:
        """Run a cycle unless a stop request cancels it; False when stopping."""
        cycle = asyncio.ensure_future(self.cycle(batch))
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({cycle, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not cycle.done():
            cycle.cancel()
            await asyncio.gather(cycle, return_exceptions=True)
            log.info("cycle cancelled by a stop request; the last complete file is kept")
            return False
        cycle.result()
        return True

    async def _sleep(self, seconds: float | None) -> None:
        """Sleep until the next job is due, waking early on a stop or reload request."""
        waiters = [asyncio.ensure_future(e.wait()) for e in (self._stop, self._reload)]
        timeout = 3600.0 if seconds is None else max(seconds, 0.0)
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()


async def run_once(config: Config) -> bool:
    """One cycle over every target; True if the file was written."""
    return await Daemon(config).cycle(config.targets)
