import ipaddress
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from conftest import member_client
from members.models import Location, Member

URL = "/api/v1/members/register/"
BODY = {"location": "us1", "ip": "10.0.0.1", "port": 8757}


def nets(*items: str) -> list[Any]:
    return [ipaddress.ip_network(item) for item in items]


def test_it_needs_the_enrollment_token(db: None, enrollment: str, anon: APIClient) -> None:
    response = anon.post(URL, BODY, format="json")
    assert response.status_code == 401
    assert "enrollment token" in response.json()["detail"]
    assert response.json()["error"] == response.json()["detail"]
    assert not Member.objects.exists()


def test_it_refuses_a_wrong_enrollment_token(db: None, enrollment: str) -> None:
    response = member_client("not-the-enrollment-token").post(URL, BODY, format="json")
    assert response.status_code == 403
    assert "invalid enrollment token" in response.json()["detail"]


def test_it_refuses_everyone_when_no_enrollment_token_is_configured(db: None, settings: Any) -> None:
    settings.NETRING_ENROLLMENT_TOKEN = ""
    assert member_client("").post(URL, BODY, format="json").status_code == 401
    assert member_client("anything").post(URL, BODY, format="json").status_code == 403


def test_it_refuses_a_member_token_as_enrollment_token(
    register: Callable[..., dict[str, Any]], enrollment: str
) -> None:
    token = register()["token"]
    assert member_client(token).post(URL, {**BODY, "ip": "10.0.0.2"}, format="json").status_code == 403


def test_it_registers_and_answers_the_member_token(enrolling_client: APIClient, settings: Any) -> None:
    response = enrolling_client.post(
        URL, {**BODY, "kind": "edge", "hostname": "edge-1", "version": "2.1"}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    member = Member.objects.get()
    assert body["instance_id"] == str(member.pk)
    assert body["token"].startswith(f"nrm_{member.pk.hex}_")
    assert (body["location"], body["ip"], body["port"], body["kind"]) == ("us1", "10.0.0.1", 8757, "edge")
    assert (body["hostname"], body["version"], body["status"]) == ("edge-1", "2.1", "online")
    assert body["heartbeat_interval"] == settings.NETRING_HEARTBEAT_INTERVAL
    assert member_client(body["token"]).post("/api/v1/members/heartbeat/").status_code == 200


def test_it_defaults_port_and_kind(enrolling_client: APIClient) -> None:
    body = enrolling_client.post(URL, {"location": "us1", "ip": "10.0.0.1"}, format="json").json()
    assert (body["port"], body["kind"]) == (8757, "api")


def test_it_re_registers_the_same_instance_and_revokes_the_old_token(enrolling_client: APIClient) -> None:
    first = enrolling_client.post(URL, BODY, format="json").json()
    response = enrolling_client.post(URL, {**BODY, "instance_id": first["instance_id"], "port": 9000}, format="json")
    assert response.status_code == 200
    second = response.json()
    assert second["instance_id"] == first["instance_id"]
    assert second["token"] != first["token"]
    assert Member.objects.get().port == 9000

    old = member_client(first["token"]).post("/api/v1/members/heartbeat/")
    assert old.status_code == 401
    assert old.json()["detail"] == "invalid member token"
    assert member_client(second["token"]).post("/api/v1/members/heartbeat/").status_code == 200


def test_it_registers_a_new_instance_id_the_member_chose(enrolling_client: APIClient) -> None:
    chosen = uuid.uuid4()
    response = enrolling_client.post(URL, {**BODY, "instance_id": str(chosen)}, format="json")
    assert response.status_code == 201
    assert Member.objects.get().pk == chosen


def test_it_refuses_addresses_outside_the_allowed_networks(enrolling_client: APIClient, settings: Any) -> None:
    settings.NETRING_ALLOWED_MEMBER_NETWORKS = nets("10.0.0.0/8", "fd00::/8")
    response = enrolling_client.post(URL, {**BODY, "ip": "192.0.2.10"}, format="json")
    assert response.status_code == 403
    assert "NETRING_ALLOWED_MEMBER_NETWORKS" in response.json()["detail"]
    assert enrolling_client.post(URL, {**BODY, "ip": "2001:db8::1"}, format="json").status_code == 403
    assert enrolling_client.post(URL, {**BODY, "ip": "10.200.0.1"}, format="json").status_code == 201
    assert enrolling_client.post(URL, {**BODY, "ip": "fd00::1"}, format="json").status_code == 201
    assert Member.objects.count() == 2


def test_it_checks_the_client_address_against_the_allowed_networks_when_ip_is_omitted(
    enrolling_client: APIClient, settings: Any
) -> None:
    settings.NETRING_ALLOWED_MEMBER_NETWORKS = nets("10.0.0.0/8")
    response = enrolling_client.post(URL, {"location": "us1"}, format="json", REMOTE_ADDR="192.0.2.10")
    assert response.status_code == 403


def test_it_enrolls_without_a_token_when_enrollment_is_open(db: None, anon: APIClient, settings: Any) -> None:
    settings.NETRING_OPEN_ENROLLMENT = True
    settings.NETRING_OPEN_ENROLLMENT_NETWORKS = []
    response = anon.post(URL, BODY, format="json", REMOTE_ADDR="198.51.100.7")
    assert response.status_code == 201
    assert response.json()["token"].startswith("nrm_")


def test_it_limits_open_enrollment_to_the_listed_networks(db: None, anon: APIClient, settings: Any) -> None:
    settings.NETRING_OPEN_ENROLLMENT = True
    settings.NETRING_OPEN_ENROLLMENT_NETWORKS = nets("10.0.0.0/8")
    assert anon.post(URL, BODY, format="json", REMOTE_ADDR="198.51.100.7").status_code == 401
    assert anon.post(URL, BODY, format="json", REMOTE_ADDR="10.1.2.3").status_code == 201


def test_it_still_accepts_the_enrollment_token_from_outside_the_open_networks(
    enrolling_client: APIClient, settings: Any
) -> None:
    settings.NETRING_OPEN_ENROLLMENT = True
    settings.NETRING_OPEN_ENROLLMENT_NETWORKS = nets("10.0.0.0/8")
    assert enrolling_client.post(URL, BODY, format="json", REMOTE_ADDR="198.51.100.7").status_code == 201


def test_it_refuses_an_unknown_location_when_auto_create_is_off(enrolling_client: APIClient, settings: Any) -> None:
    settings.NETRING_AUTO_CREATE_LOCATIONS = False
    response = enrolling_client.post(URL, BODY, format="json")
    assert response.status_code == 403
    assert "unknown location 'us1'" in response.json()["detail"]
    Location.objects.create(name="us1")
    assert enrolling_client.post(URL, BODY, format="json").status_code == 201


def test_it_creates_the_location_by_default(enrolling_client: APIClient) -> None:
    enrolling_client.post(URL, {**BODY, "location": "eu-west.2"}, format="json")
    assert Location.objects.get().name == "eu-west.2"


@pytest.mark.parametrize(
    ("remote", "expected"),
    [("192.0.2.44", "192.0.2.44"), ("2001:db8::7", "2001:db8::7"), ("::ffff:10.1.1.1", "10.1.1.1")],
)
def test_it_takes_the_client_address_when_ip_is_omitted(
    enrolling_client: APIClient, remote: str, expected: str
) -> None:
    response = enrolling_client.post(URL, {"location": "us1", "port": 8757}, format="json", REMOTE_ADDR=remote)
    assert response.status_code == 201, response.content
    assert response.json()["ip"] == expected
    assert Member.objects.get().ip == expected


def test_it_asks_for_the_ip_when_the_client_address_is_unknown(enrolling_client: APIClient) -> None:
    response = enrolling_client.post(URL, {"location": "us1"}, format="json", REMOTE_ADDR="")
    assert response.status_code == 400
    assert "client address is unknown" in str(response.json()["ip"])


def test_it_stores_ipv4_mapped_addresses_as_ipv4(enrolling_client: APIClient) -> None:
    response = enrolling_client.post(URL, {**BODY, "ip": "::ffff:192.0.2.1"}, format="json")
    assert response.json()["ip"] == "192.0.2.1"


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [
        ("10.0.0.1", "192.0.2.9", "192.0.2.9"),  # one proxy
        ("10.0.0.1", "198.51.100.1, 192.0.2.9, 10.0.0.2", "192.0.2.9"),  # two; left of it: the client's claim
        ("10.0.0.1", " 2001:db8::9 ", "2001:db8::9"),
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),  # every hop a proxy: the first one sent it
        ("192.0.2.66", "192.0.2.9", "192.0.2.66"),  # not through a trusted proxy: the header counts for nothing
        ("::ffff:10.0.0.1", "192.0.2.9", "192.0.2.9"),  # the proxy's IPv4-mapped address is still the proxy
        ("10.0.0.1", "192.0.2.9:5000", None),  # not an address: unknown, not the proxy's
        ("10.0.0.1", "", None),
    ],
)
def test_behind_trusted_proxies_the_client_address_is_the_one_they_forwarded(
    enrolling_client: APIClient, settings: Any, remote: str, forwarded: str, expected: str | None
) -> None:
    settings.NETRING_TRUSTED_PROXIES = nets("10.0.0.0/24")
    response = enrolling_client.post(
        URL, {"location": "us1"}, format="json", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded
    )
    if expected is None:
        assert response.status_code == 400
        assert "client address is unknown" in str(response.json()["ip"])
    else:
        assert response.status_code == 201, response.content
        assert response.json()["ip"] == expected


def test_open_enrollment_networks_apply_to_the_address_a_trusted_proxy_forwarded(
    db: None, anon: APIClient, settings: Any
) -> None:
    settings.NETRING_OPEN_ENROLLMENT = True
    settings.NETRING_OPEN_ENROLLMENT_NETWORKS = nets("192.0.2.0/24")
    settings.NETRING_TRUSTED_PROXIES = nets("10.0.0.1/32")
    through = {"REMOTE_ADDR": "10.0.0.1", "format": "json"}
    assert anon.post(URL, BODY, HTTP_X_FORWARDED_FOR="198.51.100.7", **through).status_code == 401
    assert anon.post(URL, BODY, HTTP_X_FORWARDED_FOR="192.0.2.7", **through).status_code == 201
    # Spoofing from outside the proxy gets nowhere: the peer's own address decides.
    spoofed = anon.post(URL, BODY, format="json", REMOTE_ADDR="198.51.100.7", HTTP_X_FORWARDED_FOR="192.0.2.7")
    assert spoofed.status_code == 401
