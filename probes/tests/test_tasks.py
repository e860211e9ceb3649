"""The mesh tasks over the real broker: dispatch fans out one task per location with an expiry,
edge workers (real subprocesses) run their rounds, and the results land in PostgreSQL and on
each edge's /metrics."""

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
from members.models import Member
from netring_site.celery import CENTRAL_QUEUE, app, queue_for_location
from probes import services, tasks
from probes.checks.icmp import icmp_capability
from probes.checks.result import CheckResult
from probes.models import MeshLatest, MeshResult
from probes.tests.conftest import EdgeProcess, queued

MakeMember = Callable[..., registry.Registration]
StartEdge = Callable[..., EdgeProcess]
WaitUntil = Callable[..., Any]

# A long interval, so that two dispatches of one test fall in the same round (see below).
INTERVAL = 86400


@pytest.fixture
def one_round_per_test(settings: Any) -> int:
    """Rounds are numbered by interval: keep a test that dispatches twice from straddling two."""
    settings.NETRING_CHECK_INTERVAL = INTERVAL
    left = INTERVAL - time.time() % INTERVAL
    if left < 30:
        time.sleep(left + 0.1)
    return INTERVAL


# --- The tasks themselves -------------------------------------------------------------------


@pytest.mark.parametrize("task", [tasks.dispatch_mesh, tasks.mesh_round, tasks.maintain_partitions])
def test_every_task_is_thin_with_a_time_limit_and_no_result(task: Any) -> None:
    assert task.time_limit and task.soft_time_limit and task.soft_time_limit < task.time_limit
    assert task.ignore_result


def test_the_periodic_tasks_run_on_the_central_queue() -> None:
    assert app.conf.task_default_queue == CENTRAL_QUEUE
    assert queue_for_location("us1") == "netring.loc.us1"


def test_dispatch_sends_each_location_one_task_with_its_targets_and_an_expiry(
    make_member: MakeMember, clean_broker: redis.Redis, one_round_per_test: int
) -> None:
    us1 = make_member("us1", "10.0.1.1", kind="edge").member
    eu1 = make_member("eu1", "10.0.2.1", kind="edge").member
    make_member("ap1", "10.0.3.1", kind="api")
    before = timezone.now()

    assert tasks.dispatch_mesh() == 2

    (to_us1,) = queued("us1")
    (to_eu1,) = queued("eu1")
    assert queued("ap1") == []  # API members are probed but probe nothing
    assert to_us1.headers["task"] == "probes.mesh_round"
    number, started, targets = to_us1.decode()[0]
    assert number == services.round_id(before, INTERVAL)
    assert before <= datetime.fromisoformat(started) <= timezone.now()
    assert {t["instance_id"] for t in targets} == {str(eu1.pk), *_api_ids()}
    assert {t["instance_id"] for t in to_eu1.decode()[0][2]} == {str(us1.pk), *_api_ids()}
    # A round still queued when the next one is due is dropped rather than run late.
    expires = datetime.fromisoformat(to_us1.headers["expires"])
    assert before < expires <= timezone.now() + timedelta(seconds=INTERVAL)

    # A second beat in the same interval sends nothing.
    assert tasks.dispatch_mesh() == 0
    assert queued("us1") == queued("eu1") == []


def _api_ids() -> set[str]:
    return {str(pk) for pk in Member.objects.filter(kind="api").values_list("pk", flat=True)}


def test_dispatch_forgets_the_latest_state_of_members_that_left(
    make_member: MakeMember, clean_broker: redis.Redis, one_round_per_test: int
) -> None:
    us1 = make_member("us1", "10.0.1.1", kind="edge").member
    eu1 = make_member("eu1", "10.0.2.1", kind="edge").member
    gone = str(uuid.uuid4())
    source = services.RoundSource("us1", str(us1.pk), 1, timezone.now())
    results = [
        CheckResult(kind="tcp", target="10.0.2.1", port=8757, target_id=str(eu1.pk), ok=True, started_at=0),
        CheckResult(kind="tcp", target="10.0.2.9", port=8757, target_id=gone, ok=True, started_at=0),
    ]
    services.store_round(source, results, {str(eu1.pk): "eu1", gone: "eu1"})

    tasks.dispatch_mesh()

    assert [str(t) for t in MeshLatest.objects.values_list("target_instance", flat=True)] == [str(eu1.pk)]
    assert MeshResult.objects.count() == 2  # history stays


def test_a_round_reaching_a_worker_that_is_not_an_edge_does_nothing(db: None) -> None:
    assert tasks.mesh_round(1, timezone.now().isoformat(), [{"instance_id": "x", "host": "10.0.0.1", "port": 1}]) == {}
    assert not MeshResult.objects.exists()


def test_partition_maintenance_task(db: None, settings: Any) -> None:
    settings.NETRING_RETENTION_DAYS = 30
    report = tasks.maintain_partitions()
    assert set(report) >= {MeshResult._meta.db_table}
    assert report[MeshResult._meta.db_table] == {"created": 0, "dropped": [], "deferred": []}


# --- Whole rounds across real workers -------------------------------------------------------


def tcp_series(edge: EdgeProcess) -> list[Any]:
    status, _, body = edge.get("/metrics")
    assert status == 200
    return [
        sample
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "netring_connectivity_tcp"
    ]


def test_a_dispatched_round_checks_every_pair_both_ways_and_stores_and_exports_the_results(
    edge_worker: StartEdge, central_worker: Any, one_round_per_test: int, wait_until: WaitUntil
) -> None:
    us1 = edge_worker("us1", "127.0.0.21", wait=False)
    eu1 = edge_worker("eu1", "127.0.0.22", wait=False)
    us1.wait_ready(), eu1.wait_ready()

    tasks.dispatch_mesh.delay()

    # Per direction: TCP, GET /health, GET /metrics, ICMP.
    wait_until(lambda: MeshResult.objects.count() >= 8, timeout=20, what="both directions' results")
    rows = list(MeshResult.objects.all())
    assert len(rows) == 8 and len({r.round_id for r in rows}) == 1
    pairs = {(r.source_location, str(r.source_instance), r.target_location, str(r.target_instance)) for r in rows}
    assert pairs == {
        ("us1", str(us1.instance_id), "eu1", str(eu1.instance_id)),
        ("eu1", str(eu1.instance_id), "us1", str(us1.instance_id)),
    }
    by_check = {(r.source_location, r.kind, r.endpoint): r for r in rows}
    for source, target_ip in (("us1", "127.0.0.22"), ("eu1", "127.0.0.21")):
        assert by_check[(source, "tcp", "")].ok and str(by_check[(source, "tcp", "")].target_ip) == target_ip
        for endpoint in ("/health", "/metrics"):
            http = by_check[(source, "http", endpoint)]
            assert (http.ok, http.status_code) == (True, 200) and http.ttfb_ms is not None
        icmp = by_check[(source, "icmp", "")]
        assert icmp.ok if icmp_capability()[0] else icmp.error_class == "unavailable"
    assert MeshLatest.objects.count() == 8

    for edge, peer in ((us1, eu1), (eu1, us1)):
        (series,) = tcp_series(edge)
        assert series.labels == {
            "source_location": edge.location,
            "source_instance": str(edge.instance_id),
            "target_location": peer.location,
            "target_instance": str(peer.instance_id),
            "target_ip": peer.ip,
        }
        assert series.value == 1.0
        health = edge.health()
        assert health is not None and health["members_count"] == 1

    # A second beat in the same interval: no second round.
    assert tasks.dispatch_mesh() == 0
    assert MeshResult.objects.count() == 8


def test_a_round_that_expired_in_the_queue_is_not_run(
    edge_worker: StartEdge, peer_server: Callable[..., Any], wait_until: WaitUntil
) -> None:
    edge = edge_worker("us1", "127.0.0.21")
    target = [{"instance_id": str(uuid.uuid4()), "host": "127.0.0.1", "port": peer_server().port, "location": "eu1"}]
    queue = queue_for_location("us1")
    now = timezone.now()

    tasks.mesh_round.apply_async(args=[1, now.isoformat(), target], queue=queue, expires=now - timedelta(seconds=1))
    tasks.mesh_round.apply_async(args=[2, now.isoformat(), target], queue=queue, expires=now + timedelta(seconds=60))

    # The queue is first in, first out: once round 2 is stored, round 1 has been received too.
    wait_until(lambda: MeshResult.objects.filter(round_id=2).exists(), timeout=20, what="round 2")
    assert set(MeshResult.objects.values_list("round_id", flat=True)) == {2}
    assert "Discarding revoked task: probes.mesh_round" in edge.log.read_text()  # Celery's word for expired
