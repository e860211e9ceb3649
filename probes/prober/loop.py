"""The prober loop: every tick, one transfer per enabled target; finished transfers become rows.

Shape of one iteration::

    tick due?  -> start one transfer per target (time-critical part, done first)
               -> bookkeeping: missed ticks, stats, probe_id checkpoint, target reload
               -> hand the rows finished since the last tick to the writer (non-blocking)
    otherwise  -> wait on the transport until the next deadline, collecting finished transfers

Transfers are never awaited by the tick: a target with a 1.5 s timeout simply finishes during
the next tick. In-flight transfers are bounded; when the bound is reached the sample is recorded
as a failure with error_class ``overload`` (an honest "we could not measure", visible in the
data) rather than dropped.

Each row carries the *scheduled* tick: ``ts`` is the tick's whole wall-clock second and
``probe_id`` its id, whatever time the transfer actually finished.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from probes.prober.spool import Row
from probes.prober.ticks import Clock, MissedTicks, Tick, TickScheduler
from probes.prober.transport import ABORTED, ERROR, OVERLOAD, STATUS, Completion, Phases, SampleKey, Transport

log = logging.getLogger(__name__)

MISSED = "missed"
"""error_class of the rows recorded for missed ticks; their ``ok`` is None (unknown, not down)."""

LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


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
    lateness_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENESS_BUCKETS) + 1))
    in_flight: int = 0
    in_flight_max: int = 0
    targets: int = 0
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
        "error": completion.error[:300] if completion.error else None,
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
        self._run_async = run_async
        self.stats = LoopStats()
        self._stop = threading.Event()
        self._targets: list[Target] = []
        self._reloaded: list[Target] | None = None  # handed over by the reload thread
        self._reloading = False
        self._next_reload = 0.0
        self._in_flight: dict[SampleKey, _InFlight] = {}
        self._rows: list[Row] = []

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler or another thread)."""
        self._stop.set()

    @property
    def targets(self) -> list[Target]:
        return self._targets

    def run(self, max_ticks: int | None = None) -> None:
        """Probe until :meth:`stop` (or ``max_ticks`` ticks), then drain in-flight transfers."""
        self._reload()  # synchronously: the first tick should already know its targets
        self._install_reloaded()
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
        self._drain()

    # -- one tick ------------------------------------------------------------------------

    def _run_tick(self, tick: Tick) -> None:
        self._install_reloaded()
        now = self._clock.monotonic()
        for target in self._targets:
            key = SampleKey(tick.probe_id, target.source)
            if self._transport.in_flight() >= self.max_in_flight:
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
                # A target the transport cannot even start (malformed URL...) is a failed
                # sample, not a reason to stop probing the others.
                self._record(tick.wall_ts, target, _immediate_failure(key, ERROR, f"start failed: {exc}"))
                continue
            self._in_flight[key] = _InFlight(wall_ts=tick.wall_ts, target=target, started_at=now)

        # Everything below runs after this tick's transfers are on their way.
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
            loaded = list(self._load_targets())
        except Exception:
            # Keep probing the last known list: a database outage must not stop the prober.
            log.exception("prober: reloading targets failed, keeping the previous list")
            self.stats.reload_failures += 1
        else:
            self._reloaded = _dedupe(loaded)  # a single reference assignment: thread-safe
            self.stats.reloads += 1
        finally:
            self._next_reload = self._clock.monotonic() + self.reload_interval
            self._reloading = False

    def _install_reloaded(self) -> None:
        reloaded, self._reloaded = self._reloaded, None
        if reloaded is not None:
            self._targets = reloaded
            self.stats.targets = len(reloaded)

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
