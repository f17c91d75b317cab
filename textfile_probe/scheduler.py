"""The daemon loop: schedule probes, run them concurrently, write the file, handle signals.

Strategy: one asyncio loop. A `schedule.Scheduler` holds one job per distinct interval; a job only
marks its targets due, and the loop runs every due target in one cycle of at most `concurrency`
workers, so a slow target holds one worker for at most its timeout and never delays the rest.
After each cycle the file is re-rendered from the latest result of every configured target.
SIGTERM/SIGINT cancel an in-flight cycle (nothing is written, so the last file stays whole);
SIGHUP reloads the config after the current cycle, keeping the old one if the new one is bad.
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
from .config import Config, Target
from .errors import ConfigError
from .metrics import Health, render_chunks
from .probe import ProbeResult, probe
from .textfile import remove_stale_temps, write_atomic

log = logging.getLogger("textfile_probe")

Notify = Callable[[str], None]


class Daemon:
    """Holds the current config and the latest result per target."""

    def __init__(self, config: Config, loaded_at: float | None = None, log_level: str | None = None) -> None:
        self.config = config
        self.log_level_override = log_level
        self.results: dict[str, ProbeResult] = {}
        self.config_ok = True
        self.config_loaded_at = time.time() if loaded_at is None else loaded_at
        self.last_cycle_duration = 0.0
        self.last_cycle_end = 0.0
        self._scheduler = schedule.Scheduler()
        self._due: dict[str, Target] = {}
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
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
        await asyncio.gather(*(worker() for _ in range(workers)))
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

    def current_results(self) -> list[ProbeResult]:
        return [self.results[t.name] for t in self.config.targets if t.name in self.results]

    async def write(self) -> bool:
        health = Health(self.last_cycle_duration, self.last_cycle_end, self.config_ok, self.config_loaded_at)
        chunks = render_chunks(self.current_results(), health, len(self.config.targets))
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
        self._plan()
        log.info("config reloaded", extra={"targets": len(new.targets)})
        return True

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)

    async def run(self, config_path: str, notify: Notify | None = None) -> int:
        """Run until SIGTERM/SIGINT; return the process exit code."""
        self.install_signal_handlers()
        remove_stale_temps(self.config.output)
        say = notify or (lambda _state: None)
        say("READY=1")
        due: Iterable[Target] = self.config.targets
        while not self._stop.is_set():
            if self._reload.is_set():
                self._reload.clear()
                say("RELOADING=1")
                if self.reload(config_path):
                    due = self.config.targets
                else:
                    await self.write()
                say("READY=1")
            batch = list(due) or self._take_due()
            due = ()
            if batch and not await self._run_cycle(batch):
                break
            await self._sleep(self._scheduler.idle_seconds)
        log.info("stopping")
        return 0

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
