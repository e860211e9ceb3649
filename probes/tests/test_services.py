"""Mesh rounds: who checks whom, the round claim, storing a round, and a whole round against
real peers on loopback (healthy, refused, silent, failing, slow and black-holed)."""

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from members import services as registry
from members.models import Member
from probes import services
from probes.checks.icmp import icmp_capability
from probes.checks.result import CheckResult
from probes.edge import MemberEndpoint
from probes.models import MeshLatest, MeshResult
from probes.tests.loopback import black_hole, closed_port, silent_port

MakeMember = Callable[..., registry.Registration]


def age(member: Member, seconds: float) -> None:
    Member.objects.filter(pk=member.pk).update(last_seen=timezone.now() - timedelta(seconds=seconds))


def target_ids(plan: services.RoundPlan, location: str) -> set[str]:
    return {str(t["instance_id"]) for t in plan.targets_by_location[location]}


# --- Planning a round -----------------------------------------------------------------------


def test_each_location_with_an_edge_worker_checks_the_active_members_of_the_other_locations(
    make_member: MakeMember, clean_broker: redis.Redis, settings: Any
) -> None:
    us1 = make_member("us1", "10.0.1.1", kind="edge").member
    us1_offline = make_member("us1", "10.0.1.2", kind="edge").member
    eu1 = make_member("eu1", "10.0.2.1", port=9000, kind="edge").member
    eu1_stale = make_member("eu1", "10.0.2.2", kind="edge").member
    eu1_gone = make_member("eu1", "10.0.2.3", kind="edge").member
    ap1_api = make_member("ap1", "10.0.3.1", kind="api").member
    sa1_offline = make_member("sa1", "10.0.4.1", kind="edge").member
    age(us1_offline, settings.NETRING_OFFLINE_AFTER + 1)
    age(sa1_offline, settings.NETRING_OFFLINE_AFTER + 1)
    age(eu1_stale, settings.NETRING_STALE_AFTER + 1)
    registry.deregister(eu1_gone)

    plan = services.plan_mesh_round()

    assert plan is not None
    # ap1 has only an API member (probed, probes nothing); sa1's only edge worker is offline.
    assert set(plan.targets_by_location) == {"us1", "eu1"}
    assert target_ids(plan, "us1") == {str(eu1.pk), str(eu1_stale.pk), str(ap1_api.pk)}
    assert target_ids(plan, "eu1") == {str(us1.pk), str(ap1_api.pk)}
    # Task arguments are JSON: ids and addresses, never model instances.
    assert {"instance_id": str(eu1.pk), "host": "10.0.2.1", "port": 9000, "location": "eu1"} in (
        plan.targets_by_location["us1"]
    )


def test_a_second_dispatch_in_the_same_interval_gets_no_round(
    make_member: MakeMember, clean_broker: redis.Redis, settings: Any
) -> None:
    make_member("us1", "10.0.1.1", kind="edge")
    make_member("eu1", "10.0.2.1", kind="edge")
    interval = settings.NETRING_CHECK_INTERVAL
    number = services.round_id(timezone.now(), interval)
    start = datetime.fromtimestamp(number * interval, UTC)

    first = services.plan_mesh_round(start + timedelta(seconds=1))
    again = services.plan_mesh_round(start + timedelta(seconds=interval - 1))
    following = services.plan_mesh_round(start + timedelta(seconds=interval))

    assert first is not None and first.round_id == number
    assert again is None
    assert following is not None and following.round_id == number + 1
    # The claim outlives its interval, then goes away by itself.
    assert 0 < clean_broker.ttl(f"netring:round:mesh:{number}") <= 2 * interval


def test_rounds_follow_the_interval_set_in_the_admin_not_the_variables_first_value(
    make_member: MakeMember, clean_broker: redis.Redis, settings: Any
) -> None:
    make_member("us1", "10.0.1.1", kind="edge")
    make_member("eu1", "10.0.2.1", kind="edge")
    settings.NETRING_CHECK_INTERVAL = 60
    every, _ = IntervalSchedule.objects.get_or_create(every=20, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="mesh round dispatch", task="probes.dispatch_mesh", interval=every)
    start = datetime.fromtimestamp(services.round_id(timezone.now(), 60) * 60, UTC)

    plans = [services.plan_mesh_round(start + timedelta(seconds=s)) for s in (1, 21, 41)]

    # Every dispatch of the 20 s schedule gets its round; none is taken for a second beat.
    assert all(plan is not None and plan.interval == 20 for plan in plans)
    assert len({plan.round_id for plan in plans if plan}) == 3


# --- Storing a round ------------------------------------------------------------------------

A, B = str(uuid.uuid4()), str(uuid.uuid4())
WHERE = {A: "eu1", B: "ap1"}


def tcp(target: str, ip: str, ok: bool = True, **fields: Any) -> CheckResult:
    return CheckResult(kind="tcp", target=ip, port=8757, target_id=target, ok=ok, started_at=0, **fields)


def http(target: str, ip: str, endpoint: str = "/health", ok: bool = True, **fields: Any) -> CheckResult:
    return CheckResult(
        kind="http", target=ip, port=8757, endpoint=endpoint, target_id=target, ok=ok, started_at=0, **fields
    )


def source(number: int, started: datetime) -> services.RoundSource:
    return services.RoundSource("us1", "11111111-1111-1111-1111-111111111111", number, started)


def test_a_round_is_one_batch_of_history_rows_plus_the_latest_state_of_every_pair(db: None) -> None:
    t1 = timezone.now().replace(microsecond=0)
    first = [
        tcp(A, "10.0.2.1", latency_ms=1.23456, connect_ms=1.23456),
        http(A, "10.0.2.1", status_code=200, latency_ms=3.0, dns_ms=0.0, ttfb_ms=2.0, total_ms=3.0),
        tcp(B, "10.0.3.1", ok=False, error_class="refused", error="Connection refused\twith\na\\weird message"),
    ]

    assert services.store_round(source(7, t1), first, WHERE) == 3

    history = {(str(r.target_instance), r.kind): r for r in MeshResult.objects.all()}
    assert len(history) == 3
    row = history[(A, "tcp")]
    assert (row.ts, row.round_id, row.source_location, row.target_location) == (t1, 7, "us1", "eu1")
    assert (str(row.target_ip), row.target_port, row.ok, row.latency_ms) == ("10.0.2.1", 8757, True, 1.2346)
    assert history[(A, "http")].endpoint == "/health" and history[(A, "http")].status_code == 200
    failed = history[(B, "tcp")]
    assert (failed.ok, failed.error_class, failed.target_location) == (False, "refused", "ap1")
    assert failed.error == "Connection refused\twith\na\\weird message"
    assert failed.latency_ms is None and failed.status_code is None
    assert MeshLatest.objects.count() == 3

    # The next round adds history and updates the latest rows in place.
    t2 = t1 + timedelta(minutes=1)
    second = [
        tcp(A, "10.0.2.1", latency_ms=2.0),
        http(A, "10.0.2.1", status_code=200),
        tcp(B, "10.0.3.1", latency_ms=9),
    ]
    assert services.store_round(source(8, t2), second, WHERE) == 3

    assert MeshResult.objects.count() == 6
    assert MeshLatest.objects.count() == 3
    latest = MeshLatest.objects.get(target_instance=B, kind="tcp")
    assert (latest.ok, latest.error_class, latest.error, latest.latency_ms) == (True, "", "", 9.0)
    assert (latest.ts, latest.round_id) == (t2, 8)


def test_a_round_stored_late_keeps_its_history_but_not_the_latest_state(db: None) -> None:
    newer = timezone.now().replace(microsecond=0)
    services.store_round(source(9, newer), [tcp(A, "10.0.2.1", latency_ms=2.0)], WHERE)

    services.store_round(source(8, newer - timedelta(minutes=1)), [tcp(A, "10.0.2.1", ok=False)], WHERE)

    assert MeshResult.objects.count() == 2
    latest = MeshLatest.objects.get()
    assert (latest.round_id, latest.ok, latest.ts) == (9, True, newer)


def test_an_empty_round_stores_nothing(db: None) -> None:
    assert services.store_round(source(1, timezone.now()), [], {}) == 0
    assert not MeshResult.objects.exists()


def test_forgetting_departed_members_clears_their_latest_state_but_keeps_history(db: None) -> None:
    now = timezone.now()
    services.store_round(source(1, now), [tcp(A, "10.0.2.1"), tcp(B, "10.0.3.1"), http(B, "10.0.3.1")], WHERE)

    assert services.forget_departed([uuid.UUID(A)]) == 2

    assert [str(t) for t in MeshLatest.objects.values_list("target_instance", flat=True)] == [A]
    assert MeshResult.objects.count() == 3


def test_forgetting_departed_sources_clears_the_cells_they_no_longer_check(db: None) -> None:
    now = timezone.now()
    services.store_round(source(1, now), [tcp(A, "10.0.2.1")], WHERE)
    other = services.RoundSource("eu1", str(uuid.uuid4()), 1, now)
    services.store_round(other, [tcp(B, "10.0.3.1")], WHERE)

    assert services.forget_departed([A, B], sources=["eu1"]) == 1

    assert list(MeshLatest.objects.values_list("source_location", flat=True)) == ["eu1"]


# --- A whole round against real peers -------------------------------------------------------

TIMEOUT = 1.0
SLOW = 0.3


@pytest.fixture
def fast_checks(settings: Any) -> Any:
    settings.NETRING_TCP_TIMEOUT = TIMEOUT
    settings.NETRING_HTTP_TIMEOUT = TIMEOUT
    settings.NETRING_HTTP_ENDPOINTS = ["/health", "/metrics"]
    settings.NETRING_ICMP_COUNT = 0
    return settings


@pytest.fixture
def dead_ports() -> Iterator[dict[str, int]]:
    with ExitStack() as stack:
        yield {
            "refused": stack.enter_context(closed_port()),
            "silent": stack.enter_context(silent_port()),
            "black_hole": stack.enter_context(black_hole()),
        }


def peer(name: str, port: int, host: str = "127.0.0.1") -> dict[str, object]:
    return {"instance_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), "host": host, "port": port, "location": name}


def stored(name: str) -> dict[tuple[str, str], MeshResult]:
    rows = MeshResult.objects.filter(target_instance=uuid.uuid5(uuid.NAMESPACE_DNS, name))
    return {(r.kind, r.endpoint): r for r in rows}


def test_a_round_against_real_peers_stores_what_each_one_did(
    db: None,
    fast_checks: Any,
    member_endpoint: MemberEndpoint,
    peer_server: Callable[..., Any],
    dead_ports: dict[str, int],
) -> None:
    targets = [
        peer("healthy", member_endpoint.state.port),
        peer("failing", peer_server(status=500).port),
        peer("slow", peer_server(delay=SLOW).port),
        *(peer(name, port) for name, port in dead_ports.items()),
    ]
    started = timezone.now()

    report = services.run_round(source(5, started), targets)

    assert report.results == 6 * 3 and MeshResult.objects.count() == 18 and MeshLatest.objects.count() == 18
    healthy = stored("healthy")
    assert all(r.ok and r.error_class == "" for r in healthy.values())
    assert healthy[("http", "/health")].status_code == healthy[("http", "/metrics")].status_code == 200
    assert 0 < healthy[("tcp", "")].latency_ms < 50

    failing = stored("failing")
    assert failing[("tcp", "")].ok
    for endpoint in ("/health", "/metrics"):
        # Success is the expected status range, not "anything below 500" and not "got an answer".
        row = failing[("http", endpoint)]
        assert (row.ok, row.error_class, row.status_code) == (False, "http_status", 500)
        assert row.total_ms is not None

    slow = stored("slow")[("http", "/health")]
    assert slow.ok and SLOW * 1000 <= slow.ttfb_ms < SLOW * 1000 + 150
    assert slow.total_ms >= slow.ttfb_ms

    refused = stored("refused")
    assert {k: (r.ok, r.error_class) for k, r in refused.items()} == {
        ("tcp", ""): (False, "refused"),
        ("http", "/health"): (False, "refused"),
        ("http", "/metrics"): (False, "refused"),
    }
    silent = stored("silent")  # the kernel completes the handshake, nobody ever answers
    assert silent[("tcp", "")].ok
    assert [(r.ok, r.error_class, r.status_code) for k, r in sorted(silent.items()) if k[0] == "http"] == [
        (False, "timeout", None)
    ] * 2
    black = stored("black_hole")
    assert {(r.ok, r.error_class) for r in black.values()} == {(False, "timeout")}

    assert report.failures == 2 + 3 + 2 + 3
    # Two dead peers, each costing its timeout, in parallel with everything else.
    assert TIMEOUT <= report.seconds < TIMEOUT + 0.75
    assert all(r.ts == started and r.source_location == "us1" for r in MeshResult.objects.all())


def test_black_holed_peers_cost_one_timeout_not_one_each(
    db: None, fast_checks: Any, member_endpoint: MemberEndpoint
) -> None:
    fast_checks.NETRING_HTTP_ENDPOINTS = ["/health"]
    with ExitStack() as stack:
        dead = [peer(f"dead{n}", stack.enter_context(black_hole())) for n in range(5)]
        healthy = [peer(f"up{n}", member_endpoint.state.port) for n in range(20)]

        report = services.run_round(source(6, timezone.now()), dead + healthy)

    # Five black holes one after another would take 5 x TIMEOUT.
    assert TIMEOUT <= report.seconds < TIMEOUT + 0.75
    failed = MeshResult.objects.filter(ok=False).values_list("target_location", "kind", "error_class", "error")
    assert {location for location, *_ in failed} == {f"dead{n}" for n in range(5)}, list(failed)
    assert report.failures == 5 * 2
    assert MeshResult.objects.filter(ok=True).count() == 20 * 2


def test_icmp_results_are_stored_with_loss_and_rtt(db: None, fast_checks: Any, member_endpoint: MemberEndpoint) -> None:
    fast_checks.NETRING_ICMP_COUNT = 2
    fast_checks.NETRING_ICMP_INTERVAL = 0.02
    fast_checks.NETRING_HTTP_ENDPOINTS = []

    services.run_round(source(7, timezone.now()), [peer("healthy", member_endpoint.state.port)])

    row = stored("healthy")[("icmp", "")]
    if icmp_capability()[0] is None:
        assert (row.ok, row.error_class) == (False, "unavailable")
    else:
        assert (row.ok, row.packets_sent, row.packets_received, row.loss_ratio) == (True, 2, 2, 0.0)
        assert row.rtt_min_ms <= row.rtt_avg_ms <= row.rtt_max_ms and row.jitter_ms is not None
        assert row.target_port is None
