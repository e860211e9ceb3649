"""Celery tasks: thin wrappers over ``probes.services`` (mesh), ``probes.bandwidth_services`` and
``probes.traceroute_services``.

The ``dispatch_*`` tasks run on the central queue (beat fires them); ``mesh_round``,
``bandwidth_test`` and ``traceroute_round`` run on the queue of one location and are consumed
only by that location's edge workers. Edge workers start their member lifecycle from the
worker signals below.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from celery.signals import worker_ready, worker_shutting_down
from django.conf import settings
from django.utils import timezone

from netring_site.celery import queue_for_location, queue_for_member
from probes import bandwidth_services, edge, partitions, services, traceroute_services

log = logging.getLogger(__name__)


@shared_task(name="probes.dispatch_mesh", ignore_result=True, time_limit=60, soft_time_limit=50)
def dispatch_mesh() -> int:
    plan = services.plan_mesh_round()
    if plan is None:
        log.info("mesh round already dispatched by another beat; skipping")
        return 0
    for location, targets in plan.targets_by_location.items():
        # expires: a round still queued when the next one is due is dropped, so a backlog after
        # an outage never runs stale rounds.
        mesh_round.apply_async(
            args=[plan.round_id, plan.started.isoformat(), targets],
            queue=queue_for_location(location),
            expires=plan.interval,
        )
    services.forget_departed(plan.active, sources=plan.targets_by_location)
    return len(plan.targets_by_location)


@shared_task(name="probes.mesh_round", ignore_result=True, time_limit=300, soft_time_limit=240)
def mesh_round(round_id: int, started: str, targets: list[dict[str, Any]]) -> dict[str, float]:
    state = edge.current()
    if state is None:
        log.error("mesh_round reached a worker that is not an edge worker; set NETRING_LOCATION and use run_edge")
        return {}
    source = services.RoundSource(state.location, str(state.instance_id), round_id, datetime.fromisoformat(started))
    report = services.run_round(source, targets, edge.metrics())
    state.members_count = len(targets)
    edge.retain_peers(str(t["instance_id"]) for t in targets)
    log.info("round %d: %d results, %d failed, %.2fs", round_id, report.results, report.failures, report.seconds)
    return {"results": report.results, "failures": report.failures, "seconds": report.seconds}


@shared_task(name="probes.dispatch_bandwidth", ignore_result=True, time_limit=60, soft_time_limit=50)
def dispatch_bandwidth() -> int:
    plan = bandwidth_services.plan_bandwidth_round()
    if plan is None:
        log.info("bandwidth round already dispatched by another beat; skipping")
        return 0
    for offset, test in plan.tests:
        # Each test waits for its slot on its source's queue; one not started by the end of its
        # slot is dropped (expires) rather than run in another test's slot.
        # To the planned member's own queue: with several workers in a location, another one
        # taking it would run a pair nobody planned, maybe in a slot where it has a test of its own.
        bandwidth_test.apply_async(
            args=[test],
            queue=queue_for_member(test["source"]["instance_id"]),
            countdown=offset,
            expires=bandwidth_services.slot_expiry(plan, offset),
        )
    log.info("bandwidth round %d: %d tests in %d slots", plan.round_id, len(plan.tests), plan.slots)
    return len(plan.tests)


@shared_task(name="probes.bandwidth_test", ignore_result=True, time_limit=300, soft_time_limit=240)
def bandwidth_test(test: dict[str, Any]) -> str:
    state = edge.current()
    if state is None:
        log.error("bandwidth_test reached a worker that is not an edge worker; set NETRING_LOCATION and use run_edge")
        return ""
    source = bandwidth_services.Source(state.location, str(state.instance_id))
    outcome = bandwidth_services.run_test(
        source, test, endpoint=edge.bandwidth_endpoint(), metrics=edge.bandwidth_metrics()
    )
    if outcome.retry_in is not None:
        bandwidth_test.apply_async(
            args=[{**test, "attempt": test["attempt"] + 1}],
            queue=queue_for_member(str(state.instance_id)),
            countdown=outcome.retry_in,
            expires=bandwidth_services.retry_expiry(test),
        )
    return outcome.status


@shared_task(name="probes.dispatch_traceroute", ignore_result=True, time_limit=60, soft_time_limit=50)
def dispatch_traceroute() -> int:
    plan = traceroute_services.plan_traceroute_round()
    if plan is None:
        log.info("traceroute round already dispatched by another beat; skipping")
        return 0
    for location, targets in plan.targets_by_location.items():
        traceroute_round.apply_async(
            args=[plan.round_id, plan.started.isoformat(), targets],
            queue=queue_for_location(location),
            expires=plan.started + timedelta(seconds=plan.interval),
        )
    traceroute_services.forget_departed(plan.active, sources=plan.targets_by_location)
    return len(plan.targets_by_location)


@shared_task(name="probes.traceroute_round", ignore_result=True, time_limit=300, soft_time_limit=240)
def traceroute_round(round_id: int, started: str, targets: list[dict[str, Any]]) -> dict[str, Any]:
    state = edge.current()
    if state is None:
        log.error("traceroute_round reached a worker that is not an edge worker; set NETRING_LOCATION and use run_edge")
        return {}
    source = services.RoundSource(state.location, str(state.instance_id), round_id, datetime.fromisoformat(started))
    report = traceroute_services.run_traceroute_round(source, targets, edge.traceroute_metrics())
    edge.retain_peers(str(t["instance_id"]) for t in targets)
    if report.reason:
        log.warning("traceroute unavailable: %s", report.reason)
    log.info(
        "traceroute round %d: %d traces, %d reached, %d path changes, %.2fs",
        round_id, report.traces, report.reached, len(report.rerouted), report.seconds,
    )  # fmt: skip
    return {"traces": report.traces, "reached": report.reached, "rerouted": len(report.rerouted)}


@shared_task(name="probes.maintain_partitions", ignore_result=True, time_limit=300, soft_time_limit=270)
def maintain_partitions() -> dict[str, Any]:
    now = timezone.now()
    report: dict[str, Any] = partitions.maintain(now.date(), settings.NETRING_RETENTION_DAYS)
    if settings.NETRING_RETENTION_DAYS:
        # Path changes are few (one row per route change): deleted by age, not partitioned.
        cutoff = now - timedelta(days=settings.NETRING_RETENTION_DAYS)
        report["probes_pathchange"] = {"deleted": traceroute_services.purge_path_changes(cutoff)}
    return report


def _consumes_location_queue(consumer: Any, location: str) -> bool:
    try:
        names = {queue.name for queue in consumer.task_consumer.queues}
    except AttributeError:
        return False
    return queue_for_location(location) in names


@worker_ready.connect
def _start_edge(sender: Any = None, **kwargs: Any) -> None:
    location = settings.NETRING_LOCATION
    if location and _consumes_location_queue(sender, location):
        try:
            state = edge.start(location)
            sender.add_task_queue(queue_for_member(str(state.instance_id)))
        except Exception:
            # Celery only logs what a signal handler raises: the worker would go on taking its
            # location's rounds as a member nobody can probe. Stop instead, saying why, and let
            # the supervisor restart it once the cause (a taken port, say) is gone.
            log.critical("the edge worker cannot start its member endpoint; exiting", exc_info=True)
            logging.shutdown()
            os._exit(1)


@worker_shutting_down.connect
def _stop_edge(sig: str = "", how: str = "", exitcode: int = 0, **kwargs: Any) -> None:
    # Warm shutdown (SIGTERM, Ctrl-C): deregister at once so the member shows as deregistered.
    if edge.current() is not None:
        edge.stop()
