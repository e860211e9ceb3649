"""The edge worker's member lifecycle, with the worker run as users run it (``manage.py run_edge``).

Each test starts a real worker subprocess on a loopback address, against the test database and
the real Redis broker, heartbeating every second.
"""

import resource
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from members import services as registry
from members.models import Member
from probes.edge import advertised_ip, raise_open_files_limit
from probes.tests.conftest import EdgeProcess

StartEdge = Callable[..., EdgeProcess]
WaitUntil = Callable[..., Any]


def status_and_age(edge: EdgeProcess) -> tuple[str, float]:
    """The member's status and the age of its last heartbeat, read at one instant."""
    now = timezone.now()
    member = Member.objects.with_status(now).get(pk=edge.instance_id)
    return member.status, (now - member.last_seen).total_seconds()


def test_it_registers_and_serves_the_member_endpoint(edge_worker: StartEdge, wait_until: WaitUntil) -> None:
    edge = edge_worker("us1", "127.0.0.21")

    member = edge.member()
    assert member is not None
    assert (member.kind, member.location.name, member.ip, member.port) == ("edge", "us1", "127.0.0.21", edge.port)
    assert member.status == "online" and member.version and member.hostname

    # /health: the seed's document, plus how the registry sees us.
    health = edge.health()
    assert health is not None
    assert health["status"] == "healthy"
    assert (health["instance_id"], health["location"], health["members_count"]) == (str(member.pk), "us1", 0)
    assert abs(health["timestamp"] - time.time()) < 5
    assert health["registry"] == "registered"

    status, content_type, body = edge.get("/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    families = {family.name for family in text_string_to_metric_families(body.decode())}
    assert {
        "netring_connectivity_tcp",
        "netring_connectivity_http",
        "netring_check_duration_seconds",
        "netring_members_total",
        "netring_member_last_seen_timestamp",
    } <= families
    assert edge.get("/nothing-here")[0] == 404

    # It heartbeats: last_seen moves on by itself.
    first_seen = member.last_seen
    wait_until(lambda: Member.objects.get(pk=member.pk).last_seen > first_seen, timeout=5, what="a heartbeat")


def test_sigterm_deregisters_the_member_at_once(edge_worker: StartEdge, wait_until: WaitUntil) -> None:
    edge = edge_worker("us1", "127.0.0.21")

    edge.signal(signal.SIGTERM)

    wait_until(lambda: status_and_age(edge)[0] == "deregistered", timeout=2, what="deregistration after SIGTERM")
    assert edge.process.wait(10) == 0
    member = Member.objects.get(pk=edge.instance_id)
    assert member.deregistered_at is not None and member.token_hash == ""  # the token is revoked too


def test_a_killed_worker_stays_registered_and_turns_stale_then_offline_at_the_thresholds(
    edge_worker: StartEdge, settings: Any, wait_until: WaitUntil
) -> None:
    settings.NETRING_STALE_AFTER, settings.NETRING_OFFLINE_AFTER = 2, 4
    edge = edge_worker("us1", "127.0.0.21", NETRING_STALE_AFTER="2", NETRING_OFFLINE_AFTER="4")

    edge.signal(signal.SIGKILL)
    assert edge.process.wait(5) == -signal.SIGKILL

    assert status_and_age(edge)[0] == "online"
    stale_at = wait_until(lambda: (s := status_and_age(edge))[0] == "stale" and s[1], timeout=5, what="stale")
    offline_at = wait_until(lambda: (s := status_and_age(edge))[0] == "offline" and s[1], timeout=5, what="offline")
    # Observed right after each threshold passed: never earlier, and well before the next one
    # (the slack is for a loaded test machine, not for the code).
    assert 2 <= stale_at < 3
    assert 4 <= offline_at < 5
    assert Member.objects.get(pk=edge.instance_id).deregistered_at is None


def test_a_purged_worker_registers_again_by_itself_within_a_heartbeat(
    edge_worker: StartEdge, wait_until: WaitUntil
) -> None:
    edge = edge_worker("us1", "127.0.0.21")

    assert registry.purge(Member.objects.filter(pk=edge.instance_id)) == 1
    purged = time.monotonic()

    member = wait_until(edge.member, timeout=5, what="registration after the purge")
    assert time.monotonic() - purged < 3  # the next heartbeat (every 1 s) found out
    assert (member.pk, member.kind, member.ip, member.status) == (edge.instance_id, "edge", "127.0.0.21", "online")
    health = edge.health()
    assert health is not None and health["status"] == "healthy"


# --- The advertised address (no worker needed) ----------------------------------------------


def test_the_advertised_address_can_be_a_literal_or_come_from_the_environment() -> None:
    assert advertised_ip("10.1.2.3", "redis://broker:6379/0") == "10.1.2.3"
    assert advertised_ip("fd00::7", "redis://broker:6379/0") == "fd00::7"
    assert advertised_ip("env:POD_IP", "redis://broker:6379/0", {"POD_IP": "10.9.8.7"}) == "10.9.8.7"
    with pytest.raises(ValueError, match="POD_IP is not set"):
        advertised_ip("env:POD_IP", "redis://broker:6379/0", {})


def test_auto_picks_the_local_address_that_routes_to_the_broker() -> None:
    # A UDP "connect" only asks the kernel for a route: nothing is sent anywhere.
    assert advertised_ip("auto", "redis://:secret@127.0.0.1:6379/0") == "127.0.0.1"


def test_the_open_files_limit_is_raised_for_a_round_of_many_sockets() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert raise_open_files_limit(1_256) == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
