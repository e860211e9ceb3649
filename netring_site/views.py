"""Site-wide endpoints: /health and /metrics of the web process."""

from __future__ import annotations

import time

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from members import tokens
from members.auth import bearer
from members.metrics import RegistryCollector
from members.models import Member

# Paths whose clients are programs: their errors are JSON like every other API answer.
_API_PREFIXES = ("/api/", "/register", "/heartbeat", "/deregister", "/members", "/health", "/metrics")


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(_API_PREFIXES) or "application/json" in request.headers.get("Accept", "")


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"detail": message, "error": message}, status=status)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _error(400, f"bad request: {str(exception)[:200] or type(exception).__name__}")
    return defaults.bad_request(request, exception)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _error(404, "not found")
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return _error(500, "internal error: the registry logged it")
    return defaults.server_error(request)


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}: {str(exc).strip()[:200]}"


def _check_broker() -> str:
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        client.ping()
        client.close()
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}: {str(exc).strip()[:200]}"


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """The seed's registry health, plus the state of what the registry depends on."""
    checks = {"database": _check_database(), "broker": _check_broker()}
    healthy = all(value == "ok" for value in checks.values())
    body: dict[str, object] = {
        "status": "healthy" if healthy else "unhealthy",
        "role": "registry",
        "checks": checks,
        "timestamp": time.time(),
    }
    if healthy:
        body["members_count"] = Member.objects.active().count()
    else:
        body["down"] = sorted(name for name, value in checks.items() if value != "ok")
    return JsonResponse(body, status=200 if healthy else 503)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    expected = settings.NETRING_METRICS_TOKEN
    if expected and not tokens.same(bearer(request), expected):
        return JsonResponse({"detail": "metrics need 'Authorization: Bearer <NETRING_METRICS_TOKEN>'"}, status=401)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RegistryCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
