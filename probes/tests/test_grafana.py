"""The Grafana provisioning and dashboards of compose/grafana, against Netring's real schema and metrics.

- Every PostgreSQL query of the dashboards (panels and template variables) runs on the test
  database over prober samples and mesh results seeded through the models and the services'
  write functions, after ``render_sql`` (below) expanded the Grafana macros and variables the
  way Grafana does. Each answers rows of its panel's shape, and the figures Netring computes
  elsewhere (uptime, downtime, coverage, downtime events, availability, percentiles) equal what
  ``probes.prober_services.sla_report`` says about the same rows.
- Every Prometheus expression names only metrics, and labels, that Netring's processes export:
  collected from the real registries of an edge worker, a prober and the web's /metrics after
  real observations. promtool, when on PATH, parses every expression.
- The provisioning files parse, keep every secret in environment variables, declare the data
  sources the dashboards use, and load the folder compose/docker-compose.yml mounts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.db import connection
from django.test import Client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from members import services as registry
from probes import partitions, services
from probes.checks.bandwidth import BandwidthResult as BandwidthTest
from probes.checks.bandwidth import TransferStats
from probes.checks.result import CheckResult
from probes.checks.traceroute import Hop, TraceResult
from probes.diagnostics_metrics import BandwidthMetrics, TracerouteMetrics
from probes.edge_metrics import MeshMetrics
from probes.management.commands.run_prober import build
from probes.models import BandwidthResult, PathChange, ProberSample
from probes.prober_metrics import phase_observer
from probes.prober_services import SlaScope, sla_report

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "compose" / "grafana"
PG_TYPE, PROM_TYPE = "grafana-postgresql-datasource", "prometheus"

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)  # the first second of the seeded minute
START, END = T0 - timedelta(seconds=30), T0 + timedelta(seconds=90)  # the dashboards' time range
INTERVAL = "10s"  # $__interval
A, B = "https://a.example/", "https://b.example/"
C = "http://c.example/"  # plain HTTP, but redirected to https:// at even seconds
US, EU, AP = (str(uuid.UUID(int=n)) for n in (1, 2, 3))


# --- The dashboards -------------------------------------------------------------------------


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((GRAFANA / "dashboards" / f"{name}.json").read_text())
    return document


DASHBOARDS = {name: load(name) for name in ("prober", "mesh")}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str  # the panel's title, or "$name" for a template variable
    panel_type: str  # "timeseries", "stat", "table", ...; "variable"
    format: str  # "time_series" or "table" (PostgreSQL); "" for Prometheus
    text: str  # rawSql or expr

    def __str__(self) -> str:
        return f"{self.dashboard}: {self.panel}"


def queries(datasource_type: str) -> list[Query]:
    found = []
    for name, dashboard in DASHBOARDS.items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                ds = target.get("datasource") or panel["datasource"]
                if ds["type"] != datasource_type:
                    continue
                text = target["rawSql"] if datasource_type == PG_TYPE else target["expr"]
                found.append(Query(name, panel["title"], panel["type"], target.get("format", ""), text))
        for variable in dashboard["templating"]["list"]:
            if variable.get("datasource", {}).get("type") == datasource_type:
                found.append(Query(name, f"${variable['name']}", "variable", "table", variable["query"]))
    return found


PG_QUERIES, PROM_QUERIES = queries(PG_TYPE), queries(PROM_TYPE)


def sql_of(dashboard: str, panel: str) -> str:
    (query,) = [q for q in PG_QUERIES if q.dashboard == dashboard and q.panel == panel]
    return query.text


# --- Grafana's macros -----------------------------------------------------------------------

_MACRO = re.compile(
    r"\$__(?P<function>timeFilter|timeGroupAlias|timeGroup)\((?P<args>[^()]*)\)"
    r"|\$__(?P<bound>timeFrom|timeTo)\(\)"
    r"|\$__(?P<interval>interval_ms|interval)\b"
    r"|\$\{(?P<braced>\w+)(?::\w+)?\}"
    r"|\$(?P<variable>\w+)"
)
_DURATION = re.compile(r"'?(\d+)(ms|s|m|h|d)'?")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds_of(duration: str) -> float:
    match = _DURATION.fullmatch(duration.strip())
    assert match, f"not a Grafana interval: {duration!r}"
    return int(match.group(1)) * _SECONDS[match.group(2)]


def render_sql(
    sql: str, variables: dict[str, list[str]], start: datetime = START, end: datetime = END, interval: str = INTERVAL
) -> tuple[str, list[Any]]:
    """Expand what Grafana's PostgreSQL data source expands, into SQL and parameters for psycopg2.

    - every literal ``%`` is doubled first (psycopg2's parameter style);
    - ``$__timeFilter(col)`` -> ``col BETWEEN %s AND %s`` with the range's start and end;
    - ``$__timeFrom()`` / ``$__timeTo()`` -> ``%s`` with the start / end (Grafana writes the same
      instant as a quoted ISO timestamp);
    - ``$__timeGroupAlias(col, interval[, fill])`` -> ``to_timestamp(floor(extract(epoch FROM col)
      / n) * n) AS "time"`` with ``n`` the interval in seconds (``$__interval`` or a literal such
      as ``'1m'``); ``$__timeGroup`` the same without the alias. Grafana floors the same way but
      leaves the epoch number, which it reads as the time; fill only adds rows in Grafana;
    - ``$__interval`` -> the interval (``'10s'``), ``$__interval_ms`` -> its milliseconds;
    - ``$name`` / ``${name}`` -> the variable's values, each a quoted SQL string, joined by commas:
      Grafana's format of a multi-value variable (or of "All") for SQL data sources.

    Any other ``$`` is an error: a macro this function does not know would reach PostgreSQL as is,
    and a variable the dashboard does not define stays literal in Grafana too.
    """
    params: list[Any] = []

    def quoted(value: str) -> str:
        return "'" + value.replace("'", "''").replace("%", "%%") + "'"

    def expand(match: re.Match[str]) -> str:
        if match["function"]:
            args = [a.strip() for a in match["args"].split(",")]
            if match["function"] == "timeFilter":
                params.extend([start, end])
                return f"{args[0]} BETWEEN %s AND %s"
            step = seconds_of(interval if args[1] == "$__interval" else args[1])
            expression = f"to_timestamp(floor(extract(epoch FROM {args[0]}) / {step:g}) * {step:g})"
            return f'{expression} AS "time"' if match["function"] == "timeGroupAlias" else expression
        if match["bound"]:
            params.append(start if match["bound"] == "timeFrom" else end)
            return "%s"
        if match["interval"]:
            return f"{seconds_of(interval) * 1000:g}" if match["interval"] == "interval_ms" else f"'{interval}'"
        name = match["braced"] or match["variable"]
        if name not in variables:
            raise KeyError(f"${name} is neither a macro render_sql knows nor a variable of the dashboard")
        return ",".join(quoted(value) for value in variables[name])

    return _MACRO.sub(expand, sql.replace("%", "%%")), params


def run(
    sql: str, variables: dict[str, list[str]], start: datetime = START, end: datetime = END
) -> tuple[list[str], list[tuple[Any, ...]]]:
    text, params = render_sql(sql, variables, start, end)
    with connection.cursor() as cursor:
        cursor.execute(text, params)
        return [column.name for column in cursor.description], cursor.fetchall()


def records(sql: str, variables: dict[str, list[str]]) -> list[dict[str, Any]]:
    columns, rows = run(sql, variables)
    return [dict(zip(columns, row, strict=True)) for row in rows]


def test_render_sql_expands_macros_and_variables_as_grafana_does() -> None:
    sql = (
        'SELECT $__timeGroupAlias(ts, $__interval), 100 * count(*) AS "ok %" FROM t '
        "WHERE $__timeFilter(ts) AND location IN ($location) AND ts < $__timeTo()"
    )

    text, params = render_sql(sql, {"location": ["us1", "o'hare"]})

    assert text == (
        'SELECT to_timestamp(floor(extract(epoch FROM ts) / 10) * 10) AS "time", 100 * count(*) AS "ok %%" FROM t '
        "WHERE ts BETWEEN %s AND %s AND location IN ('us1','o''hare') AND ts < %s"
    )
    assert params == [START, END, END]
    with pytest.raises(KeyError, match=r"\$__unixEpochFilter"):
        render_sql("WHERE $__unixEpochFilter(ts)", {})


# --- Seeded data ----------------------------------------------------------------------------

# us1 probes A and B every second from 0 to 59 but has no samples from 40 to 44 (unknown);
# eu1 probes them from 0 to 29. Every sample of 10-14 fails (down, bounded by up seconds);
# only A fails at 20-29 (up: B answered); both us1 samples fail at 45-47 (down; eu1 has
# stopped, and the second before is unknown, so the start is unbounded). 8 down seconds.
# eu1 also probes the plain-HTTP C from 0 to 29 (failing with the others at 10-14): tls_ms is 0
# at odd seconds (no handshake), not a TLS latency.
# Rows the prober could not take (prober-side error classes) are unknown, never failed or up:
# us1's only rows of second 41 (so it stays unknown, inside the gap), B's only row of 42, and
# A's rows at 50-51 (where B answered: up, but A neither up nor failed then).
US1_SECONDS = [s for s in range(60) if not 40 <= s <= 44]
EU1_SECONDS = list(range(30))
DOWN_SECONDS = 8
PROBER_SIDE_ROWS = {
    ("us1", A, 41): "overload",
    ("us1", B, 41): "not_started",
    ("us1", B, 42): "missed",
    ("us1", A, 50): "aborted",
    ("us1", A, 51): "overload",
}
FAILURES = {
    ("us1", A, range(10, 15)): "timeout",
    ("us1", B, range(10, 15)): "refused",
    ("eu1", A, range(10, 15)): "dns",
    ("eu1", B, range(10, 15)): "http_status",
    ("eu1", C, range(10, 15)): "refused",
    ("us1", A, range(20, 30)): "tls",
    ("us1", A, range(45, 48)): "reset",
    ("us1", B, range(45, 48)): "http_status",
}
FAILURE_COUNTS = {"timeout": 5, "refused": 10, "dns": 5, "http_status": 8, "tls": 10, "reset": 3}
# Phases a failure of each class reached (the others are NULL), its total time and status.
FAILED_AT = {
    "dns": ({}, 5.0, None),
    "refused": ({"dns_ms": 1.0}, 1.5, None),
    "timeout": ({"dns_ms": 1.0, "connect_ms": 2.0}, 1500.0, None),
    "tls": ({"dns_ms": 1.0, "connect_ms": 2.0}, 30.0, None),
    "reset": ({"dns_ms": 1.0, "connect_ms": 2.0, "tls_ms": 3.0}, 50.0, None),
    "http_status": ({"dns_ms": 1.0, "connect_ms": 2.0, "tls_ms": 3.0, "ttfb_ms": 40.0}, 45.0, 503),
}


def sample(location: str, source: str, second: int) -> ProberSample:
    ts = T0 + timedelta(seconds=second)
    common = {"ts": ts, "probe_id": int(ts.timestamp()), "location": location, "source": source}
    if unmeasured := PROBER_SIDE_ROWS.get((location, source, second)):
        return ProberSample(
            **common, ok=False, disconnected=False, error_class=unmeasured, error=f"seeded {unmeasured}",
        )  # fmt: skip
    failure = next(
        (c for (loc, src, when), c in FAILURES.items() if (loc, src) == (location, source) and second in when), ""
    )
    if failure:
        phases, total, status = FAILED_AT[failure]
        return ProberSample(
            **common, ok=False, disconnected=status is None, status=status, error_class=failure,
            error=f"seeded {failure}", total_ms=total, **phases,
        )  # fmt: skip
    dns, connect, tls = 1.0 + second % 3, 2.0 + second % 5, 5.0 + second % 2
    if source == C:
        tls = 0.0 if second % 2 else 3.0 + second % 3  # 0: a completed plain-HTTP transfer
    ttfb = 20.0 + second % 11 + (10.0 if source == B else 0.0)
    return ProberSample(
        **common, ok=True, disconnected=False, status=200, dns_ms=dns, connect_ms=connect, tls_ms=tls, ttfb_ms=ttfb,
        total_ms=dns + connect + tls + ttfb + 1.0,
    )  # fmt: skip


def seed_prober() -> None:
    partitions.ensure(ProberSample._meta.db_table, T0.date(), T0.date())
    rows = [sample("us1", source, s) for s in US1_SECONDS for source in (A, B)]
    rows += [sample("eu1", source, s) for s in EU1_SECONDS for source in (A, B, C)]
    rows += [sample(loc, src, s) for loc, src, s in PROBER_SIDE_ROWS if s not in US1_SECONDS]
    ProberSample.objects.bulk_create(rows)


def check(kind: str, target_id: str, ip: str, ok: bool = True, **fields: Any) -> CheckResult:
    port = None if kind == "icmp" else 8757
    return CheckResult(kind=kind, target=ip, port=port, target_id=target_id, ok=ok, started_at=0.0, **fields)


def mesh_round(source: str) -> list[CheckResult]:
    if source == "us1":
        return [
            check("tcp", EU, "10.0.2.1", latency_ms=1.5),
            check("http", EU, "10.0.2.1", endpoint="/health", latency_ms=5.0, status_code=200,
                  dns_ms=0.0, connect_ms=1.0, tls_ms=0.0, ttfb_ms=3.0, total_ms=5.0),
            check("icmp", EU, "10.0.2.1", latency_ms=1.1, rtt_min_ms=1.0, rtt_avg_ms=1.1, rtt_max_ms=1.3,
                  loss_ratio=0.2, jitter_ms=0.1, packets_sent=5, packets_received=4),
            check("tcp", AP, "10.0.3.1", ok=False, error_class="timeout", error="timed out"),
        ]  # fmt: skip
    return [check("tcp", US, "10.0.1.1", latency_ms=2.5)]


def seed_mesh() -> None:
    locations = {US: "us1", EU: "eu1", AP: "ap1"}
    for source, instance, second in (("us1", US, 0), ("us1", US, 60), ("eu1", EU, 0)):
        started = T0 + timedelta(seconds=second)
        round_source = services.RoundSource(source, instance, int(started.timestamp()) // 60, started)
        services.store_round(round_source, mesh_round(source), locations)  # creates its partition
    partitions.ensure(BandwidthResult._meta.db_table, T0.date(), T0.date())
    pair = {"source_location": "us1", "source_instance": US, "target_location": "eu1", "target_instance": EU,
            "target_ip": "10.0.2.1", "target_port": 8757, "round_id": 1, "slot": 0}  # fmt: skip
    BandwidthResult.objects.create(ts=T0 + timedelta(seconds=5), direction="download", status="ok", mbps=94.2, **pair)
    BandwidthResult.objects.create(ts=T0 + timedelta(seconds=11), direction="upload", status="ok", mbps=91.0, **pair)
    PathChange.objects.create(
        ts=T0 + timedelta(seconds=20), source_location="us1", source_instance=US, target_location="eu1",
        target_instance=EU, target_ip="10.0.2.1", old_fingerprint="a" * 64, old_path=["10.9.0.1", "10.0.2.1"],
        new_fingerprint="b" * 64, new_path=["10.9.1.1", "10.0.2.1"], first_ttl=1,
        description="hop 1: 10.9.0.1 -> 10.9.1.1", trace_id=1,
    )  # fmt: skip


VARIABLES = {
    "prober": {"location": ["eu1", "us1"], "target": [C, A, B]},
    "mesh": {"source_location": ["eu1", "us1"], "target_location": ["ap1", "eu1", "us1"]},
}


@pytest.fixture
def seeded(db: None) -> None:
    seed_prober()
    seed_mesh()


# --- Every PostgreSQL query runs --------------------------------------------------------------

NUMBER = (int, float, Decimal)


@pytest.mark.parametrize("query", PG_QUERIES, ids=str)
def test_every_postgresql_query_runs_and_answers_its_panels_shape(seeded: None, query: Query) -> None:
    columns, rows = run(query.text, VARIABLES[query.dashboard])

    assert rows, f"{query}: no rows on the seeded data"
    assert len(set(columns)) == len(columns), f"{query}: duplicate column names {columns}"
    if query.panel_type == "variable":
        assert all(row[0] for row in rows)
    elif query.format == "time_series":
        # Grafana's time series format: a "time" column, rows in time order, the other columns
        # numbers, except an optional "metric" that names the series.
        assert columns[0] == "time", f"{query}: {columns}"
        times = [row[0] for row in rows]
        assert all(isinstance(t, datetime) for t in times) and times == sorted(times)
        for name, values in zip(columns[1:], list(zip(*rows, strict=True))[1:], strict=True):
            if name == "metric":
                assert all(isinstance(v, str) and v for v in values)
            else:
                assert all(v is None or isinstance(v, NUMBER) for v in values), f"{query}: {name} is not numeric"
    elif query.panel_type == "stat":
        assert len(rows) == 1 and all(isinstance(v, NUMBER) for v in rows[0]), f"{query}: {columns} {rows}"
    else:
        assert query.format == "table" and query.panel_type in ("table", "bargauge"), query
        if "time" in columns:
            assert all(isinstance(row[columns.index("time")], datetime) for row in rows)
    for name in {"availability", "uptime", "coverage"} & set(columns):
        values = [row[columns.index(name)] for row in rows]
        assert all(v is not None and 0 <= v <= 100 for v in values), f"{query}: {name} {values}"


def test_variable_queries_list_the_seeded_locations_and_targets_of_the_days_of_the_time_range(seeded: None) -> None:
    def values(
        dashboard: str, name: str, start: datetime = START, end: datetime = END, **variables: list[str]
    ) -> list[str]:
        (query,) = [q for q in PG_QUERIES if q.dashboard == dashboard and q.panel == f"${name}"]
        return [row[0] for row in run(query.text, variables, start=start, end=end)[1]]

    assert values("prober", "location") == ["eu1", "us1"]
    assert values("prober", "target", location=["eu1", "us1"]) == [C, A, B]
    assert values("prober", "target", location=["eu1"]) == [C, A, B]
    # The variables of the 1 Hz table look at whole (UTC) days, the partitions: nothing on the
    # days before and after, whatever was probed at their edges.
    day = timedelta(days=1)
    midnight = datetime(T0.year, T0.month, T0.day, tzinfo=UTC)
    assert values("prober", "location", start=midnight - day, end=midnight - timedelta(microseconds=1)) == []
    assert values("prober", "location", start=midnight + day, end=midnight + day + day) == []
    assert values("prober", "target", start=midnight + day, end=midnight + day + day, location=["us1"]) == []
    assert values("prober", "location", start=midnight, end=midnight) == ["eu1", "us1"]
    assert values("mesh", "source_location") == ["eu1", "us1"]
    assert values("mesh", "target_location", source_location=["us1"]) == ["ap1", "eu1"]


# --- The figures are Netring's ---------------------------------------------------------------


def one(dashboard: str, panel: str) -> Any:
    ((value,),) = run(sql_of(dashboard, panel), VARIABLES[dashboard])[1]
    return value


def one_of(panel: str, variables: dict[str, list[str]]) -> Any:
    """The single value of a stat panel of the prober dashboard, for these variables."""
    ((value,),) = run(sql_of("prober", panel), variables)[1]
    return value


def test_uptime_downtime_and_coverage_are_the_sla_reports(seeded: None) -> None:
    report = sla_report(SlaScope(START, END))

    assert report["down_seconds"] == DOWN_SECONDS  # the seed's rule: every source of the second failed
    assert one("prober", "Downtime") == DOWN_SECONDS
    assert float(one("prober", "Uptime")) == pytest.approx(report["uptime_pct"])
    assert float(one("prober", "Uptime")) == pytest.approx(100 * (55 - DOWN_SECONDS) / 55)
    assert float(one("prober", "Coverage")) == pytest.approx(report["coverage_pct"])
    assert float(one("prober", "Coverage")) == pytest.approx(100 * 55 / 120)
    series = records(sql_of("prober", "Down seconds"), VARIABLES["prober"])
    assert sum(r["down seconds"] for r in series) == DOWN_SECONDS
    # The prober-side rows are in the table but in no figure: second 41 stays unknown.
    assert report["unmeasured_samples"] == len(PROBER_SIDE_ROWS)
    assert report["unknown_seconds"] == 120 - 55


def test_downtime_events_are_the_sla_reports(seeded: None) -> None:
    events = records(sql_of("prober", "Downtime events"), VARIABLES["prober"])

    expected = sla_report(SlaScope(START, END))["downtime_events"]
    assert sorted(events, key=lambda e: e["start"]) == expected
    assert [(e["duration_s"], e["bounded_start"], e["bounded_end"]) for e in expected] == [
        (5, True, True),
        (3, False, True),
    ]
    assert one("prober", "Downtime events (count)") == 2


def test_downtime_follows_the_selected_locations_and_targets(seeded: None) -> None:
    # us1 alone: its A and B failed together at 10-14 and 45-47, whatever eu1 did.
    us1 = {"location": ["us1"], "target": [A, B]}
    (row,) = run(sql_of("prober", "Downtime"), us1)[1]
    assert row[0] == sla_report(SlaScope(START, END, location="us1"))["down_seconds"] == 8
    # Target A of us1 alone also failed at 20-29.
    (row,) = run(sql_of("prober", "Downtime"), {"location": ["us1"], "target": [A]})[1]
    assert row[0] == sla_report(SlaScope(START, END, location="us1", source=A))["down_seconds"] == 18
    # ... and its aborted / overloaded samples at 41 and 50-51 are unknown seconds, not down ones.
    us1_a = {"location": ["us1"], "target": [A]}
    report = sla_report(SlaScope(START, END, location="us1", source=A))
    assert float(one_of("Uptime", us1_a)) == pytest.approx(report["uptime_pct"]) == pytest.approx(100 * 35 / 53)
    assert float(one_of("Coverage", us1_a)) == pytest.approx(report["coverage_pct"]) == pytest.approx(100 * 53 / 120)
    events = records(sql_of("prober", "Downtime events"), us1_a)
    assert sorted(events, key=lambda e: e["start"]) == report["downtime_events"]
    assert one_of("Downtime events (count)", us1_a) == len(report["downtime_events"]) == 3


def test_availability_per_target_is_the_sla_reports(seeded: None) -> None:
    rows = records(sql_of("prober", "Availability and latency per target"), VARIABLES["prober"])

    assert [(r["location"], r["source"]) for r in rows] == [("eu1", C), ("eu1", A), ("eu1", B), ("us1", A), ("us1", B)]
    for row in rows:
        (source,) = sla_report(SlaScope(START, END, location=row["location"], source=row["source"]))["sources"]
        assert (row["samples"] - row["failed"], row["failed"]) == (source["ok"], source["failed"])
        assert row["unmeasured"] == source["unmeasured"]
        assert float(row["availability"]) == pytest.approx(source["availability_pct"])
    us1_a = rows[3]
    assert (us1_a["samples"], us1_a["failed"], us1_a["unmeasured"]) == (53, 18, 3)
    assert float(us1_a["availability"]) == pytest.approx(100 * 35 / 53)
    # Per interval too: the overloaded and aborted samples are no failures of the target.
    series = records(sql_of("prober", "Availability per target"), {"location": ["us1"], "target": [A]})
    buckets = {r["time"]: float(r["availability"]) for r in series}
    assert buckets[T0 + timedelta(seconds=50)] == 100.0


def test_latency_percentiles_are_the_sla_reports_over_successful_samples(seeded: None) -> None:
    rows = records(sql_of("prober", "Latency percentiles"), VARIABLES["prober"])

    assert len(rows) == 5 * 5  # every location, target and phase
    for row in rows:
        report = sla_report(SlaScope(START, END, location=row["location"], source=row["source"]))
        assert {k: row[k] for k in ("p50", "p95", "p99")} == report["latency_ms"][f"{row['phase']}_ms"], row
    # A timeout's 1500 ms is not a latency, and a plain-HTTP transfer's tls_ms = 0 no handshake.
    assert max(r["p99"] for r in rows if r["phase"] == "total") < 100
    (tls_c,) = [r for r in rows if (r["source"], r["phase"]) == (C, "tls")]
    assert tls_c["samples"] == 15 - 3 and tls_c["p50"] > 0  # C's successful even seconds of 0-29
    assert sla_report(SlaScope(START, END, location="eu1"))["latency_ms"]["tls_ms"]["p50"] > 0
    tls_series = records(sql_of("prober", "TLS handshake"), VARIABLES["prober"])
    assert min(r["tls"] for r in tls_series) > 0


def test_failures_are_counted_by_error_class_and_status(seeded: None) -> None:
    rows = run(sql_of("prober", "Failures by error class (range)"), VARIABLES["prober"])[1]
    assert dict(rows) == FAILURE_COUNTS

    statuses: dict[str, int] = {}
    for row in records(sql_of("prober", "HTTP status codes"), VARIABLES["prober"]):
        statuses[row["metric"]] = statuses.get(row["metric"], 0) + row["samples"]
    # The prober-side rows (no answer, since never asked) are not counted: 2 of them replace
    # samples of us1's A at 50-51.
    assert statuses == {
        "no answer": 5 + 5 + 5 + 5 + 10 + 3,
        "503": 5 + 3,
        "200": 2 * 55 + 3 * 30 - 2 - sum(FAILURE_COUNTS.values()),
    }


def test_latency_series_leave_out_failed_samples(seeded: None) -> None:
    rows = records(sql_of("prober", "Total"), VARIABLES["prober"])
    assert {r["metric"] for r in rows} == {f"{loc} {src}" for loc in ("us1", "eu1") for src in (A, B)} | {f"eu1 {C}"}
    assert max(r["total"] for r in rows) < 100  # no 1500 ms timeout in the averages


def test_mesh_history_panels_show_the_stored_rounds(seeded: None) -> None:
    pairs = records(sql_of("mesh", "Pair availability"), VARIABLES["mesh"])
    by_pair = {(r["source_location"], r["target_location"], r["kind"]): r for r in pairs}
    assert by_pair["us1", "eu1", "tcp"]["checks"] == 2 and by_pair["us1", "eu1", "tcp"]["availability"] == 100
    assert by_pair["us1", "ap1", "tcp"]["failed"] == 2 and by_pair["us1", "ap1", "tcp"]["availability"] == 0
    loss = records(sql_of("mesh", "ICMP loss (history)"), VARIABLES["mesh"])
    assert [(r["metric"], r["loss"]) for r in loss] == [("us1 → eu1", pytest.approx(20.0))] * 2  # two rounds
    latest = records(sql_of("mesh", "Latest state"), VARIABLES["mesh"])
    assert len(latest) == 5 and not latest[0]["ok"]  # failures first
    bandwidth = records(sql_of("mesh", "Bandwidth history"), VARIABLES["mesh"])
    assert {(r["metric"], r["mbps"]) for r in bandwidth} == {("us1 → eu1 download", 94.2), ("us1 → eu1 upload", 91.0)}


# --- Prometheus -----------------------------------------------------------------------------

GRAFANA_GLOBALS = {"__rate_interval", "__interval", "__range"}
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every series it scrapes
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


@dataclass(frozen=True)
class Selector:
    metric: str
    labels: frozenset[str]


def parse_promql(expr: str) -> tuple[list[Selector], set[str], set[str]]:
    """(selectors, grouping labels, Grafana variables) of a PromQL expression; enough PromQL for
    the dashboards: strings, ranges, ``by``/``on``-style label lists, functions and operators."""
    variables = set(re.findall(r"\$\{?(\w+)", expr))
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals: values, and variables in them
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    grouping: set[str] = set()
    for labels in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        grouping |= {label.strip() for label in labels.split(",") if label.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    selectors = []
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?\s*(\()?", text):
        name, matchers, call = match.groups()
        if call or name in _KEYWORDS:
            continue  # a function or aggregation, or an operator
        labels = frozenset(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers or ""))
        selectors.append(Selector(name, labels))
    assert "{" not in re.sub(r"[A-Za-z_:][\w:]*\s*\{[^}]*\}", "", text), f"a selector without a metric name: {expr}"
    return selectors, grouping, variables


def test_parse_promql_finds_metrics_labels_and_variables() -> None:
    selectors, grouping, variables = parse_promql(
        'histogram_quantile(0.95, sum by (le, phase) (rate(x_bucket{location=~"$location"}[$__rate_interval]))) '
        "or on (phase) time() - max without (a) (y) offset 5m > bool 1e3"
    )
    assert selectors == [Selector("x_bucket", frozenset({"location"})), Selector("y", frozenset())]
    assert grouping == {"le", "phase", "a"} and variables == {"location", "__rate_interval"}


def sample_names(name: str, kind: str) -> list[str]:
    return {
        "counter": [f"{name}_total"],
        "histogram": [f"{name}_bucket", f"{name}_count", f"{name}_sum"],
        "summary": [name, f"{name}_count", f"{name}_sum"],
    }.get(kind, [name])


def exported_series(*expositions: str) -> dict[str, set[str] | None]:
    """Sample name -> its label names (None: exported without any series to show them)."""
    found: dict[str, set[str] | None] = {}
    for text in expositions:
        for family in text_string_to_metric_families(text):
            labels = {label for s in family.samples for label in s.labels} or None
            for name in sample_names(family.name, family.type):
                known = found.get(name)
                found[name] = labels if known is None else known | (labels or set())
    return found


def edge_exposition() -> str:
    """An edge worker's /metrics after a mesh round, a bandwidth test, a served test and a trace."""
    mesh = MeshMetrics()
    bandwidth, traceroute = BandwidthMetrics(mesh.registry), TracerouteMetrics(mesh.registry)
    mesh.observe_round("us1", US, mesh_round("us1"), {EU: "eu1", AP: "ap1"}, 0.4, time.time())
    pair = ("us1", US, "eu1", EU, "10.0.2.1")
    bandwidth.observe(
        pair, [BandwidthTest(target="10.0.2.1:8757", direction="download", method="duration", ok=True, mbps=94.2,
                             started_at=time.time())]
    )  # fmt: skip
    bandwidth.observe_served(TransferStats("upload", 5_000_000, 1.0, 0.01))
    hops = (
        Hop(ttl=1, address="10.9.0.1", sent=3, received=3, rtt_avg_ms=1.0, added_ms=1.0),
        Hop(ttl=2, address="10.0.2.1", sent=3, received=3, rtt_avg_ms=5.0, added_ms=4.0),
    )
    trace = TraceResult(destination="10.0.2.1", address="10.0.2.1", status="ok", hops=hops, reached=True, started_at=0)
    traceroute.observe_round(("us1", US), [({"instance_id": EU, "host": "10.0.2.1", "location": "eu1"}, trace)], [EU])
    return generate_latest(mesh.registry).decode()


def prober_exposition(tmp_path: Path) -> str:
    """run_prober's /metrics, as ``build`` wires it, after one successful sample and flush."""
    prober = build("us1", tmp_path / "prober-us1")
    try:
        prober.loop.stats.samples["ok"] += 1  # what the loop counts for a successful sample
        prober.writer.stats.last_success_at = time.monotonic()  # and the writer for a flush
        side = CollectorRegistry()  # the phase histogram of build's registry, observed
        observe = phase_observer("us1", side)
        observe([{"ok": True, "source": A, "dns_ms": 1.0, "connect_ms": 2.0, "tls_ms": 3.0, "ttfb_ms": 4.0,
                  "total_ms": 11.0}])  # fmt: skip
        return generate_latest(prober.registry).decode() + generate_latest(side).decode()
    finally:
        prober.transport.close()
        prober.store.close()


@pytest.fixture
def exported(
    make_member: Callable[..., registry.Registration], client: Client, settings: Any, tmp_path: Path
) -> dict[str, set[str] | None]:
    """Every series name (and its labels) an edge worker, a prober and the web export."""
    settings.NETRING_METRICS_TOKEN = ""
    make_member("us1", "10.0.1.1", kind="edge")
    response = client.get("/metrics")
    assert response.status_code == 200
    return exported_series(edge_exposition(), prober_exposition(tmp_path), response.content.decode())


def test_the_exported_metrics_include_the_documented_ones(exported: dict[str, set[str] | None]) -> None:
    for name in ("netring_connectivity_tcp", "netring_check_duration_seconds_bucket", "netring_icmp_loss_ratio",
                 "netring_bandwidth_mbps", "netring_traceroute_hops_total", "netring_traceroute_path_changes_total",
                 "netring_prober_samples_total", "netring_prober_phase_seconds_bucket", "netring_members"):  # fmt: skip
        assert name in exported, name
    assert exported["netring_connectivity_http"] == {
        "source_location", "source_instance", "target_location", "target_instance", "target_ip", "endpoint"
    }  # fmt: skip


@pytest.mark.parametrize("query", PROM_QUERIES, ids=str)
def test_every_prometheus_expression_uses_exported_metrics_and_labels(
    query: Query, exported: dict[str, set[str] | None]
) -> None:
    selectors, grouping, variables = parse_promql(query.text)
    defined = {v["name"] for v in DASHBOARDS[query.dashboard]["templating"]["list"]}

    assert selectors, f"{query}: no metric in {query.text!r}"
    assert variables <= defined | GRAFANA_GLOBALS, f"{query}: undefined variables {variables - defined}"
    available = set(SCRAPE_LABELS)
    for selector in selectors:
        assert selector.metric in exported, f"{query}: {selector.metric} is not exported by Netring"
        labels = exported[selector.metric]
        assert labels is not None, f"{query}: {selector.metric} has no series in the collected expositions"
        assert selector.labels <= labels | SCRAPE_LABELS, (
            f"{query}: {selector.metric} has no {selector.labels - labels}"
        )
        available |= labels
    assert grouping <= available, f"{query}: grouping by {grouping - available}, which no selected series has"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not on PATH: PromQL syntax not checked")
def test_promtool_parses_every_prometheus_expression(tmp_path: Path) -> None:
    def concrete(expr: str) -> str:  # Grafana's variables, given values
        return re.sub(r"\$\{?(\w+)(?::\w+)?\}?", lambda m: "1m" if m[1] in GRAFANA_GLOBALS else "us1", expr)

    rules = [{"record": f"netring:grafana_query_{n}", "expr": concrete(q.text)} for n, q in enumerate(PROM_QUERIES)]
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "grafana", "rules": rules}]}))  # JSON is YAML

    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)

    names = "\n".join(f"netring:grafana_query_{n} is {q}" for n, q in enumerate(PROM_QUERIES))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{names}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# --- Provisioning and the dashboards' structure -----------------------------------------------


def provisioning(kind: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((GRAFANA / "provisioning" / kind / "netring.yml").read_text())
    return document


def test_the_datasources_come_from_the_environment_and_are_the_ones_the_dashboards_use() -> None:
    config = provisioning("datasources")
    assert config["apiVersion"] == 1
    sources = {s["uid"]: s for s in config["datasources"]}
    pg, prom = sources["netring-postgresql"], sources["netring-prometheus"]
    assert (pg["type"], pg["name"]) == (PG_TYPE, "Netring PostgreSQL")
    assert (prom["type"], prom["name"]) == (PROM_TYPE, "Netring Prometheus")
    # Everything that says where and who is an environment variable: no secret in the repository.
    env = re.compile(r"\$NETRING_GRAFANA_[A-Z_]+")
    for value in (pg["url"], pg["user"], pg["jsonData"]["database"], pg["jsonData"]["sslmode"],
                  pg["secureJsonData"]["password"], prom["url"]):  # fmt: skip
        assert env.fullmatch(value), value
    assert "password" not in pg and "password" not in pg["jsonData"]

    used = {
        (panel.get("datasource") or {}).get("uid")
        for dashboard in DASHBOARDS.values()
        for panel in panels(dashboard)
        if panel["type"] != "row"
    }
    used |= {t["datasource"]["uid"] for d in DASHBOARDS.values() for p in panels(d) for t in p.get("targets", [])}
    used |= {v["datasource"]["uid"] for d in DASHBOARDS.values() for v in d["templating"]["list"]}
    assert used == set(sources)


def test_the_dashboard_provider_loads_the_folder_compose_mounts() -> None:
    config = provisioning("dashboards")
    (provider,) = config["providers"]
    assert provider["type"] == "file" and provider["folder"] == "Netring"

    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in grafana["volumes"]}
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    for name in ("DB_HOST", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_SSLMODE", "PROMETHEUS_URL"):
        assert f"NETRING_GRAFANA_{name}" in grafana["environment"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_the_dashboards_are_well_formed(name: str) -> None:
    dashboard = DASHBOARDS[name]
    assert dashboard["uid"] == f"netring-{name}" and "netring" in dashboard["tags"]
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    titles = [panel["title"] for panel in panels(dashboard)]
    assert len(titles) == len(set(titles)), "panel titles name the panels in these tests"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            if target["datasource"]["type"] == PG_TYPE:
                assert target["rawQuery"] and target["format"] in ("time_series", "table"), panel["title"]
                if target["format"] == "time_series":
                    assert "$__timeGroupAlias(" in target["rawSql"], panel["title"]
            else:
                assert target["expr"], panel["title"]
    for variable in dashboard["templating"]["list"]:
        # render_sql quotes values as Grafana does for multi-value variables; a custom "All"
        # value (".*") would reach the SQL as a string.
        assert variable["multi"] and variable["includeAll"] and "allValue" not in variable, variable["name"]
