"""The registry's Celery tasks, run by a real worker on the central queue over the real broker."""

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.utils import timezone

from members import services, tasks
from members.models import Member
from netring_site.celery import CENTRAL_QUEUE, app


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds instead of hanging."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(0.05)


@pytest.fixture
def central_worker(transactional_db: None) -> Iterator[Any]:
    """A Celery worker thread consuming only the central queue, like `celery worker -Q netring.central`."""
    assert app.conf.broker_url == settings.CELERY_BROKER_URL
    with start_worker(
        app, queues=[CENTRAL_QUEUE], pool="solo", perform_ping_check=False, shutdown_timeout=30
    ) as worker:
        yield worker


def test_it_is_a_thin_task_with_a_time_limit() -> None:
    assert tasks.housekeeping.name == "members.housekeeping"
    assert tasks.housekeeping.time_limit and tasks.housekeeping.soft_time_limit
    assert tasks.housekeeping.soft_time_limit < tasks.housekeeping.time_limit
    assert tasks.housekeeping.ignore_result


def test_it_runs_housekeeping_in_process(make_member: Callable[..., services.Registration]) -> None:
    member = make_member().member
    Member.objects.filter(pk=member.pk).update(deregistered_at=timezone.now() - timedelta(hours=2))
    assert tasks.housekeeping() == {"purged_deregistered": 1, "purged_offline": 0}


def test_it_purges_on_a_real_worker_consuming_the_central_queue(
    central_worker: Any, make_member: Callable[..., services.Registration]
) -> None:
    old = make_member(ip="10.0.0.1").member
    recent = make_member(ip="10.0.0.2").member
    alive = make_member(ip="10.0.0.3").member
    long_offline = make_member(ip="10.0.0.4").member
    now = timezone.now()
    Member.objects.filter(pk=old.pk).update(deregistered_at=now - timedelta(hours=2), token_hash="")
    Member.objects.filter(pk=recent.pk).update(deregistered_at=now - timedelta(minutes=5), token_hash="")
    retention = settings.NETRING_OFFLINE_AFTER + settings.NETRING_OFFLINE_RETENTION
    Member.objects.filter(pk=long_offline.pk).update(last_seen=now - timedelta(seconds=retention + 60))

    tasks.housekeeping.apply_async(queue=CENTRAL_QUEUE)

    wait_until(lambda: not Member.objects.filter(pk__in=[old.pk, long_offline.pk]).exists(), what="the purge")
    assert set(Member.objects.values_list("pk", flat=True)) == {recent.pk, alive.pk}


def test_it_routes_the_task_to_the_central_queue_by_default(
    central_worker: Any, make_member: Callable[..., services.Registration]
) -> None:
    member = make_member().member
    Member.objects.filter(pk=member.pk).update(deregistered_at=timezone.now() - timedelta(hours=2))

    tasks.housekeeping.delay()

    wait_until(lambda: not Member.objects.exists(), what="the purge")
