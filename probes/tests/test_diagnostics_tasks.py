"""Bandwidth and traceroute tasks over the real broker: dispatch plans and sends (with slots and
expiries), edge workers (real ``run_edge`` subprocesses on loopback) run the tests, and two tests
of one member never overlap."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from members import services as registry
from netring_site.celery import queue_for_member
from probes import services, tasks
from probes.checks.traceroute import privilege
from probes.models import BandwidthResult, TraceLatest, TraceRoute
from probes.tests.conftest import EdgeProcess, queued, queued_on

MakeMember = Callable[..., registry.Registration]
StartEdge = Callable[..., EdgeProcess]
WaitUntil = Callable[..., Any]
INTERVAL = 86400
# Short tests on loopback, where the duration (not the size cap) must end them.
EDGE_ENV = {"NETRING_BANDWIDTH_TEST_DURATION": "1", "NETRING_BANDWIDTH_MAX_MB": "1000000"}


@pytest.fixture
def one_round(settings: Any) -> int:
    """Rounds are numbered by interval: keep a test that dispatches twice from straddling two."""
    settings.NETRING_BANDWIDTH_TEST_INTERVAL = settings.NETRING_TRACEROUTE_INTERVAL = INTERVAL
    settings.NETRING_BANDWIDTH_TEST_DURATION = 1.0
    left = INTERVAL - time.time() % INTERVAL
    if left < 30:
        time.sleep(left + 0.1)
    return INTERVAL


@pytest.mark.parametrize(
    "task", [tasks.dispatch_bandwidth, tasks.bandwidth_test, tasks.dispatch_traceroute, tasks.traceroute_round]
)
def test_every_task_is_thin_with_a_time_limit_and_no_result(task: Any) -> None:
    assert task.time_limit and task.soft_time_limit and task.soft_time_limit < task.time_limit
    assert task.ignore_result


def test_bandwidth_dispatch_sends_each_test_to_its_source_at_its_slot_with_an_expiry(
    make_member: MakeMember, clean_broker: redis.Redis, one_round: int
) -> None:
    members = [make_member(loc, ip, kind="edge").member for loc, ip in (("us1", "10.0.1.1"), ("eu1", "10.0.2.1"),
                                                                          ("ap1", "10.0.3.1"))]  # fmt: skip
    before = timezone.now()

    assert tasks.dispatch_bandwidth() == 3  # three pairs, each one test (both directions)

    assert all(queued(location) == [] for location in ("us1", "eu1", "ap1"))  # never to just any worker
    messages = [m for member in members for m in queued_on(queue_for_member(str(member.pk)))]
    assert len(messages) == 3 and {m.headers["task"] for m in messages} == {"probes.bandwidth_test"}
    # The first slot starts now (no eta), the others are spread over the 24 h interval.
    slots = sorted((datetime.fromisoformat(m.headers["eta"] or before.isoformat()), m) for m in messages)
    assert [round((eta - before).total_seconds()) for eta, _ in slots] == [0, 28800, 57600]
    for eta, message in slots:
        (test,) = message.decode()[0]
        expires = datetime.fromisoformat(message.headers["expires"])
        assert timedelta(seconds=6.9) <= expires - eta <= timedelta(seconds=7.1)  # the slot: 2 x 1 s + 5 s
        assert message.delivery_info["routing_key"] == queue_for_member(test["source"]["instance_id"])
    assert tasks.dispatch_bandwidth() == 0  # a second beat in the same interval


def test_traceroute_dispatch_sends_each_location_one_task_with_every_other_member(
    make_member: MakeMember, clean_broker: redis.Redis, one_round: int
) -> None:
    us1 = make_member("us1", "10.0.1.1", kind="edge").member
    eu1 = make_member("eu1", "10.0.2.1", kind="edge").member
    api = make_member("ap1", "10.0.3.1", kind="api").member

    assert tasks.dispatch_traceroute() == 2

    (to_us1,) = queued("us1")
    number, _, targets = to_us1.decode()[0]
    assert number == services.round_id(timezone.now(), INTERVAL)
    assert {t["instance_id"] for t in targets} == {str(eu1.pk), str(api.pk)}
    assert {t["instance_id"] for t in queued("eu1")[0].decode()[0][2]} == {str(us1.pk), str(api.pk)}
    assert datetime.fromisoformat(to_us1.headers["expires"]) <= timezone.now() + timedelta(seconds=INTERVAL)
    assert tasks.dispatch_traceroute() == 0


def edge_metrics(edge: EdgeProcess, name: str) -> dict[str, float]:
    status, _, body = edge.get("/metrics")
    assert status == 200
    return {
        sample.labels.get("direction", ""): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name
    }


def test_dispatched_rounds_measure_both_directions_and_trace_both_ways_across_real_edges(
    edge_worker: StartEdge, central_worker: Any, one_round: int, wait_until: WaitUntil
) -> None:
    us1 = edge_worker("us1", "127.0.0.21", wait=False, **EDGE_ENV)
    eu1 = edge_worker("eu1", "127.0.0.22", wait=False, **EDGE_ENV)
    us1.wait_ready(), eu1.wait_ready()

    tasks.dispatch_bandwidth.delay()
    tasks.dispatch_traceroute.delay()

    wait_until(lambda: BandwidthResult.objects.filter(status="ok").count() >= 2, timeout=30, what="both directions")
    wait_until(lambda: TraceRoute.objects.count() >= 2, timeout=20, what="a trace each way")
    rows = list(BandwidthResult.objects.all())
    assert sorted(r.direction for r in rows) == ["download", "upload"] and {r.status for r in rows} == {"ok"}
    (source,) = {str(r.source_instance) for r in rows}
    runner, peer = (us1, eu1) if source == str(us1.instance_id) else (eu1, us1)
    for row in rows:
        assert str(row.target_instance) == str(peer.instance_id) and str(row.target_ip) == peer.ip
        assert row.mbps is not None and row.mbps > 100 and row.duration_s == 1.0 and row.ended_by == "duration"
    rates = edge_metrics(runner, "netring_bandwidth_mbps")
    assert set(rates) == {"download", "upload"} and all(v > 100 for v in rates.values())

    traces = {r.source_location: r for r in TraceRoute.objects.all()}
    assert set(traces) == {"us1", "eu1"}
    if privilege()[0]:
        assert traces["us1"].path == ["127.0.0.22"] and traces["eu1"].path == ["127.0.0.21"]
        assert {r.hop_count for r in traces.values()} == {1} and TraceLatest.objects.count() == 2
    else:
        assert {r.status for r in traces.values()} == {"unavailable"}


def test_two_sources_testing_one_target_at_once_are_never_measured_together(
    edge_worker: StartEdge, clean_broker: redis.Redis, wait_until: WaitUntil
) -> None:
    us1 = edge_worker("us1", "127.0.0.21", wait=False, **EDGE_ENV)
    eu1 = edge_worker("eu1", "127.0.0.22", wait=False, **EDGE_ENV)
    ap1 = edge_worker("ap1", "127.0.0.23", wait=False, **EDGE_ENV)
    for edge in (us1, eu1, ap1):
        edge.wait_ready()
    target = {"instance_id": str(ap1.instance_id), "host": ap1.ip, "port": ap1.port, "location": "ap1"}
    start = timezone.now() + timedelta(seconds=1)  # both workers hold the task and start it together

    for source in (us1, eu1):
        test = {
            "round_id": 1, "slot": 0, "attempt": 0, "not_after": time.time() + 120, "target": target,
            "source": {"instance_id": str(source.instance_id), "location": source.location},
        }  # fmt: skip
        tasks.bandwidth_test.apply_async(args=[test], queue=queue_for_member(str(source.instance_id)), eta=start)

    wait_until(lambda: BandwidthResult.objects.filter(status="ok").count() >= 4, timeout=40, what="both tests")
    rows = list(BandwidthResult.objects.order_by("ts"))
    (postponed,) = [r for r in rows if r.status == "postponed"]
    assert f"target ap1/{ap1.instance_id} is in another bandwidth test" in postponed.error
    windows = []
    for source in (us1, eu1):
        ran = [r for r in rows if r.status == "ok" and str(r.source_instance) == str(source.instance_id)]
        assert sorted(r.direction for r in ran) == ["download", "upload"]
        begin = min(r.ts for r in ran)
        end = max(r.ts + timedelta(seconds=(r.transfer_s or 0) + 3 * (r.rtt_ms or 0) / 1000) for r in ran)
        windows.append((begin, end, {r.attempt for r in ran}))
    (first, second) = sorted(windows)
    assert first[1] < second[0], f"the tests overlapped: {windows}"
    assert {first[2].pop(), second[2].pop()} == {0, 1}  # the later one ran after one postponement
    on_time = {str(r.source_instance) for r in rows if r.status == "ok" and r.attempt == 0}
    assert str(postponed.source_instance) not in on_time
    assert not list(clean_broker.scan_iter("netring:bw:busy:*"))


def test_with_two_workers_in_a_location_each_runs_the_tests_planned_for_it(
    edge_worker: StartEdge, clean_broker: redis.Redis, settings: Any, wait_until: WaitUntil
) -> None:
    us1a = edge_worker("us1", "127.0.0.21", wait=False, **EDGE_ENV)
    us1b = edge_worker("us1", "127.0.0.24", wait=False, **EDGE_ENV)
    eu1 = edge_worker("eu1", "127.0.0.22", wait=False, **EDGE_ENV)
    for edge in (us1a, us1b, eu1):
        edge.wait_ready()
    # Two pairs that share eu1: two slots of 2 x 1 s + 5 s, back to back.
    settings.NETRING_BANDWIDTH_TEST_INTERVAL, settings.NETRING_BANDWIDTH_TEST_DURATION = 14, 1.0

    assert tasks.dispatch_bandwidth() == 2

    wait_until(lambda: BandwidthResult.objects.count() >= 4, timeout=40, what="both tests")
    rows = list(BandwidthResult.objects.all())
    assert {r.status for r in rows} == {"ok"}  # nobody took a test planned for another member
    pairs = {frozenset((str(r.source_instance), str(r.target_instance))) for r in rows}
    assert pairs == {frozenset((str(us1.instance_id), str(eu1.instance_id))) for us1 in (us1a, us1b)}
    assert len(rows) == 4  # each pair once, both directions


def test_a_bandwidth_test_reaching_a_worker_that_is_not_an_edge_does_nothing(db: None) -> None:
    target = {"instance_id": str(uuid.uuid4())}
    test = {"round_id": 1, "slot": 0, "attempt": 0, "not_after": time.time(), "target": target}

    assert tasks.bandwidth_test(test) == ""
    assert tasks.traceroute_round(1, timezone.now().isoformat(), []) == {}
    assert not BandwidthResult.objects.exists()
