"""Mesh rounds: dispatch (central), storing a round's results (edge), and the queries of the API."""

from __future__ import annotations

import io
import logging
import math
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.db.utils import DatabaseError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from members.models import Member
from probes import partitions
from probes.checks.http import StatusRange
from probes.checks.mesh import Target, run_checks
from probes.checks.result import CheckResult
from probes.edge_metrics import MeshMetrics
from probes.models import MeshLatest, MeshResult

log = logging.getLogger(__name__)


@cache
def broker() -> redis.Redis:
    """A Redis client for short-lived coordination state (round claims), not for results."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def round_id(now: datetime, interval: int) -> int:
    """The number of the interval ``now`` falls in: the same for every beat, whatever its phase."""
    return math.floor(now.timestamp() / interval)


MESH_SCHEDULE = "mesh round dispatch"  # the beat entry (netring_site.schedules)


def scheduled_interval(name: str, default: int) -> int:
    """Seconds between runs of beat entry ``name`` as set in the admin (``default`` before
    ``netring_setup`` created it), so a dispatch spreads its work over the real interval."""
    task = PeriodicTask.objects.filter(name=name, enabled=True).select_related("interval").first()
    if task is None or task.interval is None:
        return default
    every = timedelta(**{task.interval.period: task.interval.every}).total_seconds()
    return max(int(every), 1)


def claim_round(kind: str, number: int, ttl: int) -> bool:
    """True for the first caller only: a second beat by mistake cannot double a round."""
    return bool(broker().set(f"netring:round:{kind}:{number}", "1", nx=True, ex=max(ttl, 1)))


@dataclass(frozen=True)
class RoundPlan:
    round_id: int
    started: datetime
    targets_by_location: dict[str, list[dict[str, object]]]
    interval: int  # seconds until the next round of this kind (the beat entry's, as edited in the admin)
    active: tuple[str, ...] = ()  # instance ids of every online or stale member


def plan_mesh_round(now: datetime | None = None) -> RoundPlan | None:
    """Who checks whom this round, from one read of the registry; None when already claimed.

    Each location that has an edge worker online or stale checks every active member of the
    other locations. Members of its own location are not targets: a location's members share
    a network, and the question is whether locations reach each other.
    """
    # The interval the admin set on the beat entry, not the variable's first value: rounds are
    # numbered by it, so with the variable's value a shortened schedule would see every other
    # dispatch as "already claimed".
    return plan_round("mesh", scheduled_interval(MESH_SCHEDULE, settings.NETRING_CHECK_INTERVAL), now)


def dispatched_key(kind: str) -> str:
    """Where the Unix time of the last round of ``kind`` is kept (bandwidth tests keep out of
    mesh and traceroute rounds: ``bandwidth_services.quiet_windows``)."""
    return f"netring:{kind}:dispatched"


def plan_round(kind: str, interval: int, now: datetime | None = None) -> RoundPlan | None:
    """A round of ``kind`` in which each location checks every active member of the others
    (see ``plan_mesh_round``); None when another beat claimed this interval already."""
    now = now or timezone.now()
    number = round_id(now, interval)
    if not claim_round(kind, number, interval * 2):
        return None
    broker().set(dispatched_key(kind), repr(now.timestamp()), ex=3 * interval)
    members = list(
        Member.objects.active(now)
        .select_related("location")
        .only("instance_id", "ip", "port", "kind", "location__name")
    )
    sources = sorted({m.location.name for m in members if m.kind == Member.Kind.EDGE})
    plan: dict[str, list[dict[str, object]]] = {}
    for source in sources:
        plan[source] = [
            {"instance_id": str(m.instance_id), "host": m.ip, "port": m.port, "location": m.location.name}
            for m in members
            if m.location.name != source
        ]
    return RoundPlan(number, now, plan, interval, tuple(str(m.instance_id) for m in members))


# Column order of the COPY batch; the same names in MeshResult and MeshLatest.
_COLUMNS = (
    "ts",
    "round_id",
    "source_location",
    "source_instance",
    "target_location",
    "target_instance",
    "kind",
    "endpoint",
    "target_ip",
    "target_port",
    "ok",
    "latency_ms",
    "error_class",
    "error",
    "status_code",
    "dns_ms",
    "connect_ms",
    "tls_ms",
    "ttfb_ms",
    "total_ms",
    "rtt_min_ms",
    "rtt_avg_ms",
    "rtt_max_ms",
    "loss_ratio",
    "jitter_ms",
    "packets_sent",
    "packets_received",
)
_MEASURED = _COLUMNS[6:]


def _copy_value(value: object) -> str:
    if value is None:
        return r"\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        return repr(round(value, 4))
    text = str(value)
    # COPY text format: escape backslash, tab, newline, carriage return.
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@dataclass(frozen=True)
class RoundSource:
    location: str
    instance_id: str
    round_id: int
    started: datetime


def store_round(source: RoundSource, results: Sequence[CheckResult], target_locations: dict[str, str]) -> int:
    """Write a round in one batch: history rows and the latest state of every pair.

    One COPY into a temporary table, then one INSERT into the partitioned history and one
    upsert into the latest table: three statements whatever the mesh size. A missing partition
    (maintenance not run yet) is created and the batch retried once.
    """
    buffer = io.StringIO()
    for result in results:
        row = (
            source.started,
            source.round_id,
            source.location,
            source.instance_id,
            target_locations.get(result.target_id, ""),
            result.target_id,
            result.kind,
            result.endpoint,
            result.target,
            result.port,
            result.ok,
            result.latency_ms,
            result.error_class,
            result.error[:300],
            result.status_code,
            result.dns_ms,
            result.connect_ms,
            result.tls_ms,
            result.ttfb_ms,
            result.total_ms,
            result.rtt_min_ms,
            result.rtt_avg_ms,
            result.rtt_max_ms,
            result.loss_ratio,
            result.jitter_ms,
            result.packets_sent,
            result.packets_received,
        )
        buffer.write("\t".join(_copy_value(v) for v in row))
        buffer.write("\n")
    for attempt in (1, 2):
        buffer.seek(0)
        try:
            _write_batch(buffer)
            return len(results)
        except DatabaseError as exc:
            if attempt == 2 or "no partition" not in str(exc):
                raise
            day = source.started.astimezone(UTC).date()  # partitions hold UTC days
            try:
                with transaction.atomic():
                    partitions.ensure(MeshResult._meta.db_table, day, day + timedelta(days=1))
            except DatabaseError:
                # Another edge created it at the same moment; the retry finds it either way.
                log.info("partition of %s created concurrently", day)
    return 0


# The batch statements, built once from model metadata and constants (never from input).
_COLUMN_LIST = ", ".join(f'"{c}"' for c in _COLUMNS)
_UPDATES = ", ".join(
    f'"{c}" = EXCLUDED."{c}"' for c in ("ts", "round_id", "source_instance", "target_location", *_MEASURED[2:])
)
_PAIR = "source_location, target_instance, kind, endpoint"
# Inside a caller's transaction ON COMMIT DROP has not happened yet when the next batch comes:
# drop a leftover first. The batch table has exactly the COPY columns (no id).
_SQL_DROP_TEMP = "DROP TABLE IF EXISTS pg_temp.mesh_batch"
_SQL_TEMP = (
    f"CREATE TEMPORARY TABLE mesh_batch ON COMMIT DROP AS SELECT {_COLUMN_LIST} "  # noqa: S608
    f'FROM "{MeshLatest._meta.db_table}" WITH NO DATA'
)
_SQL_COPY = f"COPY mesh_batch ({_COLUMN_LIST}) FROM STDIN"
_SQL_HISTORY = f'INSERT INTO "{MeshResult._meta.db_table}" ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM mesh_batch'  # noqa: S608
_SQL_LATEST = (
    f'INSERT INTO "{MeshLatest._meta.db_table}" ({_COLUMN_LIST}) SELECT DISTINCT ON ({_PAIR}) {_COLUMN_LIST} '  # noqa: S608
    f"FROM mesh_batch ORDER BY {_PAIR}, ts DESC ON CONFLICT ({_PAIR}) DO UPDATE SET {_UPDATES} "
    # A round that finishes late (it waited behind a slow one) must not overwrite a newer state.
    f'WHERE "{MeshLatest._meta.db_table}".ts <= EXCLUDED.ts'
)


def _write_batch(buffer: io.StringIO) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_SQL_DROP_TEMP)
        cursor.execute(_SQL_TEMP)
        cursor.cursor.copy_expert(_SQL_COPY, buffer)
        cursor.execute(_SQL_HISTORY)
        cursor.execute(_SQL_LATEST)


def forget_departed(active: Iterable[uuid.UUID | str], sources: Iterable[str] | None = None) -> int:
    """Drop latest-state rows of members that left, and of source locations that no longer check
    anyone (their last edge worker left), so the matrix shows only the mesh of now."""
    gone = ~Q(target_instance__in=list(active))
    if sources is not None:
        gone |= ~Q(source_location__in=list(sources))
    return MeshLatest.objects.filter(gone).delete()[0]


def check_options() -> dict[str, object]:
    """The mesh checks' settings, as ``probes.checks.mesh.run_checks`` takes them."""
    return {
        "endpoints": tuple(settings.NETRING_HTTP_ENDPOINTS),
        "tcp_timeout": settings.NETRING_TCP_TIMEOUT,
        "http_timeout": settings.NETRING_HTTP_TIMEOUT,
        "icmp_count": settings.NETRING_ICMP_COUNT,
        "icmp_interval": settings.NETRING_ICMP_INTERVAL,
        "icmp_timeout": _icmp_timeout(),
        "expected_status": StatusRange.parse(settings.NETRING_EXPECTED_STATUS),
        "max_in_flight": settings.NETRING_MAX_IN_FLIGHT,
    }


def round_seconds() -> float:
    """The longest a mesh round's checks take, whatever fails: they all run at once."""
    icmp = settings.NETRING_ICMP_COUNT * settings.NETRING_ICMP_INTERVAL + _icmp_timeout()
    return max(
        settings.NETRING_TCP_TIMEOUT, settings.NETRING_HTTP_TIMEOUT, icmp if settings.NETRING_ICMP_COUNT else 0.0
    )


def _icmp_timeout() -> float:
    return min(settings.NETRING_TCP_TIMEOUT, 2.0)


@dataclass(frozen=True)
class RoundReport:
    results: int
    failures: int
    seconds: float


def run_round(
    source: RoundSource, targets: Sequence[dict[str, object]], metrics: MeshMetrics | None = None
) -> RoundReport:
    """Check every target concurrently, store the round in one batch, update the edge metrics."""
    began = time.monotonic()
    peers = [
        Target(str(t["instance_id"]), str(t["host"]), int(str(t["port"])), str(t.get("location", ""))) for t in targets
    ]
    results = run_checks(peers, **check_options())  # type: ignore[arg-type]
    where = {p.instance_id: p.location for p in peers}
    seconds = time.monotonic() - began
    if metrics is not None:
        metrics.observe_round(source.location, source.instance_id, results, where, seconds, time.time())
    store_round(source, results, where)
    return RoundReport(len(results), sum(1 for r in results if not r.ok), seconds)
