"""``manage.py netring_setup``: beat schedules and the admin account, safe at every start."""

import io
import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from netring_site.schedules import SCHEDULES


@pytest.fixture(autouse=True)
def no_admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NETRING_ADMIN_USER", "NETRING_ADMIN_PASSWORD", "NETRING_ADMIN_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)


def setup(*args: str) -> str:
    out = io.StringIO()
    call_command("netring_setup", *args, stdout=out)
    return out.getvalue()


def test_it_creates_the_housekeeping_schedule_on_the_central_queue(db: None, settings: Any) -> None:
    setup("--no-admin")
    task = PeriodicTask.objects.get(name="registry housekeeping")
    assert task.task == "members.housekeeping"
    assert task.queue == "netring.central"
    assert task.enabled
    assert task.interval is not None
    assert (task.interval.every, task.interval.period) == (settings.NETRING_CLEANUP_INTERVAL, IntervalSchedule.SECONDS)
    # A message older than the interval is dropped, not run late in a burst after an outage.
    assert task.expire_seconds == settings.NETRING_CLEANUP_INTERVAL


def test_it_creates_every_schedule_with_an_expiry(db: None) -> None:
    setup("--no-admin")
    for schedule in SCHEDULES:
        task = PeriodicTask.objects.get(name=schedule.name)
        assert (task.task, task.queue) == (schedule.task, schedule.queue)
        assert task.expire_seconds


def test_it_is_idempotent(db: None, settings: Any) -> None:
    setup("--no-admin")
    assert setup("--no-admin") == ""
    assert PeriodicTask.objects.filter(name="registry housekeeping").count() == 1
    assert PeriodicTask.objects.filter(name__in=[s.name for s in SCHEDULES]).count() == len(SCHEDULES)
    intervals = {getattr(settings, s.interval_setting) for s in SCHEDULES}
    assert IntervalSchedule.objects.count() == len(intervals)


def test_it_leaves_operator_edits_alone_unless_reset(db: None, settings: Any) -> None:
    setup("--no-admin")
    task = PeriodicTask.objects.get(name="registry housekeeping")
    task.interval, _ = IntervalSchedule.objects.get_or_create(every=600, period=IntervalSchedule.SECONDS)
    task.save()
    setup("--no-admin")
    assert PeriodicTask.objects.get(name="registry housekeeping").interval.every == 600  # type: ignore[union-attr]
    setup("--no-admin", "--reset")
    task = PeriodicTask.objects.get(name="registry housekeeping")
    assert task.interval.every == settings.NETRING_CLEANUP_INTERVAL  # type: ignore[union-attr]
    assert task.expire_seconds == settings.NETRING_CLEANUP_INTERVAL


def test_it_creates_an_admin_with_a_generated_password_printed_once(db: None) -> None:
    output = setup()
    match = re.search(r"admin account: admin / (\S+)\s+\(shown once\)", output)
    assert match, output
    password = match.group(1)
    user = authenticate(username="admin", password=password)
    assert user is not None
    assert user.is_staff and user.is_superuser

    again = setup()
    assert password not in again
    assert "admin account" not in again
    assert authenticate(username="admin", password=password) is not None
    assert get_user_model().objects.count() == 1


def test_it_honours_the_admin_user_and_password_from_the_environment(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETRING_ADMIN_USER", "ops")
    monkeypatch.setenv("NETRING_ADMIN_PASSWORD", "correct-horse-battery")
    output = setup()
    assert "correct-horse-battery" not in output
    assert "admin account: ops (password from NETRING_ADMIN_PASSWORD)" in output
    user = authenticate(username="ops", password="correct-horse-battery")
    assert user is not None and user.is_superuser

    monkeypatch.setenv("NETRING_ADMIN_PASSWORD", "a-new-password-now")
    setup()
    assert authenticate(username="ops", password="a-new-password-now") is not None


def test_it_reads_the_admin_password_from_a_file(db: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "admin_password"
    secret.write_text("password-from-a-file\n")
    monkeypatch.setenv("NETRING_ADMIN_PASSWORD_FILE", str(secret))
    setup()
    assert authenticate(username="admin", password="password-from-a-file") is not None


def test_it_does_not_create_a_second_admin_when_a_superuser_exists(db: None, staff: Any) -> None:
    assert "admin account" not in setup()
    assert list(get_user_model().objects.values_list("username", flat=True)) == ["noc"]


def test_it_stops_on_a_bad_admin_setting(db: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NETRING_ADMIN_PASSWORD", "inline")
    monkeypatch.setenv("NETRING_ADMIN_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(CommandError, match="NETRING_ADMIN_PASSWORD and NETRING_ADMIN_PASSWORD_FILE are both set"):
        setup()
    assert not get_user_model().objects.exists()
