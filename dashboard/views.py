"""The NOC dashboard: one page that polls the JSON API. Data never reaches the page as HTML.

The server sends only configuration (status colours, intervals); everything the page shows
comes from ``/api/v1/`` and is rendered as text by ``dashboard/static/dashboard/js/``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from members.status import STATUS_COLOURS

POLL_SECONDS = 5


def page_config() -> dict[str, Any]:
    return {
        "poll_seconds": POLL_SECONDS,
        "colours": {status.value: colour for status, colour in STATUS_COLOURS.items()},
        "heartbeat_interval": settings.NETRING_HEARTBEAT_INTERVAL,
        "stale_after": settings.NETRING_STALE_AFTER,
        "offline_after": settings.NETRING_OFFLINE_AFTER,
        "check_interval": settings.NETRING_CHECK_INTERVAL,
    }


def index(request: HttpRequest) -> HttpResponse:
    if not (settings.NETRING_PUBLIC_READ or request.user.is_authenticated):
        return redirect_to_login(request.get_full_path())
    return render(request, "dashboard/index.html", {"config": page_config()})
