import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client
from time_machine import TimeMachineFixture

from members import services
from members.models import Location, Member
from members.status import STATUS_COLOURS, Status

MEMBERS = "/admin/members/member/"
LOCATIONS = "/admin/members/location/"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
HOSTILE = "<img src=x onerror=alert(1)>"
ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"

# The seed's colours: green, yellow, red, purple.
SEED_COLOURS = {"online": "#22c55e", "stale": "#eab308", "offline": "#ef4444", "deregistered": "#a855f7"}

MakeMember = Callable[..., services.Registration]


@pytest.fixture(autouse=True)
def frozen(time_machine: TimeMachineFixture) -> None:
    time_machine.move_to(NOW, tick=False)


@pytest.fixture
def admin_client(staff: Any) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(staff)
    return client


@pytest.fixture
def fleet(make_member: MakeMember) -> dict[str, services.Registration]:
    fleet = {
        "online": make_member("us1", ip="10.0.0.1"),
        "stale": make_member("us1", ip="10.0.0.2"),
        "offline": make_member("eu1", ip="10.1.0.1"),
        "deregistered": make_member("eu1", ip="10.1.0.2"),
    }
    Member.objects.filter(pk=fleet["stale"].member.pk).update(last_seen=NOW - timedelta(seconds=120))
    Member.objects.filter(pk=fleet["offline"].member.pk).update(last_seen=NOW - timedelta(hours=1))
    services.deregister(fleet["deregistered"].member)
    return fleet


def badges(html: str) -> dict[str, str]:
    """status -> background colour of each badge on the page."""
    found = re.findall(r'class="netring-badge" style="background:(#[0-9a-f]{6});[^"]*">(\w+)</span>', html)
    return {status: colour for colour, status in found}


def act(client: Client, action: str, *members: Member) -> Any:
    return client.post(MEMBERS, {"action": action, ACTION_CHECKBOX_NAME: [str(m.pk) for m in members]}, follow=True)


def test_it_uses_the_seed_colours() -> None:
    assert {status.value: colour for status, colour in STATUS_COLOURS.items()} == SEED_COLOURS


def test_it_shows_members_with_status_badges_in_the_seed_colours(
    fleet: dict[str, services.Registration], admin_client: Client
) -> None:
    response = admin_client.get(MEMBERS)
    assert response.status_code == 200
    assert badges(response.content.decode()) == SEED_COLOURS


@pytest.mark.parametrize("status", [s.value for s in Status])
def test_it_filters_members_by_status(
    fleet: dict[str, services.Registration], admin_client: Client, status: str
) -> None:
    response = admin_client.get(MEMBERS, {"status": status})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [fleet[status].member]
    assert badges(response.content.decode()) == {status: SEED_COLOURS[status]}


def test_it_filters_members_by_location(fleet: dict[str, services.Registration], admin_client: Client) -> None:
    eu1 = Location.objects.get(name="eu1")
    response = admin_client.get(MEMBERS, {"location__id__exact": eu1.pk})
    assert {m.ip for m in response.context["cl"].result_list} == {"10.1.0.1", "10.1.0.2"}


def test_it_searches_members_without_choking_on_odd_input(
    fleet: dict[str, services.Registration], admin_client: Client
) -> None:
    assert {m.ip for m in admin_client.get(MEMBERS, {"q": "10.1.0"}).context["cl"].result_list} == {
        "10.1.0.1",
        "10.1.0.2",
    }
    for query in ("\x00", "' OR 1=1 --", str(fleet["online"].member.pk)[:8], HOSTILE):
        assert admin_client.get(MEMBERS, {"q": query}).status_code == 200


def test_it_orders_members_by_status(fleet: dict[str, services.Registration], admin_client: Client) -> None:
    response = admin_client.get(MEMBERS, {"o": "6"})  # the sixth column: the status badge
    assert response.status_code == 200
    statuses = [m.status for m in response.context["cl"].result_list]
    assert statuses == sorted(statuses)


def test_it_shows_a_member_change_page(fleet: dict[str, services.Registration], admin_client: Client) -> None:
    response = admin_client.get(f"{MEMBERS}{fleet['stale'].member.pk}/change/")
    assert response.status_code == 200


def test_it_deregisters_selected_members_and_revokes_their_tokens(
    fleet: dict[str, services.Registration], admin_client: Client
) -> None:
    response = act(admin_client, "deregister", fleet["online"].member, fleet["deregistered"].member)
    assert "Deregistered 1 member(s)." in response.content.decode()
    assert Member.objects.in_status("deregistered").count() == 2
    assert services.heartbeat(fleet["online"].token) is services.Beat.DEREGISTERED


def test_deregistering_a_running_edge_worker_warns_that_it_comes_back(
    make_member: Callable[..., services.Registration], admin_client: Client
) -> None:
    edge = make_member("us1", ip="10.0.0.7", kind=Member.Kind.EDGE)
    api = make_member("us1", ip="10.0.0.8")

    response = act(admin_client, "deregister", edge.member, api.member)

    page = response.content.decode()
    assert "Deregistered 2 member(s)." in page
    assert "1 of them are running edge workers: they register again at their next heartbeat." in page
    assert services.heartbeat(edge.token) is services.Beat.DEREGISTERED  # the answer that makes it register again
    quiet = act(admin_client, "deregister", api.member).content.decode()
    assert "running edge workers" not in quiet


def test_it_purges_selected_members(fleet: dict[str, services.Registration], admin_client: Client) -> None:
    response = act(admin_client, "purge", fleet["offline"].member, fleet["stale"].member)
    assert "Purged 2 member(s)" in response.content.decode()
    assert Member.objects.count() == 2
    assert services.heartbeat(fleet["stale"].token) is services.Beat.UNKNOWN


def test_it_rotates_a_token_and_shows_the_new_one_once(
    fleet: dict[str, services.Registration], admin_client: Client
) -> None:
    old = fleet["online"]
    response = act(admin_client, "rotate_token", old.member)
    page = response.content.decode()
    shown = re.findall(r"nrm_[0-9a-f]{32}_[A-Za-z0-9_-]+", page)
    assert len(shown) == 1
    new = shown[0]
    assert new != str(old.token)
    assert services.heartbeat(old.token) is services.Beat.BAD_TOKEN
    from members import tokens

    parsed = tokens.parse(new)
    assert parsed is not None
    assert services.heartbeat(parsed) is services.Beat.OK
    assert new not in admin_client.get(MEMBERS).content.decode()  # shown once
    assert new not in str(Member.objects.values_list("token_hash", flat=True))


def test_it_does_not_rotate_tokens_of_deregistered_members(
    fleet: dict[str, services.Registration], admin_client: Client
) -> None:
    response = act(admin_client, "rotate_token", fleet["deregistered"].member)
    assert "nrm_" not in response.content.decode()
    assert Member.objects.get(pk=fleet["deregistered"].member.pk).token_hash == ""


def test_it_escapes_what_members_and_users_supplied(make_member: MakeMember, admin_client: Client) -> None:
    member = make_member(version="1.0").member
    Member.objects.filter(pk=member.pk).update(hostname=HOSTILE, version=HOSTILE)
    Location.objects.filter(pk=member.location.pk).update(description=HOSTILE)

    for url in (MEMBERS, f"{MEMBERS}{member.pk}/change/", LOCATIONS, f"{LOCATIONS}{member.location.pk}/change/"):
        html = admin_client.get(url).content.decode()
        assert HOSTILE not in html, url
        assert ESCAPED in html or "&lt;img" in html, url


def test_it_shows_locations_with_present_and_missing_counts(
    fleet: dict[str, services.Registration], admin_client: Client, django_assert_max_num_queries: Any
) -> None:
    Location.objects.filter(name="us1").update(expected_members=5)
    Location.objects.create(name="asia1", expected_members=2)
    response = admin_client.get(LOCATIONS)
    assert response.status_code == 200
    rows = {loc.name: (loc.members_present, loc.members_missing) for loc in response.context["cl"].result_list}
    assert rows == {"us1": (2, 3), "eu1": (0, 0), "asia1": (0, 2)}
    assert admin_client.get(LOCATIONS, {"o": "-5"}).status_code == 200  # ordered by missing


def test_it_lists_locations_in_a_constant_number_of_queries(
    make_member: MakeMember, admin_client: Client, django_assert_max_num_queries: Any
) -> None:
    for n in range(20):
        make_member(f"loc{n}", ip=f"10.0.0.{n + 1}")
    with django_assert_max_num_queries(8):
        assert admin_client.get(LOCATIONS).status_code == 200


def test_it_deletes_an_empty_location_from_the_admin(db: None, admin_client: Client) -> None:
    location = Location.objects.create(name="old1")
    response = admin_client.post(
        LOCATIONS, {"action": "delete_selected", ACTION_CHECKBOX_NAME: [location.pk], "post": "yes"}, follow=True
    )
    assert response.status_code == 200
    assert not Location.objects.exists()


def test_it_refuses_admin_pages_to_non_staff(db: None, viewer_client: Any) -> None:
    assert viewer_client.get(MEMBERS).status_code == 302
