"""Traceroute: the result rules on synthetic hops, then real traces through namespace labs.

The lab tests need root, ``ip``, ``nft`` and ``/dev/net/tun`` (one test delays a router); they
are skipped with the reason otherwise. Every lab is torn down by the fixture, also on failure.
The flow-identity tests record the echo requests as icmplib sends them (``recording``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import icmplib.utils
import pytest
from icmplib.sockets import ICMPSocket

from probes.checks.traceroute import (
    Answer,
    Hop,
    TraceResult,
    build_hops,
    compare_paths,
    flow_identifier,
    path_changed,
    path_fingerprint,
    privilege,
    trace,
    trace_many,
)
from tests.lab.netns import Lab, available

F = TypeVar("F", bound=Callable[..., object])
LAB_OK, LAB_WHY = available("nft", "tun")


def needs_lab(test: F) -> F:
    """Marked ``netns`` (select with -m) and skipped with the reason where labs cannot run."""
    marked: F = pytest.mark.netns(pytest.mark.skipif(not LAB_OK, reason=LAB_WHY)(test))
    return marked


needs_raw_icmp = pytest.mark.skipif(not privilege()[0], reason=privilege()[1])
A, B, C, D = "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"  # documentation addresses, never sent to


def answers(ttl_rtts: dict[int, list[tuple[str, float]]]) -> dict[int, list[Answer]]:
    return {ttl: [(source, rtt, "time-exceeded") for source, rtt in got] for ttl, got in ttl_rtts.items()}


def result(hops: tuple[Hop, ...], reached: bool = True) -> TraceResult:
    return TraceResult(
        destination="192.0.2.9", status="ok" if reached else "unreached", hops=hops, reached=reached, started_at=0.0
    )


# -- result rules, synthetic hops -----------------------------------------------------------------


def test_it_measures_added_latency_from_the_previous_answering_hop() -> None:
    hops = build_hops(
        answers({1: [(A, 1.0)] * 3, 3: [(C, 21.0)] * 3, 4: [(D, 20.0)] * 3}),
        sent={1: 3, 2: 3, 3: 3, 4: 3},
    )

    assert [hop.ttl for hop in hops] == [1, 2, 3, 4]
    assert hops[0].added_ms == pytest.approx(1.0)
    assert hops[1].silent and hops[1].added_ms is None and hops[1].loss == 1.0 and hops[1].sent == 3
    # Hop 3 carries the latency of both links after hop 1; hop 4 answers faster than hop 3.
    assert hops[2].added_ms == pytest.approx(20.0) and hops[2].added_from_ttl == 1
    assert hops[3].added_ms == pytest.approx(-1.0)


def test_it_names_the_bottleneck_by_added_latency_not_by_total_rtt() -> None:
    hops = build_hops(answers({1: [(A, 1.0)], 2: [(B, 21.0)], 3: [(C, 22.0)], 4: [(D, 25.0)]}), sent={})

    bottleneck = result(hops).bottleneck
    assert bottleneck is not None and bottleneck.address == B
    assert max(hops, key=lambda hop: hop.rtt_avg_ms or 0.0).address == D  # the naive answer


def test_it_reports_rtt_statistics_and_loss_per_hop() -> None:
    hops = build_hops(answers({1: [(A, 1.0), (A, 3.0)]}), sent={1: 3})

    assert (hops[0].rtt_min_ms, hops[0].rtt_avg_ms, hops[0].rtt_max_ms) == (1.0, 2.0, 3.0)
    assert hops[0].loss == pytest.approx(1 / 3)


def test_it_names_a_load_balanced_hop_by_its_most_frequent_responder() -> None:
    hops = build_hops(answers({1: [("10.0.0.9", 1.0), ("10.0.0.2", 1.0), ("10.0.0.9", 1.0)]}), sent={1: 3})

    assert hops[0].address == "10.0.0.9"
    assert hops[0].addresses == ("10.0.0.9", "10.0.0.2")


def test_it_drops_trailing_silent_hops() -> None:
    hops = build_hops(answers({1: [(A, 1.0)], 2: [(B, 2.0)]}), sent={1: 3, 2: 3, 3: 3, 4: 3})

    assert [hop.address for hop in hops] == [A, B]


def test_it_fingerprints_the_path_with_silent_hops_as_stars() -> None:
    hops = build_hops(answers({1: [(A, 1.0)], 3: [(C, 2.0)]}), sent={1: 1, 2: 1, 3: 1})

    assert (
        result(hops).fingerprint == hashlib.sha256(f"{A}|*|{C}".encode()).hexdigest() == path_fingerprint([A, None, C])
    )
    assert result(()).fingerprint is None


def test_it_counts_only_a_real_difference_as_a_path_change() -> None:
    assert path_changed("f1", "f2")
    assert not path_changed("f1", "f1")
    assert not path_changed(None, "f1")  # the first trace of a pair
    assert not path_changed("f1", None)  # a trace that produced nothing


def test_it_describes_a_replaced_hop() -> None:
    change = compare_paths([A, B, D], [A, C, D])

    assert change.changed and change.kind == "rerouted" and change.first_ttl == 2
    assert change.description == f"hop 2 {B} -> {C}"


def test_it_describes_a_longer_path() -> None:
    change = compare_paths([A, B, D], [A, B, C, D])

    assert change.changed and change.first_ttl == 3
    assert change.description == f"new hop 3 {C}; 3 -> 4 hops"


def test_it_tells_a_router_going_silent_from_a_route_change() -> None:
    change = compare_paths([A, B, C], [A, None, C])

    assert not change.changed and change.kind == "silence"
    assert f"hop 2 {B} -> *" in change.description
    assert compare_paths([A, B], [A, B]).kind == "same"


def test_it_serialises_to_json_with_the_derived_figures() -> None:
    hops = build_hops(answers({1: [(A, 1.0)], 2: [(B, 5.0)]}), sent={1: 1, 2: 2})

    data = json.loads(json.dumps(result(hops).to_dict()))

    assert data["state"] == "ok" and data["hop_count"] == 2
    assert data["bottleneck_ttl"] == 2 and data["bottleneck_added_ms"] == pytest.approx(4.0)
    assert data["fingerprint"] == path_fingerprint([A, B])
    assert data["hops"][1]["loss"] == 0.5


# -- privilege --------------------------------------------------------------------------------------


def test_it_is_unavailable_with_a_reason_without_raw_sockets() -> None:
    code = "from probes.checks.traceroute import trace; r = trace('127.0.0.1'); print(r.state, r.hop_count)"
    if not privilege()[0]:
        outcome = trace("127.0.0.1")
        assert outcome.status == "unavailable" and outcome.hop_count is None
        return
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop CAP_NET_RAW")
    # As root, drop CAP_NET_RAW the way a container without it would.
    done = subprocess.run(
        ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30, check=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip

    assert done.stdout.startswith("unavailable: traceroute needs a raw ICMP socket: root or CAP_NET_RAW")
    assert done.stdout.split()[-1] == "None"


@needs_raw_icmp
def test_it_traces_loopback_in_one_hop() -> None:
    outcome = trace("127.0.0.1", deadline_s=3)

    assert outcome.state == "ok" and outcome.reached
    assert outcome.path == ("127.0.0.1",) and outcome.hops[0].received == 3


# -- flow identity: the same identifier (and checksum) per (tracer, destination) -----------------


@dataclass(frozen=True)
class Sent:
    """One echo request as it left."""

    destination: str
    ident: int
    sequence: int
    checksum: int
    at: float  # monotonic (one clock for every process of the host)
    thread: int


@contextlib.contextmanager
def recording() -> Iterator[list[Sent]]:
    """Record every echo request icmplib sends in this process. The packet is built a second
    time for its checksum (icmplib's ``_create_packet`` is pure); what is sent is untouched."""
    sent: list[Sent] = []
    original = ICMPSocket.send

    def send(self: Any, request: Any) -> None:
        packet = self._create_packet(id=request.id, sequence=request.sequence, payload=request.payload)
        original(self, request)
        (checksum,) = struct.unpack_from("!H", packet, 2)
        sent.append(
            Sent(request.destination, request.id, request.sequence, checksum, time.monotonic(), threading.get_ident())
        )

    ICMPSocket.send = send
    try:
        yield sent
    finally:
        ICMPSocket.send = original


def idents(sent: list[Sent], destination: str | None = None) -> set[int]:
    return {s.ident for s in sent if destination in (None, s.destination)}


def ok_in_one_hop(outcome: TraceResult) -> bool:
    return outcome.state == "ok" and outcome.path == (outcome.address,) and outcome.hops[0].received == 3


@needs_raw_icmp
def test_a_flow_key_gives_a_destination_the_same_identifier_and_checksum_every_call() -> None:
    with recording() as first:
        (one,) = trace_many(["127.0.0.1"], flow_key="member-a", deadline_s=3)
    with recording() as second:
        (two,) = trace_many(["127.0.0.1"], flow_key="member-a", deadline_s=3)

    assert ok_in_one_hop(one) and ok_in_one_hop(two)
    assert len(idents(first)) == 1 and idents(first) == idents(second)
    assert len({s.checksum for s in first + second}) == 1  # what per-flow load balancers hash
    # The sequence numbers differ (a late reply to the first trace cannot match the second).
    assert {s.sequence for s in first}.isdisjoint({s.sequence for s in second})


@needs_raw_icmp
def test_other_flow_keys_and_destinations_get_other_identifiers() -> None:
    with recording() as sent_a:
        results = trace_many(["127.0.0.1", "127.0.0.2"], flow_key="member-a", deadline_s=3)
    with recording() as sent_b:
        results += trace_many(["127.0.0.1", "127.0.0.2"], flow_key="member-b", deadline_s=3)

    assert all(ok_in_one_hop(outcome) for outcome in results)
    per_pair = [idents(sent, dest) for sent in (sent_a, sent_b) for dest in ("127.0.0.1", "127.0.0.2")]
    assert all(len(got) == 1 for got in per_pair)
    assert len(set.union(*per_pair)) == 4


@needs_raw_icmp
def test_a_hashed_identifier_keeps_clear_of_the_ones_icmplib_hands_the_pinger(monkeypatch: Any) -> None:
    wanted = flow_identifier("member-a", "127.0.0.1")
    monkeypatch.setattr(icmplib.utils, "_current_id", (wanted + 0x8000) & 0xFFFF)
    with recording() as far:
        trace_many(["127.0.0.1"], flow_key="member-a", deadline_s=3)
    monkeypatch.setattr(icmplib.utils, "_current_id", wanted)  # the pinger has just been given it
    with recording() as near:
        (outcome,) = trace_many(["127.0.0.1"], flow_key="member-a", deadline_s=3)

    assert idents(far) == {wanted}
    (moved,) = idents(near)
    assert (moved - wanted) & 0xFFFF > 64 and ok_in_one_hop(outcome)


@needs_raw_icmp
def test_destinations_whose_identifiers_collide_in_one_call_get_distinct_ones() -> None:
    first, second = "127.0.0.50", "127.0.1.142"
    assert flow_identifier("member-a", first) == flow_identifier("member-a", second)  # found by search

    with recording() as sent:
        results = trace_many([first, second], flow_key="member-a", deadline_s=3)

    assert [r.address for r in results] == [first, second] and all(ok_in_one_hop(r) for r in results)
    assert len(idents(sent, first)) == len(idents(sent, second)) == 1
    assert idents(sent, first) != idents(sent, second)


@needs_raw_icmp
def test_concurrent_calls_with_the_same_flow_key_and_destination_get_distinct_identifiers() -> None:
    start = threading.Barrier(2)
    results: dict[int, TraceResult] = {}

    def run() -> None:
        start.wait()
        (results[threading.get_ident()],) = trace_many(
            ["127.0.0.1"], flow_key="member-a", deadline_s=3, round_interval_s=0.1
        )

    with recording() as sent:
        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)

    assert len(results) == 2 and all(ok_in_one_hop(r) for r in results.values())
    first, second = ([s for s in sent if s.thread == thread] for thread in results)
    assert max(s.at for s in first) > min(s.at for s in second) and max(s.at for s in second) > min(s.at for s in first)
    assert len(idents(first)) == len(idents(second)) == 1 and idents(first) != idents(second)


def traced_and_sent(destinations: list[str], start_at: float, **options: Any) -> tuple[list[TraceResult], list[Sent]]:
    """Runs inside a lab namespace: wait for the wall-clock ``start_at`` (to line up with
    another process), trace, and return the traces with the echo requests sent."""
    time.sleep(max(0.0, start_at - time.time()))
    with recording() as sent:
        results = trace_many(destinations, **options)
    return results, sent


# -- real paths in namespace labs -----------------------------------------------------------------


@pytest.fixture
def make_lab() -> Iterator[Callable[[str], Lab]]:
    labs: list[Lab] = []

    def make(spec: str) -> Lab:
        lab = Lab(spec)
        labs.append(lab)
        return lab.build()

    yield make
    for lab in labs:
        lab.close()


def timed_trace_many(destinations: list[str], **options: Any) -> tuple[list[TraceResult], float]:
    """Runs inside a lab namespace: the traces and the wall time they took, seen from outside."""
    begin = time.monotonic()
    results = trace_many(destinations, **options)
    return results, time.monotonic() - begin


@needs_lab
def test_it_reports_exactly_the_routers_on_the_path(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab(Lab.CHAIN)

    outcome = lab["hA"].call(trace, lab.addr("hB"), deadline_s=5)

    assert outcome.state == "ok" and outcome.reached and outcome.hop_count == 3
    assert outcome.path == (lab.addr("r1", "hA"), lab.addr("r2", "r1"), lab.addr("hB", "r2"))
    assert [(hop.sent, hop.received, hop.reply) for hop in outcome.hops] == [
        (3, 3, "time-exceeded"),
        (3, 3, "time-exceeded"),
        (3, 3, "echo-reply"),
    ]


@needs_lab
def test_it_keeps_a_silent_router_as_a_row(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab(Lab.CHAIN)
    before = lab["hA"].call(trace, lab.addr("hB"), deadline_s=5)
    lab.silence("r2")

    outcome = lab["hA"].call(trace, lab.addr("hB"), deadline_s=5, probe_timeout_s=0.5)

    assert outcome.reached and outcome.path == (lab.addr("r1", "hA"), None, lab.addr("hB", "r2"))
    assert outcome.hops[1].silent and outcome.hops[1].loss == 1.0 and outcome.hops[1].sent == 3
    assert outcome.hops[2].added_from_ttl == 1
    assert outcome.fingerprint != before.fingerprint
    assert compare_paths(before.hops, outcome.hops).kind == "silence"


@needs_lab
def test_it_finds_the_link_that_adds_latency(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab("hA-r1-r2-r3-hB")
    lab.delay("r1", 10)  # everything r1 forwards waits 10 ms: hop 2 onwards is 20 ms further away

    outcome = lab["hA"].call(trace, lab.addr("hB"), deadline_s=5)

    assert outcome.reached and outcome.hop_count == 4
    bottleneck = outcome.bottleneck
    assert bottleneck is not None and (bottleneck.ttl, bottleneck.address) == (2, lab.addr("r2", "r1"))
    assert 18 < (bottleneck.added_ms or 0) < 30
    assert all(abs(hop.added_ms or 0) < 5 for hop in outcome.hops[2:])


@needs_lab
def test_it_sees_a_route_change(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab("hA-r1-r2-r4-hB, r1-r3-r4")
    target = lab.addr("hB")
    before = lab["hA"].call(trace, target, deadline_s=5)
    lab.route("r1", lab.subnet("r4", "hB"), via="r3")

    after = lab["hA"].call(trace, target, deadline_s=5)

    assert before.path == (lab.addr("r1", "hA"), lab.addr("r2", "r1"), lab.addr("r4", "r2"), target)
    assert after.path == (lab.addr("r1", "hA"), lab.addr("r3", "r1"), lab.addr("r4", "r3"), target)
    assert path_changed(before.fingerprint, after.fingerprint)
    change = compare_paths(before.hops, after.hops)
    assert change.changed and change.first_ttl == 2
    assert change.description == (
        f"hops 2-3 {lab.addr('r2', 'r1')}, {lab.addr('r4', 'r2')} -> {lab.addr('r3', 'r1')}, {lab.addr('r4', 'r3')}"
    )


@needs_lab
def test_it_stops_at_the_deadline(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab(Lab.CHAIN)
    lab.drop_random("r2", 100)  # r2 still answers for itself but forwards nothing

    (outcome,), took = lab["hA"].call(timed_trace_many, [lab.addr("hB")], deadline_s=0.6, probe_timeout_s=5)

    assert took < 0.6 + 0.1
    assert outcome.state == "unreached" and outcome.deadline_hit and not outcome.reached
    assert outcome.path == (lab.addr("r1", "hA"), lab.addr("r2", "r1"))
    assert "deadline" in outcome.reason


@needs_lab
def test_it_traces_many_destinations_at_once(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab(Lab.SITES)
    # A silent router on two of the paths makes each of those traces wait out a probe timeout.
    lab.silence("rt1")
    lab.silence("rt3")
    targets = [lab.addr("central"), lab.addr("eu1"), lab.addr("asia1")]

    results, took = lab["us1"].call(timed_trace_many, targets, deadline_s=5, probe_timeout_s=0.8)

    assert [r.state for r in results] == ["ok", "ok", "ok"]
    assert [r.hop_count for r in results] == [3, 5, 6]
    assert results[1].path[2] is None and results[2].path[2] is None  # rt1, rt3
    assert took < 1.5  # one probe timeout for all of them, not one per trace


@needs_lab
def test_it_reports_a_destination_it_cannot_send_to(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab(Lab.CHAIN)

    outcome = lab["hA"].call(trace, "10.231.250.1", deadline_s=2)  # no route in the lab

    assert outcome.status == "error" and "cannot send" in outcome.state and outcome.fingerprint is None


@needs_lab
def test_it_reports_where_a_cut_link_stops_the_path(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab(Lab.CHAIN)
    lab.set_link("r1", "r2", up=False)

    cut = lab["hA"].call(trace, lab.addr("hB"), deadline_s=3, probe_timeout_s=0.3)
    lab.set_link("r1", "r2", up=True)
    mended = lab["hA"].call(trace, lab.addr("hB"), deadline_s=3)

    # r1 lost its route with the link: it answers every probe with "net unreachable" at once.
    assert cut.state == "unreached" and cut.path == (lab.addr("r1", "hA"),) and not cut.deadline_hit
    assert cut.hops[0].reply == "unreachable" and "is unreachable" in cut.reason
    assert mended.state == "ok" and mended.hop_count == 3


@needs_lab
def test_members_on_one_host_trace_a_destination_at_once_under_their_own_identifiers(
    make_lab: Callable[[str], Lab],
) -> None:
    lab = make_lab(Lab.CHAIN)
    target = lab.addr("hB")
    members = ["member-a", "member-b"]
    assert flow_identifier(members[0], target) != flow_identifier(members[1], target)
    start_at = time.time() + 2.0  # both child processes are up by then
    outcomes: dict[str, tuple[list[TraceResult], list[Sent]]] = {}

    def member(key: str) -> None:
        outcomes[key] = lab["hA"].call(
            traced_and_sent, [target], start_at, flow_key=key, deadline_s=5, round_interval_s=0.2
        )

    threads = [threading.Thread(target=member, args=(key,)) for key in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    (a,), sent_a = outcomes["member-a"]
    (b,), sent_b = outcomes["member-b"]
    path = (lab.addr("r1", "hA"), lab.addr("r2", "r1"), target)
    assert a.state == b.state == "ok" and a.path == b.path == path
    assert all(hop.received == 3 for hop in a.hops + b.hops)
    assert max(s.at for s in sent_a) > min(s.at for s in sent_b) and max(s.at for s in sent_b) > min(
        s.at for s in sent_a
    )
    assert len(idents(sent_a)) == len(idents(sent_b)) == 1 and idents(sent_a) != idents(sent_b)
