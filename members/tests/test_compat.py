"""The seed registry's paths and payloads, so existing Netring members can point here."""

import ipaddress
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rest_framework.test import APIClient
from time_machine import TimeMachineFixture

from conftest import member_client
from members import services
from members.models import Member

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
EPOCH = int(NOW.timestamp())

MakeMember = Callable[..., services.Registration]


@pytest.fixture
def frozen(time_machine: TimeMachineFixture) -> TimeMachineFixture:
    time_machine.move_to(NOW, tick=False)
    return time_machine


@pytest.fixture
def open_enrollment(settings: Any) -> Any:
    settings.NETRING_OPEN_ENROLLMENT = True
    settings.NETRING_OPEN_ENROLLMENT_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]
    return settings


def seed_register(client: APIClient, remote: str = "127.0.0.1", **fields: Any) -> Any:
    body = {"instance_id": str(uuid.uuid4()), "location": "us1-k8s", "ip": "10.1.2.3", "port": 8756, **fields}
    return client.post("/register", body, format="json", REMOTE_ADDR=remote)


# --- POST /register ---------------------------------------------------------------------------


def test_it_registers_with_the_seed_payload(enrolling_client: APIClient) -> None:
    instance_id = str(uuid.uuid4())
    response = seed_register(enrolling_client, instance_id=instance_id)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "registered"
    assert body["instance_id"] == instance_id
    assert body["token"].startswith(f"nrm_{uuid.UUID(instance_id).hex}_")
    member = Member.objects.get()
    assert (str(member.pk), member.location.name, member.ip, member.port) == (instance_id, "us1-k8s", "10.1.2.3", 8756)


def test_it_registers_without_an_instance_id_as_the_seed_allows(enrolling_client: APIClient) -> None:
    response = enrolling_client.post(
        "/register", {"location": "us1-k8s", "ip": "10.1.2.3", "port": 8756}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["instance_id"] == str(Member.objects.get().pk)


def test_it_needs_the_enrollment_token_at_the_seed_path_too(db: None, enrollment: str, anon: APIClient) -> None:
    assert seed_register(anon).status_code == 401
    assert seed_register(member_client("wrong")).status_code == 403
    assert not Member.objects.exists()


def test_it_registers_seed_members_without_a_token_under_open_enrollment(
    db: None, anon: APIClient, open_enrollment: Any
) -> None:
    assert seed_register(anon, remote="10.9.9.9").status_code == 200
    assert seed_register(anon, remote="192.0.2.1").status_code == 401


# --- POST /heartbeat --------------------------------------------------------------------------


def test_it_takes_a_heartbeat_with_the_member_token(make_member: MakeMember, frozen: TimeMachineFixture) -> None:
    registration = make_member()
    frozen.shift(timedelta(seconds=45))
    response = member_client(registration.token).post(
        "/heartbeat", {"instance_id": str(registration.member.pk)}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert Member.objects.get().last_seen == NOW + timedelta(seconds=45)


def test_it_refuses_a_heartbeat_without_a_token(make_member: MakeMember, anon: APIClient) -> None:
    registration = make_member()
    response = anon.post("/heartbeat", {"instance_id": str(registration.member.pk)}, format="json")
    assert response.status_code == 401
    assert "member token" in response.json()["error"]


def test_it_takes_a_tokenless_heartbeat_from_the_open_networks_under_open_enrollment(
    make_member: MakeMember, anon: APIClient, open_enrollment: Any, frozen: TimeMachineFixture
) -> None:
    registration = make_member(enrolled_openly=True)
    body = {"instance_id": str(registration.member.pk)}
    frozen.shift(timedelta(seconds=45))
    assert anon.post("/heartbeat", body, format="json", REMOTE_ADDR="192.0.2.1").status_code == 401
    assert Member.objects.get().last_seen == NOW
    assert anon.post("/heartbeat", body, format="json", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert Member.objects.get().last_seen == NOW + timedelta(seconds=45)


def test_it_needs_the_instance_id_of_a_tokenless_heartbeat(db: None, anon: APIClient, open_enrollment: Any) -> None:
    response = anon.post("/heartbeat", {}, format="json", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 400
    assert "instance_id" in response.json()


def test_it_refuses_an_instance_id_that_is_not_the_tokens(make_member: MakeMember, frozen: TimeMachineFixture) -> None:
    mine, other = make_member(ip="10.0.0.1"), make_member(ip="10.0.0.2")
    frozen.shift(timedelta(seconds=45))
    response = member_client(mine.token).post("/heartbeat", {"instance_id": str(other.member.pk)}, format="json")
    assert response.status_code == 400
    assert "does not match" in str(response.json()["instance_id"])
    assert set(Member.objects.values_list("last_seen", flat=True)) == {NOW}


def test_it_tells_a_purged_seed_member_to_register_again(make_member: MakeMember) -> None:
    registration = make_member()
    Member.objects.all().delete()
    response = member_client(registration.token).post(
        "/heartbeat", {"instance_id": str(registration.member.pk)}, format="json"
    )
    assert response.status_code == 404
    assert response.json()["action"] == "register"
    assert "register again" in response.json()["error"]


def test_it_tells_a_purged_tokenless_member_to_register_again(db: None, anon: APIClient, open_enrollment: Any) -> None:
    response = anon.post("/heartbeat", {"instance_id": str(uuid.uuid4())}, format="json", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 404
    assert response.json()["action"] == "register"


# --- POST /deregister -------------------------------------------------------------------------


def test_it_deregisters_with_the_member_token(make_member: MakeMember) -> None:
    registration = make_member()
    response = member_client(registration.token).post(
        "/deregister", {"instance_id": str(registration.member.pk)}, format="json"
    )
    assert response.status_code == 200
    assert response.json() | {"heartbeat_interval": 0} == {
        "status": "deregistered",
        "instance_id": str(registration.member.pk),
        "heartbeat_interval": 0,
    }
    assert Member.objects.in_status("deregistered").count() == 1


def test_it_refuses_to_deregister_another_member(make_member: MakeMember) -> None:
    mine, other = make_member(ip="10.0.0.1"), make_member(ip="10.0.0.2")
    response = member_client(mine.token).post("/deregister", {"instance_id": str(other.member.pk)}, format="json")
    assert response.status_code == 400
    assert not Member.objects.filter(deregistered_at__isnull=False).exists()


def test_it_refuses_a_tokenless_deregistration_unless_enrollment_is_open(
    make_member: MakeMember, anon: APIClient, settings: Any
) -> None:
    body = {"instance_id": str(make_member(enrolled_openly=True).member.pk)}
    assert anon.post("/deregister", body, format="json").status_code == 401
    settings.NETRING_OPEN_ENROLLMENT = True
    assert anon.post("/deregister", body, format="json").status_code == 200
    assert anon.post("/deregister", body, format="json").status_code == 410


def test_open_enrollment_never_reaches_members_that_enrolled_with_the_token(
    enrolling_client: APIClient, anon: APIClient, open_enrollment: Any, frozen: TimeMachineFixture
) -> None:
    # Open enrollment is for the seed's members; it must not let anyone who learns an instance
    # id (on /metrics, say) keep a dead member alive or take a live one off the dashboard.
    registered = seed_register(enrolling_client).json()
    body = {"instance_id": registered["instance_id"]}
    frozen.shift(timedelta(seconds=45))

    heartbeat = anon.post("/heartbeat", body, format="json", REMOTE_ADDR="10.1.2.3")
    deregistration = anon.post("/deregister", body, format="json", REMOTE_ADDR="10.1.2.3")

    assert (heartbeat.status_code, deregistration.status_code) == (401, 401)
    member = Member.objects.get()
    assert (member.last_seen, member.deregistered_at) == (NOW, None)
    assert member_client(registered["token"]).post("/heartbeat", body, format="json").status_code == 200


def test_a_member_that_enrolled_openly_heartbeats_by_id(db: None, anon: APIClient, open_enrollment: Any) -> None:
    registered = seed_register(anon, remote="10.1.2.3").json()

    body = {"instance_id": registered["instance_id"]}
    assert anon.post("/heartbeat", body, format="json", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert anon.post("/deregister", body, format="json", REMOTE_ADDR="10.1.2.3").status_code == 200


# --- GET /members -----------------------------------------------------------------------------


def test_it_lists_active_members_in_the_seed_shape(
    make_member: MakeMember, frozen: TimeMachineFixture, viewer_client: APIClient
) -> None:
    online = make_member("us1-k8s", ip="10.1.2.3", port=8756).member
    frozen.shift(timedelta(seconds=30))
    Member.objects.filter(pk=online.pk).update(last_seen=NOW + timedelta(seconds=20))
    services.deregister(make_member("us1-k8s", ip="10.1.2.4").member)
    gone = make_member("eu1", ip="10.2.0.1").member
    Member.objects.filter(pk=gone.pk).update(last_seen=NOW - timedelta(hours=1))

    response = viewer_client.get("/members")

    assert response.status_code == 200
    members = response.json()["members"]
    assert len(members) == 1  # neither deregistered nor offline members are "active"
    member = members[0]
    assert {k: member[k] for k in ("instance_id", "location", "ip", "port", "last_seen", "registered_at")} == {
        "instance_id": str(online.pk),
        "location": "us1-k8s",
        "ip": "10.1.2.3",
        "port": 8756,
        "last_seen": EPOCH + 20,
        "registered_at": EPOCH,
    }
    assert isinstance(member["last_seen"], int)
    assert member["status"] == "online"


def test_it_lets_a_member_list_its_peers_at_the_seed_path(make_member: MakeMember) -> None:
    registration = make_member()
    make_member(ip="10.0.0.2")
    assert len(member_client(registration.token).get("/members").json()["members"]) == 2


def test_it_refuses_an_anonymous_member_list(db: None, anon: APIClient) -> None:
    assert anon.get("/members").status_code == 401


def test_it_lists_members_in_one_query_for_a_logged_in_user(
    make_member: MakeMember, viewer_client: APIClient, django_assert_max_num_queries: Any
) -> None:
    for n in range(1, 11):
        make_member(f"loc{n % 3}", ip=f"10.0.0.{n}")
    # session + user, then the members: no query per member
    with django_assert_max_num_queries(3):
        assert len(viewer_client.get("/members").json()["members"]) == 10


# --- GET /health ------------------------------------------------------------------------------


def test_it_answers_health_in_the_seed_shape(make_member: MakeMember, anon: APIClient) -> None:
    make_member()
    response = anon.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["members_count"] == 1
    assert isinstance(body["timestamp"], float)
