"""Bandwidth and traceroute rounds against real multi-hop networks (network namespaces).

The edge's own functions measure inside a lab namespace (``probes.tests.labcalls``); the results
are stored from the test process through the services the edge tasks call, because a namespace
cannot reach the test's PostgreSQL and Redis. The member endpoint in the target namespace is the
edge's, wired as ``run_edge`` wires it (token, one test at a time). Needs root, ``ip``, ``tc``,
``nft`` and ``/dev/net/tun``; skipped with the reason otherwise; every lab is torn down.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from prometheus_client import generate_latest

from probes import bandwidth_services, services, traceroute_services
from probes.checks import bandwidth_auth
from probes.checks.bandwidth import naive_estimate
from probes.diagnostics_metrics import TracerouteMetrics
from probes.models import BandwidthResult, PathChange, TraceHop, TraceLatest, TraceRoute
from probes.tests import labcalls
from tests.lab.netns import Lab, available

F = TypeVar("F", bound=Callable[..., object])
LAB_OK, LAB_WHY = available("tc", "nft", "tun")


def needs_lab(test: F) -> F:
    marked: F = pytest.mark.netns(pytest.mark.skipif(not LAB_OK, reason=LAB_WHY)(test))
    return marked


# --- Traceroute -----------------------------------------------------------------------------


@pytest.fixture
def routed() -> Iterator[Lab]:
    """hA - r1 - r2 - r4 - hB, and a second way r1 - r3 - r4."""
    with Lab("hA-r1-r2-r4-hB, r1-r3-r4") as lab:
        yield lab


class TracingEdge:
    """What the edge's traceroute round does, split at the namespace boundary."""

    def __init__(self, lab: Lab, target: dict[str, Any]) -> None:
        self.lab = lab
        self.target = target
        self.instance = str(uuid.uuid4())
        self.metrics = TracerouteMetrics()
        self.rounds = 0

    def round(self) -> TraceRoute:
        self.rounds += 1
        results = self.lab["hA"].call(
            labcalls.trace_targets, [self.target], deadline_s=5, max_hops=10, probe_timeout_s=0.5
        )
        source = services.RoundSource("labA", self.instance, self.rounds, datetime.now(UTC))
        rerouted = traceroute_services.store_traces(source, [self.target], results)
        self.metrics.observe_round(("labA", self.instance), [(self.target, results[0])], rerouted)
        return TraceRoute.objects.filter(round_id=self.rounds).get()

    def hops(self, trace: TraceRoute) -> list[tuple[int, str | None, float]]:
        rows = TraceHop.objects.filter(trace_id=trace.id, ts=trace.ts).order_by("ttl")
        return [(hop.ttl, hop.address, hop.loss) for hop in rows]

    def changes_counted(self) -> float:
        text = generate_latest(self.metrics.registry).decode()
        (line,) = [ln for ln in text.splitlines() if ln.startswith("netring_traceroute_path_changes_total{")]
        return float(line.rsplit(" ", 1)[1])


@needs_lab
def test_a_traceroute_round_stores_the_routers_a_silent_hop_and_one_path_change(db: None, routed: Lab) -> None:
    lab = routed
    target = {"instance_id": str(uuid.uuid4()), "host": lab.addr("hB"), "port": 8757, "location": "labB"}
    edge = TracingEdge(lab, target)
    r1, r2, r3 = lab.addr("r1", "hA"), lab.addr("r2", "r1"), lab.addr("r3", "r1")
    r4_via_r2, r4_via_r3, hb = lab.addr("r4", "r2"), lab.addr("r4", "r3"), lab.addr("hB")

    first = edge.round()
    assert (first.status, first.reached, first.hop_count, first.path_kind) == ("ok", True, 4, "first")
    assert edge.hops(first) == [(1, r1, 0.0), (2, r2, 0.0), (3, r4_via_r2, 0.0), (4, hb, 0.0)]

    lab.silence("r2")
    silent = edge.round()
    assert edge.hops(silent) == [(1, r1, 0.0), (2, None, 1.0), (3, r4_via_r2, 0.0), (4, hb, 0.0)]
    assert silent.path == [r1, None, r4_via_r2, hb] and silent.fingerprint != first.fingerprint
    assert silent.path_kind == "silence" and not PathChange.objects.exists()  # not a route change

    lab.route("r1", lab.subnet("r4", "hB"), via="r3")
    moved = edge.round()
    again = edge.round()

    assert edge.hops(moved) == [(1, r1, 0.0), (2, r3, 0.0), (3, r4_via_r3, 0.0), (4, hb, 0.0)]
    assert (moved.path_kind, again.path_kind) == ("rerouted", "same")
    (change,) = PathChange.objects.all()
    assert change.old_path == [r1, r2, r4_via_r2, hb]  # r2 as known from before it went silent
    assert change.new_path == [r1, r3, r4_via_r3, hb] and change.trace_id == moved.id
    assert change.first_ttl == 2 and change.description == f"hops 2-3 {r2}, {r4_via_r2} -> {r3}, {r4_via_r3}"
    latest = TraceLatest.objects.get()
    assert latest.route == [r1, r3, r4_via_r3, hb] and latest.trace_id == again.id
    assert edge.changes_counted() == 1.0


# --- Bandwidth ------------------------------------------------------------------------------

RATE_MBIT = 50.0
DURATION_S = 3.0
MAX_BYTES = 10**9


@pytest.fixture(scope="module")
def shaped_member() -> Iterator[tuple[Lab, dict[str, Any]]]:
    """hA - r1 =50 Mbit/s= r2 (+15 ms each way) - hB, the edge's member endpoint in hB."""
    if not LAB_OK:
        pytest.skip(LAB_WHY)
    with Lab(Lab.CHAIN) as lab:
        lab.shape_link("r1", "r2", RATE_MBIT)
        lab.delay("r2", 15)
        target = {"instance_id": str(uuid.uuid4()), "host": lab.addr("hB"), "port": 8757, "location": "labB"}
        lab.spawn(
            "hB",
            [sys.executable, "-m", "probes.tests.labcalls", "serve", "--host", target["host"],
             "--port", "8757", "--instance", target["instance_id"]],
            ready="ready",
            timeout=30,
        )  # fmt: skip
        yield lab, target


@needs_lab
def test_a_bandwidth_test_over_a_50_mbit_link_stores_50_in_both_directions(
    db: None, shaped_member: tuple[Lab, dict[str, Any]]
) -> None:
    lab, target = shaped_member
    token = bandwidth_auth.sign(bandwidth_services.signing_secret(), target["instance_id"], time.time() + 120)
    source = bandwidth_services.Source("labA", str(uuid.uuid4()))
    test = {"round_id": 1, "slot": 0, "attempt": 0, "not_after": time.time() + 300, "target": target}

    results = lab["hA"].call(labcalls.measure_pair, target, DURATION_S, MAX_BYTES, token)
    bandwidth_services.store_results(source, test, results, bandwidth_services.BandwidthOptions(DURATION_S, MAX_BYTES))
    naive = lab["hA"].call(naive_estimate, (target["host"], 8757), token=token)
    refused = lab["hA"].call(labcalls.measure_pair, target, 1.0, MAX_BYTES, "nrb1.0.forged")

    rows = {row.direction: row for row in BandwidthResult.objects.all()}
    assert set(rows) == {"download", "upload"}
    for row in rows.values():
        assert row.status == "ok" and row.stable and row.mbps is not None, row.error
        assert row.mbps == pytest.approx(RATE_MBIT, rel=0.10)  # the figure
        assert row.mbps == pytest.approx(RATE_MBIT * 1448 / 1514, rel=0.05)  # goodput a tbf link carries
        assert row.omitted_s is not None and row.omitted_s >= 0.5  # slow start left out
        assert str(row.target_ip) == target["host"] and row.direction in ("download", "upload")
    # The seed's single 1 MB transfer on the same link: handshake, request and slow start dominate.
    assert naive.ok and naive.mbps is not None
    goodput = RATE_MBIT * 1448 / 1514
    for row in rows.values():
        assert abs(naive.mbps - goodput) > 3 * abs((row.mbps or 0) - goodput)
    assert [r.error_class for r in refused] == ["unauthorized", "unauthorized"]
