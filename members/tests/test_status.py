from datetime import UTC, datetime, timedelta

import pytest

from members.status import Status, Thresholds, member_status

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LIMITS = Thresholds(stale_after=90, offline_after=300)


@pytest.mark.parametrize(
    ("age", "expected"),
    [(0, Status.ONLINE), (89.9, Status.ONLINE), (90, Status.STALE), (299, Status.STALE), (300, Status.OFFLINE)],
)
def test_it_derives_status_from_heartbeat_age(age: float, expected: Status) -> None:
    assert member_status(NOW - timedelta(seconds=age), None, NOW, LIMITS) is expected


def test_it_shows_deregistered_whatever_the_age() -> None:
    assert member_status(NOW, NOW, NOW, LIMITS) is Status.DEREGISTERED
