"""Fleet-level registry metrics, computed from the database at scrape time.

A custom collector instead of gauges kept in process memory: any web replica answers with the
same figures, and members that left disappear from the output instead of lingering.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

from members import services
from members.models import Member
from members.status import Status


class RegistryCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        summaries = services.location_summaries(now)
        # Untyped, not a gauge: the name is the one operators know, and promtool's lint keeps
        # the "_total" suffix to counters and untyped metrics. Prometheus stores it like a gauge.
        total = UnknownMetricFamily("netring_members_total", "Registered members that are online or stale.")
        total.add_metric([], sum(s.present for s in summaries))
        yield total

        by_status = GaugeMetricFamily(
            "netring_members", "Members by location and status.", labels=["location", "status"]
        )
        missing = GaugeMetricFamily(
            "netring_location_missing_members",
            "Expected members of a location that are neither online nor stale.",
            labels=["location", "criticality"],
        )
        expected = GaugeMetricFamily(
            "netring_location_expected_members", "Members a location should have.", labels=["location"]
        )
        for summary in summaries:
            name = summary.location.name
            for state in Status:
                by_status.add_metric([name, state.value], summary.counts.get(state, 0))
            missing.add_metric([name, summary.location.criticality], summary.missing)
            expected.add_metric([name], summary.location.expected_members)
        yield by_status
        yield missing
        yield expected

        last_seen = GaugeMetricFamily(
            "netring_member_last_seen_timestamp",
            "Unix time of the member's last heartbeat.",
            labels=["location", "instance_id", "kind"],
        )
        rows = Member.objects.filter(deregistered_at__isnull=True).values_list(
            "location__name", "instance_id", "kind", "last_seen"
        )
        for location, instance_id, kind, seen in rows.iterator(chunk_size=2000):
            last_seen.add_metric([location, str(instance_id), kind], seen.timestamp())
        yield last_seen
