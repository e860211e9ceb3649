"""The heartbeat fast path: accepted member heartbeats answered before Django's request handling.

Every member heartbeats every 30-45 s, so at fleet size this one request is most of the web's
work, and most of its CPU went to machinery that does nothing for it: WSGIRequest, the
request_started/request_finished signals, the middleware chain, URL resolution, DRF's
negotiation, parser and serializer, HttpResponse. ``HeartbeatFastPath`` wraps Django's WSGI
handler (``netring_site/wsgi.py``) and answers the common case, a well-formed heartbeat with the
member's own token that the registry accepts, straight from the WSGI environ: the same service
call, and byte for byte the same answer as the full stack (status, headers in their order,
body). Anything else goes to Django unchanged, including every heartbeat the registry refuses:
the views give the exact error, and the UPDATE the fast path tried changed nothing.

"The same answer" takes three things, and whatever the fast path cannot be sure of falls through:

- The checks the full stack makes before the view: ALLOWED_HOSTS (CommonMiddleware),
  DATA_UPLOAD_MAX_MEMORY_SIZE, DRF's content negotiation (Accept ``*/*`` or
  ``application/json`` only, and no query string: ``?format=`` picks another renderer), the JSON
  parser (JSON in UTF-8, NaN and Infinity refused) and ``member_target`` (a JSON object whose
  ``instance_id``, when given, is the token's).
- The headers the stack adds. They are computed once at start by running the header-adding
  middleware of settings.MIDDLEWARE over a prototype of the view's answer, so Django's own code
  decides their names, values and order. A middleware this module does not know, an SSL
  redirect or HSTS (both depend on the request's scheme) turn the fast path off at start, with
  a warning in the log.
- What Django's request signals do for the database connection, which no signal does here (see
  ``_record`` and ``_Sent``): CONN_MAX_AGE, broken connections, the DEBUG query log.

members/tests/test_fastpath.py drives the WSGI application and compares the fast path's answers
with Django's case by case.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import Error, close_old_connections, connection, reset_queries
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port, validate_host
from django.urls import Resolver404, resolve
from django.utils.cache import patch_vary_headers
from django.utils.module_loading import import_string
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from members import auth, services, tokens
from members.api.compat import SeedHeartbeatView
from members.api.views import HeartbeatView, beat_data
from netring_site.parsers import JSONParser

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)

# The v1 and the seed's heartbeat paths. With a member token both views do the same
# (member_target, services.heartbeat, beat_response); only DRF's headers differ (the seed's view
# has two renderers, so its answers carry Vary: Accept).
HEARTBEAT_VIEWS: dict[str, type[APIView]] = {
    "/api/v1/members/heartbeat/": HeartbeatView,
    "/heartbeat": SeedHeartbeatView,
}

# Middleware whose process_response adds headers to the answer: run over the prototype at start.
_HEADER_MIDDLEWARE = frozenset(
    {
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",  # Content-Length; its Host check is _host_allowed
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    }
)
# Middleware that leaves the answer to a heartbeat alone when the request has no cookie (the fast
# path falls through on any): no session or CSRF cookie to read, renew or delete (the views are
# CSRF-exempt), no message stored, no static file at these paths.
_PASSIVE_MIDDLEWARE = frozenset(
    {
        "whitenoise.middleware.WhiteNoiseMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    }
)

# Accept headers that DRF's negotiation resolves to the JSON renderer without parameters (an
# absent header counts as */*). Anything else may be a 406, the browsable API on the seed path,
# or indented JSON (``application/json; indent=4``).
_JSON_ACCEPTS = frozenset({"*/*", "application/json"})

# More brackets than this and Django decides. A heartbeat body is a flat object; deep nesting
# could parse here and hit the recursion limit in DRF's deeper stack (a 400), or the reverse.
_MAX_BRACKETS = 32

_RENDERER = JSONRenderer()  # stateless: the one DRF renders the views' JSON answers with


@dataclass(frozen=True)
class _Route:
    headers: tuple[tuple[str, str], ...]  # the full stack's headers of the 200, in order
    length_at: int | None  # the index of Content-Length in them (None: no CommonMiddleware)


class HeartbeatFastPath:
    """WSGI application: accepted heartbeats answered here, every other request by ``django``."""

    def __init__(self, django: WSGIApplication) -> None:
        self.django = django
        # Read once, as Django's handler reads MIDDLEWARE and SecurityMiddleware its settings
        # once. What Django reads per request (ALLOWED_HOSTS, DATA_UPLOAD_MAX_MEMORY_SIZE, ...)
        # is read per request here too.
        self.routes = _routes()
        # Bodies DRF's parser decodes as UTF-8: the charset the Content-Type names, else
        # DEFAULT_CHARSET. Any other spelling, parameter or charset: Django decides.
        self.json_types = frozenset(
            {"application/json; charset=utf-8", "application/json;charset=utf-8", "application/json; charset=UTF-8"}
            | ({"application/json"} if settings.DEFAULT_CHARSET.lower() in ("utf-8", "utf8") else set())
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        route = self.routes.get(environ.get("PATH_INFO", ""))
        if route is not None and environ.get("REQUEST_METHOD") == "POST":
            try:
                answer = self._answer(environ, route)
            except Exception:
                # A bug here must cost no heartbeat its answer: Django gives it, the log says why.
                # (Any body read is in environ already, and a recorded heartbeat is recorded again.)
                logger.exception("heartbeat fast path failed; the views answer")
                answer = None
            if answer is not None:
                start_response("200 OK", answer.headers)
                return answer
        return self.django(environ, start_response)

    def _answer(self, environ: WSGIEnvironment, route: _Route) -> _Sent | None:
        """The answer to an accepted heartbeat, or None when Django must answer."""
        token = tokens.parse(auth.credential(str(environ.get("HTTP_AUTHORIZATION", ""))))
        if token is None or not _plain_request(environ) or not self._body_allows(environ, token):
            return None
        if not _record(token):
            return None
        body: bytes = _RENDERER.render(beat_data(token.instance_id), JSONRenderer.media_type)
        headers = list(route.headers)
        if route.length_at is not None:
            headers[route.length_at] = ("Content-Length", str(len(body)))
        return _Sent(headers, body)

    def _body_allows(self, environ: WSGIEnvironment, token: tokens.MemberToken) -> bool:
        """Whether DRF's parser and ``member_target`` take the body (or its absence) for ``token``."""
        if "HTTP_CONTENT_LENGTH" in environ:
            return False  # DRF reads it when CONTENT_LENGTH is missing, Django does not
        declared = environ.get("CONTENT_LENGTH") or "0"
        if not isinstance(declared, str) or not (declared.isascii() and declared.isdigit()):
            return False  # int() also takes " 7", "+7" or "7_0": Django decides what those mean
        length = int(declared)
        if length == 0:
            # DRF parses no body then, whatever the Content-Type: the data is empty, no
            # instance_id to check. (A chunked body without Content-Length: Django reads none.)
            return True
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if (limit is not None and length > limit) or environ.get("CONTENT_TYPE") not in self.json_types:
            return False  # 413 or 415 from the views, or a charset to decode another way
        body = _read(environ, length)
        if body is None or len(body) != length or body.count(b"[") + body.count(b"{") > _MAX_BRACKETS:
            return False
        try:
            # As netring_site.parsers.JSONParser reads it: a str, so no guessing of UTF-16.
            data = json.loads(body.decode("utf-8"), parse_constant=_refuse)
        except (ValueError, RecursionError):
            return False  # the views answer 400
        if not isinstance(data, dict):
            return False
        if "instance_id" not in data:
            return True
        # InstanceIdField: a string that uuid.UUID takes; then it must be the token's (a member
        # acts only on itself). null, a number, another id: the views answer 400.
        named = data["instance_id"]
        try:
            return isinstance(named, str) and uuid.UUID(named) == token.instance_id
        except ValueError:
            return False


class _Sent(list[bytes]):
    """The body of a fast-path answer, and its headers.

    The server calls ``close()`` once the answer is sent, as it closes Django's responses, whose
    close() sends request_finished: this does what that signal does for the database connection
    (close it if it outlived CONN_MAX_AGE or broke), after the client has its answer.
    """

    def __init__(self, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__((body,))
        self.headers = headers

    def close(self) -> None:
        close_old_connections()


def _plain_request(environ: WSGIEnvironment) -> bool:
    """Whether the request has nothing that makes the full stack answer otherwise."""
    if environ.get("QUERY_STRING") or "HTTP_COOKIE" in environ:
        return False  # ?format= picks a renderer; a cookie: sessions, CSRF and messages may set one
    if environ.get("HTTP_ACCEPT", "*/*") not in _JSON_ACCEPTS:
        return False
    return _host_allowed(environ)


def _host_allowed(environ: WSGIEnvironment) -> bool:
    """Whether HttpRequest.get_host() takes the request's host, as CommonMiddleware checks it."""
    if settings.USE_X_FORWARDED_HOST and "HTTP_X_FORWARDED_HOST" in environ:
        host = environ["HTTP_X_FORWARDED_HOST"]
    else:
        host = environ.get("HTTP_HOST")
    allowed = settings.ALLOWED_HOSTS
    if not isinstance(host, str) or not host or (settings.DEBUG and not allowed):
        # No Host header: Django rebuilds one from SERVER_NAME, the port (USE_X_FORWARDED_PORT)
        # and the scheme. An empty ALLOWED_HOSTS under DEBUG: Django's own localhost list. Both
        # rare: Django decides.
        return False
    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, allowed)


def _read(environ: WSGIEnvironment, length: int) -> bytes | None:
    """The body, and Django's copy of it in environ: whoever answers, nothing is lost.

    CONTENT_LENGTH stays as the client sent it: it is the length of what was read, but for a body
    cut short (the client went away), where Django would have read the same bytes from the socket.
    """
    try:
        body: bytes = environ["wsgi.input"].read(length)
    except OSError as exc:
        environ["wsgi.input"] = _Unreadable(exc)  # Django meets the same error, and answers it
        return None
    environ["wsgi.input"] = io.BytesIO(body)
    return body


class _Unreadable(io.RawIOBase):
    """A request body whose reading failed: every read raises the same error."""

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        raise self.error

    def readline(self, size: int | None = -1, /) -> bytes:
        raise self.error


def _refuse(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")  # NaN and Infinity, as netring_site.parsers refuses them


def _record(token: tokens.MemberToken) -> bool:
    """Record the heartbeat; False when the views must answer (refused, or the database failed)."""
    # What request_started does for Django's requests: empty the DEBUG query log, and close the
    # connection if it outlived CONN_MAX_AGE, left autocommit, or broke. Django's own functions.
    reset_queries()
    close_old_connections()
    # Django would then check a reused connection with a SELECT 1 before the request's first
    # query (CONN_HEALTH_CHECKS), a second round trip for a one-statement request. Here the
    # heartbeat itself is the check: if the connection turns out dead, it is closed and the views
    # retry on a new one, so a PostgreSQL restart still costs no request an error.
    connection.health_check_done = True  # type: ignore[attr-defined]  # set by Django at run time, not in the stubs
    try:
        return services.heartbeat(token) is services.Beat.OK
    except Error:  # DatabaseError, and InterfaceError for a connection closed under it
        connection.close()
        return False


def _routes() -> dict[str, _Route]:
    """The heartbeat paths the fast path answers, with their headers; none when it must not."""
    reason = _unsupported()
    if reason is not None:
        logger.warning("heartbeat fast path off: %s; Django answers every heartbeat", reason)
        return {}
    routes = {}
    for path, view_class in HEARTBEAT_VIEWS.items():
        try:
            served_by = getattr(resolve(path).func, "cls", None)
        except Resolver404:
            served_by = None
        if served_by is not view_class or not _plain_view(view_class):
            logger.warning("heartbeat fast path off for %s: not %s as this module knows it", path, view_class.__name__)
            continue
        headers = _answer_headers(view_class)
        names = [name for name, _value in headers]
        routes[path] = _Route(headers, names.index("Content-Length") if "Content-Length" in names else None)
    return routes


def _unsupported() -> str | None:
    """What in the settings could make the full stack answer an accepted heartbeat otherwise."""
    if settings.SECURE_SSL_REDIRECT:
        return "SECURE_SSL_REDIRECT is set (a redirect for plain HTTP)"
    if settings.SECURE_HSTS_SECONDS:
        return "SECURE_HSTS_SECONDS is set (a header for HTTPS only)"
    if settings.CSRF_USE_SESSIONS:
        return "CSRF_USE_SESSIONS is set (every request reads the session: Vary: Cookie)"
    if settings.PREPEND_WWW or settings.DISALLOWED_USER_AGENTS:
        return "PREPEND_WWW or DISALLOWED_USER_AGENTS is set (CommonMiddleware answers some requests)"
    if getattr(settings, "WHITENOISE_ROOT", None):
        return "WHITENOISE_ROOT is set (a file there could answer a heartbeat path)"
    for path in settings.MIDDLEWARE:
        if path not in _HEADER_MIDDLEWARE and path not in _PASSIVE_MIDDLEWARE:
            return f"{path} in MIDDLEWARE is unknown to it"
    return None


def _plain_view(view_class: type[APIView]) -> bool:
    """Whether the view does nothing before its post() that this module does not check: the
    settings it was written for (no throttling or versioning, JSON first, Netring's parser)."""
    return (
        bool(view_class.renderer_classes)
        and view_class.renderer_classes[0] is JSONRenderer
        and view_class.content_negotiation_class is DefaultContentNegotiation
        and list(view_class.parser_classes) == [JSONParser]
        and not view_class.authentication_classes
        and list(view_class.permission_classes) == [AllowAny]
        and not view_class.throttle_classes
        and view_class.versioning_class is None
    )


def _answer_headers(view_class: type[APIView]) -> tuple[tuple[str, str], ...]:
    """The headers the full stack sends with the view's 200 answer, in their order."""
    # The Response as DRF finishes it: the JSON renderer's media type (it has no charset), then
    # APIView.default_response_headers, Vary first as finalize_response sets them.
    response = HttpResponse(content_type=JSONRenderer.media_type)
    extra = view_class().default_response_headers
    vary = extra.pop("Vary", None)
    if vary is not None:
        patch_vary_headers(response, [vary])
    for name, value in extra.items():
        response[name] = value
    # Then the middleware's process_response, innermost first, as the handler runs them.
    # Content-Length comes out as the prototype's ("0"); each answer puts its own.
    request = HttpRequest()
    for path in reversed(settings.MIDDLEWARE):
        if path in _HEADER_MIDDLEWARE:
            response = import_string(path)(_no_view).process_response(request, response)
    return tuple(response.items())


def _no_view(request: HttpRequest) -> HttpResponse:
    raise AssertionError("only process_response runs over the prototype")  # the middleware's get_response
