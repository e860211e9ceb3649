"""``manage.py run_edge``: a Celery worker of one location, on that location's queue only."""

import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.core.management import CommandError, call_command
from django.utils import timezone

from members.models import Member
from netring_site.celery import queue_for_location
from probes import tasks
from probes.models import MeshResult
from probes.tests.conftest import ROOT, EdgeProcess


def test_it_refuses_to_start_without_a_location(settings: Any) -> None:
    settings.NETRING_LOCATION = ""
    with pytest.raises(CommandError, match="NETRING_LOCATION is not set"):
        call_command("run_edge")


def test_a_bad_setting_stops_it_with_the_variable_named() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "run_edge"],
        env={"PATH": "/usr/bin:/bin", "NETRING_LOCATION": "us1", "NETRING_HEARTBEAT_INTERVAL": "soon"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "NETRING_HEARTBEAT_INTERVAL='soon'" in result.stderr


def test_it_consumes_only_its_locations_queue_on_a_thread_pool(
    edge_worker: Callable[..., EdgeProcess],
    clean_broker: redis.Redis,
    peer_server: Callable[..., Any],
    wait_until: Callable[..., Any],
) -> None:
    edge = edge_worker("us1", "127.0.0.21")
    target = [{"instance_id": str(uuid.uuid4()), "host": "127.0.0.1", "port": peer_server().port, "location": "x"}]
    started = timezone.now().isoformat()

    tasks.mesh_round.apply_async(args=[1, started, target], queue=queue_for_location("eu1"))
    tasks.mesh_round.apply_async(args=[2, started, target], queue=queue_for_location("us1"))

    wait_until(lambda: MeshResult.objects.filter(round_id=2).exists(), timeout=20, what="the us1 round")
    assert set(MeshResult.objects.values_list("source_location", flat=True)) == {"us1"}
    assert clean_broker.llen(queue_for_location("eu1")) == 1  # still waiting for an eu1 worker
    # Threads: the Prometheus registry of the member endpoint sees what every task measured.
    assert "(thread)" in edge.log.read_text()


def test_it_exits_saying_why_when_its_member_port_is_taken(edge_worker: Callable[..., EdgeProcess]) -> None:
    with socket.create_server(("127.0.0.22", 0)) as taken:
        edge = edge_worker("us1", "127.0.0.22", wait=False, NETRING_MEMBER_PORT=str(taken.getsockname()[1]))

        assert edge.process.wait(timeout=60) == 1
    log = edge.log.read_text()
    assert "cannot start its member endpoint" in log
    assert "Address already in use" in log


def test_a_restarted_worker_comes_back_as_the_same_member(edge_worker: Callable[..., EdgeProcess]) -> None:
    first = edge_worker("us1", "127.0.0.23")
    second = edge_worker("us1", "127.0.0.24")  # a second worker of the location at the same time
    assert first.instance_id != second.instance_id
    first.stop()
    stopped = first.member()
    assert stopped is not None and stopped.status == "deregistered"

    again = edge_worker("us1", "127.0.0.23")

    assert again.instance_id == first.instance_id  # its slot, freed by the stop, taken again
    member = again.member()
    assert member is not None and member.status == "online"
    assert Member.objects.count() == 2  # no ghost of the previous start
