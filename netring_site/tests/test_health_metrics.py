import shutil
import socket
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from time_machine import TimeMachineFixture

from members import services
from members.models import Location, Member

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

MakeMember = Callable[..., services.Registration]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """metric family -> {sorted label pairs: value}, parsed the way Prometheus parses it."""
    parsed: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return parsed


@pytest.fixture
def fleet(make_member: MakeMember, time_machine: TimeMachineFixture) -> dict[str, Member]:
    time_machine.move_to(NOW, tick=False)
    Location.objects.create(name="us1", expected_members=3, criticality="critical")
    fleet = {
        "online": make_member("us1", ip="10.0.0.1", kind="edge").member,
        "stale": make_member("us1", ip="10.0.0.2").member,
        "offline": make_member("eu1", ip="10.1.0.1").member,
        "deregistered": make_member("eu1", ip="10.1.0.2").member,
    }
    Member.objects.filter(pk=fleet["stale"].pk).update(last_seen=NOW - timedelta(seconds=120))
    Member.objects.filter(pk=fleet["offline"].pk).update(last_seen=NOW - timedelta(hours=1))
    services.deregister(fleet["deregistered"])
    return fleet


# --- /health ----------------------------------------------------------------------------------


def test_it_reports_healthy_when_database_and_broker_answer(fleet: dict[str, Member], client: Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["checks"] == {"database": "ok", "broker": "ok"}
    assert body["members_count"] == 2  # online and stale


def test_it_answers_503_naming_the_broker_when_it_is_down(db: None, client: Client, settings: Any) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["down"] == ["broker"]
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("error: ConnectionError")


def test_it_needs_no_login_for_health(db: None, client: Client) -> None:
    assert client.get("/health").status_code == 200


# --- /metrics ---------------------------------------------------------------------------------


def test_it_exports_registry_metrics_with_correct_values(fleet: dict[str, Member], client: Client) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    metrics = samples(response.content.decode())

    assert metrics["netring_members_total"] == {(): 2.0}
    by_status = {
        dict(labels)["location"] + "/" + dict(labels)["status"]: v for labels, v in metrics["netring_members"].items()
    }
    assert by_status == {
        "eu1/deregistered": 1.0,
        "eu1/offline": 1.0,
        "eu1/online": 0.0,
        "eu1/stale": 0.0,
        "us1/deregistered": 0.0,
        "us1/offline": 0.0,
        "us1/online": 1.0,
        "us1/stale": 1.0,
    }
    assert metrics["netring_location_missing_members"] == {
        (("criticality", "critical"), ("location", "us1")): 1.0,
        (("criticality", "normal"), ("location", "eu1")): 0.0,
    }
    last_seen = {
        dict(labels)["instance_id"]: (dict(labels), v)
        for labels, v in metrics["netring_member_last_seen_timestamp"].items()
    }
    assert set(last_seen) == {str(fleet[s].pk) for s in ("online", "stale", "offline")}  # not the deregistered one
    labels, value = last_seen[str(fleet["online"].pk)]
    assert labels == {"location": "us1", "instance_id": str(fleet["online"].pk), "kind": "edge"}
    assert value == NOW.timestamp()
    assert last_seen[str(fleet["stale"].pk)][1] == (NOW - timedelta(seconds=120)).timestamp()


def test_it_follows_the_naming_rules_promtool_lints(fleet: dict[str, Member], client: Client) -> None:
    for family in text_string_to_metric_families(client.get("/metrics").content.decode()):
        assert family.name.startswith("netring_")
        assert family.documentation, family.name
        if family.name.endswith("_total"):
            # promtool: 'non-counter metrics should not have "_total" suffix' (untyped is exempt)
            assert family.type in ("counter", "unknown"), family.name


def test_it_drops_the_series_of_a_purged_member(fleet: dict[str, Member], client: Client) -> None:
    Member.objects.filter(pk=fleet["online"].pk).delete()
    series = samples(client.get("/metrics").content.decode())["netring_member_last_seen_timestamp"]
    assert str(fleet["online"].pk) not in str(series)


def test_it_exports_metrics_of_an_empty_registry(db: None, client: Client) -> None:
    metrics = samples(client.get("/metrics").content.decode())
    assert metrics["netring_members_total"] == {(): 0.0}


def test_it_computes_metrics_in_a_constant_number_of_queries(
    make_member: MakeMember, client: Client, django_assert_max_num_queries: Any
) -> None:
    for n in range(30):
        make_member(f"loc{n % 5}", ip=f"10.0.0.{n + 1}")
    with django_assert_max_num_queries(3):
        assert client.get("/metrics").status_code == 200


def test_it_enforces_the_metrics_token_when_set(fleet: dict[str, Member], client: Client, settings: Any) -> None:
    settings.NETRING_METRICS_TOKEN = "metrics-secret-0123456789"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-secret-0123456789").status_code == 200
    assert client.get("/metrics", HTTP_AUTHORIZATION="Token metrics-secret-0123456789").status_code == 200


def test_it_serves_metrics_without_a_token_when_none_is_set(fleet: dict[str, Member], client: Client) -> None:
    assert client.get("/metrics").status_code == 200


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not on PATH")
def test_it_passes_promtool_check_metrics(fleet: dict[str, Member], client: Client) -> None:
    text = client.get("/metrics").content
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
