"""The heartbeat fast path answers exactly as the views do, and leaves every other case to them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
from django.db import connection
from django.test import Client

from members import services
from members.models import Member

FAST_PATH = "members.middleware.HeartbeatFastPath"
MakeMember = Callable[..., services.Registration]
PATHS = ["/api/v1/members/heartbeat/", "/heartbeat"]


def use_fast_path(settings: Any, on: bool) -> None:
    others = [m for m in settings.MIDDLEWARE if m != FAST_PATH]
    settings.MIDDLEWARE = [others[0], FAST_PATH, *others[1:]] if on else others  # after SecurityMiddleware


def answer(
    settings: Any, fast: bool, path: str, body: str | None, token: str, content_type: str = "application/json"
) -> tuple[int, Any, bool]:
    """(status, JSON body, whether the views answered) with or without the fast path."""
    use_fast_path(settings, fast)
    client = Client(HTTP_HOST="127.0.0.1")
    response = client.generic(
        "POST",
        path,
        (body or "").encode(),
        content_type=None if body is None else content_type,  # None: no body, no Content-Type
        HTTP_AUTHORIZATION=f"Token {token}",
    )
    # DRF's views name the allowed methods; the fast path does not.
    return response.status_code, response.json(), response.has_header("Allow")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "body",
    [None, "", "{}", '{"instance_id": "%(own)s"}', '{"instance_id": "%(hex)s", "version": "1.2"}'],
    ids=["no body", "empty", "empty object", "own id", "own id as hex, extra key"],
)
def test_it_answers_an_accepted_heartbeat_itself_as_the_views_would(
    make_member: MakeMember, settings: Any, path: str, body: str | None
) -> None:
    registration = make_member()
    own = registration.member.pk
    text = None if body is None else body % {"own": own, "hex": own.hex}

    slow = answer(settings, False, path, text, str(registration.token))
    fast = answer(settings, True, path, text, str(registration.token))

    assert slow[:2] == fast[:2] and slow[0] == 200
    assert (slow[2], fast[2]) == (True, False)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "case",
    ["other id", "null id", "numeric id", "NaN", "a list", "not JSON", "form body", "bad secret", "malformed token",
     "unknown member", "deregistered", "bad host"],
)  # fmt: skip
def test_it_leaves_everything_else_to_the_views(make_member: MakeMember, settings: Any, path: str, case: str) -> None:
    registration = make_member()
    token, body, content_type = (
        str(registration.token),
        f'{{"instance_id": "{registration.member.pk}"}}',
        "application/json",
    )
    if case == "other id":
        body = f'{{"instance_id": "{uuid.uuid4()}"}}'
    elif case == "null id":
        body = '{"instance_id": null}'
    elif case == "numeric id":
        body = '{"instance_id": 7}'
    elif case == "NaN":
        body = f'{{"instance_id": "{registration.member.pk}", "load": NaN}}'
    elif case == "a list":
        body = "[1, 2]"
    elif case == "not JSON":
        body = "{instance_id"
    elif case == "form body":
        content_type, body = "application/x-www-form-urlencoded", f"instance_id={registration.member.pk}"
    elif case == "bad secret":
        token = token[:-4] + "AAAA"
    elif case == "malformed token":
        token = "nrm_nonsense"
    elif case == "unknown member":
        Member.objects.all().delete()
    elif case == "deregistered":
        services.deregister(registration.member)

    def run(fast: bool) -> tuple[int, Any]:
        if case == "bad host":
            use_fast_path(settings, fast)
            response = Client(HTTP_HOST="evil.example").post(path, body, content_type="application/json",
                                                               HTTP_AUTHORIZATION=f"Token {token}")  # fmt: skip
            return response.status_code, None
        status, document, by_views = answer(settings, fast, path, body, token, content_type)
        assert by_views or status >= 400
        return status, document

    slow, fast = run(False), run(True)

    assert slow == fast
    assert slow[0] >= 400


def test_a_connection_the_database_dropped_costs_no_heartbeat_an_error(
    transactional_db: None, make_member: MakeMember, settings: Any
) -> None:
    # The fast path skips Django's per-request SELECT 1: the heartbeat is the check, and a dead
    # connection (PostgreSQL restarted, a proxy timed it out) is replaced within the request.
    registration = make_member()
    assert answer(settings, True, PATHS[0], None, str(registration.token))[0] == 200
    pid = connection.connection.info.backend_pid
    with psycopg2.connect(**connection.get_connection_params()) as other, other.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        assert cursor.fetchone() == (True,)

    status, body, by_views = answer(settings, True, PATHS[0], None, str(registration.token))

    assert (status, body["status"], by_views) == (200, "ok", True)
    assert connection.connection.info.backend_pid != pid
