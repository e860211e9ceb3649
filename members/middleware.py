"""The heartbeat fast path: the registry's hottest request, answered without the full stack.

Every member heartbeats every 30-45 s, so at fleet size this one request is most of the web's
work. Sessions, CSRF, messages, URL resolution, DRF's negotiation and serializers cost about as
much CPU as everything else together and do nothing for it. This middleware (right after
``SecurityMiddleware``) answers the common case, a well-formed heartbeat with the member's
own token that the registry accepts, with the same service call and the same answer as the
views. Anything else (no or malformed token, a body that is not the expected JSON, a
tokenless seed heartbeat, an unknown or deregistered member, a bad Host) falls through to the
views, which give the exact error; the UPDATE the fast path tried changed nothing then.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from members import auth, services, tokens

HEARTBEAT_PATHS = frozenset({"/api/v1/members/heartbeat/", "/heartbeat"})


class HeartbeatFastPath:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method == "POST" and request.path_info in HEARTBEAT_PATHS:
            token = _own_token(request)
            if token is not None and _heartbeat(token):
                return _answer(token.instance_id)
        return self.get_response(request)


def _heartbeat(token: tokens.MemberToken) -> bool:
    """Record it; False when the views must answer (refused, or the database failed)."""
    # Django checks a reused connection with a SELECT 1 before each request's first query
    # (CONN_HEALTH_CHECKS), a second round trip for a one-statement request. Here the heartbeat
    # itself is the check: if the connection turns out dead, it is closed and the views retry
    # on a new one, so a PostgreSQL restart still costs no request an error.
    connection.health_check_done = True  # type: ignore[attr-defined]  # set by Django at run time, not in the stubs
    try:
        return services.heartbeat(token) is services.Beat.OK
    except DatabaseError:
        connection.close()
        return False


def _own_token(request: HttpRequest) -> tokens.MemberToken | None:
    """The member token of a heartbeat the fast path may answer, else None (the views decide)."""
    try:
        request.get_host()  # ALLOWED_HOSTS, as CommonMiddleware checks it
        body = request.body  # bounded by DATA_UPLOAD_MAX_MEMORY_SIZE
    except (DisallowedHost, RequestDataTooBig):
        return None
    token = tokens.parse(auth.bearer(request))
    if token is None or not body.strip():
        return token
    if request.content_type != "application/json" or (request.encoding or "utf-8").lower() != "utf-8":
        return None  # the views answer 415, or decode another charset
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_refuse)  # str: no guessing of UTF-16
    except (ValueError, RecursionError):
        return None  # the views answer 400
    if not isinstance(data, dict):
        return None
    if "instance_id" in data:
        named = data["instance_id"]
        try:
            if not isinstance(named, str) or uuid.UUID(named) != token.instance_id:
                return None  # the views answer 400: a member acts only on itself
        except ValueError:
            return None
    return token


def _refuse(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")  # NaN and Infinity, as netring_site.parsers refuses them


def _answer(instance_id: uuid.UUID) -> HttpResponse:
    # The body of members.api.views.beat_response for Beat.OK, on both paths.
    response = JsonResponse(
        {"status": "ok", "instance_id": str(instance_id), "heartbeat_interval": settings.NETRING_HEARTBEAT_INTERVAL}
    )
    response["X-Frame-Options"] = "DENY"
    return response
