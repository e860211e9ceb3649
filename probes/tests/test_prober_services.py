"""The prober's database side: its target list, its sink, SLA reports and retention, on real PostgreSQL."""

from __future__ import annotations

import math
import random
import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from members.models import Location
from probes import partitions
from probes.models import ProberSample, ProberTarget
from probes.prober import copy_text
from probes.prober.spool import Row
from probes.prober.writer import RejectedRowsError
from probes.prober_services import SlaScope, make_sink, sla_report, targets_for

TABLE = ProberSample._meta.db_table
PHASES = copy_text.PHASES
A, B = "https://a.example/", "https://b.example/"
HOSTILE = "x\ty\r\nz \\N \\\\t é \u2028 '; --"  # COPY text must carry every one of these as is
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)  # the first second of the hand-made minute


def at(second: int) -> datetime:
    return T0 + timedelta(seconds=second)


# --- Targets ----------------------------------------------------------------------------------


def test_a_location_probes_its_own_targets_and_those_of_every_location(db: None) -> None:
    us1, eu1 = Location.objects.create(name="us1"), Location.objects.create(name="eu1")
    everywhere = ProberTarget.objects.create(name="everywhere", url="https://everywhere.example/")
    ProberTarget.objects.create(name="eu-only", url="https://eu.example/").locations.add(eu1)
    both = ProberTarget.objects.create(name="both", url="https://both.example/", expected_status="200,204")
    both.locations.add(us1, eu1)
    ProberTarget.objects.create(name="off", url="https://off.example/", enabled=False)

    targets = targets_for("us1")

    assert [t.source for t in targets] == [everywhere.url, both.url]
    assert targets[1].ok_statuses == frozenset({200, 204}) and targets[1].target_id == both.pk
    assert targets[0].timeout == 1.5 and targets[0].follow_redirects and targets[0].verify_tls
    assert [t.source for t in targets_for("eu1")] == [everywhere.url, "https://eu.example/", both.url]


# --- The sink ---------------------------------------------------------------------------------


def row(ts: datetime, source: str = A, probe_id: int | None = None, **fields: Any) -> Row:
    return {
        "ts": ts.timestamp(),
        "probe_id": probe_id if probe_id is not None else int(ts.timestamp()),
        "source": source,
        "target_id": None,
        "ok": True,
        "disconnected": False,
        "status": 200,
        "error_class": None,
        "error": None,
        "dns_ms": 1.0,
        "connect_ms": 2.0,
        "tls_ms": 3.0,
        "ttfb_ms": 4.0,
        "total_ms": 10.0,
        **fields,
    }


def encode(rows: list[Row]) -> bytes:
    """Rows of us1 as the writer hands them to the sink."""
    return copy_text.encode("us1", rows)


def server_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        count: int = cursor.fetchone()[0]
    return count


def test_the_sink_stores_rows_and_a_replay_of_them_is_harmless(transactional_db: None) -> None:
    now = timezone.now().replace(microsecond=0)
    rows = [row(now, A), row(now, B, status=None, ok=False, disconnected=True, error_class="refused", error=HOSTILE)]
    sink = make_sink()

    sink(encode(rows))
    sink(encode(rows))  # a spool replayed after the database had taken the rows already

    stored = {r.source: r for r in ProberSample.objects.filter(location="us1")}
    assert len(stored) == 2
    assert stored[A].ts == now and stored[A].probe_id == int(now.timestamp()) and stored[A].ok
    assert (stored[A].dns_ms, stored[A].tls_ms, stored[A].total_ms) == (1.0, 3.0, 10.0)
    assert stored[A].error_class == ""
    assert (stored[B].ok, stored[B].disconnected, stored[B].status) == (False, True, None)
    assert (stored[B].error_class, stored[B].error) == ("refused", HOSTILE)


def test_a_replay_of_partly_stored_rows_adds_only_the_missing_ones(transactional_db: None) -> None:
    now = timezone.now().replace(microsecond=0)
    sink = make_sink()
    sink(encode([row(now, A)]))  # a call the writer gave up on as stuck, which did commit after all

    sink(encode([row(now, A, ok=False), row(now, B)]))

    stored = {r.source: r.ok for r in ProberSample.objects.all()}
    assert stored == {A: True, B: True}  # the first copy of a row stays


def test_the_sink_keeps_one_connection_across_the_writers_threads(transactional_db: None) -> None:
    sink = make_sink()
    now = timezone.now().replace(microsecond=0)
    before = server_connections()

    for i in range(5):
        # The writer calls the sink on a new thread every time.
        thread = threading.Thread(target=sink, args=(encode([row(now + timedelta(seconds=i))]),))
        thread.start()
        thread.join()

    assert ProberSample.objects.count() == 5
    assert server_connections() == before + 1


def test_the_sink_creates_the_partition_of_a_day_that_has_none(transactional_db: None) -> None:
    later = (timezone.now() + timedelta(days=60)).replace(microsecond=0)
    assert later.date() not in partitions.existing(TABLE)

    make_sink()(encode([row(later)]))

    assert later.date() in partitions.existing(TABLE)
    assert ProberSample.objects.get().ts == later


def test_the_sink_rejects_rows_the_database_can_never_take(transactional_db: None) -> None:
    now = timezone.now().replace(microsecond=0)
    sink = make_sink()

    with pytest.raises(RejectedRowsError):
        sink(encode([row(now, ok=None)]))  # a missed-tick row: ``ok`` is NOT NULL in this table
    sink(encode([row(now)]))  # the connection is still usable afterwards

    assert ProberSample.objects.count() == 1


# --- SLA --------------------------------------------------------------------------------------


def minute_of_samples() -> list[ProberSample]:
    """Two sources over one minute from T0, as the prober would have stored them:

    - seconds 0-19: both up;
    - seconds 20-29: both down (a 10 s outage);
    - seconds 30-34: no samples at all (the prober was not running);
    - seconds 35-44: A fails alone, B is up;
    - seconds 45-59: both up.

    Successful samples carry pseudo-random phases; failed ones a 1500 ms timeout that must not
    count as a latency.
    """
    rng = random.Random(4)
    samples = []
    for second in range(60):
        if 30 <= second < 35:
            continue
        for source in (A, B):
            ok = not (20 <= second < 30 or (35 <= second < 45 and source == A))
            phases = {p: round(rng.uniform(1, 300), 3) for p in PHASES} if ok else {"total_ms": 1500.0}
            samples.append(sample_at(second, source, "" if ok else "timeout", **phases))
    # Another location, down all the time: must not leak into us1's figures.
    samples += [
        ProberSample(ts=at(s), probe_id=s, location="eu1", source=A, ok=False, disconnected=True) for s in range(60)
    ]
    return samples


@pytest.fixture
def minute(db: None) -> list[ProberSample]:
    partitions.ensure(TABLE, T0.date(), T0.date())
    return ProberSample.objects.bulk_create(minute_of_samples())


def nearest_rank(values: list[float], q: float) -> float:
    """The q-th percentile by nearest rank, by hand: the value at rank ceil(q/100 * n)."""
    ordered = sorted(values)
    return ordered[math.ceil(q / 100 * len(ordered)) - 1]


def test_uptime_counts_unknown_seconds_as_neither_up_nor_down(minute: list[ProberSample]) -> None:
    report = sla_report(SlaScope(T0, at(60), location="us1"))

    assert (report["seconds"], report["up_seconds"], report["down_seconds"], report["unknown_seconds"]) == (
        60,
        45,
        10,
        5,
    )
    # 45 up of the 55 measured seconds; were the gap counted as up it would read 50/60.
    assert report["uptime_pct"] == pytest.approx(100 * 45 / 55)
    assert report["coverage_pct"] == pytest.approx(100 * 55 / 60)
    assert report["samples"] == 110
    assert report["failure_ratio"] == pytest.approx(30 / 110)


def test_the_outage_is_one_downtime_event_with_its_start_end_and_duration(minute: list[ProberSample]) -> None:
    report = sla_report(SlaScope(T0, at(60), location="us1"))

    assert report["downtime_events"] == [
        {"start": at(20), "end": at(30), "duration_s": 10, "bounded_start": True, "bounded_end": False}
    ]


def test_a_source_failing_alone_is_not_downtime_but_lowers_its_availability(minute: list[ProberSample]) -> None:
    report = sla_report(SlaScope(T0, at(60), location="us1"))

    assert report["sources"] == [
        {
            "source": A,
            "ok": 35,
            "failed": 20,
            "unmeasured": 0,
            "availability_pct": pytest.approx(100 * 35 / 55),
            "failure_ratio": pytest.approx(20 / 55),
            "coverage_pct": pytest.approx(100 * 55 / 60),
        },
        {
            "source": B,
            "ok": 45,
            "failed": 10,
            "unmeasured": 0,
            "availability_pct": pytest.approx(100 * 45 / 55),
            "failure_ratio": pytest.approx(10 / 55),
            "coverage_pct": pytest.approx(100 * 55 / 60),
        },
    ]


def test_latency_percentiles_are_nearest_rank_over_successful_samples(minute: list[ProberSample]) -> None:
    report = sla_report(SlaScope(T0, at(60), location="us1"))

    ok = [s for s in minute if s.location == "us1" and s.ok]
    for phase in PHASES:
        values = [getattr(s, phase) for s in ok]
        expected = {f"p{q}": nearest_rank(values, q) for q in (50, 95, 99)}
        assert report["latency_ms"][phase] == pytest.approx(expected), phase
    assert report["latency_ms"]["total_ms"]["p99"] < 1500  # timeouts are failures, not latencies


def test_a_report_can_cover_one_source_or_every_location(minute: list[ProberSample]) -> None:
    only_b = sla_report(SlaScope(T0, at(60), location="us1", source=B))
    everything = sla_report(SlaScope(T0, at(60)))

    assert (only_b["up_seconds"], only_b["down_seconds"], only_b["unknown_seconds"]) == (45, 10, 5)
    assert [s["source"] for s in only_b["sources"]] == [B]
    # Overall, a second is up when any source anywhere succeeded: eu1's failures change nothing
    # but the failure ratio, and eu1 covers the gap as down.
    assert (everything["up_seconds"], everything["down_seconds"], everything["unknown_seconds"]) == (45, 15, 0)
    assert everything["samples"] == 170


def test_a_report_can_cover_a_group_of_targets(minute: list[ProberSample]) -> None:
    target = ProberTarget.objects.create(name="b", url=B, group="internet")
    ProberSample.objects.filter(source=B).update(target_id=target.pk)

    report = sla_report(SlaScope(T0, at(60), group="internet"))

    assert [s["source"] for s in report["sources"]] == [B]
    assert report["samples"] == 55


def test_a_range_without_samples_has_no_uptime_figure(minute: list[ProberSample]) -> None:
    report = sla_report(SlaScope(at(120), at(180), location="us1"))

    assert report["uptime_pct"] is None and report["coverage_pct"] == 0
    assert report["unknown_seconds"] == 60 and report["downtime_events"] == []
    assert report["latency_ms"] == dict.fromkeys(PHASES)


def test_a_range_counts_only_whole_seconds(minute: list[ProberSample]) -> None:
    report = sla_report(SlaScope(at(19) + timedelta(milliseconds=500), at(30), location="us1"))

    # 12:00:19.5 starts with the second 12:00:20: the outage, bounded by the range's edge.
    assert report["seconds"] == 10 and report["down_seconds"] == 10
    assert report["downtime_events"][0]["bounded_start"] is False


def test_down_runs_split_by_a_short_gap_can_be_merged(db: None) -> None:
    partitions.ensure(TABLE, T0.date(), T0.date())
    ProberSample.objects.bulk_create(
        ProberSample(ts=at(s), probe_id=s, location="us1", source=A, ok=s in (0, 9), disconnected=False)
        for s in (0, 1, 2, 5, 6, 9)
    )

    split = sla_report(SlaScope(T0, at(10), location="us1"))
    merged = sla_report(SlaScope(T0, at(10), location="us1"), merge_unknown_gap=2)

    assert [e["duration_s"] for e in split["downtime_events"]] == [2, 2]
    assert [(e["start"], e["end"]) for e in merged["downtime_events"]] == [(at(1), at(7))]


def sample_at(second: int, source: str, error_class: str = "", **fields: Any) -> ProberSample:
    ok = not error_class
    return ProberSample(
        ts=at(second),
        probe_id=1000 + second,
        location="us1",
        source=source,
        ok=ok,
        disconnected=not ok,
        status=200 if ok else None,
        error_class=error_class,
        **({"total_ms": 20.0} if ok else {}) | fields,
    )


@pytest.fixture
def overloaded(db: None) -> None:
    """Thirty seconds of two sources in which the prober itself failed now and then:

    - seconds 0-9: both up;
    - seconds 10-19: both ``overload`` (the in-flight bound was hit: nothing was measured);
    - seconds 20-24: A ``aborted`` at shutdown, B timed out (measured: down);
    - seconds 25-29: A ``not_started``, B up.
    """
    partitions.ensure(TABLE, T0.date(), T0.date())
    rows = [sample_at(s, src) for s in range(10) for src in (A, B)]
    rows += [sample_at(s, src, "overload") for s in range(10, 20) for src in (A, B)]
    rows += [sample_at(s, A, "aborted") for s in range(20, 25)] + [sample_at(s, B, "timeout") for s in range(20, 25)]
    rows += [sample_at(s, A, "not_started") for s in range(25, 30)] + [sample_at(s, B) for s in range(25, 30)]
    ProberSample.objects.bulk_create(rows)


def test_seconds_the_prober_could_not_measure_are_unknown_not_down(overloaded: None) -> None:
    report = sla_report(SlaScope(T0, at(30), location="us1"))

    assert (report["up_seconds"], report["down_seconds"], report["unknown_seconds"]) == (15, 5, 10)
    assert report["uptime_pct"] == pytest.approx(75.0)  # 15 up of 20 measured; 15 of 30 if overload were down
    assert report["coverage_pct"] == pytest.approx(100 * 20 / 30)


def test_samples_the_prober_could_not_take_create_no_downtime(overloaded: None) -> None:
    report = sla_report(SlaScope(T0, at(30), location="us1"))

    # Only B's timeouts, alone among measured samples, made seconds down; the overload before
    # them is unknown, so the event's start is not bounded (it may have begun earlier).
    assert report["downtime_events"] == [
        {"start": at(20), "end": at(25), "duration_s": 5, "bounded_start": False, "bounded_end": True}
    ]


def test_samples_the_prober_could_not_take_lower_no_availability_and_no_failure_ratio(overloaded: None) -> None:
    report = sla_report(SlaScope(T0, at(30), location="us1"))

    a, b = report["sources"]
    assert (a["source"], a["ok"], a["failed"], a["unmeasured"], a["availability_pct"]) == (A, 10, 0, 20, 100.0)
    assert (b["source"], b["ok"], b["failed"], b["unmeasured"]) == (B, 15, 5, 10)
    assert b["availability_pct"] == pytest.approx(75.0) and b["failure_ratio"] == pytest.approx(0.25)
    assert a["coverage_pct"] == pytest.approx(100 * 10 / 30)
    assert (report["samples"], report["unmeasured_samples"]) == (30, 30)
    assert report["failure_ratio"] == pytest.approx(5 / 30)


def test_tls_percentiles_count_only_samples_that_did_a_handshake(db: None) -> None:
    partitions.ensure(TABLE, T0.date(), T0.date())
    https = [sample_at(s, A, tls_ms=float(s), dns_ms=1.0) for s in range(1, 11)]
    http = [sample_at(s, B, tls_ms=0.0, dns_ms=1.0) for s in range(1, 31)]
    ProberSample.objects.bulk_create(https + http)

    report = sla_report(SlaScope(T0, at(60), location="us1"))

    # Over every sample the 30 zeros of plain HTTP would make p50 0 ms.
    assert report["latency_ms"]["tls_ms"] == {"p50": 5.0, "p95": 10.0, "p99": 10.0}
    assert report["latency_ms"]["dns_ms"] == {"p50": 1.0, "p95": 1.0, "p99": 1.0}  # the others: every sample


# --- Retention --------------------------------------------------------------------------------


def test_maintenance_drops_old_prober_partitions_with_their_samples(db: None) -> None:
    today = timezone.now().date()
    old: date = today - timedelta(days=40)
    partitions.ensure(TABLE, old, old)
    ProberSample.objects.create(
        ts=datetime.combine(old, datetime.min.time(), tzinfo=UTC),
        probe_id=1,
        location="us1",
        source=A,
        ok=True,
        disconnected=False,
    )
    ProberSample.objects.create(ts=timezone.now(), probe_id=2, location="us1", source=A, ok=True, disconnected=False)
    assert TABLE in partitions.PARTITIONED_TABLES

    report = partitions.maintain(today, retention_days=30)

    assert partitions.partition_name(TABLE, old) in report[TABLE]["dropped"]
    assert old not in partitions.existing(TABLE) and today in partitions.existing(TABLE)
    assert list(ProberSample.objects.values_list("probe_id", flat=True)) == [2]
