"""The web process as production runs it: gunicorn with compose/gunicorn.conf.py, here behind a
reverse proxy (the test plays the proxy on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from netring_site.embedded import free_port, wait_for_port
from tests.support import database_url

ROOT = Path(__file__).resolve().parents[2]
ENROLLMENT = "gunicorn-test-enrollment-token"
Web = Callable[..., str]


def gunicorn_argv(port: int) -> list[str]:
    config = str(ROOT / "compose" / "gunicorn.conf.py")
    return [sys.executable, "-m", "gunicorn", "netring_site.wsgi", "--config", config, "--bind", f"127.0.0.1:{port}"]


@pytest.fixture
def web(transactional_db: None) -> Iterator[Web]:
    """Start gunicorn on the test database with extra environment; stopped at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def _start(**env: str) -> str:
        port = free_port()
        environ = {
            **os.environ,
            "NETRING_DATABASE_URL": database_url(),
            "NETRING_REDIS_URL": settings.REDIS_URL,
            "NETRING_ENROLLMENT_TOKEN": ENROLLMENT,
            "NETRING_WEB_WORKERS": "1",
            **env,
        }
        process = subprocess.Popen(gunicorn_argv(port), env=environ, cwd=ROOT, stderr=subprocess.DEVNULL)
        started.append(process)
        wait_for_port("127.0.0.1", port, 30)
        return f"http://127.0.0.1:{port}"

    yield _start
    for process in started:
        process.terminate()
        process.wait(15)


def post(url: str, token: str, body: bytes | None, headers: dict[str, str]) -> urllib.request.Request:
    """A request with the token and ``headers`` (``X_Forwarded_For`` is sent as X-Forwarded-For)."""
    sent = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    sent |= {name.replace("_", "-"): value for name, value in headers.items()}
    return urllib.request.Request(url, data=body, headers=sent)  # noqa: S310 - http on loopback


def call(url: str, token: str, body: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
    request = post(url, token, None if body is None else json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http on loopback
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def register_two_and_list(base: str, **proxy_headers: str) -> tuple[list[str], str]:
    """Register two members without ``ip`` through the 'proxy'; their addresses, and the next
    link of a one-member page (built from the scheme the web process believes)."""
    ips = [
        call(f"{base}/api/v1/members/register/", ENROLLMENT, {"location": "us1", "port": 8757}, **proxy_headers)
        for _ in range(2)
    ]
    page = call(f"{base}/api/v1/members/?limit=1", ips[0]["token"], **proxy_headers)
    return [answer["ip"] for answer in ips], str(page["next"])


def test_behind_a_trusted_proxy_the_client_address_and_scheme_are_the_ones_it_forwards(web: Web) -> None:
    base = web(NETRING_TRUSTED_PROXIES="127.0.0.0/8, 10.0.0.0/24")
    # A client that claims 203.0.113.50, seen by an outer proxy (10.0.0.7) as 192.0.2.9.
    ips, next_page = register_two_and_list(
        base, X_Forwarded_For="203.0.113.50, 192.0.2.9, 10.0.0.7", X_Forwarded_Proto="https"
    )
    assert ips == ["192.0.2.9", "192.0.2.9"]
    assert next_page.startswith("https://127.0.0.1:")  # TLS ended at the proxy, links stay https


def test_without_trusted_proxies_forwarded_headers_count_for_nothing(web: Web) -> None:
    base = web()
    ips, next_page = register_two_and_list(base, X_Forwarded_For="192.0.2.9", X_Forwarded_Proto="https")
    assert ips == ["127.0.0.1", "127.0.0.1"]  # anyone could have written that header
    assert next_page.startswith("https://")  # gunicorn's default: a proxy on loopback is believed


def test_a_trusted_proxy_that_forwards_garbage_leaves_the_address_unknown(web: Web) -> None:
    base = web(NETRING_TRUSTED_PROXIES="127.0.0.1/32")
    request = post(
        f"{base}/api/v1/members/register/", ENROLLMENT, b'{"location": "us1"}', {"X_Forwarded_For": "unknown"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310 - http on loopback
    assert refused.value.code == 400
    assert "client address is unknown" in refused.value.read().decode()


def test_a_bad_trusted_proxies_value_stops_gunicorn_and_names_it() -> None:
    env = {**os.environ, "NETRING_TRUSTED_PROXIES": "10.0.0.0/8, proxy.example"}
    done = subprocess.run(gunicorn_argv(free_port()), env=env, cwd=ROOT, capture_output=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "NETRING_TRUSTED_PROXIES" in done.stderr.decode() and "'proxy.example'" in done.stderr.decode()
