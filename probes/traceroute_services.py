"""Traceroute rounds: dispatch (central); tracing every target at once and storing the traces,
their hops and path changes (edge); the topology the API builds from the current paths."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import median
from typing import Any

from django.conf import settings
from django.db.models import Q

from probes import partitions, services
from probes.checks import pathwatch
from probes.checks.traceroute import Hop, TraceResult, privilege, trace_many
from probes.diagnostics_metrics import TracerouteMetrics
from probes.models import PathChange, PathKind, TraceHop, TraceLatest, TraceRoute

SCHEDULE = "traceroute round dispatch"  # the beat entry (netring_site.schedules)


def plan_traceroute_round(now: datetime | None = None) -> services.RoundPlan | None:
    """Each location with an edge worker traces every active member of the other locations."""
    interval = services.scheduled_interval(SCHEDULE, settings.NETRING_TRACEROUTE_INTERVAL)
    return services.plan_round("traceroute", interval, now)


def trace_options() -> dict[str, Any]:
    return {"deadline_s": settings.NETRING_TRACEROUTE_DEADLINE, "max_hops": settings.NETRING_TRACEROUTE_MAX_HOPS}


def trace_targets(targets: Sequence[dict[str, Any]], **options: Any) -> list[TraceResult]:
    """Trace every target at once (one result per target, in order); the measuring half of a round."""
    return trace_many([str(t["host"]) for t in targets], **options)


@dataclass(frozen=True)
class TraceReport:
    traces: int
    reached: int
    unavailable: int
    rerouted: tuple[str, ...]  # target instance ids whose route changed
    seconds: float
    reason: str = ""  # why traces are unavailable here, if they are


def run_traceroute_round(
    source: services.RoundSource, targets: Sequence[dict[str, Any]], metrics: TracerouteMetrics | None = None
) -> TraceReport:
    """Trace every target concurrently, store the round, update the edge's metrics.

    The member's instance id is the flow key: each target gets the same ICMP identifier (so the
    same checksum) every round, and ECMP routers keep sending the trace down the same path, so
    the path changes stored here are route changes. Other members on the host have other keys.
    """
    began = time.monotonic()
    allowed, why = privilege()
    results = trace_targets(targets, flow_key=source.instance_id, **trace_options())
    rerouted = store_traces(source, targets, results)
    if metrics is not None:
        metrics.observe_round(
            (source.location, source.instance_id), list(zip(targets, results, strict=True)), rerouted, allowed
        )
    return TraceReport(
        traces=len(results),
        reached=sum(1 for r in results if r.reached),
        unavailable=sum(1 for r in results if r.status == "unavailable"),
        rerouted=rerouted,
        seconds=time.monotonic() - began,
        reason="" if allowed else why,
    )


# --- Storage --------------------------------------------------------------------------------


@dataclass
class _Batch:
    traces: list[TraceRoute] = field(default_factory=list)
    hops: list[list[Hop]] = field(default_factory=list)
    verdicts: list[pathwatch.Verdict] = field(default_factory=list)


def store_traces(
    source: services.RoundSource, targets: Sequence[dict[str, Any]], results: Sequence[TraceResult]
) -> tuple[str, ...]:
    """Store a round: every trace, every hop (silent ones as rows), the latest state of each pair
    and a PathChange for each pair whose route changed (``probes.checks.pathwatch`` decides).
    Returns the target instance ids whose route changed."""
    known = _known_routes(source.location, [str(t["instance_id"]) for t in targets])
    batch = _Batch()
    for target, result in zip(targets, results, strict=True):
        instance = str(target["instance_id"])
        at = result.started_at or source.started.timestamp()
        verdict = pathwatch.observe(known.get(instance), result, at)
        batch.verdicts.append(verdict)
        batch.traces.append(_trace_row(source, target, result, verdict, at))
        batch.hops.append(list(result.hops))
    if batch.traces:
        tables = [TraceRoute._meta.db_table, TraceHop._meta.db_table]
        partitions.write_creating(tables, batch.traces[0].ts, lambda: _write(source, batch))
    return tuple(str(t.target_instance) for t, v in zip(batch.traces, batch.verdicts, strict=True) if v.change)


def _known_routes(location: str, instances: Iterable[str]) -> dict[str, pathwatch.Route]:
    rows = TraceLatest.objects.filter(source_location=location, target_instance__in=list(instances))
    return {
        str(row.target_instance): pathwatch.Route(tuple(row.route), row.route_since.timestamp())
        for row in rows.only("target_instance", "route", "route_since")
        if row.route is not None and row.route_since is not None
    }


def _trace_row(
    source: services.RoundSource,
    target: dict[str, Any],
    result: TraceResult,
    verdict: pathwatch.Verdict,
    at: float,
) -> TraceRoute:
    bottleneck = result.bottleneck
    latencies = [hop.rtt_avg_ms for hop in result.hops if hop.rtt_avg_ms is not None]
    return TraceRoute(
        ts=datetime.fromtimestamp(at, UTC),
        round_id=source.round_id,
        source_location=source.location,
        source_instance=source.instance_id,
        target_location=str(target.get("location", "")),
        target_instance=str(target["instance_id"]),
        target_ip=result.address or str(target["host"]),
        status=result.status,
        reason=result.reason[:300],
        reached=result.reached,
        hop_count=result.hop_count,
        bottleneck_ttl=bottleneck.ttl if bottleneck else None,
        bottleneck_address=bottleneck.address if bottleneck else None,
        bottleneck_added_ms=bottleneck.added_ms if bottleneck else None,
        max_hop_latency_ms=max(latencies) if latencies else None,
        fingerprint=result.fingerprint or "",
        path=list(result.path),
        path_kind=verdict.kind,
        deadline_hit=result.deadline_hit,
        duration_s=result.duration_s,
    )


def _hop_fields(hop: Hop) -> dict[str, Any]:
    return {
        "ttl": hop.ttl,
        "address": hop.address,
        "addresses": list(hop.addresses),
        "reply": hop.reply,
        "sent": hop.sent,
        "received": hop.received,
        "loss": round(hop.loss, 4),
        "rtt_min_ms": hop.rtt_min_ms,
        "rtt_avg_ms": hop.rtt_avg_ms,
        "rtt_max_ms": hop.rtt_max_ms,
        "added_ms": hop.added_ms,
        "added_from_ttl": hop.added_from_ttl,
    }


_LATEST_UPDATE = [
    f.name for f in TraceLatest._meta.concrete_fields if f.name not in ("id", "source_location", "target_instance")
]


def _write(source: services.RoundSource, batch: _Batch) -> None:
    traces = TraceRoute.objects.bulk_create(batch.traces)
    hop_rows = [
        TraceHop(ts=trace.ts, trace_id=trace.id, **_hop_fields(hop))
        for trace, hops in zip(traces, batch.hops, strict=True)
        for hop in hops
    ]
    TraceHop.objects.bulk_create(hop_rows, batch_size=5000)
    changes = []
    latest = []
    for trace, hops, verdict in zip(traces, batch.hops, batch.verdicts, strict=True):
        if verdict.change is not None and verdict.previous is not None and verdict.route is not None:
            changes.append(_change_row(trace, verdict))
        route = verdict.route
        latest.append(
            TraceLatest(
                **{f.name: getattr(trace, f.name) for f in TraceRoute._meta.concrete_fields if f.name != "id"},
                trace_id=trace.id,
                hops=[_hop_fields(hop) for hop in hops],
                route=list(route.path) if route else None,
                route_fingerprint=route.fingerprint if route else "",
                route_since=datetime.fromtimestamp(route.since, UTC) if route else None,
            )
        )
    PathChange.objects.bulk_create(changes)
    TraceLatest.objects.bulk_create(
        latest,
        update_conflicts=True,
        unique_fields=["source_location", "target_instance"],
        update_fields=_LATEST_UPDATE,
    )


def _change_row(trace: TraceRoute, verdict: pathwatch.Verdict) -> PathChange:
    assert verdict.change is not None and verdict.previous is not None and verdict.route is not None
    return PathChange(
        ts=trace.ts,
        source_location=trace.source_location,
        source_instance=trace.source_instance,
        target_location=trace.target_location,
        target_instance=trace.target_instance,
        target_ip=trace.target_ip,
        old_fingerprint=verdict.previous.fingerprint,
        old_path=list(verdict.previous.path),
        old_since=datetime.fromtimestamp(verdict.previous.since, UTC),
        new_fingerprint=verdict.route.fingerprint,
        new_path=list(verdict.route.path),
        kind=PathKind.REROUTED,
        first_ttl=verdict.change.first_ttl,
        description=verdict.change.description[:500],
        trace_id=trace.id,
    )


def forget_departed(active: Iterable[str], sources: Iterable[str]) -> int:
    """Drop the latest paths of members that left and of locations that no longer trace."""
    return TraceLatest.objects.filter(
        ~Q(target_instance__in=list(active)) | ~Q(source_location__in=list(sources))
    ).delete()[0]


def purge_path_changes(before: datetime) -> int:
    """Retention of the path-change events (not partitioned: a few rows per route change)."""
    return PathChange.objects.filter(ts__lt=before).delete()[0]


# --- The topology of the current paths --------------------------------------------------------


def topology(latest: Iterable[TraceLatest]) -> dict[str, list[dict[str, Any]]]:
    """Nodes and links of every pair's latest path.

    Nodes are locations (the sources, and each target's location for the hop that is the
    target itself) and the routers that answered. A link joins consecutive answering hops;
    silent hops between them are counted on the link (``silent_hops``), not made up as nodes.
    Its latency is the added latency of the hop it leads to (median over the paths that use
    it, and the largest).
    """
    nodes: dict[str, dict[str, Any]] = {}
    links: dict[tuple[str, str], dict[str, Any]] = {}
    for trace in latest:
        if not trace.hops:
            continue
        previous = _node(nodes, "location", trace.source_location)
        silent = 0
        last = len(trace.hops) - 1
        for index, hop in enumerate(trace.hops):
            address = hop.get("address")
            if address is None:
                silent += 1
                continue
            if index == last and trace.reached:
                current = _node(nodes, "location", trace.target_location or address)
            else:
                current = _node(nodes, "router", address)
            link = links.setdefault(
                (previous, current), {"source": previous, "target": current, "added": [], "silent_hops": 0, "pairs": 0}
            )
            if hop.get("added_ms") is not None:
                link["added"].append(float(hop["added_ms"]))
            link["silent_hops"] = max(link["silent_hops"], silent)
            link["pairs"] += 1
            previous, silent = current, 0
    edges = []
    for link in links.values():
        added = link.pop("added")
        link["added_ms"] = round(median(added), 3) if added else None
        link["added_ms_max"] = round(max(added), 3) if added else None
        edges.append(link)
    return {"nodes": sorted(nodes.values(), key=lambda n: (n["kind"], n["id"])), "links": edges}


def _node(nodes: dict[str, dict[str, Any]], kind: str, name: str) -> str:
    key = f"{kind}:{name}"
    if key not in nodes:
        nodes[key] = {"id": key, "kind": kind, "name": name}
    return key
