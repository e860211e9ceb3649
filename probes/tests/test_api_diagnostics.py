"""The bandwidth and traceroute API: who may read, the latest state, history, path changes, the
topology, and 400s (never 500s) for bad input."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from probes import bandwidth_services, services, traceroute_services
from probes.checks.bandwidth import BandwidthResult
from probes.checks.traceroute import TraceResult, build_hops

BW_LATEST, BW_HISTORY = "/api/v1/bandwidth/latest/", "/api/v1/bandwidth/history/"
TR_LATEST, TR_HISTORY = "/api/v1/traceroute/latest/", "/api/v1/traceroute/history/"
TR_CHANGES, TR_TOPOLOGY = "/api/v1/traceroute/changes/", "/api/v1/traceroute/topology/"
URLS = [BW_LATEST, BW_HISTORY, TR_LATEST, TR_HISTORY, TR_CHANGES, TR_TOPOLOGY]
US1, EU1, AP1 = (str(uuid.uuid5(uuid.NAMESPACE_DNS, name)) for name in ("us1", "eu1", "ap1"))
TARGETS = {
    EU1: {"instance_id": EU1, "host": "10.0.2.1", "port": 8757, "location": "eu1"},
    AP1: {"instance_id": AP1, "host": "10.0.3.1", "port": 8757, "location": "ap1"},
}
R1, R2, R3 = "10.9.0.1", "10.9.0.2", "10.9.0.3"


def rows(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content
    body = response.json()
    return list(body["results"] if isinstance(body, dict) else body)


def measured(direction: str, mbps: float | None, at: datetime) -> BandwidthResult:
    return BandwidthResult(
        target="10.0.2.1:8757", direction=direction, method="duration", ok=mbps is not None,  # type: ignore[arg-type]
        mbps=mbps, bytes_total=10**7, transfer_s=5.0, window_s=4.5, omitted_s=0.5, stable=True,
        error_class="" if mbps else "timeout", error="" if mbps else "timed out", started_at=at.timestamp(),
    )  # fmt: skip


def scheduled(target: str, round_id: int) -> dict[str, Any]:
    return {"round_id": round_id, "slot": 0, "attempt": 0, "not_after": time.time(), "target": TARGETS[target]}


@pytest.fixture
def bandwidth(db: None) -> datetime:
    """us1 tested eu1 two hours ago (ok) and a minute ago (upload failed); ap1 once, postponed first."""
    now = timezone.now()
    source = bandwidth_services.Source("us1", US1)
    options = bandwidth_services.BandwidthOptions(5.0, 10**9)
    old, new = now - timedelta(hours=2), now - timedelta(minutes=1)
    store = bandwidth_services.store_results
    store(source, scheduled(EU1, 1), [measured("download", 48.0, old), measured("upload", 47.0, old)], options)
    store(source, scheduled(EU1, 2), [measured("download", 45.0, new), measured("upload", None, new)], options)
    store(source, scheduled(AP1, 2), [], options, status="postponed", reason="busy: target in another test")  # type: ignore[arg-type]
    store(source, scheduled(AP1, 2), [measured("download", 20.0, new), measured("upload", 19.0, new)], options)
    return now


def traced(target: str, *path: tuple[str, float], at: float) -> TraceResult:
    answers = {ttl: [(address, rtt, "time-exceeded")] * 3 for ttl, (address, rtt) in enumerate(path, 1)}
    host = str(TARGETS[target]["host"])
    reached = path[-1][0] == host
    return TraceResult(
        destination=host, address=host, status="ok" if reached else "unreached", reached=reached,
        hops=build_hops(answers, {}), started_at=at,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
def traces(db: None) -> float:
    """Two rounds from us1: the path to eu1 moved from r2 to r3 between them; ap1 unchanged."""
    now = time.time()
    for number, (via, at) in enumerate(((R2, now - 600), (R3, now - 60)), start=1):
        source = services.RoundSource("us1", US1, number, datetime.fromtimestamp(at, UTC))
        results = [
            traced(EU1, (R1, 1.0), (via, 11.0), ("10.0.2.1", 12.0), at=at),
            traced(AP1, (R1, 1.0), ("10.0.3.1", 40.0), at=at),
        ]
        traceroute_services.store_traces(source, [TARGETS[EU1], TARGETS[AP1]], results)
    return now


# --- who may read ---------------------------------------------------------------------------


@pytest.mark.parametrize("url", URLS)
def test_anonymous_reads_are_refused(db: None, anon: APIClient, url: str) -> None:
    response = anon.get(url)
    assert response.status_code in (401, 403)
    assert "authentication required" in response.json()["detail"]


@pytest.mark.parametrize("url", URLS)
def test_the_api_is_read_only(staff_client: APIClient, url: str) -> None:
    assert staff_client.post(url, {}, format="json").status_code == 405


@pytest.mark.parametrize(
    ("url", "query"),
    [
        (BW_LATEST, "target_instance=not-a-uuid"),
        (BW_LATEST, "direction=sideways"),
        (BW_HISTORY, "status=maybe"),
        (BW_HISTORY, "since=yesterday"),
        (BW_HISTORY, "since=2020-01-01T00:00:00Z&until=2020-03-01T00:00:00Z"),
        (TR_LATEST, "status=lost"),
        (TR_HISTORY, "path_kind=sideways"),
        (TR_HISTORY, "since=2020-01-01T00:00:00Z&until=2020-03-01T00:00:00Z"),
        (TR_CHANGES, "until=tomorrow"),
        (TR_TOPOLOGY, "target_instance=42"),
    ],
)
def test_bad_filter_values_are_a_400_not_a_500(viewer_client: APIClient, url: str, query: str) -> None:
    assert viewer_client.get(f"{url}?{query}").status_code == 400


# --- bandwidth ------------------------------------------------------------------------------


def test_bandwidth_latest_is_the_last_measurement_of_each_pair_and_direction(
    bandwidth: datetime, viewer_client: APIClient
) -> None:
    latest = rows(viewer_client.get(BW_LATEST))

    got = {(r["target_location"], r["direction"]): (r["status"], r["mbps"]) for r in latest}
    assert got == {
        ("eu1", "download"): ("ok", 45.0),
        ("eu1", "upload"): ("failed", None),
        ("ap1", "download"): ("ok", 20.0),
        ("ap1", "upload"): ("ok", 19.0),
    }
    assert rows(viewer_client.get(BW_LATEST, {"target_location": "ap1", "direction": "upload"}))[0]["mbps"] == 19.0


def test_bandwidth_history_has_postponed_tests_with_their_reason(bandwidth: datetime, viewer_client: APIClient) -> None:
    day = rows(viewer_client.get(BW_HISTORY))
    postponed = rows(viewer_client.get(BW_HISTORY, {"status": "postponed"}))
    pair = rows(viewer_client.get(BW_HISTORY, {"target_instance": EU1, "direction": "download"}))
    hour = rows(viewer_client.get(BW_HISTORY, {"since": (bandwidth - timedelta(hours=1)).isoformat()}))

    assert len(day) == 7 and day[0]["ts"] >= day[-1]["ts"]
    assert [(p["direction"], p["error"]) for p in postponed] == [("", "busy: target in another test")]
    assert [r["mbps"] for r in pair] == [45.0, 48.0]
    assert len(hour) == 5
    assert {"stable", "omitted_s", "window_s", "bytes_total", "rtt_ms", "attempt", "slot"} <= set(day[0])


# --- traceroute -----------------------------------------------------------------------------


def test_latest_paths_have_their_hops_and_known_route(traces: float, viewer_client: APIClient) -> None:
    latest = {r["target_location"]: r for r in rows(viewer_client.get(TR_LATEST))}

    eu = latest["eu1"]
    assert eu["path"] == [R1, R3, "10.0.2.1"] and eu["route"] == eu["path"] and eu["path_kind"] == "rerouted"
    assert [(h["ttl"], h["address"], h["added_ms"]) for h in eu["hops"]] == [
        (1, R1, 1.0),
        (2, R3, 10.0),
        (3, "10.0.2.1", 1.0),
    ]
    assert (eu["bottleneck_ttl"], eu["bottleneck_address"], eu["hop_count"]) == (2, R3, 3)
    assert latest["ap1"]["max_hop_latency_ms"] == 40.0 and latest["ap1"]["path_kind"] == "same"


def test_a_pairs_trace_history_has_every_hop(traces: float, viewer_client: APIClient) -> None:
    history = rows(viewer_client.get(TR_HISTORY, {"source_location": "us1", "target_instance": EU1}))

    assert [t["path_kind"] for t in history] == ["rerouted", "first"]  # newest first
    assert [[h["address"] for h in t["hops"]] for t in history] == [[R1, R3, "10.0.2.1"], [R1, R2, "10.0.2.1"]]
    assert history[0]["hops"][1]["loss"] == 0.0 and history[0]["hops"][1]["rtt_avg_ms"] == 11.0
    assert len(rows(viewer_client.get(TR_HISTORY, {"path_kind": "rerouted"}))) == 1


def test_path_changes_have_the_old_and_new_path(traces: float, viewer_client: APIClient) -> None:
    (change,) = rows(viewer_client.get(TR_CHANGES, {"target_instance": EU1}))

    assert (change["old_path"], change["new_path"]) == ([R1, R2, "10.0.2.1"], [R1, R3, "10.0.2.1"])
    assert change["description"] == f"hop 2 {R2} -> {R3}" and change["kind"] == "rerouted"
    assert rows(viewer_client.get(TR_CHANGES, {"target_instance": AP1})) == []


def test_the_topology_joins_locations_through_routers_with_link_latency(
    traces: float, viewer_client: APIClient
) -> None:
    response = viewer_client.get(TR_TOPOLOGY)
    assert response.status_code == 200
    graph = response.json()

    assert {n["id"] for n in graph["nodes"]} == {
        "location:us1", "location:eu1", "location:ap1", f"router:{R1}", f"router:{R3}"
    }  # fmt: skip
    links = {(link["source"], link["target"]): link for link in graph["links"]}
    assert links[(f"router:{R3}", "location:eu1")]["added_ms"] == 1.0
    assert links[(f"router:{R1}", "location:ap1")]["added_ms"] == 39.0
    assert links[("location:us1", f"router:{R1}")]["pairs"] == 2
    eu_only = viewer_client.get(TR_TOPOLOGY, {"target_location": "eu1"}).json()
    assert {n["id"] for n in eu_only["nodes"]} == {"location:us1", "location:eu1", f"router:{R1}", f"router:{R3}"}


def test_the_queries_do_not_grow_with_the_traces(
    traces: float, viewer_client: APIClient, django_assert_max_num_queries: Any
) -> None:
    for url in (TR_HISTORY, TR_LATEST, TR_TOPOLOGY, BW_HISTORY):
        with django_assert_max_num_queries(6):
            assert viewer_client.get(url).status_code == 200
