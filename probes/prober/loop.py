"""The prober loop: every tick, one transfer per enabled target; finished transfers become rows.

Shape of one iteration::

    tick due?  -> start one transfer per target (time-critical part, done first)
               -> bookkeeping: missed ticks, stats, probe_id checkpoint, target reload
               -> hand the rows finished since the last tick to the writer (non-blocking)
    otherwise  -> wait on the transport until the next deadline, collecting finished transfers

Transfers are never awaited by the tick: a target with a 1.5 s timeout simply finishes during
the next tick. In-flight transfers are bounded; when the bound is reached the sample is recorded
with error_class ``overload`` (an honest "we could not measure", visible in the data) rather
than dropped. That class, like the other prober-side ones (``transport.PROBER_SIDE``), is a fact
about the prober, not the target: the SLA counts it as unknown. The next tick starts with the
first target that was not started, so when the bound is hit every tick the starved samples
rotate over all targets instead of always hitting the same tail of the list.

The last target list loaded from the database is kept in a file (``target_cache``): a prober
that starts while the database is unreachable probes those targets instead of nothing.

Each row carries the *scheduled* tick: ``ts`` is the tick's whole wall-clock second and
``probe_id`` its id, whatever time the transfer actually finished.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from probes.checks import http
from probes.prober.spool import Row
from probes.prober.ticks import Clock, MissedTicks, Tick, TickScheduler
from probes.prober.transport import (
    ABORTED,
    MISSED,
    NOT_STARTED,
    OVERLOAD,
    STATUS,
    Completion,
    Phases,
    SampleKey,
    Transport,
)

if TYPE_CHECKING:
    from probes.prober.target_cache import TargetCache

log = logging.getLogger(__name__)

__all__ = ["LATENESS_BUCKETS", "MISSED", "QUIET_AFTER_TICK", "LoopStats", "ProberLoop", "Target", "sample_row"]

# How long after a tick's deadline other work of the process (the writer replaying a backlog)
# keeps off the loop's way: the tick starts its transfers, and the first part of each transfer
# (name lookup, connect, TLS, fast answers) is timed by a loop that gets the interpreter at once.
QUIET_AFTER_TICK = 0.1

# Upper bounds of the tick lateness histogram, in seconds. The target is p99 <= 2 ms, so the
# low end is fine-grained; a tick later than one period is missed, not late.
LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class Target:
    """One URL probed every tick.

    ``source`` is what the rows store in their ``source`` column (unique per location: it is
    part of the primary key); ``target_id`` is passed through for the database's convenience.
    """

    source: str
    url: str
    timeout: float = 1.5
    ok_statuses: frozenset[int] | None = None  # None: any 2xx or 3xx
    follow_redirects: bool = False
    verify_tls: bool = True
    target_id: int | None = None

    def is_success(self, status: int | None) -> bool:
        if status is None:
            return False
        if self.ok_statuses is None:
            return 200 <= status < 400
        return status in self.ok_statuses

    def status_mismatch(self, status: int | None) -> str:
        """The ``error`` of an http_status failure, worded as the mesh's HTTP check words it."""
        return http.status_mismatch(status, describe_statuses(self.ok_statuses))


@functools.lru_cache(maxsize=1024)
def describe_statuses(statuses: frozenset[int] | None) -> str:
    """``{200, 204, 300, ..., 399}`` as ``200,204,300-399`` (``StatusRange``'s notation).

    Cached: a target that fails with a 404 every second asks for the same text every second.
    """
    if statuses is None:
        return "200-399"
    spans: list[list[int]] = []
    for code in sorted(statuses):
        if spans and code == spans[-1][1] + 1:
            spans[-1][1] = code
        else:
            spans.append([code, code])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in spans) or "nothing"


@dataclass
class LoopStats:
    """Counters for metrics; plain attributes, written by the loop thread only."""

    ticks: int = 0
    missed_ticks: int = 0
    last_missed: MissedTicks | None = None
    samples: Counter[str] = field(default_factory=Counter)  # "ok" or the error class
    lateness_last: float = 0.0
    lateness_max: float = 0.0
    lateness_sum: float = 0.0
    # Per bucket of LATENESS_BUCKETS (not cumulative); the last one counts what lies above.
    lateness_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENESS_BUCKETS) + 1))
    in_flight: int = 0
    in_flight_max: int = 0
    targets: int = 0
    targets_from_cache: bool = False  # probing the cached list: the database was unreachable at start
    last_tick_wall_ts: float | None = None
    wall_clock_drift: float = 0.0
    reloads: int = 0
    reload_failures: int = 0

    def observe_lateness(self, seconds: float) -> None:
        self.lateness_last = seconds
        self.lateness_max = max(self.lateness_max, seconds)
        self.lateness_sum += seconds
        for i, bound in enumerate(LATENESS_BUCKETS):
            if seconds <= bound:
                self.lateness_buckets[i] += 1
                return
        self.lateness_buckets[-1] += 1


def sample_row(wall_ts: float, target: Target, completion: Completion) -> Row:
    """The stored row for one finished transfer."""
    ok = completion.error_class is None and target.is_success(completion.status)
    error_class = completion.error_class if completion.error_class is not None else (None if ok else STATUS)
    error = completion.error
    if error_class == STATUS and not error:
        error = target.status_mismatch(completion.status)
    p = completion.phases
    return {
        "probe_id": completion.key.probe_id,
        "ts": wall_ts,
        "source": target.source,
        "target_id": target.target_id,
        "ok": ok,
        # The seed's flag: no HTTP answer at all (DNS, connect, TLS, timeout, not started).
        "disconnected": completion.status is None,
        "status": completion.status,
        "error_class": error_class,
        # curl's messages are short; the bound keeps a pathological one out of the spool and DB.
        "error": error[:300] if error else None,
        "dns_ms": p.dns_ms,
        "connect_ms": p.connect_ms,
        "tls_ms": p.tls_ms,
        "ttfb_ms": p.ttfb_ms,
        "total_ms": p.total_ms,
        "remote_ip": completion.remote_ip,
    }


def _immediate_failure(key: SampleKey, error_class: str, error: str) -> Completion:
    return Completion(key=key, status=None, error_class=error_class, error=error, phases=Phases())


def _start_daemon(fn: Callable[[], None]) -> None:
    threading.Thread(target=fn, name="prober-reload", daemon=True).start()


@dataclass(slots=True)
class _InFlight:
    wall_ts: float
    target: Target
    started_at: float  # monotonic


class ProberLoop:
    """Runs the 1 Hz schedule until :meth:`stop` (see the module docstring)."""

    def __init__(
        self,
        *,
        clock: Clock,
        scheduler: TickScheduler,
        transport: Transport,
        load_targets: Callable[[], Sequence[Target]],
        emit: Callable[[Sequence[Row]], None],
        max_in_flight: int = 256,
        reload_interval: float = 5.0,
        poll_slice: float = 0.25,
        drain_grace: float = 0.5,
        missed_rows_max_ticks: int = 0,
        on_missed: Callable[[MissedTicks], None] | None = None,
        on_targets: Callable[[Sequence[Target]], None] | None = None,
        target_cache: TargetCache | None = None,
        run_async: Callable[[Callable[[], None]], None] = _start_daemon,
    ) -> None:
        """
        ``load_targets`` may be slow (a database query): it runs off the tick thread through
        ``run_async`` every ``reload_interval`` seconds, and the new list is used from the
        next tick on. ``emit`` receives finished rows once per tick and must not block
        (``BatchWriter.submit``). ``poll_slice`` bounds how long a stop request can go
        unnoticed.

        Missed ticks are always counted, logged and passed to ``on_missed`` (e.g. to store the
        gap). With ``missed_rows_max_ticks`` > 0 they are also emitted as sample rows with
        ``ok`` None and error_class ``missed`` for gaps up to that many ticks (longer gaps, a
        suspended host, are not written row by row). That needs a nullable ``ok`` column, so
        it is off by default.

        ``on_targets`` receives each target list loaded once it is in use (on the loop's
        thread, after that tick's transfers started), e.g. to drop the metrics of removed
        targets.
        ``target_cache`` keeps the last list loaded: when the very first load fails (the
        database is unreachable at start), the loop probes the cached list until a reload works.
        """
        self._clock = clock
        self._scheduler = scheduler
        self._transport = transport
        self._load_targets = load_targets
        self._emit = emit
        self.max_in_flight = max_in_flight
        self.reload_interval = reload_interval
        self.poll_slice = poll_slice
        self.drain_grace = drain_grace
        self.missed_rows_max_ticks = missed_rows_max_ticks
        self._on_missed = on_missed
        self._on_targets = on_targets
        self._target_cache = target_cache
        self._run_async = run_async
        self.stats = LoopStats()
        self._stop = threading.Event()
        self._targets: list[Target] = []
        self._reloaded: list[Target] | None = None  # handed over by the reload thread
        self._reloading = False
        self._next_reload = 0.0
        self._loaded_once = False  # a load from the database has worked since start
        self._cached: list[Target] | None = None  # what the cache file holds, once known
        self._start_at = 0  # index of the target started first at the next tick
        self._finished = False  # no more ticks: run() is draining or done
        self._in_flight: dict[SampleKey, _InFlight] = {}
        self._rows: list[Row] = []

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler or another thread)."""
        self._stop.set()

    @property
    def targets(self) -> list[Target]:
        return self._targets

    def quiet_delay(self, duration: float) -> float:
        """How long another thread should wait before ``duration`` seconds of CPU-bound Python
        work, so that the work holds the interpreter neither when a tick is due nor during the
        first ``QUIET_AFTER_TICK`` seconds after it (the writer's pacer; any thread). Once the
        loop has stopped ticking, there is nothing to keep off: 0."""
        if self._finished:
            return 0.0
        return self._scheduler.quiet_delay(duration, QUIET_AFTER_TICK)

    def run(self, max_ticks: int | None = None) -> None:
        """Probe until :meth:`stop` (or ``max_ticks`` ticks), then drain in-flight transfers."""
        self._reload()  # synchronously: the first tick should already know its targets
        if self._install_reloaded():
            self._targets_installed()
        self._scheduler.start()
        ticks = 0
        while not self._stop.is_set():
            tick = self._scheduler.poll()
            if tick is None:
                wait = min(self._scheduler.time_until_next(), self.poll_slice)
                self._collect(self._transport.poll(max(0.0, wait)))
                continue
            self._run_tick(tick)
            ticks += 1
            if max_ticks is not None and ticks >= max_ticks:
                break
        self._finished = True
        self._drain()

    # -- one tick ------------------------------------------------------------------------

    def _run_tick(self, tick: Tick) -> None:
        installed = self._install_reloaded()
        now = self._clock.monotonic()
        targets = self._targets
        first = self._start_at % len(targets) if targets else 0
        starved = -1  # position (in this tick's order) of the first target not started
        for position, target in enumerate(targets[first:] + targets[:first] if first else targets):
            key = SampleKey(tick.probe_id, target.source)
            if self._transport.in_flight() >= self.max_in_flight:
                if starved < 0:
                    starved = position
                self._record(tick.wall_ts, target, _immediate_failure(key, OVERLOAD, "in-flight bound reached"))
                continue
            try:
                self._transport.start(
                    key,
                    target.url,
                    target.timeout,
                    follow_redirects=target.follow_redirects,
                    verify_tls=target.verify_tls,
                )
            except Exception as exc:
                # A transfer the transport cannot even start (out of file descriptors...) is a
                # sample the prober could not take, not a reason to stop probing the others.
                self._record(tick.wall_ts, target, _immediate_failure(key, NOT_STARTED, f"start failed: {exc}"))
                continue
            self._in_flight[key] = _InFlight(wall_ts=tick.wall_ts, target=target, started_at=now)
        if starved >= 0:
            # The starved go first next time: with the bound hit every tick, each target loses
            # a sample every few ticks instead of the last ones in the list losing all of them.
            self._start_at = (first + starved) % len(targets)

        # Everything below runs after this tick's transfers are on their way.
        if installed:
            self._targets_installed()
        stats = self.stats
        stats.ticks += 1
        stats.last_tick_wall_ts = tick.wall_ts
        stats.observe_lateness(tick.lateness)
        stats.in_flight = self._transport.in_flight()
        stats.in_flight_max = max(stats.in_flight_max, stats.in_flight)
        stats.wall_clock_drift = self._scheduler.wall_offset_drift()
        if tick.missed is not None:
            self._record_missed(tick.missed)
        self._scheduler.checkpoint()
        self._maybe_reload(now)
        self._flush_rows()

    def _record_missed(self, missed: MissedTicks) -> None:
        self.stats.missed_ticks += missed.count
        log.warning(
            "prober: missed %d tick(s) from probe_id %d (ts %.0f): the loop woke up too late",
            missed.count,
            missed.first_probe_id,
            missed.first_wall_ts,
        )
        self.stats.last_missed = missed
        if self._on_missed is not None:
            self._on_missed(missed)
        if missed.count > self.missed_rows_max_ticks:
            return
        for scheduled in missed:
            for target in self._targets:
                row = sample_row(
                    scheduled.wall_ts,
                    target,
                    _immediate_failure(SampleKey(scheduled.probe_id, target.source), MISSED, "tick missed"),
                )
                row["ok"] = None  # not measured: unknown, must not count as down
                self._rows.append(row)
                self.stats.samples[MISSED] += 1

    def _collect(self, completions: list[Completion]) -> None:
        for completion in completions:
            flight = self._in_flight.pop(completion.key, None)
            if flight is None:
                log.error("prober: completion for unknown transfer %s", completion.key)
                continue
            self._record(flight.wall_ts, flight.target, completion)

    def _record(self, wall_ts: float, target: Target, completion: Completion) -> None:
        row = sample_row(wall_ts, target, completion)
        self._rows.append(row)
        self.stats.samples["ok" if row["ok"] else str(row["error_class"])] += 1

    def _flush_rows(self) -> None:
        if self._rows:
            rows, self._rows = self._rows, []
            self._emit(rows)

    # -- targets -------------------------------------------------------------------------

    def _maybe_reload(self, now: float) -> None:
        if self._reloading or now < self._next_reload:
            return
        self._reloading = True
        self._run_async(self._reload)

    def _reload(self) -> None:
        """Load targets (possibly on another thread); the loop installs them at a tick."""
        try:
            loaded = _dedupe(list(self._load_targets()))
        except Exception:
            # Keep probing the last known list: a database outage must not stop the prober.
            log.exception("prober: reloading targets failed, keeping the previous list")
            self.stats.reload_failures += 1
            if not self._loaded_once and self._target_cache is not None and not self.stats.targets_from_cache:
                self._use_cache(self._target_cache)
        else:
            self._reloaded = loaded  # a single reference assignment: thread-safe
            self._loaded_once = True
            self.stats.reloads += 1
            self.stats.targets_from_cache = False
            if self._target_cache is not None:
                self._save_cache(self._target_cache, loaded)
        finally:
            self._next_reload = self._clock.monotonic() + self.reload_interval
            self._reloading = False

    def _use_cache(self, cache: TargetCache) -> None:
        cached = cache.load()
        if cached is None:
            log.error("prober: no targets to probe until the database answers (nothing cached in %s)", cache.path)
            return
        self._cached = cached
        self._reloaded = _dedupe(cached)
        self.stats.targets_from_cache = True
        log.warning(
            "prober: the database is unreachable: probing the %d target(s) cached in %s until it answers",
            len(cached),
            cache.path,
        )

    def _save_cache(self, cache: TargetCache, loaded: list[Target]) -> None:
        if self._cached is None:
            self._cached = cache.load()
        if loaded == self._cached:
            return  # unchanged: no write (and fsync) every reload interval
        try:
            cache.save(loaded)
        except OSError:
            log.exception("prober: could not save the target list to %s", cache.path)
        else:
            self._cached = loaded

    def _install_reloaded(self) -> bool:
        """Use the list the reload thread handed over, if any (True if there was one)."""
        reloaded, self._reloaded = self._reloaded, None
        if reloaded is None:
            return False
        self._targets = reloaded
        self.stats.targets = len(reloaded)
        return True

    def _targets_installed(self) -> None:
        if self._on_targets is not None:
            try:
                self._on_targets(self._targets)
            except Exception:
                log.exception("prober: the target list callback failed")

    # -- shutdown ------------------------------------------------------------------------

    def _drain(self) -> None:
        """Wait for in-flight transfers up to their own timeout, then record what is left."""
        if self._in_flight:
            deadline = max(f.started_at + f.target.timeout for f in self._in_flight.values()) + self.drain_grace
            while self._transport.in_flight() > 0:
                remaining = deadline - self._clock.monotonic()
                if remaining <= 0:
                    break
                self._collect(self._transport.poll(min(remaining, self.poll_slice)))
            self._collect(self._transport.abort_all())
        for key, flight in list(self._in_flight.items()):
            # The transport lost track of these; still one row per sample.
            self._record(flight.wall_ts, flight.target, _immediate_failure(key, ABORTED, "lost at shutdown"))
        self._in_flight.clear()
        self.stats.in_flight = 0
        self._flush_rows()


def _dedupe(targets: list[Target]) -> list[Target]:
    # Two targets with one source name would collide on the primary key; keep the first.
    seen: set[str] = set()
    unique = []
    for target in targets:
        if target.source in seen:
            log.error("prober: duplicate target source %r ignored", target.source)
            continue
        seen.add(target.source)
        unique.append(target)
    return unique
