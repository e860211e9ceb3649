"""The 1 Hz prober's database side: its targets, its sink, and the SLA reports.

The loop itself (``probes.prober``) knows nothing of Django; ``run_prober`` wires it to these.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg2
import psycopg2.errors
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Q

from probes import partitions
from probes.checks.http import StatusRange
from probes.models import ProberSample, ProberTarget
from probes.prober import copy_text, sla
from probes.prober.loop import Target
from probes.prober.transport import PROBER_SIDE
from probes.prober.writer import RejectedRowsError

_COLUMN_LIST = ", ".join(f'"{c}"' for c in copy_text.COLUMNS)
_TABLE = ProberSample._meta.db_table
_SQL_COPY = f'COPY "{_TABLE}" ({_COLUMN_LIST}) FROM STDIN'
# psycopg2 hands COPY data to the server in pieces of this size (8 KiB by default): a replayed
# chunk of 5,000 rows is ~1 MB, sent in one piece instead of a hundred.
_COPY_BUFFER = 1 << 20
# The slow path, for a batch of which some rows are stored already (a replay after a sink call
# that was abandoned as stuck but did commit): the unique key skips those.
_SQL_TEMP = f'CREATE TEMPORARY TABLE prober_batch (LIKE "{_TABLE}" INCLUDING DEFAULTS) ON COMMIT DROP'
_SQL_COPY_TEMP = f"COPY prober_batch ({_COLUMN_LIST}) FROM STDIN"
_SQL_INSERT = (
    f'INSERT INTO "{_TABLE}" ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM prober_batch '  # noqa: S608
    "ON CONFLICT (location, source, probe_id, ts) DO NOTHING"
)
# A row that measured the target; the others (missed ticks, and samples the prober itself could
# not take: overload, not started, aborted) are kept in the table but count as unknown in every
# SLA figure, like a second without rows (``sla.measured_ok`` is the same rule in Python).
_MEASURED = "ok IS NOT NULL AND (ok OR error_class <> ALL(%s))"
_PROBER_SIDE = sorted(PROBER_SIDE)


def statuses(expected: str) -> frozenset[int]:
    spans = StatusRange.parse(expected).spans
    return frozenset(code for low, high in spans for code in range(low, high + 1))


def targets_for(location: str) -> list[Target]:
    """Enabled targets of ``location`` (targets with no location run everywhere)."""
    rows = (
        ProberTarget.objects.filter(enabled=True)
        .filter(Q(locations__name=location) | Q(locations__isnull=True))
        .distinct()
        .order_by("pk")
    )
    return [
        Target(
            source=t.url,
            url=t.url,
            timeout=t.timeout_s,
            ok_statuses=statuses(t.expected_status),
            follow_redirects=t.follow_redirects,
            verify_tls=t.verify_tls,
            target_id=t.pk,
        )
        for t in rows
    ]


def make_sink() -> Callable[[bytes], None]:
    """The writer's sink: one COPY of rows in COPY text (``copy_text.encode``) per batch, in one
    transaction, idempotent.

    The writer calls it on a new short-lived thread each time, so Django's per-thread
    connection would mean a new PostgreSQL connection (and password exchange) per flush, and
    per replayed chunk after an outage. The sink keeps one connection of its own instead, used
    by one call at a time (the writer never overlaps calls; the lock makes sure) and dropped
    when it fails, so the next call reconnects. A database that is down raises (the writer
    spools and retries); rows the database can never take raise ``RejectedRowsError`` (the
    writer quarantines them); rows of a day without a partition create it.
    """
    # A wrapper of our own, never registered in ``connections``: only its parameters are used.
    wrapper = connections.create_connection(DEFAULT_DB_ALIAS)
    params = wrapper.get_connection_params()
    lock = threading.Lock()
    held: list[Any] = []  # the open psycopg2 connection, if any

    def connect() -> Any:
        if held and not held[0].closed:
            return held[0]
        held[:] = [wrapper.get_new_connection(params)]
        return held[0]

    def sink(data: bytes) -> None:
        if not data:
            return
        with lock:
            try:
                try:
                    _insert(connect(), data)
                except psycopg2.IntegrityError as exc:
                    # PostgreSQL reports a row outside every partition as a check violation.
                    if "no partition" not in str(exc):
                        raise
                    _create_partitions(copy_text.days(data))
                    _insert(connect(), data)
            except (psycopg2.IntegrityError, psycopg2.DataError) as exc:
                raise RejectedRowsError(str(exc).strip()) from exc
            except Exception:
                _drop(held)  # do not reuse a connection that failed half-way
                raise

    return sink


def _insert(conn: Any, data: bytes) -> None:
    """COPY the batch straight into the table; if any row of it is stored already, insert it
    again through a temporary table with ON CONFLICT DO NOTHING (about half as fast)."""
    try:
        _transaction(conn, lambda cursor: cursor.copy_expert(_SQL_COPY, io.BytesIO(data), size=_COPY_BUFFER))
    except psycopg2.errors.UniqueViolation:
        _transaction(conn, lambda cursor: _insert_missing(cursor, data))


def _insert_missing(cursor: Any, data: bytes) -> None:
    cursor.execute(_SQL_TEMP)
    cursor.execute("ALTER TABLE prober_batch DROP COLUMN id")
    cursor.copy_expert(_SQL_COPY_TEMP, io.BytesIO(data), size=_COPY_BUFFER)
    cursor.execute(_SQL_INSERT)


def _transaction(conn: Any, work: Callable[[Any], None]) -> None:
    try:
        with conn.cursor() as cursor:
            work(cursor)
        conn.commit()
    except Exception:
        if not conn.closed:
            conn.rollback()
        raise


def _create_partitions(days: set[date]) -> None:
    try:
        for day in days:
            partitions.ensure(_TABLE, day, day)
    finally:
        connection.close()  # this thread's Django connection: the thread is about to end


def _drop(held: list[Any]) -> None:
    for conn in held:
        with contextlib.suppress(Exception):
            conn.close()
    held.clear()


# --- SLA ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlaScope:
    start: datetime
    end: datetime
    location: str | None = None
    source: str | None = None
    group: str | None = None


def _scope_sql(scope: SlaScope) -> tuple[str, list[Any]]:
    where = ["ts >= %s", "ts < %s"]
    params: list[Any] = [scope.start, scope.end]
    if scope.location:
        where.append("location = %s")
        params.append(scope.location)
    if scope.source:
        where.append("source = %s")
        params.append(scope.source)
    if scope.group is not None:
        where.append(f'target_id IN (SELECT id FROM "{ProberTarget._meta.db_table}" WHERE "group" = %s)')  # noqa: S608
        params.append(scope.group)
    return " AND ".join(where), params


def sla_report(scope: SlaScope, *, merge_unknown_gap: int = 0) -> dict[str, Any]:
    """Uptime, downtime events, per-source availability and phase percentiles of a time range.

    A second is up when any source succeeded, down when every source that has a sample failed,
    unknown without samples: unknown never counts as up (see docs/prober.md). Rows of samples
    the prober could not take (overload...) are no samples of the target here. The database
    aggregates per second and per source; Python only walks the per-second counts.
    """
    # Whole seconds: a second is in the range only if all of it is, so a range starting at
    # 12:00:00.5 begins with the second 12:00:01 (and an unmeasurable half second is not unknown).
    start, end = math.ceil(scope.start.timestamp()), math.floor(scope.end.timestamp())
    end = max(start, end)
    scope = replace(scope, start=datetime.fromtimestamp(start, tz=UTC), end=datetime.fromtimestamp(end, tz=UTC))
    where, params = _scope_sql(scope)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT floor(extract(epoch FROM ts))::bigint, count(*) FILTER (WHERE ok), "  # noqa: S608
            f'count(*) FILTER (WHERE NOT ok) FROM "{_TABLE}" WHERE {where} AND {_MEASURED} GROUP BY 1 ORDER BY 1',
            [*params, _PROBER_SIDE],
        )
        per_second = [sla.SecondCounts(int(t), int(ok), int(bad)) for t, ok, bad in cursor.fetchall()]
        cursor.execute(
            f"SELECT source, count(*) FILTER (WHERE ok), count(*) FILTER (WHERE NOT ok AND {_MEASURED}), "  # noqa: S608
            f"count(*) FILTER (WHERE NOT ({_MEASURED})) "
            f'FROM "{_TABLE}" WHERE {where} GROUP BY 1 ORDER BY 1',
            [_PROBER_SIDE, _PROBER_SIDE, *params],
        )
        per_source = [sla.SourceCounts(s, int(ok), int(bad), int(other)) for s, ok, bad, other in cursor.fetchall()]
        # TLS counts only the samples that did a handshake: ``tls_ms`` > 0. A completed plain-HTTP
        # transfer stores exactly 0 (``probes.checks.http.read_timings``), and a real handshake
        # always takes some microseconds, so the stored value tells them apart. The source URL's
        # scheme would not: with redirects followed, http://x redirected to https:// did a
        # handshake, and only the first hop's scheme is in ``source``.
        cursor.execute(
            "SELECT percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY dns_ms), "  # noqa: S608
            "percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY connect_ms), "
            "percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY tls_ms) FILTER (WHERE tls_ms > 0), "
            "percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ttfb_ms), "
            "percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY total_ms), count(*) "
            f'FROM "{_TABLE}" WHERE {where} AND ok',
            params,
        )
        phases = cursor.fetchone()
    timeline = sla.timeline(start, end, per_second)
    up = sla.uptime(timeline)
    events = sla.downtime_events(timeline, merge_unknown_gap=merge_unknown_gap)
    samples = sum(s.ok + s.failed for s in per_source)
    failed = sum(s.failed for s in per_source)
    unmeasured = sum(s.unmeasured for s in per_source)
    names = ("dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "total_ms")
    return {
        "start": scope.start,
        "end": scope.end,
        "location": scope.location,
        "source": scope.source,
        "group": scope.group,
        "seconds": up.seconds,
        "up_seconds": up.up,
        "down_seconds": up.down,
        "unknown_seconds": up.unknown,
        "uptime_pct": up.uptime_pct,
        "coverage_pct": up.coverage_pct,
        "samples": samples,
        "unmeasured_samples": unmeasured,
        "failure_ratio": (failed / samples) if samples else None,
        "downtime_events": [
            {
                "start": datetime.fromtimestamp(e.start, tz=UTC),
                "end": datetime.fromtimestamp(e.end, tz=UTC),
                "duration_s": e.duration,
                "bounded_start": e.bounded_start,
                "bounded_end": e.bounded_end,
            }
            for e in events
        ],
        "sources": [
            {
                "source": a.source,
                "ok": a.ok,
                "failed": a.failed,
                "unmeasured": a.unmeasured,
                "availability_pct": a.availability_pct,
                "failure_ratio": a.failure_ratio,
                "coverage_pct": a.coverage_pct,
            }
            for a in sla.source_availability(start, end, per_source)
        ],
        "latency_ms": {
            name: ({"p50": values[0], "p95": values[1], "p99": values[2]} if values else None)
            for name, values in zip(names, phases[:5], strict=True)
        },
    }


def default_range(now: datetime, hours: int = 24) -> tuple[datetime, datetime]:
    end = now.replace(microsecond=0)
    return end - timedelta(hours=hours), end
