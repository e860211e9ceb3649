"""Celery tasks of the registry: thin wrappers over ``members.services``."""

from __future__ import annotations

import logging

from celery import shared_task

from members import services

log = logging.getLogger(__name__)


@shared_task(name="members.housekeeping", ignore_result=True, time_limit=120, soft_time_limit=100)
def housekeeping() -> dict[str, int]:
    result = services.housekeeping()
    if result.purged_deregistered or result.purged_offline:
        log.info("purged %d deregistered and %d offline member(s)", result.purged_deregistered, result.purged_offline)
    return {"purged_deregistered": result.purged_deregistered, "purged_offline": result.purged_offline}
