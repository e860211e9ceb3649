"""Fixtures shared by every app's tests: API clients, users, members."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from members import services

ENROLLMENT = "enroll-test-token-0123456789"


def pytest_configure(config: pytest.Config) -> None:
    # whitenoise warns once per process when `collectstatic` has not filled STATIC_ROOT; tests
    # serve no static files, so the warning says nothing about the code under test.
    config.addinivalue_line("filterwarnings", "ignore:No directory at:UserWarning")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # PBKDF2 takes ~0.2 s per user on purpose; tests that create users need no such cost.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def enrollment(settings: Any) -> str:
    settings.NETRING_ENROLLMENT_TOKEN = ENROLLMENT
    return ENROLLMENT


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


@pytest.fixture
def enrolling_client(db: None, enrollment: str) -> APIClient:
    """A client that sends the enrollment token, as a member that registers does."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {enrollment}")
    return client


@pytest.fixture
def staff(db: None) -> Any:
    return get_user_model().objects.create_superuser("noc", "", "a-long-password-1")


@pytest.fixture
def staff_client(staff: Any) -> APIClient:
    client = APIClient()
    client.force_login(staff)
    return client


@pytest.fixture
def viewer_client(db: None) -> APIClient:
    user = get_user_model().objects.create_user("viewer", "", "a-long-password-2")
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def register(db: None, enrollment: str) -> Callable[..., dict[str, Any]]:
    """Register a member through the API; returns the answer (with its token)."""

    def _register(location: str = "us1", ip: str = "10.0.0.1", port: int = 8757, **extra: Any) -> dict[str, Any]:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {enrollment}")
        response = client.post(
            "/api/v1/members/register/", {"location": location, "ip": ip, "port": port, **extra}, format="json"
        )
        assert response.status_code in (200, 201), response.content
        return dict(response.json())

    return _register


@pytest.fixture
def make_member(db: None) -> Callable[..., services.Registration]:
    """Register a member straight through the service (no HTTP); returns the Registration."""

    def _make(location: str = "us1", ip: str = "10.0.0.1", port: int = 8757, **extra: Any) -> services.Registration:
        return services.register(location=location, ip=ip, port=port, **extra)

    return _make


def member_client(token: object) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client
