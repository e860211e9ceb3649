import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rest_framework.test import APIClient
from time_machine import TimeMachineFixture

from conftest import member_client
from members import services, tokens
from members.models import Member

URL = "/api/v1/members/heartbeat/"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

MakeMember = Callable[..., services.Registration]


@pytest.fixture
def frozen(time_machine: TimeMachineFixture) -> TimeMachineFixture:
    time_machine.move_to(NOW, tick=False)
    return time_machine


def test_it_records_the_heartbeat_in_one_query(
    make_member: MakeMember, frozen: TimeMachineFixture, django_assert_num_queries: Any, settings: Any
) -> None:
    registration = make_member()
    client = member_client(registration.token)
    frozen.shift(timedelta(seconds=45))

    with django_assert_num_queries(1):
        response = client.post(URL)

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "instance_id": str(registration.member.pk),
        "heartbeat_interval": settings.NETRING_HEARTBEAT_INTERVAL,
    }
    assert Member.objects.get().last_seen == NOW + timedelta(seconds=45)


def test_it_accepts_a_json_body_naming_the_member_itself(make_member: MakeMember) -> None:
    registration = make_member()
    response = member_client(registration.token).post(URL, {"instance_id": str(registration.member.pk)}, format="json")
    assert response.status_code == 200


def test_it_accepts_the_bearer_scheme_too(make_member: MakeMember) -> None:
    registration = make_member()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {registration.token}")
    assert client.post(URL).status_code == 200


def test_it_tells_a_purged_member_to_register_again(make_member: MakeMember) -> None:
    registration = make_member()
    Member.objects.all().delete()
    response = member_client(registration.token).post(URL)
    assert response.status_code == 404
    body = response.json()
    assert body["action"] == "register"
    assert body["instance_id"] == str(registration.member.pk)
    assert "register again" in body["detail"]
    assert body["error"] == body["detail"]


def test_it_lets_a_purged_member_come_back_by_itself(make_member: MakeMember, enrolling_client: APIClient) -> None:
    """What a member does on 404: register with its own instance id, then heartbeat again."""
    registration = make_member()
    Member.objects.all().delete()
    assert member_client(registration.token).post(URL).json()["action"] == "register"
    again = enrolling_client.post(
        "/api/v1/members/register/",
        {"instance_id": str(registration.member.pk), "location": "us1", "ip": "10.0.0.1"},
        format="json",
    )
    assert again.status_code == 201
    assert member_client(again.json()["token"]).post(URL).status_code == 200


def test_it_tells_a_deregistered_member_to_register_again(make_member: MakeMember, frozen: TimeMachineFixture) -> None:
    registration = make_member()
    services.deregister(registration.member)
    frozen.shift(timedelta(seconds=10))
    response = member_client(registration.token).post(URL)
    assert response.status_code == 410
    assert response.json()["action"] == "register"
    assert Member.objects.get().last_seen == NOW


def test_it_refuses_a_wrong_secret(make_member: MakeMember, frozen: TimeMachineFixture) -> None:
    registration = make_member()
    frozen.shift(timedelta(seconds=10))
    response = member_client(tokens.new_token(registration.member.pk)).post(URL)
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid member token"
    assert response.json()["action"] == "check token"
    assert Member.objects.get().last_seen == NOW


def test_it_needs_a_token(db: None, anon: APIClient) -> None:
    response = anon.post(URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert "member token" in response.json()["detail"]


@pytest.mark.parametrize(
    "header",
    [
        "Token nrm_123",
        "Token nrm_" + "0" * 32,
        "Token " + "nrm_" + uuid.uuid4().hex + "_" + "x" * 5,
        "Token enroll-test-token-0123456789",
        "Token",
        "Basic dXNlcjpwYXNz",
        "Token nrm_" + "g" * 32 + "_" + "x" * 40,
    ],
)
def test_it_refuses_a_malformed_token(db: None, header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.post(URL)
    assert response.status_code == 401
    assert response.json()["detail"]


def test_it_acts_only_on_the_member_of_the_token(make_member: MakeMember, frozen: TimeMachineFixture) -> None:
    mine, other = make_member(ip="10.0.0.1"), make_member(ip="10.0.0.2")
    frozen.shift(timedelta(seconds=30))

    response = member_client(mine.token).post(URL, {"instance_id": str(other.member.pk)}, format="json")

    assert response.status_code == 400
    assert "does not match the member token" in str(response.json()["instance_id"])
    assert Member.objects.get(pk=other.member.pk).last_seen == NOW
    assert Member.objects.get(pk=mine.member.pk).last_seen == NOW


def test_it_cannot_heartbeat_another_member_with_its_instance_id_and_a_made_up_secret(
    make_member: MakeMember, frozen: TimeMachineFixture
) -> None:
    make_member(ip="10.0.0.1")
    other = make_member(ip="10.0.0.2")
    frozen.shift(timedelta(seconds=30))
    forged = tokens.MemberToken(other.member.pk, "guessed-secret-guessed-secret")
    assert member_client(forged).post(URL).status_code == 401
    assert Member.objects.get(pk=other.member.pk).last_seen == NOW


def test_it_does_not_take_a_session_for_a_member(staff_client: APIClient) -> None:
    assert staff_client.post(URL).status_code == 401
