"""The consumer watchdog's rules (``netring_site.celery.ConsumerWatchdog``), without a worker.

The lab (``tests/lab/test_lab.py``, scenario 5) runs it in real workers against a real broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netring_site.celery import ConsumerWatchdog


@dataclass
class FakeBroker:
    """What the watchdog sees: pings sent, which of them a consumer took, whether Redis answers."""

    consuming: bool = True
    up: bool = True
    sent: list[tuple[str, str]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    def send(self, queue: str, nonce: str) -> None:
        if not self.up:
            raise ConnectionError("broker down")
        self.sent.append((queue, nonce))

    def consumed(self, nonce: str) -> bool:
        return self.consuming and self.up

    def watchdog(self, misses: int = 3) -> ConsumerWatchdog:
        return ConsumerWatchdog(
            ["netring.loc.us1"],
            5.0,
            send=self.send,
            consumed=self.consumed,
            broker_ok=lambda: self.up,
            restart_consumer=lambda: self.actions.append("restart"),
            stop_worker=lambda: self.actions.append("stop"),
            misses=misses,
        )


def test_it_pings_every_queue_at_each_check_and_is_content_while_they_are_consumed() -> None:
    broker = FakeBroker()
    watchdog = broker.watchdog()

    assert [watchdog.check() for _ in range(10)] == ["ok"] * 10
    assert len(broker.sent) == 10 and {queue for queue, _ in broker.sent} == {"netring.loc.us1"}
    assert broker.actions == []


def test_unconsumed_pings_with_the_broker_up_restart_the_consumer_after_the_allowed_misses() -> None:
    broker = FakeBroker()
    watchdog = broker.watchdog(misses=3)
    watchdog.check()
    broker.consuming = False

    assert [watchdog.check() for _ in range(3)] == ["ok", "ok", "restarted"]
    assert broker.actions == ["restart"]


def test_a_consumer_that_a_restart_did_not_repair_stops_the_worker_for_its_supervisor() -> None:
    broker = FakeBroker(consuming=False)
    watchdog = broker.watchdog(misses=2)

    results = [watchdog.check() for _ in range(5)]

    assert results == ["ok", "ok", "restarted", "ok", "stopping"]
    assert broker.actions == ["restart", "stop"]


def test_after_a_repair_the_next_failure_starts_with_a_restart_again() -> None:
    broker = FakeBroker(consuming=False)
    watchdog = broker.watchdog(misses=1)
    assert [watchdog.check(), watchdog.check()] == ["ok", "restarted"]

    broker.consuming = True
    assert [watchdog.check(), watchdog.check()] == ["ok", "ok"]
    broker.consuming = False

    assert watchdog.check() == "restarted"  # not "stopping": the earlier restart had worked
    assert broker.actions == ["restart", "restart"]


def test_a_broker_outage_is_not_a_stuck_consumer() -> None:
    broker = FakeBroker()
    watchdog = broker.watchdog(misses=1)
    watchdog.check()
    broker.up = False  # pings in flight are lost with Redis, new ones cannot be sent

    assert [watchdog.check() for _ in range(5)] == ["ok"] * 5
    assert broker.actions == []
    broker.up = True
    assert [watchdog.check() for _ in range(3)] == ["ok"] * 3
