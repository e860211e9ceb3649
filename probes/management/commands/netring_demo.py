"""Demo data: the demo locations with their expected members, and prober targets to watch."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from members.models import Location
from probes.models import ProberTarget


class Command(BaseCommand):
    help = "Create the demo's locations and prober targets (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--location", action="append", default=[], metavar="NAME=ADDRESS")
        parser.add_argument("--targets-port", type=int, default=8759)

    def handle(self, *args: Any, location: list[str], targets_port: int, **options: Any) -> None:
        for spec in location:
            name, _, address = spec.partition("=")
            Location.objects.get_or_create(
                name=name, defaults={"expected_members": 1, "description": f"demo location on {address}"}
            )
            ProberTarget.objects.get_or_create(
                name=f"{name} member health", defaults={"url": f"http://{address}:8757/health", "group": "mesh"}
            )
        base = f"http://127.0.0.1:{targets_port}"
        for name, url, group in (
            ("fast endpoint", f"{base}/ok", "internet"),
            ("slow endpoint (300 ms)", f"{base}/slow?ms=300", "internet"),
            ("dead endpoint", "http://127.0.0.1:9/", "internet"),
        ):
            ProberTarget.objects.get_or_create(name=name, defaults={"url": url, "group": group})
        self.stdout.write(
            f"demo data: {Location.objects.count()} locations, {ProberTarget.objects.count()} prober targets"
        )
