from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from rest_framework.test import APIClient
from time_machine import TimeMachineFixture

from conftest import member_client
from members import services, tokens
from members.models import Member

URL = "/api/v1/members/deregister/"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

MakeMember = Callable[..., services.Registration]


@pytest.fixture(autouse=True)
def frozen(time_machine: TimeMachineFixture) -> None:
    time_machine.move_to(NOW, tick=False)


def test_it_deregisters_the_member_and_revokes_its_token(make_member: MakeMember) -> None:
    registration = make_member()
    response = member_client(registration.token).post(URL)
    assert response.status_code == 200
    assert response.json()["status"] == "deregistered"
    assert response.json()["instance_id"] == str(registration.member.pk)
    member = Member.objects.with_status().get()
    assert member.status == "deregistered"  # type: ignore[attr-defined]
    assert member.deregistered_at == NOW
    assert member.token_hash == ""


def test_it_shows_a_deregistered_member_until_housekeeping_purges_it(
    make_member: MakeMember, viewer_client: APIClient
) -> None:
    registration = make_member()
    member_client(registration.token).post(URL)
    listed = viewer_client.get("/api/v1/members/").json()["results"]
    assert [m["status"] for m in listed] == ["deregistered"]


def test_it_answers_gone_to_a_second_deregistration(make_member: MakeMember) -> None:
    client = member_client(make_member().token)
    client.post(URL)
    response = client.post(URL)
    assert response.status_code == 410
    assert response.json()["action"] == "register"


def test_it_tells_a_purged_member_it_is_unknown(make_member: MakeMember) -> None:
    registration = make_member()
    Member.objects.all().delete()
    response = member_client(registration.token).post(URL)
    assert response.status_code == 404


def test_it_needs_the_member_token(make_member: MakeMember, anon: APIClient) -> None:
    make_member()
    response = anon.post(URL)
    assert response.status_code == 401
    assert Member.objects.get().deregistered_at is None


def test_it_refuses_a_wrong_secret(make_member: MakeMember) -> None:
    registration = make_member()
    response = member_client(tokens.new_token(registration.member.pk)).post(URL)
    assert response.status_code == 401
    assert Member.objects.get().deregistered_at is None


def test_it_does_not_let_the_enrollment_token_deregister_anyone(make_member: MakeMember, enrollment: str) -> None:
    registration = make_member()
    response = member_client(enrollment).post(URL, {"instance_id": str(registration.member.pk)}, format="json")
    assert response.status_code == 401
    assert Member.objects.get().deregistered_at is None


def test_it_acts_only_on_the_member_of_the_token(make_member: MakeMember) -> None:
    mine, other = make_member(ip="10.0.0.1"), make_member(ip="10.0.0.2")
    response = member_client(mine.token).post(URL, {"instance_id": str(other.member.pk)}, format="json")
    assert response.status_code == 400
    assert not Member.objects.filter(deregistered_at__isnull=False).exists()

    member_client(mine.token).post(URL)
    assert Member.objects.get(pk=other.member.pk).deregistered_at is None


def test_it_does_not_deregister_for_a_logged_in_user(make_member: MakeMember, staff_client: Any) -> None:
    make_member()
    assert staff_client.post(URL).status_code == 401
    assert Member.objects.get().deregistered_at is None
