"""SLA computations over prober samples: pure functions, no I/O.

Definitions (one location, a range of whole seconds ``[start, end)``):

- A second is **UP** if at least one source succeeded in it, **DOWN** if every source that has
  a sample failed (the seed's rule: "DOWN when all sources fail for the same probe_id"), and
  **UNKNOWN** if there is no sample at all. Rows with ``ok`` None (missed ticks) are not
  samples, and neither are rows whose error class says the *prober* failed to measure
  (``transport.PROBER_SIDE``: ``overload``, ``not_started``, ``aborted``): they are stored, but
  a prober that could not start a transfer says nothing about the target (:func:`measured_ok`).
  One tick has one ``ts`` and one ``probe_id``, so grouping by second is grouping by probe
  group.
- **uptime %** = up / (up + down). Unknown seconds are excluded, never counted as up; they are
  reported separately, with **coverage %** = (up + down) / seconds in range, so a 100 % uptime
  over 10 % coverage is visible as such.
- A **downtime event** is a maximal run of consecutive DOWN seconds. An UNKNOWN gap between two
  DOWN runs does *not* merge them by default: we do not know the gap was down, and calling it
  down would invent downtime. Each event reports whether its edges are *bounded* (the
  neighbouring second is UP, so the edge is exact) or not (UNKNOWN or the range edge: the
  outage may have been longer). ``merge_unknown_gap`` opts into merging across short gaps; the
  merged event then counts its unknown seconds separately.
- **Latency percentiles** use the nearest-rank method by default: the value at rank
  ``ceil(q/100 * n)`` of the sorted samples, always a latency that was actually observed; it is
  what PostgreSQL's ``percentile_disc(q/100)`` returns, so SQL and Python reports agree.
  ``method="linear"`` interpolates between ranks (numpy's default, PostgreSQL's
  ``percentile_cont``). Only successful samples count: a timeout is an availability failure,
  and its duration is the configured timeout, not a latency. The TLS phase counts only the
  samples that did a TLS handshake (``tls_ms`` > 0): a plain-HTTP sample's 0 is "no handshake",
  not a handshake that took no time.

Inputs are shaped so the database can do the heavy part::

    SELECT extract(epoch FROM ts)::bigint, count(*) FILTER (WHERE ok), count(*) FILTER (WHERE NOT ok)
    FROM prober_sample WHERE location = %s AND ts >= %s AND ts < %s GROUP BY 1

feeds :func:`timeline` directly (86,400 rows for a day, whatever the number of sources); the
``count_*`` helpers build the same aggregates from raw rows in Python. Timelines are a
``bytearray`` (one byte per second), and runs are found with a compiled regex over it, so a day
takes milliseconds and no step is quadratic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from probes.prober.transport import PROBER_SIDE


class State(IntEnum):
    UNKNOWN = 0
    UP = 1
    DOWN = 2


PHASES = ("dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "total_ms")

Sample = tuple[float, str, bool | None]
"""(ts in epoch seconds, source, ok) - one raw sample row."""


@dataclass(frozen=True, slots=True)
class SecondCounts:
    """Aggregated samples of one second: how many sources succeeded and failed."""

    ts: int
    ok: int
    failed: int


@dataclass(frozen=True, slots=True)
class SourceCounts:
    source: str
    ok: int
    failed: int
    unmeasured: int = 0  # prober-side rows (overload...): neither ok nor failed


def measured_ok(ok: bool | None, error_class: str | None) -> bool | None:
    """A stored row's ``ok`` as the SLA sees it: None when the row is no measurement of the
    target (a missed tick, or a sample the prober itself could not take)."""
    if ok is None or (not ok and error_class in PROBER_SIDE):
        return None
    return ok


@dataclass(frozen=True, slots=True)
class Timeline:
    """Per-second states of ``[start, start + len(states))``, one byte per second."""

    start: int
    states: bytearray

    @property
    def end(self) -> int:
        return self.start + len(self.states)

    def state_at(self, ts: int) -> State:
        return State(self.states[ts - self.start])


@dataclass(frozen=True, slots=True)
class Uptime:
    up: int
    down: int
    unknown: int

    @property
    def seconds(self) -> int:
        return self.up + self.down + self.unknown

    @property
    def uptime_pct(self) -> float | None:
        """None when nothing was measured: "no data" is not 0 % or 100 %."""
        measured = self.up + self.down
        return 100.0 * self.up / measured if measured else None

    @property
    def coverage_pct(self) -> float:
        return 100.0 * (self.up + self.down) / self.seconds if self.seconds else 0.0


@dataclass(frozen=True, slots=True)
class DowntimeEvent:
    """A run of DOWN seconds ``[start, end)``.

    ``bounded_start`` / ``bounded_end``: the second just before / after is UP, so that edge is
    exact. When False the neighbour is UNKNOWN or outside the range and the outage may have
    been longer. ``unknown_seconds`` is non-zero only for events merged across gaps.
    """

    start: int
    end: int
    down_seconds: int
    unknown_seconds: int
    bounded_start: bool
    bounded_end: bool

    @property
    def duration(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Gap:
    """A run of UNKNOWN seconds ``[start, end)``."""

    start: int
    end: int

    @property
    def duration(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class SourceAvailability:
    source: str
    ok: int
    failed: int
    seconds: int  # length of the range: the samples a 1 Hz source should have
    unmeasured: int = 0  # prober-side rows: unknown, in neither figure below

    @property
    def availability_pct(self) -> float | None:
        total = self.ok + self.failed
        return 100.0 * self.ok / total if total else None

    @property
    def failure_ratio(self) -> float | None:
        total = self.ok + self.failed
        return self.failed / total if total else None

    @property
    def coverage_pct(self) -> float:
        return 100.0 * (self.ok + self.failed) / self.seconds if self.seconds else 0.0


# -- aggregation from raw rows ---------------------------------------------------------------


def count_per_second(samples: Iterable[Sample]) -> list[SecondCounts]:
    """Aggregate raw samples by second (what the GROUP BY ts query returns). O(n)."""
    ok: dict[int, int] = {}
    failed: dict[int, int] = {}
    for ts, _source, good in samples:
        if good is None:
            continue
        second = math.floor(ts)
        if good:
            ok[second] = ok.get(second, 0) + 1
        else:
            failed[second] = failed.get(second, 0) + 1
    return [SecondCounts(ts, ok.get(ts, 0), failed.get(ts, 0)) for ts in sorted(ok.keys() | failed.keys())]


def count_per_source(samples: Iterable[Sample], start: int, end: int) -> list[SourceCounts]:
    """Aggregate raw samples in ``[start, end)`` by source (the GROUP BY source query)."""
    ok: dict[str, int] = {}
    failed: dict[str, int] = {}
    for ts, source, good in samples:
        if good is None or not start <= ts < end:
            continue
        counter = ok if good else failed
        counter[source] = counter.get(source, 0) + 1
    return [SourceCounts(s, ok.get(s, 0), failed.get(s, 0)) for s in sorted(ok.keys() | failed.keys())]


# -- timeline, uptime, events ----------------------------------------------------------------


def timeline(start: int, end: int, per_second: Iterable[SecondCounts | tuple[int, int, int]]) -> Timeline:
    """Per-second states for ``[start, end)`` from per-second (ts, ok, failed) counts.

    Seconds outside the range are ignored; seconds without a row stay UNKNOWN.
    """
    if end < start:
        raise ValueError("end must be >= start")
    states = bytearray(end - start)  # all UNKNOWN (0)
    for row in per_second:
        ts, ok, failed = (row.ts, row.ok, row.failed) if isinstance(row, SecondCounts) else row
        i = int(ts) - start
        if 0 <= i < len(states):
            if ok > 0:
                states[i] = State.UP
            elif failed > 0:
                states[i] = State.DOWN
    return Timeline(start=start, states=states)


def uptime(tl: Timeline) -> Uptime:
    # bytearray.count runs in C: a day of seconds is counted in microseconds.
    return Uptime(
        up=tl.states.count(State.UP), down=tl.states.count(State.DOWN), unknown=tl.states.count(State.UNKNOWN)
    )


_DOWN_RUN = re.compile(b"\x02+")
_UNKNOWN_RUN = re.compile(b"\x00+")


def downtime_events(tl: Timeline, *, merge_unknown_gap: int = 0) -> list[DowntimeEvent]:
    """Maximal runs of DOWN seconds, oldest first (see the module docstring for the rules).

    With ``merge_unknown_gap`` = N > 0, two runs separated only by <= N UNKNOWN seconds become
    one event; an UP second always separates events.
    """
    if merge_unknown_gap < 0:
        raise ValueError("merge_unknown_gap must be >= 0")
    # DOWN runs, optionally joined across UNKNOWN gaps of at most N seconds (never across UP).
    pattern = re.compile(b"\x02+(?:\x00{1,%d}\x02+)*" % merge_unknown_gap) if merge_unknown_gap else _DOWN_RUN
    states = tl.states
    events = []
    for m in pattern.finditer(states):
        i, j = m.span()
        down = m.group().count(State.DOWN)
        events.append(
            DowntimeEvent(
                start=tl.start + i,
                end=tl.start + j,
                down_seconds=down,
                unknown_seconds=(j - i) - down,
                bounded_start=i > 0 and states[i - 1] == State.UP,
                bounded_end=j < len(states) and states[j] == State.UP,
            )
        )
    return events


def unknown_gaps(tl: Timeline, min_seconds: int = 1) -> list[Gap]:
    """Runs of UNKNOWN seconds (no data) at least ``min_seconds`` long."""
    return [
        Gap(tl.start + m.start(), tl.start + m.end())
        for m in _UNKNOWN_RUN.finditer(tl.states)
        if m.end() - m.start() >= min_seconds
    ]


def source_availability(start: int, end: int, per_source: Iterable[SourceCounts]) -> list[SourceAvailability]:
    """Availability and failure ratio of each source over ``[start, end)``."""
    return [SourceAvailability(c.source, c.ok, c.failed, end - start, c.unmeasured) for c in per_source]


# -- latency percentiles ---------------------------------------------------------------------

Method = Literal["nearest", "linear"]


def percentile(sorted_values: Sequence[float], q: float, method: Method = "nearest") -> float:
    """The ``q``-th percentile (0 < q <= 100) of already sorted, non-empty values."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError("q must be in (0, 100]")
    if method == "nearest":
        return sorted_values[max(1, math.ceil(q / 100 * n)) - 1]
    # Linear interpolation between closest ranks (numpy "linear", PostgreSQL percentile_cont).
    pos = (n - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def percentiles(
    values: Iterable[float], qs: Sequence[float] = (50, 95, 99), method: Method = "nearest"
) -> dict[float, float]:
    """Percentiles of ``values`` (one sort, O(n log n)); empty dict when there are no values."""
    ordered = sorted(values)
    if not ordered:
        return {}
    return {q: percentile(ordered, q, method) for q in qs}


def phase_percentiles(
    rows: Iterable[Mapping[str, object]],
    phases: Sequence[str] = PHASES,
    qs: Sequence[float] = (50, 95, 99),
    method: Method = "nearest",
) -> dict[str, dict[float, float]]:
    """Per-phase latency percentiles over the successful rows (``ok`` true) that have the phase;
    TLS only over the rows that did a handshake (``tls_ms`` > 0, see the module docstring)."""
    values: dict[str, list[float]] = {p: [] for p in phases}
    for row in rows:
        if row.get("ok") is not True:
            continue
        for phase in phases:
            v = row.get(phase)
            if isinstance(v, int | float) and not isinstance(v, bool) and (phase != "tls_ms" or v > 0):
                values[phase].append(float(v))
    return {phase: percentiles(vs, qs, method) for phase, vs in values.items()}
