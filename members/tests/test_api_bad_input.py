"""Hostile and malformed requests to every write endpoint: always a 4xx with a JSON message.

Each case runs through DRF's APIClient and Django's plain test Client, both set not to raise
the view's exception, so a crash shows as what a client would see: a 500.
"""

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from members import services
from members.models import Location, Member

REGISTER = ("/api/v1/members/register/", "/register")
MEMBER_WRITES = ("/api/v1/members/heartbeat/", "/api/v1/members/deregister/", "/heartbeat", "/deregister")
LOCATION_WRITES = ("/api/v1/locations/", "/api/v1/locations/us1/")
JSON = "application/json"


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    expected: int = 400
    content_type: str = JSON


def j(value: Any) -> bytes:
    return json.dumps(value).encode()


def reg(**fields: Any) -> bytes:
    """A registration body with ``fields`` replaced (a value of ... removes the field)."""
    body = {"location": "us1", "ip": "10.0.0.1", "port": 8757, **fields}
    return j({k: v for k, v in body.items() if v is not ...})


HUGE = 70 * 1024

# Bodies that are not a JSON object, or not JSON at all, for every write endpoint.
SHAPE_CASES = [
    Case("invalid json", b'{"location": '),
    Case("trailing garbage", b'{"location": "us1"} x'),
    Case("json array", b"[]"),
    Case("json array of objects", j([{"location": "us1"}])),
    Case("json string", b'"us1"'),
    Case("json number", b"42"),
    Case("json true", b"true"),
    Case("json null", b"null"),
    Case("NaN", b'{"port": NaN}'),
    Case("Infinity", b'{"port": Infinity}'),
    Case("invalid utf-8", b'{"location": "\xff\xfe"}'),
    Case("utf-16 bom", '{"location": "us1"}'.encode("utf-16")),
    Case("deep nesting", b"[" * 50_000 + b"]" * 50_000, expected=413),
    Case("deep nesting under the size limit", b"[" * 30_000 + b"]" * 30_000),
    Case("number with 5000 digits", b'{"port": 1' + b"0" * 5000 + b"}"),
    Case("body over 64 KiB", reg(version="x" * HUGE), expected=413),
    Case("text/plain", b"location=us1", expected=415, content_type="text/plain"),
    Case("xml", b"<register/>", expected=415, content_type="application/xml"),
    Case("form", b"location=us1&ip=10.0.0.1", expected=415, content_type="application/x-www-form-urlencoded"),
    Case("multipart", b"--x\r\n\r\n--x--", expected=415, content_type="multipart/form-data; boundary=x"),
]

REGISTER_CASES = [
    *SHAPE_CASES,
    Case("empty object", j({})),
    Case("location missing", reg(location=...)),
    Case("location null", reg(location=None)),
    Case("location empty", reg(location="")),
    Case("location with spaces", reg(location="us 1")),
    Case("location script", reg(location="<script>alert(1)</script>")),
    Case("location 64 chars", reg(location="a" * 64)),
    Case("location unicode", reg(location="zürich")),
    Case("location starting with a dash", reg(location="-us1")),
    Case("location path", reg(location="../etc")),
    Case("location NUL", reg(location="us\x001")),
    Case("location 10k chars", reg(location="u" * 10_000)),
    Case("location list", reg(location=["us1"])),
    Case("location object", reg(location={"name": "us1"})),
    Case("location bool", reg(location=True)),
    Case("port 0", reg(port=0)),
    Case("port 65536", reg(port=65536)),
    Case("port -1", reg(port=-1)),
    Case("port abc", reg(port="abc")),
    Case("port 1e20", b'{"location": "us1", "ip": "10.0.0.1", "port": 1e20}'),
    Case("port 2**64", reg(port=2**64)),
    Case("port true", reg(port=True)),
    Case("port 1.5", reg(port=1.5)),
    Case("port null", reg(port=None)),
    Case("port list", reg(port=[8757])),
    Case("ip 999.1.1.1", reg(ip="999.1.1.1")),
    Case("ip ::zz", reg(ip="::zz")),
    Case("ip empty", reg(ip="")),
    Case("ip null", reg(ip=None)),
    Case("ip with prefix", reg(ip="10.0.0.0/8")),
    Case("ip with zone", reg(ip="fe80::1%eth0")),
    Case("ip hostname", reg(ip="localhost")),
    Case("ip number", reg(ip=167772161)),
    Case("ip NUL", reg(ip="10.0.0.1\x00")),
    Case("ip 10k chars", reg(ip="1" * 10_000)),
    Case("kind unknown", reg(kind="robot")),
    Case("kind number", reg(kind=1)),
    Case("hostname script", reg(hostname="<img src=x onerror=alert(1)>")),
    Case("hostname NUL", reg(hostname="edge\x001")),
    Case("hostname 10k chars", reg(hostname="h" * 10_000)),
    Case("version NUL", reg(version="1.0\x00")),
    Case("version 10k chars", reg(version="v" * 10_000)),
    Case("version object", reg(version={"major": 1})),
    Case("version lone surrogate", b'{"location": "us1", "ip": "10.0.0.1", "version": "\\ud800"}'),
    Case("instance_id not a uuid", reg(instance_id="abc")),
    Case("instance_id number", reg(instance_id=5)),
    Case("instance_id true", reg(instance_id=True)),
    Case("instance_id empty", reg(instance_id="")),
    Case("instance_id NUL", reg(instance_id="\x00")),
    Case("instance_id sql", reg(instance_id="' OR 1=1 --")),
    Case("instance_id 10k chars", reg(instance_id="a" * 10_000)),
]

MEMBER_CASES = [
    *SHAPE_CASES,
    Case("instance_id lone surrogate", b'{"instance_id": "\\udfff"}'),
    Case("instance_id not a uuid", j({"instance_id": "abc"})),
    Case("instance_id number", j({"instance_id": 5})),
    Case("instance_id true", j({"instance_id": True})),
    Case("instance_id null", j({"instance_id": None})),
    Case("instance_id empty", j({"instance_id": ""})),
    Case("instance_id NUL", j({"instance_id": "\x00"})),
    Case("instance_id list", j({"instance_id": [str(uuid.uuid4())]})),
    Case("instance_id 10k chars", j({"instance_id": "a" * 10_000})),
    Case("instance_id of another member", j({"instance_id": str(uuid.uuid4())})),
]

LOCATION_CASES = [
    *SHAPE_CASES,
    Case("name with spaces", j({"name": "us 1"})),
    Case("name script", j({"name": "<script>"})),
    Case("name 64 chars", j({"name": "a" * 64})),
    Case("name unicode", j({"name": "zürich"})),
    Case("name NUL", j({"name": "a\x00"})),
    Case("expected_members -1", j({"name": "x1", "expected_members": -1})),
    Case("expected_members 1e20", b'{"name": "x1", "expected_members": 1e20}'),
    Case("expected_members 2**40", j({"name": "x1", "expected_members": 2**40})),
    Case("expected_members abc", j({"name": "x1", "expected_members": "abc"})),
    Case("criticality unknown", j({"name": "x1", "criticality": "extreme"})),
    Case("description 10k chars", j({"name": "x1", "description": "d" * 10_000})),
    Case("description NUL", j({"name": "x1", "description": "a\x00b"})),
    Case("description lone surrogate", b'{"name": "x1", "description": "\\udfff"}'),
]


def ids(cases: list[Case]) -> list[str]:
    return [case.name for case in cases]


ClientFactory = Callable[[str], Client]


@pytest.fixture(params=["APIClient", "Client"])
def client_with(request: pytest.FixtureRequest, db: None) -> ClientFactory:
    """A test client of either kind that returns a 500 instead of raising, sending ``header``."""
    kind = APIClient if request.param == "APIClient" else Client

    def make(header: str) -> Client:
        client = kind(raise_request_exception=False, HTTP_AUTHORIZATION=header)
        return client

    return make


@pytest.fixture
def member(make_member: Callable[..., services.Registration]) -> services.Registration:
    return make_member("us1", ip="10.0.0.1")


def assert_client_error(response: Any, expected: int) -> None:
    assert response.status_code != 500, response.content[:500]
    assert response.status_code == expected, response.content[:500]
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert isinstance(body, dict)
    assert body, "a 4xx answer carries a message"


@pytest.mark.parametrize("path", REGISTER)
@pytest.mark.parametrize("case", REGISTER_CASES, ids=ids(REGISTER_CASES))
def test_it_answers_4xx_to_a_bad_registration(
    client_with: ClientFactory, enrollment: str, path: str, case: Case
) -> None:
    client = client_with(f"Token {enrollment}")
    response = client.post(path, case.body, content_type=case.content_type)
    assert_client_error(response, case.expected)
    assert not Member.objects.exists()


@pytest.mark.parametrize("path", MEMBER_WRITES)
@pytest.mark.parametrize("case", MEMBER_CASES, ids=ids(MEMBER_CASES))
def test_it_answers_4xx_to_a_bad_heartbeat_or_deregistration(
    client_with: ClientFactory, member: services.Registration, path: str, case: Case
) -> None:
    before = Member.objects.values("last_seen", "deregistered_at", "token_hash").get()
    response = client_with(f"Token {member.token}").post(path, case.body, content_type=case.content_type)
    assert_client_error(response, case.expected)
    assert Member.objects.values("last_seen", "deregistered_at", "token_hash").get() == before


@pytest.mark.parametrize("path", LOCATION_WRITES)
@pytest.mark.parametrize("case", LOCATION_CASES, ids=ids(LOCATION_CASES))
def test_it_answers_4xx_to_a_bad_location_write(client_with: ClientFactory, staff: Any, path: str, case: Case) -> None:
    Location.objects.create(name="us1", expected_members=1)
    client = client_with("")
    client.force_login(staff)
    method = client.post if path.endswith("locations/") else client.patch
    response = method(path, case.body, content_type=case.content_type)
    assert_client_error(response, case.expected)
    assert list(Location.objects.values_list("name", "expected_members", "description")) == [("us1", 1, "")]


@pytest.mark.parametrize(
    "header",
    [
        "Token nrm_" + "0" * 32 + "_" + "é" * 30,
        "Token nrm_" + "0" * 32 + "_" + "\x00" * 30,
        "Token nrm_" + "0" * 32 + "_" + "x" * 10_000,
        "Token " + "x" * 10_000,
        "Token a b c",
        "Token \x00",
        "Bearer ",
        "Token nrm_" + uuid.uuid4().hex + "_" + "x" * 40,  # well-formed, unknown member
    ],
    ids=["latin-1 secret", "NUL secret", "10k secret", "10k token", "three words", "NUL", "empty bearer", "unknown"],
)
@pytest.mark.parametrize("path", [*MEMBER_WRITES, *REGISTER])
def test_it_answers_4xx_to_a_hostile_authorization_header(
    client_with: ClientFactory, enrollment: str, path: str, header: str
) -> None:
    response = client_with(header).post(path, j({}), content_type=JSON)
    assert 400 <= response.status_code < 500, response.content[:500]
    assert response.json()


@pytest.mark.parametrize(
    "header",
    ["Token abc\x00def", "Token " + "x" * 10_000, "Token a b", "Token nrm_" + "0" * 32 + "_" + "x" * 40, "Token é"],
    ids=["NUL", "10k", "three words", "unknown member", "latin-1"],
)
@pytest.mark.parametrize("path", ["/api/v1/members/", "/api/v1/locations/", "/members"])
def test_it_answers_401_to_a_hostile_token_on_reads(client_with: ClientFactory, path: str, header: str) -> None:
    response = client_with(header).get(path)
    assert response.status_code == 401, response.content[:500]
    assert response.json()["detail"]


@pytest.mark.parametrize(
    "suffix",
    [
        "not-a-uuid",
        "1",
        "%00",
        "' OR 1=1 --",
        "%3Cscript%3E",
        "0" * 1000,
        "3f2b8c1e-6a4d-4e1f-9b7a-0c5d2e8f1a94x",
        "3f2b8c1e6a4d4e1f9b7a0c5d2e8f1a94",
        "..",
    ],
)
@pytest.mark.parametrize("method", ["get", "delete"])
def test_it_answers_404_for_a_member_path_that_is_not_a_uuid(
    client_with: ClientFactory, staff: Any, suffix: str, method: str
) -> None:
    client = client_with("")
    client.force_login(staff)
    response = getattr(client, method)(f"/api/v1/members/{suffix}/")
    assert response.status_code == 404, response.content[:500]
    assert response.json()["detail"]


def test_it_answers_404_for_an_unknown_member(client_with: ClientFactory, staff: Any) -> None:
    client = client_with("")
    client.force_login(staff)
    response = client.get(f"/api/v1/members/{uuid.uuid4()}/")
    assert response.status_code == 404
    assert response.json()["detail"]
    assert client.delete(f"/api/v1/members/{uuid.uuid4()}/").status_code == 404


@pytest.mark.parametrize("name", ["unknown1", "no%20spaces", "a" * 64, "%00", "-x"])
def test_it_answers_404_for_an_unknown_or_impossible_location(
    client_with: ClientFactory, staff: Any, name: str
) -> None:
    client = client_with("")
    client.force_login(staff)
    response = client.get(f"/api/v1/locations/{name}/")
    assert response.status_code == 404, response.content[:500]
    assert response.json()["detail"]


@pytest.mark.parametrize("path", [*REGISTER, *MEMBER_WRITES])
@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_it_answers_405_to_other_methods_on_write_endpoints(
    client_with: ClientFactory, enrollment: str, path: str, method: str
) -> None:
    response = getattr(client_with(f"Token {enrollment}"), method)(path)
    assert response.status_code == 405
    assert response.json()["detail"]


@pytest.mark.parametrize(
    "query",
    ["limit=abc", "offset=-5", "limit=99999999999999999999", "offset=99999999999999999999", "ordering=__class__"],
)
@pytest.mark.parametrize("path", ["/api/v1/members/", "/api/v1/locations/"])
def test_it_ignores_nonsense_paging_parameters(
    viewer_client: APIClient, make_member: Callable[..., Any], path: str, query: str
) -> None:
    # With rows present, so that the page is really read from PostgreSQL (an empty table
    # answers before any LIMIT reaches the database).
    make_member("us1", "10.0.0.1")
    make_member("eu1", "10.0.0.2")

    response = viewer_client.get(f"{path}?{query}")

    assert response.status_code == 200, response.content[:500]
    body = response.json()
    assert body["count"] == 2
    assert len(body["results"]) <= 10_000
