"""Helpers shared by tests in every app (fixtures live in the root conftest.py)."""

from __future__ import annotations

from urllib.parse import quote

from django.conf import settings


def database_url() -> str:
    """A URL for the database this test runs against (pytest-django's ``test_<name>``), for the
    processes a test starts (gunicorn, run_prober, edge workers)."""
    db = settings.DATABASES["default"]
    user, password = quote(str(db["USER"]), safe=""), quote(str(db["PASSWORD"]), safe="")
    return f"postgresql://{user}:{password}@{db['HOST']}:{db['PORT']}/{quote(str(db['NAME']), safe='')}"
