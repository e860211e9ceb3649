import ipaddress
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from time_machine import TimeMachineFixture

from members import services, tokens
from members.models import Location, Member
from members.services import Beat
from members.status import Status

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

MakeMember = Callable[..., services.Registration]


@pytest.fixture(autouse=True)
def frozen(time_machine: TimeMachineFixture) -> TimeMachineFixture:
    time_machine.move_to(NOW, tick=False)
    return time_machine


def age(instance_id: uuid.UUID, seconds: float) -> None:
    """Pretend the member's last heartbeat was ``seconds`` ago."""
    Member.objects.filter(pk=instance_id).update(last_seen=NOW - timedelta(seconds=seconds))


# --- register ---------------------------------------------------------------------------------


def test_it_registers_a_new_member_in_a_new_location(db: None) -> None:
    registration = services.register(location="us1", ip="10.0.0.1", port=8757, hostname="edge-1", version="2.0")
    assert registration.created
    member = Member.objects.get(pk=registration.member.pk)
    assert member.location.name == "us1"
    assert (member.ip, member.port, member.hostname, member.version) == ("10.0.0.1", 8757, "edge-1", "2.0")
    assert member.registered_at == member.last_seen == NOW
    assert member.token_hash == registration.token.hash
    assert registration.token.instance_id == member.pk


def test_it_keeps_the_instance_id_the_member_chose(db: None) -> None:
    chosen = uuid.uuid4()
    assert services.register(location="us1", ip="10.0.0.1", port=1, instance_id=chosen).member.pk == chosen


def test_it_re_registers_the_same_instance_and_revokes_the_old_token(
    make_member: MakeMember, frozen: TimeMachineFixture
) -> None:
    first = make_member(ip="10.0.0.1", port=8757)
    frozen.shift(timedelta(minutes=5))
    second = make_member(location="eu1", ip="10.0.0.2", port=9000, instance_id=first.member.pk)

    assert not second.created
    assert Member.objects.count() == 1
    member = Member.objects.get()
    assert (member.location.name, member.ip, member.port) == ("eu1", "10.0.0.2", 9000)
    assert member.registered_at == member.last_seen == NOW + timedelta(minutes=5)
    assert services.authenticate(first.token) is None
    assert services.authenticate(second.token) == member
    assert services.heartbeat(first.token) is Beat.BAD_TOKEN
    assert services.heartbeat(second.token) is Beat.OK


def test_it_brings_back_a_deregistered_member_that_registers_again(make_member: MakeMember) -> None:
    first = make_member()
    services.deregister(first.member)
    again = make_member(instance_id=first.member.pk)
    assert Member.objects.get().deregistered_at is None
    assert services.heartbeat(again.token) is Beat.OK


def test_it_refuses_addresses_outside_the_allowed_networks(db: None, settings: Any) -> None:
    settings.NETRING_ALLOWED_MEMBER_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]
    with pytest.raises(services.RegistrationRefused, match="NETRING_ALLOWED_MEMBER_NETWORKS"):
        services.register(location="us1", ip="192.0.2.1", port=8757)
    assert services.register(location="us1", ip="10.9.9.9", port=8757).created
    assert Member.objects.count() == 1


def test_it_refuses_an_unknown_location_when_auto_create_is_off(db: None, settings: Any) -> None:
    settings.NETRING_AUTO_CREATE_LOCATIONS = False
    with pytest.raises(services.RegistrationRefused, match="unknown location"):
        services.register(location="mars1", ip="10.0.0.1", port=8757)
    assert not Location.objects.exists()
    Location.objects.create(name="mars1")
    assert services.register(location="mars1", ip="10.0.0.1", port=8757).created


# --- heartbeat --------------------------------------------------------------------------------


def test_it_records_a_heartbeat(make_member: MakeMember, frozen: TimeMachineFixture) -> None:
    registration = make_member()
    frozen.shift(timedelta(seconds=30))
    assert services.heartbeat(registration.token) is Beat.OK
    assert Member.objects.get().last_seen == NOW + timedelta(seconds=30)


def test_it_tells_an_unknown_member_to_register(db: None) -> None:
    assert services.heartbeat(tokens.new_token(uuid.uuid4())) is Beat.UNKNOWN


def test_it_tells_a_purged_member_to_register(make_member: MakeMember) -> None:
    registration = make_member()
    Member.objects.all().delete()
    assert services.heartbeat(registration.token) is Beat.UNKNOWN


def test_it_tells_a_deregistered_member_to_register(make_member: MakeMember) -> None:
    registration = make_member()
    services.deregister(registration.member)
    assert services.heartbeat(registration.token) is Beat.DEREGISTERED
    assert Member.objects.get().last_seen == NOW


def test_it_refuses_a_wrong_secret(make_member: MakeMember, frozen: TimeMachineFixture) -> None:
    registration = make_member()
    frozen.shift(timedelta(seconds=30))
    assert services.heartbeat(tokens.new_token(registration.member.pk)) is Beat.BAD_TOKEN
    assert Member.objects.get().last_seen == NOW


def test_it_heartbeats_by_instance_id_for_open_enrollment(make_member: MakeMember) -> None:
    registration = make_member(enrolled_openly=True)
    assert services.heartbeat_by_id(registration.member.pk) is Beat.OK
    assert services.heartbeat_by_id(make_member(ip="10.0.0.2").member.pk) is Beat.BAD_TOKEN  # enrolled with the token
    assert services.heartbeat_by_id(uuid.uuid4()) is Beat.UNKNOWN
    services.deregister(registration.member)
    assert services.heartbeat_by_id(registration.member.pk) is Beat.DEREGISTERED


# --- deregister and tokens --------------------------------------------------------------------


def test_it_deregisters_with_the_member_token_and_revokes_it(make_member: MakeMember) -> None:
    registration = make_member()
    other = make_member(ip="10.0.0.2")
    assert services.deregister_with_token(registration.token) is Beat.OK
    member = Member.objects.get(pk=registration.member.pk)
    assert member.deregistered_at == NOW
    assert member.token_hash == ""
    assert services.authenticate(registration.token) is None
    assert services.deregister_with_token(registration.token) is Beat.DEREGISTERED
    assert Member.objects.get(pk=other.member.pk).deregistered_at is None


def test_it_refuses_to_deregister_with_a_wrong_or_unknown_token(make_member: MakeMember) -> None:
    registration = make_member()
    assert services.deregister_with_token(tokens.new_token(registration.member.pk)) is Beat.BAD_TOKEN
    assert services.deregister_with_token(tokens.new_token(uuid.uuid4())) is Beat.UNKNOWN
    assert Member.objects.get().deregistered_at is None


def test_it_deregisters_by_instance_id_for_open_enrollment(make_member: MakeMember) -> None:
    registration = make_member(enrolled_openly=True)
    assert services.deregister_by_id(registration.member.pk) is Beat.OK
    assert services.deregister_by_id(registration.member.pk) is Beat.DEREGISTERED
    assert services.deregister_by_id(uuid.uuid4()) is Beat.UNKNOWN


def test_it_rotates_a_token(make_member: MakeMember) -> None:
    registration = make_member()
    rotated = services.rotate_token(registration.member)
    assert rotated.instance_id == registration.member.pk
    assert services.heartbeat(registration.token) is Beat.BAD_TOKEN
    assert services.heartbeat(rotated) is Beat.OK


def test_it_does_not_authenticate_a_member_without_a_token_hash(make_member: MakeMember) -> None:
    registration = make_member()
    Member.objects.update(token_hash="")
    assert services.authenticate(registration.token) is None
    assert services.authenticate(tokens.MemberToken(registration.member.pk, "")) is None


# --- housekeeping -----------------------------------------------------------------------------


def test_it_keeps_deregistered_members_visible_for_one_hour_by_default(
    make_member: MakeMember, frozen: TimeMachineFixture, settings: Any
) -> None:
    assert settings.NETRING_DEREGISTERED_RETENTION == 3600
    services.deregister(make_member().member)
    frozen.shift(timedelta(minutes=59))
    assert services.housekeeping() == services.Housekeeping(purged_deregistered=0, purged_offline=0)
    assert Member.objects.in_status(Status.DEREGISTERED).count() == 1
    frozen.shift(timedelta(minutes=1, seconds=1))
    assert services.housekeeping() == services.Housekeeping(purged_deregistered=1, purged_offline=0)
    assert not Member.objects.exists()


def test_it_honours_the_deregistered_retention_setting(
    make_member: MakeMember, frozen: TimeMachineFixture, settings: Any
) -> None:
    settings.NETRING_DEREGISTERED_RETENTION = 60
    services.deregister(make_member().member)
    frozen.shift(timedelta(seconds=61))
    assert services.housekeeping().purged_deregistered == 1


def test_it_purges_members_long_offline_and_keeps_the_others(make_member: MakeMember, settings: Any) -> None:
    settings.NETRING_OFFLINE_AFTER = 300
    settings.NETRING_OFFLINE_RETENTION = 86400
    online, stale, offline, gone = (make_member(ip=f"10.0.0.{n}").member.pk for n in range(1, 5))
    age(stale, 100)
    age(offline, 300 + 86400 - 1)
    age(gone, 300 + 86400 + 1)
    assert services.housekeeping() == services.Housekeeping(purged_deregistered=0, purged_offline=1)
    assert set(Member.objects.values_list("pk", flat=True)) == {online, stale, offline}


def test_it_never_purges_offline_members_when_offline_retention_is_zero(make_member: MakeMember, settings: Any) -> None:
    settings.NETRING_OFFLINE_RETENTION = 0
    age(make_member().member.pk, 86400 * 365)
    assert services.housekeeping().purged_offline == 0
    assert Member.objects.count() == 1


# --- status and summaries ---------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0, 89, 89.999999, 90, 91, 299, 300, 301, 86400])
def test_it_derives_the_same_status_in_sql_and_in_python(make_member: MakeMember, seconds: float) -> None:
    member_id = make_member().member.pk
    age(member_id, seconds)
    member = Member.objects.with_status().get(pk=member_id)
    assert member.status == member.status_at().value  # type: ignore[attr-defined]


def test_it_counts_members_per_location_and_the_missing_ones(
    make_member: MakeMember, django_assert_num_queries: Any
) -> None:
    Location.objects.create(name="us1", expected_members=4)
    Location.objects.create(name="eu1", expected_members=2)
    Location.objects.create(name="asia1", expected_members=1)
    _online, stale, offline, deregistered = (make_member("us1", ip=f"10.0.0.{n}").member for n in range(1, 5))
    age(stale.pk, 100)
    age(offline.pk, 1000)
    services.deregister(deregistered)
    make_member("asia1", ip="10.1.0.1")
    make_member("asia1", ip="10.1.0.2")

    with django_assert_num_queries(2):
        summaries = {s.location.name: s for s in services.location_summaries()}

    assert summaries["us1"].counts == {"online": 1, "stale": 1, "offline": 1, "deregistered": 1}
    assert (summaries["us1"].present, summaries["us1"].missing) == (2, 2)
    assert (summaries["eu1"].counts, summaries["eu1"].present, summaries["eu1"].missing) == ({}, 0, 2)
    assert (summaries["asia1"].present, summaries["asia1"].missing) == (2, 0)  # more than expected: none missing
