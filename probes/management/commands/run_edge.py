"""Run this location's edge worker: a Celery worker on queue netring.loc.<NETRING_LOCATION>."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from netring_site.celery import app, queue_for_location


class Command(BaseCommand):
    help = "Run the edge worker of NETRING_LOCATION (consumes only that location's queue)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=4, help="threads running tasks (default 4)")
        parser.add_argument("--loglevel", default=settings.LOG_LEVEL)

    def handle(self, *args: Any, concurrency: int = 4, loglevel: str = "INFO", **options: Any) -> None:
        location = settings.NETRING_LOCATION
        if not location:
            raise CommandError("NETRING_LOCATION is not set: an edge worker belongs to one location")
        # Threads, not processes: probes are I/O bound and the Prometheus registry lives in one
        # process, so /metrics shows what every task measured.
        app.worker_main(
            [
                "worker",
                "--queues",
                queue_for_location(location),
                "--pool",
                "threads",
                "--concurrency",
                str(concurrency),
                "--hostname",
                f"edge.{location}.{os.getpid()}@%h",
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                loglevel,
            ]
        )
