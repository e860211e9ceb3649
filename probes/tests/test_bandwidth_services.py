"""Bandwidth rounds: the schedule a dispatch plans, and a test on the edge with real Redis locks
against the edge's own member endpoint on loopback (token, one test at a time)."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from members import services as registry
from probes import bandwidth_services, edge, services, traceroute_services
from probes.checks import bandwidth, bandwidth_auth
from probes.diagnostics_metrics import BandwidthMetrics
from probes.edge import EdgeState, MemberEndpoint
from probes.edge_metrics import MeshMetrics
from probes.models import BandwidthResult

MakeMember = Callable[..., registry.Registration]


@pytest.fixture
def short_tests(settings: Any) -> Any:
    settings.NETRING_BANDWIDTH_TEST_DURATION = 0.6
    settings.NETRING_BANDWIDTH_TEST_SIZE_MB = 0
    settings.NETRING_BANDWIDTH_MAX_MB = 10**6  # loopback: let the duration end the tests
    return settings


def endpoint_of(location: str, short_tests: Any) -> MemberEndpoint:
    state = EdgeState(location=location, ip="127.0.0.1", port=0, instance_id=uuid.uuid4(), registry="registered")
    metrics = BandwidthMetrics()
    served = bandwidth_services.make_endpoint(str(state.instance_id), metrics)
    endpoint = MemberEndpoint(state, MeshMetrics(), "127.0.0.1", 0, bandwidth_test=served)
    endpoint.served = metrics  # type: ignore[attr-defined]  # what it served, for the tests
    state.port = endpoint.server.server_address[1]
    endpoint.start()
    return endpoint


@pytest.fixture
def members(short_tests: Any) -> Iterator[dict[str, MemberEndpoint]]:
    """Two edge member endpoints (source and target of a test), as run_edge wires them."""
    started = {"us1": endpoint_of("us1", short_tests), "eu1": endpoint_of("eu1", short_tests)}
    yield started
    for endpoint in started.values():
        endpoint.stop()


def target_of(endpoint: MemberEndpoint) -> dict[str, Any]:
    state = endpoint.state
    return {"instance_id": str(state.instance_id), "host": state.ip, "port": state.port, "location": state.location}


def a_test(source: MemberEndpoint, target: MemberEndpoint, **extra: Any) -> dict[str, Any]:
    return {
        "round_id": 7,
        "slot": 0,
        "attempt": 0,
        "not_after": time.time() + 300,
        "source": {"instance_id": str(source.state.instance_id), "location": source.state.location},
        "target": target_of(target),
        **extra,
    }


def source_of(endpoint: MemberEndpoint) -> bandwidth_services.Source:
    return bandwidth_services.Source(endpoint.state.location, str(endpoint.state.instance_id))


# --- The schedule -----------------------------------------------------------------------------


@pytest.mark.parametrize(("exclusive", "slots"), [("location", 5), ("member", 3)])
def test_a_round_pairs_every_edge_of_other_locations_once_with_nobody_twice_in_a_slot(
    make_member: MakeMember, clean_broker: redis.Redis, settings: Any, exclusive: str, slots: int
) -> None:
    settings.NETRING_BANDWIDTH_TEST_INTERVAL, settings.NETRING_BANDWIDTH_TEST_DURATION = 300, 5
    settings.NETRING_BANDWIDTH_EXCLUSIVE = exclusive
    edges = [make_member(loc, f"10.0.{n}.1", kind="edge").member for n, loc in enumerate(["us1", "us1", "eu1", "ap1"])]
    make_member("ap1", "10.0.9.1", kind="api")  # API members run no endpoint for tests

    plan = bandwidth_services.plan_bandwidth_round()

    assert plan is not None and plan.interval == 300 and plan.slot_s == 15
    pairs = [(t["source"]["instance_id"], t["target"]["instance_id"]) for _, t in plan.tests]
    ids = {str(m.pk): m.location.name for m in edges}
    expected = {frozenset((a, b)) for a in ids for b in ids if ids[a] != ids[b]}
    assert {frozenset(pair) for pair in pairs} == expected and len(pairs) == len(expected) == 5
    by_slot: dict[float, list[str]] = {}
    for offset, test in plan.tests:
        # Location mode: us1's two members never test at once (they would share its uplink).
        who = [test[side]["location" if exclusive == "location" else "instance_id"] for side in ("source", "target")]
        by_slot.setdefault(offset, []).extend(who)
        assert test["target"]["port"] == 8757 and test["not_after"] == plan.started.timestamp() + 300
    assert all(len(who) == len(set(who)) for who in by_slot.values())
    assert len(by_slot) == plan.slots == slots
    offsets = sorted(by_slot)
    assert offsets[0] == 0 and all(b - a >= 15 for a, b in itertools.pairwise(offsets))
    assert bandwidth_services.plan_bandwidth_round() is None  # a second beat in the interval


def test_tests_keep_out_of_the_mesh_and_traceroute_rounds(
    make_member: MakeMember, clean_broker: redis.Redis, settings: Any
) -> None:
    """A round during a test would read the test's queue as the paths' latency and loss."""
    settings.NETRING_CHECK_INTERVAL, settings.NETRING_TRACEROUTE_INTERVAL = 60, 300
    settings.NETRING_BANDWIDTH_TEST_INTERVAL, settings.NETRING_BANDWIDTH_TEST_DURATION = 300, 5
    for n, location in enumerate(["us1", "eu1", "ap1"]):
        make_member(location, f"10.0.{n}.1", kind="edge")
    rounds_at = timezone.now()
    assert services.plan_mesh_round(rounds_at) is not None  # rounds start now...
    assert traceroute_services.plan_traceroute_round(rounds_at) is not None

    plan = bandwidth_services.plan_bandwidth_round(rounds_at + timedelta(seconds=0.5))  # ...the tests 0.5 s later

    assert plan is not None
    mesh_busy = services.round_seconds() + 1.0
    trace_busy = settings.NETRING_TRACEROUTE_DEADLINE + 1.0
    offsets = sorted({offset for offset, _ in plan.tests})
    assert offsets[0] == pytest.approx(max(mesh_busy, trace_busy) - 0.5)  # the first slot waits for both
    windows = [(-0.5 + 60 * k, mesh_busy) for k in range(6)] + [(-0.5 + 300 * k, trace_busy) for k in range(2)]
    for offset in offsets:
        for start, busy in windows:
            assert offset + plan.slot_s <= start or offset >= start + busy - 1e-9


def test_the_round_follows_the_interval_set_in_the_admin(
    make_member: MakeMember, clean_broker: redis.Redis, settings: Any
) -> None:
    settings.NETRING_BANDWIDTH_TEST_INTERVAL = 300
    every, _ = IntervalSchedule.objects.get_or_create(every=20, period=IntervalSchedule.MINUTES)
    PeriodicTask.objects.create(name="bandwidth round dispatch", task="probes.dispatch_bandwidth", interval=every)
    make_member("us1", "10.0.1.1", kind="edge")
    make_member("eu1", "10.0.2.1", kind="edge")

    plan = bandwidth_services.plan_bandwidth_round()

    assert plan is not None and plan.interval == 1200
    assert plan.tests[0][1]["not_after"] == plan.started.timestamp() + 1200


# --- One test on the edge ---------------------------------------------------------------------


def test_a_test_measures_both_directions_stores_them_and_frees_both_members(
    db: None, clean_broker: redis.Redis, members: dict[str, MemberEndpoint]
) -> None:
    us1, eu1 = members["us1"], members["eu1"]
    metrics = BandwidthMetrics()
    test = a_test(us1, eu1)

    outcome = bandwidth_services.run_test(source_of(us1), test, endpoint=us1.bandwidth_test, metrics=metrics)

    assert outcome.status == "ran" and outcome.retry_in is None
    rows = {r.direction: r for r in BandwidthResult.objects.all()}
    assert set(rows) == {"download", "upload"}
    for row in rows.values():
        assert row.status == "ok" and row.mbps is not None and row.mbps > 100, row.error
        assert (row.round_id, row.slot, row.attempt, row.duration_s) == (7, 0, 0, 0.6)
        assert str(row.source_instance) == str(us1.state.instance_id) and row.target_location == "eu1"
    assert not list(clean_broker.scan_iter("netring:bw:busy:*"))  # both locks released
    served = eu1.served  # type: ignore[attr-defined]
    assert served.served_bytes.labels("download")._value.get() >= rows["download"].bytes_total > 0
    assert metrics.mbps.labels("us1", str(us1.state.instance_id), "eu1", str(eu1.state.instance_id),
                               "127.0.0.1", "upload")._value.get() == rows["upload"].mbps  # fmt: skip
    # The same task delivered twice (a worker lost its ack) does not test again.
    again = bandwidth_services.run_test(source_of(us1), test, endpoint=us1.bandwidth_test)
    assert again.status == "duplicate" and BandwidthResult.objects.count() == 2


def test_a_test_whose_target_is_locked_is_postponed_without_sending_a_byte(
    db: None, clean_broker: redis.Redis, members: dict[str, MemberEndpoint]
) -> None:
    us1, eu1 = members["us1"], members["eu1"]
    holder = "ap1/x -> eu1/y (round 7, slot 0)"
    clean_broker.set(f"netring:bw:busy:{eu1.state.instance_id}", holder, px=10_000)

    outcome = bandwidth_services.run_test(source_of(us1), a_test(us1, eu1), endpoint=us1.bandwidth_test)

    assert outcome.status == "postponed" and outcome.retry_in is not None and 0.6 < outcome.retry_in < 5
    (row,) = BandwidthResult.objects.all()
    assert (row.status, row.direction, row.mbps, row.error_class) == ("postponed", "", None, "busy")
    assert holder in row.error and f"target eu1/{eu1.state.instance_id}" in row.error
    assert eu1.served.served_bytes.labels("download")._value.get() == 0  # type: ignore[attr-defined]
    # The other member's lock is not taken over by the refused test.
    assert not clean_broker.exists(f"netring:bw:busy:{us1.state.instance_id}")
    assert clean_broker.get(f"netring:bw:busy:{eu1.state.instance_id}") == holder.encode()


def test_a_member_busy_serving_a_peer_does_not_start_its_own_test(
    db: None, clean_broker: redis.Redis, members: dict[str, MemberEndpoint]
) -> None:
    us1, eu1 = members["us1"], members["eu1"]
    assert us1.bandwidth_test is not None

    with us1.bandwidth_test.slot() as taken:  # a peer's test is being served right now
        assert taken
        outcome = bandwidth_services.run_test(source_of(us1), a_test(us1, eu1), endpoint=us1.bandwidth_test)

    assert outcome.status == "postponed" and "serving a peer's bandwidth test" in outcome.reason
    assert not list(clean_broker.scan_iter("netring:bw:busy:*"))


def test_a_target_that_answers_busy_postpones_the_test(
    db: None, clean_broker: redis.Redis, members: dict[str, MemberEndpoint]
) -> None:
    us1, eu1 = members["us1"], members["eu1"]
    assert eu1.bandwidth_test is not None

    with eu1.bandwidth_test.slot():  # defence in depth: the endpoint itself refuses a second test
        outcome = bandwidth_services.run_test(source_of(us1), a_test(us1, eu1), endpoint=us1.bandwidth_test)

    assert outcome.status == "postponed" and "the target refused: HTTP 503" in outcome.reason
    assert [r.status for r in BandwidthResult.objects.all()] == ["postponed"]


def test_a_test_still_blocked_at_the_end_of_its_interval_is_skipped(
    db: None, clean_broker: redis.Redis, members: dict[str, MemberEndpoint]
) -> None:
    us1, eu1 = members["us1"], members["eu1"]
    clean_broker.set(f"netring:bw:busy:{us1.state.instance_id}", "another test", px=10_000)

    late = bandwidth_services.run_test(source_of(us1), a_test(us1, eu1, not_after=time.time() + 1))
    tired = bandwidth_services.run_test(source_of(us1), a_test(us1, eu1, attempt=bandwidth_services.MAX_POSTPONES))

    assert (late.status, late.retry_in, tired.status) == ("skipped", None, "skipped")
    assert "this member is in another bandwidth test: another test" in late.reason
    assert [r.status for r in BandwidthResult.objects.order_by("id")] == ["skipped", "skipped"]


# --- The endpoint's token ---------------------------------------------------------------------


def test_the_member_endpoint_serves_only_tokens_signed_for_it(db: None, members: dict[str, MemberEndpoint]) -> None:
    eu1, us1 = members["eu1"], members["us1"]
    where = ("127.0.0.1", eu1.state.port)
    secret = bandwidth_services.signing_secret()

    def measure(token: str | None) -> bandwidth.BandwidthResult:
        return bandwidth.measure(where, "upload", 0.3, 10**9, token=token)

    assert measure(None).error_class == "unauthorized"
    assert measure(bandwidth_auth.sign(secret, str(us1.state.instance_id), time.time() + 60)).error_class == (
        "unauthorized"  # a token for another member
    )
    assert measure(bandwidth_auth.sign(secret, str(eu1.state.instance_id), time.time() - 1)).error_class == (
        "unauthorized"  # expired
    )
    assert measure(bandwidth_auth.sign(secret, str(eu1.state.instance_id), time.time() + 60)).ok


def test_the_edge_wires_the_bandwidth_route_into_its_member_endpoint(short_tests: Any) -> None:
    state = EdgeState(location="us1", ip="127.0.0.1", port=0, instance_id=uuid.uuid4())

    endpoint = edge.member_endpoint(state, "127.0.0.1", 0)
    try:
        served = endpoint.bandwidth_test
        assert served is not None and endpoint.routes[bandwidth.PATH] == served.handle
        assert served.max_bytes == 10**6 * 10**6 and served.max_duration_s == pytest.approx(5.6)
        assert served.authorize is not None and not served.authorize(None)
    finally:
        endpoint.server.server_close()


def test_the_expiry_of_a_slot_and_of_a_retry(make_member: MakeMember, clean_broker: redis.Redis) -> None:
    make_member("us1", "10.0.1.1", kind="edge")
    make_member("eu1", "10.0.2.1", kind="edge")
    plan = bandwidth_services.plan_bandwidth_round(timezone.now())
    assert plan is not None
    offset, test = plan.tests[0]

    assert bandwidth_services.slot_expiry(plan, offset) == plan.started + timedelta(seconds=offset + plan.slot_s)
    assert bandwidth_services.retry_expiry(test).timestamp() == pytest.approx(test["not_after"])
