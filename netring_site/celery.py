"""The Celery app. Queues are chosen here, in one place (see ``queue_for_location``).

Every worker also runs a ``ConsumerWatchdog``: a worker that is connected to the broker but no
longer takes messages from its queues is a known Celery failure after broker reconnects (celery
issues #8030, #8091, #9054: the consumer reconnects, then waits forever). Nothing in the process
notices, so an edge would stay "online" while its location runs no rounds. The watchdog proves
consumption end to end instead of trusting connection state: it sends a ``netring.ping`` task
through each queue the worker was started with and expects it to be consumed.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready, worker_shutting_down
from celery.worker import state as worker_state
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netring_site.settings")

CENTRAL_QUEUE = "netring.central"
PING_TASK = "netring.ping"
# Unanswered pings in a row, with the broker answering, before the worker counts as stuck.
WATCHDOG_MISSES = 3
# os.EX_TEMPFAIL: "try again later", for the supervisor (systemd, Kubernetes) that restarts it.
EXIT_NOT_CONSUMING = 75

log = logging.getLogger("netring.watchdog")


def queue_for_location(location: str) -> str:
    """The queue that only the edge workers of ``location`` consume."""
    return f"netring.loc.{location}"


def queue_for_member(instance_id: str) -> str:
    """The queue of one edge worker: work planned for that member and no other (bandwidth
    tests, whose exclusive slots are planned per member, not per location)."""
    return f"netring.member.{instance_id}"


app = Celery("netring")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@functools.cache
def _broker() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def _pong_key(nonce: str) -> str:
    return f"netring:ping:{nonce}"


def _ping(nonce: str) -> None:
    """The watchdog's probe: consumed means the queue it came through is being consumed."""
    _broker().set(_pong_key(nonce), "1", ex=300)


ping = app.task(name=PING_TASK, ignore_result=True, time_limit=10, soft_time_limit=8)(_ping)


def watchdog_interval() -> float:
    """Seconds between pings: the member heartbeat interval, kept between 5 s and 30 s."""
    return float(min(max(settings.NETRING_HEARTBEAT_INTERVAL, 5), 30))


class ConsumerWatchdog:
    """Pings the worker's queues through the broker; repairs the consumer when they go unconsumed.

    Each check looks whether the ping sent at the previous check was consumed (by this worker or
    another one of the same queue: what matters is that the queue is served), then sends the
    next. A ping counts as missed only while the broker answers; a broker outage is the
    consumer's own reconnect logic's business. After ``misses`` missed pings in a row:

    1. restart the consumer through Celery's own recovery path: the worker re-subscribes to the
       queues it was started with, reconnects and declares them again, as after a connection loss;
    2. if the queue is still not consumed ``misses`` checks later, stop the worker with exit
       status 75 so that its supervisor starts a fresh process (a warm shutdown: an edge
       deregisters first); if even that does not happen within 30 s, exit at once.

    The broker calls are parameters so that the rules can be tested without a worker.
    """

    def __init__(
        self,
        queues: Sequence[str],
        interval: float,
        *,
        send: Callable[[str, str], None],
        consumed: Callable[[str], bool],
        broker_ok: Callable[[], bool],
        restart_consumer: Callable[[], None],
        stop_worker: Callable[[], None],
        misses: int = WATCHDOG_MISSES,
    ) -> None:
        self.queues = list(queues)
        self.interval = interval
        self.misses = misses
        self._send, self._consumed, self._broker_ok = send, consumed, broker_ok
        self._restart_consumer, self._stop_worker = restart_consumer, stop_worker
        self.pending: dict[str, str] = {}  # queue -> nonce of the ping in flight
        self.missed = dict.fromkeys(self.queues, 0)
        self.restarts = 0  # consumer restarts since the queues were last consumed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netring-watchdog", daemon=True)

    def start(self) -> None:
        log.info("consumer watchdog: pinging %s every %gs", ", ".join(self.queues), self.interval)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:
                log.exception("consumer watchdog check failed")

    def check(self) -> str:
        """One round of the rules above; returns what it did (for logs and tests)."""
        broker_ok: bool | None = None
        for queue in self.queues:
            nonce = self.pending.pop(queue, None)
            if nonce is not None:
                if self._consumed(nonce):
                    self.missed[queue] = 0
                else:
                    broker_ok = self._broker_ok() if broker_ok is None else broker_ok
                    if broker_ok:
                        self.missed[queue] += 1
            nonce = uuid.uuid4().hex
            try:
                self._send(queue, nonce)
                self.pending[queue] = nonce
            except Exception as exc:  # the broker is down: the consumer reconnects by itself
                log.debug("consumer watchdog: could not ping %s: %s", queue, exc)
        stuck = [queue for queue in self.queues if self.missed[queue] >= self.misses]
        if not stuck:
            if all(count == 0 for count in self.missed.values()):
                self.restarts = 0
            return "ok"
        for queue in stuck:
            self.missed[queue] = 0
        waited = self.misses * self.interval
        if self.restarts == 0:
            self.restarts += 1
            log.error(
                "consumer watchdog: %s not consumed for %.0fs while the broker answers: restarting the consumer",
                ", ".join(stuck),
                waited,
            )
            self._restart_consumer()
            return "restarted"
        log.critical(
            "consumer watchdog: %s still not consumed after a consumer restart: exiting with status %d "
            "for the supervisor to start a fresh worker",
            ", ".join(stuck),
            EXIT_NOT_CONSUMING,
        )
        self._stop_worker()
        return "stopping"


class WatchdogConnectionLost(ConnectionError):
    """Raised inside the consumer's event loop: Celery treats it as a lost broker connection."""


def watchdog_for(consumer: Any, queues: Sequence[str]) -> ConsumerWatchdog:
    """A watchdog of a worker's consumer, with the real broker calls."""

    def send(queue: str, nonce: str) -> None:
        app.send_task(PING_TASK, args=[nonce], queue=queue, expires=WATCHDOG_MISSES * watchdog_interval())

    def consumed(nonce: str) -> bool:
        return bool(_broker().delete(_pong_key(nonce)))

    def broker_ok() -> bool:
        try:
            return bool(_broker().ping())
        except redis.RedisError:
            return False

    def restart_consumer() -> None:
        for name in queues:  # undo a cancel_consumer: a Netring worker's queues are its role
            if name not in app.amqp.queues.consume_from:
                app.amqp.queues.select_add(name)

        def lose_connection() -> None:
            raise WatchdogConnectionLost("consumer watchdog: the worker's queues are not consumed")

        # Runs in the consumer's own thread (kombu's hub is safe to call from others), where the
        # error takes the path of a lost connection: reconnect, declare, consume again.
        consumer.hub.call_soon(lose_connection)

    def stop_worker() -> None:
        worker_state.should_stop = EXIT_NOT_CONSUMING  # a warm shutdown at the next loop turn
        deadline = threading.Timer(30.0, os._exit, args=[EXIT_NOT_CONSUMING])
        deadline.daemon = True
        deadline.start()

    return ConsumerWatchdog(
        queues,
        watchdog_interval(),
        send=send,
        consumed=consumed,
        broker_ok=broker_ok,
        restart_consumer=restart_consumer,
        stop_worker=stop_worker,
    )


_watchdogs: list[ConsumerWatchdog] = []


def _start_watchdog(sender: Any = None, **kwargs: Any) -> None:
    try:
        queues = sorted(queue.name for queue in sender.task_consumer.queues)
    except AttributeError:
        return
    if not queues or getattr(sender, "hub", None) is None:
        return  # no event loop (a solo or test worker): nothing to restart from here
    watchdog = watchdog_for(sender, queues)
    _watchdogs.append(watchdog)
    watchdog.start()


def _stop_watchdog(**kwargs: Any) -> None:
    while _watchdogs:
        _watchdogs.pop().stop()


worker_ready.connect(_start_watchdog, weak=False)
worker_shutting_down.connect(_stop_watchdog, weak=False)
