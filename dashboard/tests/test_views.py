"""The dashboard page: who may open it, and what it ships (configuration, no inline code)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from django.urls import get_resolver

from members.status import STATUS_COLOURS

pytestmark = pytest.mark.django_db


@pytest.fixture
def user_client(django_user_model: Any) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_user("noc-viewer", "", "a-long-password-3"))
    return client


def page_config(html: str) -> dict[str, Any]:
    match = re.search(r'<script id="netring-config" type="application/json">(.*?)</script>', html, re.S)
    assert match, "the page ships its configuration as json_script"
    return dict(json.loads(match.group(1)))


def test_it_sends_anonymous_visitors_to_the_login_page(client: Client) -> None:
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/"


def test_it_shows_the_dashboard_to_a_logged_in_user(user_client: Client) -> None:
    response = user_client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-view="matrix"' in html and 'data-view="members"' in html and 'data-view="prober"' in html
    assert "dashboard/js/app.js" in html


def test_public_read_opens_it_without_login(client: Client, settings: Any) -> None:
    settings.NETRING_PUBLIC_READ = True

    assert client.get("/").status_code == 200


def test_it_ships_the_seed_colours_and_intervals(user_client: Client, settings: Any) -> None:
    settings.NETRING_HEARTBEAT_INTERVAL = 30
    settings.NETRING_CHECK_INTERVAL = 20

    config = page_config(user_client.get("/").content.decode())

    assert config["colours"] == {status.value: colour for status, colour in STATUS_COLOURS.items()}
    assert config["colours"]["deregistered"] == "#a855f7"
    assert (config["heartbeat_interval"], config["check_interval"], config["poll_seconds"]) == (30, 20, 5)


def test_it_ships_no_inline_event_handlers_or_scripts(user_client: Client) -> None:
    html = user_client.get("/").content.decode()

    assert not re.search(r"<[^>]+\son[a-z]+\s*=", html, re.I), "inline event handler"
    assert "javascript:" not in html
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag or 'type="application/json"' in tag, f"inline script: {tag}"


def routes(patterns: list[Any], prefix: str = "") -> Iterator[str]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern).lstrip("^").rstrip("$")
        if hasattr(pattern, "url_patterns"):
            yield from routes(pattern.url_patterns, route)
        else:
            yield route


@pytest.mark.parametrize("view", ["bandwidth", "traceroute"])
def test_it_shows_a_view_button_only_when_its_api_exists(user_client: Client, view: str) -> None:
    # No "coming soon" placeholders. When /api/v1/<view>/... appears, this fails until the
    # dashboard has that view.
    api = any(route.startswith(f"api/v1/{view}") for route in routes(get_resolver().url_patterns))

    html = user_client.get("/").content.decode()

    assert (f'data-view="{view}"' in html) == api
