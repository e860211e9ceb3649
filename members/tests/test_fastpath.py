"""The heartbeat fast path answers exactly as the full stack does, and leaves every other case to it.

Both are driven as gunicorn drives them: a WSGI environ in, status, headers and body out,
checked by wsgiref's PEP 3333 validator. The full stack is Django's own WSGI handler, the one the
fast path wraps; a spy on it tells which of the two answered.

The tests commit (transactional): Django's handler closes a connection left outside autocommit at
each request, as the fast path does, and a test's wrapping transaction would be that.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from wsgiref.validate import validator

import psycopg2
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection
from django.utils import timezone

from members import fastpath, services
from members.models import Member

pytestmark = pytest.mark.django_db(transaction=True)

MakeMember = Callable[..., services.Registration]
V1, SEED = "/api/v1/members/heartbeat/", "/heartbeat"
PATHS = [V1, SEED]


def environ(path: str, token: object | None, body: bytes | None = None, **meta: Any) -> dict[str, Any]:
    """A POST's WSGI environ as gunicorn builds it; ``meta`` adds keys, or removes them with None."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "netring-test",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body or b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if token is not None:
        env["HTTP_AUTHORIZATION"] = f"Token {token}"
    if body is not None:
        env["CONTENT_LENGTH"] = str(len(body))
        env["CONTENT_TYPE"] = "application/json"
    env.update(meta)
    return {key: value for key, value in env.items() if value is not None}


@dataclass(frozen=True)
class Answer:
    status: str
    headers: list[tuple[str, str]]
    body: bytes


def call(app: Any, env: dict[str, Any], validate: bool = True) -> Answer:
    """What a WSGI server sends for ``env``: the application called, its body read, then closed."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        started.append((status, headers))
        return lambda data: None

    result: Iterable[bytes] = (validator(app) if validate else app)(env, start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()  # type: ignore[attr-defined]  # every WSGI result here has one
    status, headers = started[0]
    return Answer(status, list(headers), body)


class Stack:
    """Django's WSGI handler, and the fast path in front of it, built from the settings of now."""

    def __init__(self) -> None:
        self.django = WSGIHandler()
        self.fast = fastpath.HeartbeatFastPath(self._spy)
        self.passed = 0

    def _spy(self, env: dict[str, Any], start_response: Any) -> Any:
        self.passed += 1
        return self.django(env, start_response)

    def full(self, env: dict[str, Any], validate: bool = True) -> Answer:
        return call(self.django, env, validate)

    def through_fast_path(self, env: dict[str, Any], validate: bool = True) -> tuple[Answer, bool]:
        """The answer, and whether Django gave it."""
        before = self.passed
        answer = call(self.fast, env, validate)
        return answer, self.passed > before


def named(instance_id: object, extra: str = "") -> bytes:
    """A heartbeat body naming ``instance_id``."""
    return f'{{"instance_id": "{instance_id}"{extra}}}'.encode()


def last_seen_moves(member: Member) -> Callable[[], bool]:
    Member.objects.filter(pk=member.pk).update(last_seen=timezone.now() - timedelta(hours=1))
    before = Member.objects.get(pk=member.pk).last_seen
    return lambda: Member.objects.get(pk=member.pk).last_seen > before


# Heartbeats the registry accepts: (path, token, own instance id) -> environ.
ACCEPTED: dict[str, Callable[[str, str, uuid.UUID], dict[str, Any]]] = {
    "no body": lambda path, token, own: environ(path, token),
    "empty body": lambda path, token, own: environ(path, token, b""),
    "empty object": lambda path, token, own: environ(path, token, b"{}"),
    "own id": lambda path, token, own: environ(path, token, named(own)),
    "own id as hex, extra key": lambda path, token, own: environ(path, token, named(own.hex, ', "version": "1.2"')),
    "own id as URN": lambda path, token, own: environ(path, token, named(f"urn:uuid:{own}")),
    "charset utf-8": lambda path, token, own: environ(
        path, token, named(own), CONTENT_TYPE="application/json; charset=utf-8"
    ),
    "form type, empty body": lambda path, token, own: environ(
        path, token, b"", CONTENT_TYPE="application/x-www-form-urlencoded"
    ),
    "Accept JSON": lambda path, token, own: environ(path, token, HTTP_ACCEPT="application/json"),
    "Accept anything": lambda path, token, own: environ(path, token, HTTP_ACCEPT="*/*"),
    "Bearer scheme": lambda path, token, own: environ(path, None, HTTP_AUTHORIZATION=f"Bearer {token}"),
    "other allowed host": lambda path, token, own: environ(path, token, HTTP_HOST="localhost"),
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_it_answers_an_accepted_heartbeat_itself_exactly_as_the_full_stack(make_member: MakeMember, case: str) -> None:
    registration = make_member()
    build = ACCEPTED[case]
    stack = Stack()
    for path in PATHS:
        full = stack.full(build(path, str(registration.token), registration.member.pk))
        moved = last_seen_moves(registration.member)

        fast, by_django = stack.through_fast_path(build(path, str(registration.token), registration.member.pk))

        assert fast == full, path
        assert (fast.status, by_django, moved()) == ("200 OK", False, True), path
        names = {name for name, _ in fast.headers}
        assert names >= {"Content-Type", "Content-Length", "Allow", "X-Frame-Options", "X-Content-Type-Options"}
        assert json.loads(fast.body)["instance_id"] == str(registration.member.pk)


# Everything else, Django's to answer: (path, token, own instance id) -> environ. Some are errors,
# some are heartbeats the views accept though the fast path is not sure of them.
FALL_THROUGH: dict[str, Callable[[str, str, uuid.UUID], dict[str, Any]]] = {
    "no token": lambda path, token, own: environ(path, None, named(own)),
    "tokenless seed heartbeat": lambda path, token, own: environ(path, None, named(own)),
    "malformed token": lambda path, token, own: environ(path, "nrm_nonsense"),
    "user token": lambda path, token, own: environ(path, "0123456789abcdef0123456789abcdef01234567"),
    "other scheme": lambda path, token, own: environ(path, None, HTTP_AUTHORIZATION=f"Basic {token}"),
    "bad secret": lambda path, token, own: environ(path, token[:-4] + "AAAA"),
    "unknown member": lambda path, token, own: environ(path, token),
    "deregistered": lambda path, token, own: environ(path, token),
    "other id": lambda path, token, own: environ(path, token, named(uuid.uuid4())),
    "null id": lambda path, token, own: environ(path, token, b'{"instance_id": null}'),
    "numeric id": lambda path, token, own: environ(path, token, b'{"instance_id": 7}'),
    "not a UUID": lambda path, token, own: environ(path, token, b'{"instance_id": "7"}'),
    "NaN": lambda path, token, own: environ(path, token, named(own, ', "load": NaN')),
    "Infinity": lambda path, token, own: environ(path, token, b'{"load": -Infinity}'),
    "a list": lambda path, token, own: environ(path, token, b"[1, 2]"),
    "a string": lambda path, token, own: environ(path, token, b'"%s"' % str(own).encode()),
    "not JSON": lambda path, token, own: environ(path, token, b"{instance_id"),
    "only blanks": lambda path, token, own: environ(path, token, b"   "),
    "not UTF-8": lambda path, token, own: environ(path, token, b'{"version": "\xff"}'),
    "deeply nested, valid": lambda path, token, own: environ(
        path, token, named(own, ', "extra": ' + "[" * 40 + "]" * 40)
    ),
    "form body": lambda path, token, own: environ(
        path, token, f"instance_id={own}".encode(), CONTENT_TYPE="application/x-www-form-urlencoded"
    ),
    "text body": lambda path, token, own: environ(path, token, b"{}", CONTENT_TYPE="text/plain"),
    "no content type": lambda path, token, own: environ(path, token, b"{}", CONTENT_TYPE=None),
    "latin-1 JSON": lambda path, token, own: environ(
        path, token, '{"version": "é"}'.encode("latin-1"), CONTENT_TYPE="application/json; charset=latin-1"
    ),
    "oversized body": lambda path, token, own: environ(path, token, b'{"pad": "%s"}' % (b"x" * 64 * 1024)),
    "body cut short": lambda path, token, own: environ(path, token, b'{"instance_id": "', CONTENT_LENGTH="40"),
    "disallowed host": lambda path, token, own: environ(path, token, HTTP_HOST="evil.example"),
    "no Host header": lambda path, token, own: environ(path, token, HTTP_HOST=None),
    "Accept XML": lambda path, token, own: environ(path, token, b"{}", HTTP_ACCEPT="application/xml"),
    "Accept indented JSON": lambda path, token, own: environ(path, token, HTTP_ACCEPT="application/json; indent=4"),
    "query string": lambda path, token, own: environ(path, token, named(own), QUERY_STRING="format=json"),
    "cookie": lambda path, token, own: environ(path, token, HTTP_COOKIE="sessionid=stale"),
    "GET": lambda path, token, own: environ(path, token, REQUEST_METHOD="GET"),
    "PUT": lambda path, token, own: environ(path, token, b"{}", REQUEST_METHOD="PUT"),
}
# What Django answers them, on both paths unless a path is named: the cases test what they say.
DJANGO_SAYS: dict[str, int | dict[str, int]] = {
    "no token": 401,
    "tokenless seed heartbeat": {V1: 401, SEED: 200},  # under NETRING_OPEN_ENROLLMENT
    "malformed token": 401,
    "user token": 401,
    "other scheme": 401,
    "bad secret": 401,
    "unknown member": 404,
    "deregistered": 410,
    "other id": 400,
    "null id": 400,
    "numeric id": 400,
    "not a UUID": 400,
    "NaN": 400,
    "Infinity": 400,
    "a list": 400,
    "a string": 400,
    "not JSON": 400,
    "only blanks": 400,
    "not UTF-8": 400,
    "deeply nested, valid": 200,
    "form body": 415,
    "text body": 415,
    "no content type": 415,
    "latin-1 JSON": 200,
    "oversized body": 413,
    "body cut short": 400,
    "disallowed host": 400,
    "no Host header": 200,  # rebuilt from SERVER_NAME and SERVER_PORT
    "Accept XML": 406,
    "Accept indented JSON": 200,
    "query string": 200,
    "cookie": 200,
    "GET": 405,
    "PUT": 405,
}


@pytest.mark.parametrize("case", FALL_THROUGH)
def test_it_leaves_everything_else_to_django_which_answers_as_without_it(
    make_member: MakeMember, settings: Any, case: str
) -> None:
    registration = make_member(enrolled_openly=case == "tokenless seed heartbeat")
    if case == "tokenless seed heartbeat":
        settings.NETRING_OPEN_ENROLLMENT = True
    elif case == "unknown member":
        Member.objects.all().delete()
    elif case == "deregistered":
        services.deregister(registration.member)
    build, says = FALL_THROUGH[case], DJANGO_SAYS[case]
    stack = Stack()
    for path in PATHS:
        status = says[path] if isinstance(says, dict) else says
        full = stack.full(build(path, str(registration.token), registration.member.pk))
        # A heartbeat the views accept, the fast path not: the body it read reached them whole.
        moved = last_seen_moves(registration.member) if status == 200 else lambda: True

        fast, by_django = stack.through_fast_path(build(path, str(registration.token), registration.member.pk))

        assert fast == full, path
        assert (fast.status.split()[0], by_django, moved()) == (str(status), True, True), path


@pytest.mark.parametrize(
    "case", ["CONTENT_LENGTH not a number", "CONTENT_LENGTH with a sign", "HTTP_CONTENT_LENGTH", "unreadable body"]
)
def test_what_a_server_should_not_send_is_django_s_to_answer_too(
    make_member: MakeMember, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    registration = make_member()
    token, body = str(registration.token), named(registration.member.pk)

    def build() -> dict[str, Any]:
        if case == "CONTENT_LENGTH not a number":
            return environ(V1, token, body, CONTENT_LENGTH="many")
        if case == "CONTENT_LENGTH with a sign":
            return environ(V1, token, body, CONTENT_LENGTH=f"+{len(body)}")
        if case == "HTTP_CONTENT_LENGTH":
            return environ(V1, token, body, HTTP_CONTENT_LENGTH=str(len(body)), CONTENT_LENGTH=None)
        return environ(V1, token, body, **{"wsgi.input": Unreadable()})

    stack = Stack()
    with caplog.at_level(logging.CRITICAL, "django.request"):  # the unreadable body is a logged 500
        full = stack.full(build(), validate=False)
        fast, by_django = stack.through_fast_path(build(), validate=False)

    assert fast == full
    assert by_django
    assert not [r for r in caplog.records if r.name == fastpath.__name__]


class Unreadable(io.RawIOBase):
    """A body the client stopped sending."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise ConnectionResetError("the client went away")


def test_x_forwarded_host_is_the_host_when_django_is_told_so(make_member: MakeMember, settings: Any) -> None:
    settings.USE_X_FORWARDED_HOST = True
    registration = make_member()
    token = str(registration.token)
    stack = Stack()
    for forwarded, host, answered_by_django in [
        ("localhost", "evil.example", False),
        ("evil.example", "localhost", True),
    ]:

        def build(forwarded: str = forwarded, host: str = host) -> dict[str, Any]:
            return environ(V1, token, HTTP_X_FORWARDED_HOST=forwarded, HTTP_HOST=host)

        full = stack.full(build())
        fast, by_django = stack.through_fast_path(build())
        assert (fast, by_django) == (full, answered_by_django)


@pytest.mark.parametrize(
    "changes",
    [
        {"SECURE_REFERRER_POLICY": "no-referrer", "SECURE_CROSS_ORIGIN_OPENER_POLICY": None},
        {"SECURE_CONTENT_TYPE_NOSNIFF": False, "X_FRAME_OPTIONS": "SAMEORIGIN"},
        {"MIDDLEWARE": ["django.middleware.security.SecurityMiddleware"]},  # no Content-Length, no X-Frame-Options
        {"NETRING_HEARTBEAT_INTERVAL": 7},
    ],
    ids=["referrer and opener policy", "nosniff and frame options", "security middleware only", "interval"],
)
def test_its_headers_and_body_follow_the_settings_as_the_full_stack_s(
    make_member: MakeMember, settings: Any, changes: dict[str, Any]
) -> None:
    for name, value in changes.items():
        setattr(settings, name, value)
    registration = make_member()
    stack = Stack()
    for path in PATHS:
        full = stack.full(environ(path, registration.token))
        fast, by_django = stack.through_fast_path(environ(path, registration.token))
        assert (fast, by_django) == (full, False)


@pytest.mark.parametrize(
    "changes",
    [
        {"SECURE_SSL_REDIRECT": True},
        {"SECURE_HSTS_SECONDS": 3600},
        {"CSRF_USE_SESSIONS": True},
        {"PREPEND_WWW": True},
        {"MIDDLEWARE_PLUS": "django.middleware.gzip.GZipMiddleware"},
    ],
    ids=["SSL redirect", "HSTS", "CSRF in sessions", "prepend www", "unknown middleware"],
)
def test_settings_it_cannot_answer_for_turn_it_off(
    make_member: MakeMember, settings: Any, changes: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    for name, value in changes.items():
        if name == "MIDDLEWARE_PLUS":
            settings.MIDDLEWARE = [value, *settings.MIDDLEWARE]
        else:
            setattr(settings, name, value)
    registration = make_member()
    with caplog.at_level(logging.WARNING, fastpath.__name__):
        stack = Stack()

    assert stack.fast.routes == {}
    assert "heartbeat fast path off" in caplog.text
    for url_scheme in ("http", "https"):
        env = {"wsgi.url_scheme": url_scheme}
        full = stack.full(environ(V1, registration.token, **env))
        fast, by_django = stack.through_fast_path(environ(V1, registration.token, **env))
        assert (fast, by_django) == (full, True)


def test_the_served_application_is_the_fast_path_in_front_of_django(
    make_member: MakeMember, monkeypatch: pytest.MonkeyPatch
) -> None:
    from netring_site import wsgi

    registration = make_member()
    assert isinstance(wsgi.django_handler, WSGIHandler)
    assert isinstance(wsgi.application, fastpath.HeartbeatFastPath)
    assert wsgi.application.django is wsgi.django_handler
    assert set(wsgi.application.routes) == {V1, SEED}  # on under the project's settings
    passed: list[str] = []

    def spy(env: dict[str, Any], start_response: Any) -> Any:
        passed.append(env["PATH_INFO"])
        return wsgi.django_handler(env, start_response)

    monkeypatch.setattr(wsgi.application, "django", spy)
    assert call(wsgi.application, environ(V1, registration.token)).status == "200 OK"
    assert call(wsgi.application, environ("/health", None, REQUEST_METHOD="GET")).status.startswith(("200", "503"))
    assert passed == ["/health"]


def test_a_connection_the_database_dropped_costs_no_heartbeat_an_error(make_member: MakeMember) -> None:
    # The fast path skips Django's per-request SELECT 1: the heartbeat is the check, and a dead
    # connection (PostgreSQL restarted, a proxy timed it out) is replaced within the request.
    registration = make_member()
    stack = Stack()
    full = stack.full(environ(V1, registration.token))
    assert stack.through_fast_path(environ(V1, registration.token)) == (full, False)
    pid = connection.connection.info.backend_pid
    with psycopg2.connect(**connection.get_connection_params()) as other, other.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        assert cursor.fetchone() == (True,)

    answer, by_django = stack.through_fast_path(environ(V1, registration.token))

    assert (answer.status, json.loads(answer.body)["status"], by_django) == ("200 OK", "ok", True)
    assert connection.connection.info.backend_pid != pid


def test_it_closes_a_connection_past_conn_max_age_before_and_after_the_answer(make_member: MakeMember) -> None:
    # Without request_started and request_finished, the fast path does what their receivers do.
    registration = make_member()
    stack = Stack()
    stack.through_fast_path(environ(V1, registration.token))
    pid = connection.connection.info.backend_pid
    connection.close_at = time.monotonic() - 1  # older than CONN_MAX_AGE

    answer, by_django = stack.through_fast_path(environ(V1, registration.token))

    assert (answer.status, by_django) == ("200 OK", False)
    assert connection.connection.info.backend_pid != pid  # closed before, a new one for the UPDATE

    result = stack.fast(environ(V1, registration.token), lambda status, headers: None)
    connection.close_at = time.monotonic() - 1  # grew old during the request
    assert b"".join(result)
    assert connection.connection is not None
    result.close()  # type: ignore[attr-defined]  # the server, once the answer is sent
    assert connection.connection is None


def test_it_empties_the_debug_query_log_as_each_request_does(make_member: MakeMember, settings: Any) -> None:
    settings.DEBUG = True
    registration = make_member()
    stack = Stack()
    for _ in range(3):
        assert stack.through_fast_path(environ(V1, registration.token))[1] is False

    assert len(connection.queries) == 1
