from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from time_machine import TimeMachineFixture

from conftest import member_client
from members import services
from members.models import Location, Member

MEMBERS = "/api/v1/members/"
LOCATIONS = "/api/v1/locations/"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

MakeMember = Callable[..., services.Registration]


@pytest.fixture(autouse=True)
def frozen(time_machine: TimeMachineFixture) -> None:
    time_machine.move_to(NOW, tick=False)


@pytest.fixture
def fleet(make_member: MakeMember) -> dict[str, Member]:
    """us1: one online edge, one stale api member; eu1: one offline, one deregistered."""
    members = {
        "online": make_member("us1", ip="10.0.0.1", kind="edge").member,
        "stale": make_member("us1", ip="10.0.0.2").member,
        "offline": make_member("eu1", ip="10.1.0.1", kind="edge").member,
        "deregistered": make_member("eu1", ip="10.1.0.2").member,
    }
    Member.objects.filter(pk=members["stale"].pk).update(last_seen=NOW - timedelta(seconds=120))
    Member.objects.filter(pk=members["offline"].pk).update(last_seen=NOW - timedelta(hours=1))
    services.deregister(members["deregistered"])
    Location.objects.filter(name="us1").update(expected_members=3, criticality="high")
    return members


def listed(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content
    return list(response.json()["results"])


# --- who may read -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", [MEMBERS, LOCATIONS])
def test_it_refuses_anonymous_reads(db: None, anon: APIClient, url: str) -> None:
    response = anon.get(url)
    assert response.status_code == 401
    assert "authentication required" in response.json()["detail"]


def test_it_lets_a_member_list_its_peers(fleet: dict[str, Member], make_member: MakeMember) -> None:
    token = make_member("asia1", ip="10.2.0.1").token
    assert len(listed(member_client(token).get(MEMBERS))) == 5


def test_it_lets_a_logged_in_user_list(fleet: dict[str, Member], viewer_client: APIClient) -> None:
    assert len(listed(viewer_client.get(MEMBERS))) == 4
    assert len(listed(viewer_client.get(LOCATIONS))) == 2


def test_it_lets_a_user_api_token_list(fleet: dict[str, Member], django_user_model: Any) -> None:
    user = django_user_model.objects.create_user("grafana", "", "a-long-password-3")
    key = Token.objects.create(user=user).key
    assert len(listed(member_client(key).get(MEMBERS))) == 4


def test_it_refuses_a_revoked_member_token(fleet: dict[str, Member], make_member: MakeMember) -> None:
    registration = make_member("asia1", ip="10.2.0.1")
    services.deregister(registration.member)
    response = member_client(registration.token).get(MEMBERS)
    assert response.status_code == 401
    assert "register again" in response.json()["detail"]


def test_it_opens_reads_but_not_writes_with_public_read(
    fleet: dict[str, Member], anon: APIClient, settings: Any
) -> None:
    settings.NETRING_PUBLIC_READ = True
    assert len(listed(anon.get(MEMBERS))) == 4
    assert anon.get(f"{MEMBERS}{fleet['online'].pk}/").status_code == 200
    assert len(listed(anon.get(LOCATIONS))) == 2
    assert anon.post(LOCATIONS, {"name": "new1"}, format="json").status_code == 401
    assert anon.patch(f"{LOCATIONS}us1/", {"expected_members": 9}, format="json").status_code == 401
    assert anon.delete(f"{MEMBERS}{fleet['online'].pk}/").status_code == 401
    assert Member.objects.count() == 4
    assert not Location.objects.filter(name="new1").exists()


# --- members ----------------------------------------------------------------------------------


def test_it_lists_members_with_their_derived_status(fleet: dict[str, Member], viewer_client: APIClient) -> None:
    by_ip = {m["ip"]: m for m in listed(viewer_client.get(MEMBERS))}
    assert {ip: m["status"] for ip, m in by_ip.items()} == {
        "10.0.0.1": "online",
        "10.0.0.2": "stale",
        "10.1.0.1": "offline",
        "10.1.0.2": "deregistered",
    }
    online = by_ip["10.0.0.1"]
    assert online["instance_id"] == str(fleet["online"].pk)
    assert (online["location"], online["port"], online["kind"]) == ("us1", 8757, "edge")
    assert "token_hash" not in online
    assert "token" not in online


def test_it_shows_one_member(fleet: dict[str, Member], viewer_client: APIClient) -> None:
    response = viewer_client.get(f"{MEMBERS}{fleet['stale'].pk}/")
    assert response.status_code == 200
    assert response.json()["status"] == "stale"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("location=us1", {"10.0.0.1", "10.0.0.2"}),
        ("location=nowhere", set()),
        ("status=online", {"10.0.0.1"}),
        ("status=stale", {"10.0.0.2"}),
        ("status=offline", {"10.1.0.1"}),
        ("status=deregistered", {"10.1.0.2"}),
        ("kind=edge", {"10.0.0.1", "10.1.0.1"}),
        ("kind=api&location=eu1", {"10.1.0.2"}),
        ("location=eu1&status=offline", {"10.1.0.1"}),
    ],
)
def test_it_filters_members(fleet: dict[str, Member], viewer_client: APIClient, query: str, expected: set[str]) -> None:
    assert {m["ip"] for m in listed(viewer_client.get(f"{MEMBERS}?{query}"))} == expected


@pytest.mark.parametrize("query", ["status=asleep", "kind=robot", "status=ONLINE", "status=online%00"])
def test_it_answers_400_to_a_bad_filter_value(fleet: dict[str, Member], viewer_client: APIClient, query: str) -> None:
    response = viewer_client.get(f"{MEMBERS}?{query}")
    assert response.status_code == 400
    assert response.json()


def test_it_lists_members_in_a_constant_number_of_queries(make_member: MakeMember, viewer_client: APIClient) -> None:
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert viewer_client.get(MEMBERS).status_code == 200
        return len(captured)

    make_member("us1", ip="10.0.0.1")
    few = queries()
    for n in range(2, 30):
        make_member(f"loc{n % 7}", ip=f"10.0.1.{n}")
    assert queries() == few


def test_it_paginates(make_member: MakeMember, viewer_client: APIClient) -> None:
    for n in range(1, 6):
        make_member(ip=f"10.0.0.{n}")
    body = viewer_client.get(f"{MEMBERS}?limit=2&offset=1").json()
    assert body["count"] == 5
    assert [m["ip"] for m in body["results"]] == ["10.0.0.2", "10.0.0.3"]


def test_it_lets_staff_purge_a_member(fleet: dict[str, Member], staff_client: APIClient) -> None:
    response = staff_client.delete(f"{MEMBERS}{fleet['online'].pk}/")
    assert response.status_code == 204
    assert not Member.objects.filter(pk=fleet["online"].pk).exists()


def test_it_lets_no_one_else_purge_a_member(
    fleet: dict[str, Member], viewer_client: APIClient, make_member: MakeMember
) -> None:
    assert viewer_client.delete(f"{MEMBERS}{fleet['online'].pk}/").status_code == 403
    token = make_member("asia1", ip="10.2.0.1").token
    assert member_client(token).delete(f"{MEMBERS}{fleet['online'].pk}/").status_code == 403
    assert Member.objects.filter(pk=fleet["online"].pk).exists()


def test_it_has_no_member_writes_besides_the_member_endpoints(
    fleet: dict[str, Member], staff_client: APIClient
) -> None:
    assert staff_client.post(MEMBERS, {"location": "us1", "ip": "10.9.9.9"}, format="json").status_code == 405
    assert staff_client.patch(f"{MEMBERS}{fleet['online'].pk}/", {"port": 1}, format="json").status_code == 405


# --- locations --------------------------------------------------------------------------------


def test_it_lists_locations_with_member_counts(
    fleet: dict[str, Member], viewer_client: APIClient, django_assert_max_num_queries: Any
) -> None:
    Location.objects.create(name="asia1", expected_members=2)
    with django_assert_max_num_queries(4):
        response = viewer_client.get(LOCATIONS)
    by_name = {loc["name"]: loc for loc in listed(response)}
    assert by_name["us1"] | {"created_at": None} == {
        "name": "us1",
        "description": "",
        "expected_members": 3,
        "criticality": "high",
        "created_at": None,
        "members_online": 1,
        "members_present": 2,
        "members_missing": 1,
    }
    assert (by_name["eu1"]["members_online"], by_name["eu1"]["members_present"]) == (0, 0)
    assert by_name["eu1"]["members_missing"] == 0  # nothing expected, nothing missing
    assert (by_name["asia1"]["members_present"], by_name["asia1"]["members_missing"]) == (0, 2)


def test_it_shows_one_location_with_its_counts(fleet: dict[str, Member], viewer_client: APIClient) -> None:
    body = viewer_client.get(f"{LOCATIONS}us1/").json()
    assert (body["members_online"], body["members_present"], body["members_missing"]) == (1, 2, 1)


def test_it_filters_locations_by_criticality(fleet: dict[str, Member], viewer_client: APIClient) -> None:
    assert [loc["name"] for loc in listed(viewer_client.get(f"{LOCATIONS}?criticality=high"))] == ["us1"]
    assert viewer_client.get(f"{LOCATIONS}?criticality=extreme").status_code == 400


def test_it_lets_staff_create_and_edit_locations(db: None, staff_client: APIClient) -> None:
    created = staff_client.post(
        LOCATIONS, {"name": "fra1", "expected_members": 3, "criticality": "critical"}, format="json"
    )
    assert created.status_code == 201, created.content
    edited = staff_client.patch(f"{LOCATIONS}fra1/", {"expected_members": 4, "description": "Frankfurt"}, format="json")
    assert edited.status_code == 200
    location = Location.objects.get()
    assert (location.name, location.expected_members, location.criticality) == ("fra1", 4, "critical")
    assert location.description == "Frankfurt"


def test_it_refuses_a_duplicate_or_invalid_location(fleet: dict[str, Member], staff_client: APIClient) -> None:
    assert staff_client.post(LOCATIONS, {"name": "us1"}, format="json").status_code == 400
    assert staff_client.post(LOCATIONS, {"name": "no spaces"}, format="json").status_code == 400
    assert staff_client.post(LOCATIONS, {"name": "eu2", "expected_members": -1}, format="json").status_code == 400


def test_it_lets_no_one_else_write_locations(db: None, viewer_client: APIClient, make_member: MakeMember) -> None:
    assert viewer_client.post(LOCATIONS, {"name": "fra1"}, format="json").status_code == 403
    token = make_member("us1").token
    assert member_client(token).post(LOCATIONS, {"name": "fra1"}, format="json").status_code == 403
    assert member_client(token).patch(f"{LOCATIONS}us1/", {"expected_members": 9}, format="json").status_code == 403
    assert member_client(token).delete(f"{LOCATIONS}us1/").status_code == 403
    assert list(Location.objects.values_list("name", "expected_members")) == [("us1", 0)]


def test_it_lets_staff_delete_an_empty_location(db: None, staff_client: APIClient) -> None:
    Location.objects.create(name="old1")
    assert staff_client.delete(f"{LOCATIONS}old1/").status_code == 204
    assert not Location.objects.exists()


def test_it_refuses_to_delete_a_location_that_still_has_members(
    fleet: dict[str, Member], staff_client: APIClient
) -> None:
    response = staff_client.delete(f"{LOCATIONS}us1/")
    assert response.status_code == 409
    assert "members" in response.json()["detail"]
    assert Location.objects.filter(name="us1").exists()
