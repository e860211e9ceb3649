"""SLA figures from hand-built samples: unknown is not up, events are runs, percentiles exact."""

from __future__ import annotations

import random
import time

import pytest

from probes.prober.sla import (
    DowntimeEvent,
    Gap,
    Sample,
    SecondCounts,
    SourceCounts,
    State,
    count_per_second,
    count_per_source,
    downtime_events,
    measured_ok,
    percentile,
    percentiles,
    phase_percentiles,
    source_availability,
    timeline,
    unknown_gaps,
    uptime,
)

T = 1_000
# second -> {source: ok}; a missing source had no sample, None is a missed tick (no sample).
FIXTURE: dict[int, dict[str, bool | None]] = {
    T + 0: {"a": True, "b": True},  # UP
    T + 1: {"a": False, "b": True},  # UP: one source is enough
    T + 2: {"a": False, "b": False},  # DOWN
    T + 3: {"a": False},  # DOWN: every source that has a sample failed
    # T + 4: nothing at all             UNKNOWN
    T + 5: {"a": False, "b": False},  # DOWN
    T + 6: {"a": True},  # UP
    T + 7: {"a": None},  # UNKNOWN: a missed tick is not a sample
    T + 8: {"a": False, "b": False},  # DOWN
    T + 9: {"a": False, "b": False},  # DOWN, up to the end of the range
}


def samples() -> list[Sample]:
    return [(float(ts), source, ok) for ts, by_source in FIXTURE.items() for source, ok in by_source.items()]


def test_each_second_is_up_down_or_unknown() -> None:
    tl = timeline(T, T + 10, count_per_second(samples()))
    assert [tl.state_at(T + i).name for i in range(10)] == [
        "UP",
        "UP",
        "DOWN",
        "DOWN",
        "UNKNOWN",
        "DOWN",
        "UP",
        "UNKNOWN",
        "DOWN",
        "DOWN",
    ]


def test_unknown_seconds_are_not_counted_as_up() -> None:
    u = uptime(timeline(T, T + 10, count_per_second(samples())))
    assert (u.up, u.down, u.unknown, u.seconds) == (3, 5, 2, 10)
    assert u.uptime_pct == pytest.approx(37.5)  # 3 / (3 + 5), not (3 + 2) / 10
    assert u.coverage_pct == pytest.approx(80.0)


def test_no_data_has_no_uptime_rather_than_0_or_100_percent() -> None:
    u = uptime(timeline(T, T + 60, []))
    assert u.unknown == 60
    assert u.uptime_pct is None
    assert u.coverage_pct == 0.0
    assert uptime(timeline(T, T, [])).coverage_pct == 0.0


def test_downtime_events_are_contiguous_runs_of_down_seconds() -> None:
    events = downtime_events(timeline(T, T + 10, count_per_second(samples())))
    assert events == [
        DowntimeEvent(T + 2, T + 4, 2, 0, bounded_start=True, bounded_end=False),
        DowntimeEvent(T + 5, T + 6, 1, 0, bounded_start=False, bounded_end=True),
        DowntimeEvent(T + 8, T + 10, 2, 0, bounded_start=False, bounded_end=False),
    ]
    assert [e.duration for e in events] == [2, 1, 2]


def test_an_unknown_gap_separates_events_unless_merging_is_asked_for() -> None:
    tl = timeline(T, T + 10, count_per_second(samples()))
    merged = downtime_events(tl, merge_unknown_gap=1)
    assert merged == [
        DowntimeEvent(T + 2, T + 6, 3, 1, bounded_start=True, bounded_end=True),
        DowntimeEvent(T + 8, T + 10, 2, 0, bounded_start=False, bounded_end=False),
    ]
    # An UP second is never bridged, whatever the allowance.
    assert len(downtime_events(tl, merge_unknown_gap=100)) == 2
    assert unknown_gaps(tl) == [Gap(T + 4, T + 5), Gap(T + 7, T + 8)]


def test_a_long_outage_is_one_event_not_a_count_of_seconds() -> None:
    counts = [SecondCounts(T + i, 0, 3) for i in range(10, 3_610)]  # an hour, all sources down
    counts += [SecondCounts(T + i, 3, 0) for i in range(10)]
    (event,) = downtime_events(timeline(T, T + 4_000, counts))
    assert (event.start, event.end, event.duration) == (T + 10, T + 3_610, 3_600)
    assert event.bounded_start and not event.bounded_end


def test_aggregated_rows_from_sql_feed_the_timeline_directly() -> None:
    # (ts, ok_count, failed_count), as "GROUP BY ts" returns them; out-of-range rows ignored.
    rows = [(T - 1, 0, 2), (T, 1, 1), (T + 1, 0, 2), (T + 2, 0, 0), (T + 3, 2, 0), (T + 99, 0, 1)]
    tl = timeline(T, T + 4, rows)
    assert [State(s) for s in tl.states] == [State.UP, State.DOWN, State.UNKNOWN, State.UP]


def test_fractional_timestamps_belong_to_their_second() -> None:
    counts = count_per_second([(T + 0.999, "a", True), (T + 1.0, "a", False)])
    assert counts == [SecondCounts(T, 1, 0), SecondCounts(T + 1, 0, 1)]


def test_per_source_availability_and_failure_ratio() -> None:
    per_source = count_per_source(samples(), T, T + 10)
    assert per_source == [SourceCounts("a", 2, 6), SourceCounts("b", 2, 4)]
    a, b = source_availability(T, T + 10, per_source)
    assert a.availability_pct == pytest.approx(25.0)
    assert a.failure_ratio == pytest.approx(0.75)
    assert a.coverage_pct == pytest.approx(80.0)  # 8 samples in 10 s (the missed tick is none)
    assert b.availability_pct == pytest.approx(100 * 2 / 6)
    assert b.coverage_pct == pytest.approx(60.0)
    (empty,) = source_availability(T, T + 10, [SourceCounts("c", 0, 0)])
    assert empty.availability_pct is None and empty.failure_ratio is None


def test_nearest_rank_percentiles_return_observed_values() -> None:
    values = [15.0, 20.0, 35.0, 40.0, 50.0]  # the textbook nearest-rank example
    assert [percentile(values, q) for q in (5, 30, 40, 50, 100)] == [15.0, 20.0, 20.0, 35.0, 50.0]
    hundred = [float(v) for v in range(100, 0, -1)]  # unsorted input to percentiles()
    assert percentiles(hundred) == {50: 50.0, 95: 95.0, 99: 99.0}


def test_linear_percentiles_interpolate_like_numpy() -> None:
    values = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert percentile(values, 40, "linear") == pytest.approx(29.0)
    assert percentile(values, 100, "linear") == 50.0
    assert percentiles([float(v) for v in range(1, 101)], method="linear") == pytest.approx(
        {50: 50.5, 95: 95.05, 99: 99.01}
    )


def test_percentiles_of_nothing() -> None:
    assert percentiles([]) == {}
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 0)


def test_phase_percentiles_use_successful_samples_only() -> None:
    rows = [{"ok": True, "dns_ms": float(i), "tls_ms": None, "total_ms": 10.0 * i} for i in range(1, 11)]
    rows.append({"ok": False, "dns_ms": 9_999.0, "total_ms": 1_500.0})  # a timeout is not a latency
    rows.append({"ok": None, "dns_ms": 9_999.0})  # a missed tick
    result = phase_percentiles(rows, qs=(50, 90))
    assert result["dns_ms"] == {50: 5.0, 90: 9.0}
    assert result["total_ms"] == {50: 50.0, 90: 90.0}
    assert result["tls_ms"] == {}
    assert result["connect_ms"] == {}


def test_tls_percentiles_leave_out_samples_without_a_handshake() -> None:
    https = [{"ok": True, "tls_ms": float(i)} for i in range(11, 21)]
    http = [{"ok": True, "tls_ms": 0.0}] * 30  # plain HTTP: no handshake, not a 0 ms one
    result = phase_percentiles(https + http, phases=("tls_ms",), qs=(50, 99))
    assert result["tls_ms"] == {50: 15.0, 99: 20.0}


def test_samples_the_prober_could_not_take_are_no_samples_of_the_target() -> None:
    rows: list[tuple[bool | None, str]] = [(True, ""), (False, "timeout"), (False, "http_status"), (False, "overload")]
    rows += [(False, "not_started"), (False, "aborted"), (None, "missed")]
    assert [measured_ok(ok, error_class) for ok, error_class in rows] == [True, False, False, None, None, None, None]
    samples = [(float(T), f"s{i}", measured_ok(ok, cls)) for i, (ok, cls) in enumerate(rows[3:])]
    # A second in which the prober took no sample at all is unknown, not down.
    assert uptime(timeline(T, T + 1, count_per_second(samples))).unknown == 1


def test_a_day_of_five_sources_is_computed_quickly() -> None:
    rnd = random.Random(1)
    day = 86_400
    raw: list[Sample] = []
    for second in range(day):
        all_down = 30_000 <= second < 30_600  # a ten-minute outage
        if not all_down and rnd.random() < 0.01:
            continue  # 1 % unknown
        raw.extend((float(T + second), f"s{i}", not all_down and rnd.random() > 0.05) for i in range(5))
    started = time.perf_counter()
    tl = timeline(T, T + day, count_per_second(raw))
    u = uptime(tl)
    events = downtime_events(tl)
    per_source = source_availability(T, T + day, count_per_source(raw, T, T + day))
    latency = percentiles(rnd.random() * 100 for _ in range(len(raw)))
    elapsed = time.perf_counter() - started
    assert u.seconds == day and u.unknown > 0
    assert DowntimeEvent(T + 30_000, T + 30_600, 600, 0, True, True) in events
    assert len(per_source) == 5 and len(latency) == 3
    assert elapsed < 5.0, f"{elapsed:.2f}s for a day of 5 sources"
    print(f"\nSLA over 86,400 s x 5 sources ({len(raw)} samples): {elapsed * 1000:.0f} ms")
