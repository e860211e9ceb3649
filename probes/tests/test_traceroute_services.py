"""Storing traceroute rounds: traces, hops (silent ones as rows), the latest path of each pair,
path changes, the 'unavailable' state, and the topology of the current paths."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client

from probes import services, tasks, traceroute_services
from probes.checks.traceroute import Hop, TraceResult, build_hops, privilege
from probes.diagnostics_metrics import TracerouteMetrics
from probes.models import PathChange, TraceHop, TraceLatest, TraceRoute
from probes.tests.test_checks_traceroute import idents, recording

R1, R2, R3, EU, AP = "10.9.0.1", "10.9.0.2", "10.9.0.3", "10.0.2.1", "10.0.3.1"
EU_ID, AP_ID = str(uuid.uuid4()), str(uuid.uuid4())
TARGETS = [
    {"instance_id": EU_ID, "host": EU, "port": 8757, "location": "eu1"},
    {"instance_id": AP_ID, "host": AP, "port": 8757, "location": "ap1"},
]
NOT_ROOT = "a real trace needs a raw ICMP socket: " + privilege()[1]


def trace(destination: str, *hops: tuple[str | None, float], at: float = 1_800_000_000.0) -> TraceResult:
    """A trace whose hops answered with these average RTTs (None: a silent hop)."""
    answers = {ttl: [(address, rtt, "time-exceeded")] * 3 for ttl, (address, rtt) in enumerate(hops, 1) if address}
    built = build_hops(answers, {ttl: 3 for ttl in range(1, len(hops) + 1)})  # type: ignore[arg-type]
    reached = bool(hops) and hops[-1][0] == destination
    return TraceResult(
        destination=destination, address=destination, status="ok" if reached else "unreached", hops=built,
        reached=reached, started_at=at, duration_s=0.2, probes_per_hop=3, max_hops=30,
    )  # fmt: skip


def unavailable(destination: str) -> TraceResult:
    return TraceResult(
        destination=destination, status="unavailable", reason="traceroute needs a raw ICMP socket", started_at=0.0
    )


def store(round_id: int, *results: TraceResult, metrics: TracerouteMetrics | None = None) -> tuple[str, ...]:
    source = services.RoundSource("us1", "11111111-1111-1111-1111-111111111111", round_id, datetime.now(UTC))
    rerouted = traceroute_services.store_traces(source, TARGETS[: len(results)], results)
    if metrics is not None:
        traces = list(zip(TARGETS, results, strict=False))
        metrics.observe_round((source.location, source.instance_id), traces, rerouted)
    return rerouted


def test_a_round_stores_every_trace_and_every_hop_silent_ones_included(db: None) -> None:
    store(1, trace(EU, (R1, 1.0), (None, 0), (R3, 31.0), (EU, 32.0)), trace(AP, (R1, 1.2), (AP, 2.0)))

    eu = TraceRoute.objects.get(target_instance=EU_ID)
    assert (eu.status, eu.reached, eu.hop_count, eu.path_kind) == ("ok", True, 4, "first")
    assert eu.path == [R1, None, R3, EU] and eu.target_location == "eu1"
    assert (eu.bottleneck_ttl, eu.bottleneck_address) == (3, R3)
    assert eu.bottleneck_added_ms == pytest.approx(30.0) and eu.max_hop_latency_ms == pytest.approx(32.0)
    hops = list(TraceHop.objects.filter(trace_id=eu.id, ts=eu.ts).order_by("ttl"))
    assert [(h.ttl, h.address, h.loss, h.added_ms) for h in hops] == [
        (1, R1, 0.0, 1.0), (2, None, 1.0, None), (3, R3, 0.0, 30.0), (4, EU, 0.0, 1.0)
    ]  # fmt: skip
    assert hops[2].added_from_ttl == 1 and (hops[1].sent, hops[1].received) == (3, 0)
    assert TraceHop.objects.count() == 6
    latest = TraceLatest.objects.get(target_instance=AP_ID)
    assert latest.trace_id == TraceRoute.objects.get(target_instance=AP_ID).id and latest.route == [R1, AP]
    assert [h["address"] for h in latest.hops] == [R1, AP]


def test_a_new_route_is_one_path_change_and_silence_is_none(db: None) -> None:
    assert store(1, trace(EU, (R1, 1), (R2, 2), (EU, 3))) == ()
    assert store(2, trace(EU, (R1, 1), (None, 0), (EU, 3))) == ()  # r2 stops answering
    assert store(3, trace(EU, (R1, 1), (R3, 2), (EU, 3), at=1_800_000_600.0)) == (EU_ID,)
    assert store(4, trace(EU, (R1, 1), (R3, 2), (EU, 3))) == ()

    assert list(TraceRoute.objects.order_by("round_id").values_list("path_kind", flat=True)) == [
        "first", "silence", "rerouted", "same"
    ]  # fmt: skip
    (change,) = PathChange.objects.all()
    assert (change.old_path, change.new_path) == ([R1, R2, EU], [R1, R3, EU])
    assert change.kind == "rerouted" and change.first_ttl == 2 and change.description == f"hop 2 {R2} -> {R3}"
    assert change.trace_id == TraceRoute.objects.get(round_id=3).id
    assert change.ts == datetime.fromtimestamp(1_800_000_600, UTC)
    assert TraceLatest.objects.get().route_since == change.ts


def test_an_outage_is_not_a_path_change(db: None) -> None:
    store(1, trace(EU, (R1, 1), (R2, 2), (EU, 3)))
    store(2, trace(EU, (R1, 1)))  # the far side stopped answering
    store(3, trace(EU, (R1, 1), (R2, 2), (EU, 3)))

    assert list(TraceRoute.objects.order_by("round_id").values_list("status", "path_kind")) == [
        ("ok", "first"), ("unreached", ""), ("ok", "same")
    ]  # fmt: skip
    assert not PathChange.objects.exists()


def test_where_traces_cannot_run_the_state_says_why_and_no_figure_is_zero(db: None) -> None:
    metrics = TracerouteMetrics()
    store(1, trace(EU, (R1, 1), (EU, 2)), metrics=metrics)

    store(2, unavailable(EU), metrics=metrics)

    row = TraceRoute.objects.get(round_id=2)
    assert (row.status, row.hop_count, row.fingerprint, row.path) == ("unavailable", None, "", [])
    assert row.reason == "traceroute needs a raw ICMP socket"
    latest = TraceLatest.objects.get()
    assert latest.status == "unavailable" and latest.route == [R1, EU]  # the known route stays
    assert not TraceHop.objects.filter(trace_id=row.id).exists()
    names = {m.name for m in metrics.registry.collect() for s in m.samples if s.labels.get("target_instance")}
    assert names == {"netring_traceroute_path_changes"}  # counters stay; no hops, latency or reached


def test_members_that_left_and_sources_that_stopped_are_forgotten(db: None) -> None:
    store(1, trace(EU, (EU, 1)), trace(AP, (AP, 1)))

    assert traceroute_services.forget_departed([EU_ID], sources=["us1"]) == 1
    assert [str(t) for t in TraceLatest.objects.values_list("target_instance", flat=True)] == [EU_ID]
    assert traceroute_services.forget_departed([EU_ID], sources=["eu1"]) == 1
    assert TraceRoute.objects.count() == 2  # history stays


def test_old_path_changes_go_with_the_retention(db: None, settings: Any) -> None:
    settings.NETRING_RETENTION_DAYS = 30
    store(1, trace(EU, (R1, 1), (EU, 2), at=time.time() - 40 * 86400))
    store(2, trace(EU, (R2, 1), (EU, 2), at=time.time() - 35 * 86400))  # an old change
    store(3, trace(EU, (R3, 1), (EU, 2), at=time.time() - 60))  # a recent one

    report = tasks.maintain_partitions()

    assert report["probes_pathchange"] == {"deleted": 1}
    assert [c.new_path[0] for c in PathChange.objects.all()] == [R3]


def test_the_topology_joins_locations_through_the_routers_that_answered(db: None) -> None:
    store(1, trace(EU, (R1, 1.0), (None, 0), (R3, 21.0), (EU, 22.0)), trace(AP, (R1, 3.0), (R2, 4.0), (AP, 5.0)))

    graph = traceroute_services.topology(TraceLatest.objects.all())

    assert [(n["id"], n["kind"]) for n in graph["nodes"]] == [
        ("location:ap1", "location"), ("location:eu1", "location"), ("location:us1", "location"),
        (f"router:{R1}", "router"), (f"router:{R2}", "router"), (f"router:{R3}", "router"),
    ]  # fmt: skip
    links = {(link["source"], link["target"]): link for link in graph["links"]}
    assert set(links) == {
        ("location:us1", f"router:{R1}"), (f"router:{R1}", f"router:{R3}"), (f"router:{R3}", "location:eu1"),
        (f"router:{R1}", f"router:{R2}"), (f"router:{R2}", "location:ap1"),
    }  # fmt: skip
    first = links[("location:us1", f"router:{R1}")]
    assert (first["pairs"], first["added_ms"], first["added_ms_max"]) == (2, 2.0, 3.0)
    over_silence = links[(f"router:{R1}", f"router:{R3}")]
    assert (over_silence["silent_hops"], over_silence["added_ms"]) == (1, 20.0)


@pytest.mark.skipif(not privilege()[0], reason=NOT_ROOT)
def test_a_round_traces_a_real_peer_on_loopback(db: None, settings: Any) -> None:
    settings.NETRING_TRACEROUTE_DEADLINE, settings.NETRING_TRACEROUTE_MAX_HOPS = 3, 5
    source = services.RoundSource("us1", str(uuid.uuid4()), 1, datetime.now(UTC))
    metrics = TracerouteMetrics()

    report = traceroute_services.run_traceroute_round(source, [{**TARGETS[0], "host": "127.0.0.22"}], metrics)

    assert (report.traces, report.reached, report.unavailable, report.reason) == (1, 1, 0, "")
    row = TraceRoute.objects.get()
    assert (row.status, row.hop_count, row.path) == ("ok", 1, ["127.0.0.22"])
    assert metrics.hops.labels("us1", source.instance_id, "eu1", EU_ID, "127.0.0.22").get() == 1


@pytest.mark.skipif(not privilege()[0], reason=NOT_ROOT)
def test_a_member_traces_a_target_under_the_same_identifier_every_round(db: None, settings: Any) -> None:
    settings.NETRING_TRACEROUTE_DEADLINE, settings.NETRING_TRACEROUTE_MAX_HOPS = 3, 5
    member, other = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
    target = [{**TARGETS[0], "host": "127.0.0.22"}]
    sent: list[set[int]] = []
    for round_id, instance in enumerate([member, member, other], start=1):
        with recording() as echoes:
            traceroute_services.run_traceroute_round(
                services.RoundSource("us1", instance, round_id, datetime.now(UTC)), target
            )
        sent.append(idents(echoes))

    assert sent[0] == sent[1] and len(sent[0]) == 1  # the same ICMP flow: ECMP keeps the path
    assert len(sent[2]) == 1 and sent[2] != sent[0]  # another member on the host: another flow
    assert list(TraceRoute.objects.order_by("round_id").values_list("status", "path_kind")) == [
        ("ok", "first"), ("ok", "same"), ("ok", "same")
    ]  # fmt: skip


def test_hop_rows_and_latest_hops_carry_the_same_fields(db: None) -> None:
    hop = Hop(ttl=1, address=R1, addresses=(R1,), sent=3, received=2, rtt_avg_ms=1.0, added_ms=1.0, added_from_ttl=0)
    store(1, TraceResult(destination=EU, address=EU, status="unreached", hops=(hop,), started_at=1.0e9))

    stored = TraceHop.objects.get()
    (kept,) = TraceLatest.objects.get().hops
    assert {k: getattr(stored, k) for k in kept} == {**kept, "loss": pytest.approx(1 / 3, abs=1e-4)}


def test_path_changes_are_listed_read_only_in_the_admin(db: None, staff: Any) -> None:
    store(1, trace(EU, (R1, 1), (EU, 2)))
    store(2, trace(EU, (R2, 1), (EU, 2)))
    client = Client()
    client.force_login(staff)

    page = client.get("/admin/probes/pathchange/")

    assert page.status_code == 200 and f"hop 1 {R1} -&gt; {R2}" in page.content.decode()
    assert client.get("/admin/probes/pathchange/add/").status_code == 403
