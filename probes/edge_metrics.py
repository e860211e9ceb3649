"""The edge worker's Prometheus metrics, with the seed's names and labels.

One registry per edge process (the worker uses a thread pool, so every task updates the same
registry). After each round the series of targets that are no longer in the mesh are removed:
a departed peer must vanish from /metrics, not stay frozen at its last value.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from probes.checks.result import CheckResult

TCP_LABELS = ("source_location", "source_instance", "target_location", "target_instance", "target_ip")
HTTP_LABELS = ("source_location", "source_instance", "target_location", "target_instance", "target_ip", "endpoint")
KIND_LABELS = (
    "source_location",
    "source_instance",
    "target_location",
    "target_instance",
    "target_ip",
    "check_type",
    "endpoint",
)
ICMP_LABELS = TCP_LABELS


class MeshMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self.tcp = Gauge(
            "netring_connectivity_tcp",
            "TCP connect to the target's member port (1 success, 0 failure).",
            TCP_LABELS,
            registry=self.registry,
        )
        self.http = Gauge(
            "netring_connectivity_http",
            "HTTP GET of the endpoint answered with an expected status (1) or not (0).",
            HTTP_LABELS,
            registry=self.registry,
        )
        self.icmp = Gauge(
            "netring_connectivity_icmp",
            "ICMP echo answered (1) or all lost or unavailable (0).",
            ICMP_LABELS,
            registry=self.registry,
        )
        self.latency = Gauge(
            "netring_check_latency_ms",
            "Latest latency: TCP connect, HTTP total, ICMP average RTT (milliseconds).",
            KIND_LABELS,
            registry=self.registry,
        )
        self.loss = Gauge(
            "netring_icmp_loss_ratio",
            "Share of ICMP echoes lost in the latest round (0..1).",
            ICMP_LABELS,
            registry=self.registry,
        )
        self.jitter = Gauge(
            "netring_icmp_jitter_ms",
            "ICMP jitter of the latest round (mean RTT difference, ms).",
            ICMP_LABELS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "netring_check_duration_seconds",
            "Duration of each check.",
            ("check_type", "target_location"),
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.members = Gauge(
            "netring_members_total", "Members this edge checked in its latest round.", registry=self.registry
        )
        self.last_seen = Gauge(
            "netring_member_last_seen_timestamp",
            "Unix time this edge last reached the member (any check succeeded).",
            ("location", "instance_id"),
            registry=self.registry,
        )
        self.round_seconds = Gauge(
            "netring_mesh_round_duration_seconds",
            "Wall time of the latest mesh round.",
            ("source_location",),
            registry=self.registry,
        )
        self.round_ts = Gauge(
            "netring_mesh_round_timestamp",
            "Unix time the latest mesh round finished.",
            ("source_location",),
            registry=self.registry,
        )
        self._previous: dict[MetricWrapperBase, set[tuple[str, ...]]] = {}

    def observe_round(
        self,
        source_location: str,
        source_instance: str,
        results: Sequence[CheckResult],
        target_locations: dict[str, str],
        seconds: float,
        finished_at: float,
    ) -> None:
        current: dict[MetricWrapperBase, set[tuple[str, ...]]] = {m: set() for m in self._series_metrics()}
        reached: dict[tuple[str, str], float] = {}
        with self._lock:
            for r in results:
                where = target_locations.get(r.target_id, "")
                base = (source_location, source_instance, where, r.target_id, r.target)
                if r.kind == "tcp":
                    self._set(self.tcp, base, 1.0 if r.ok else 0.0, current)
                elif r.kind == "http":
                    self._set(self.http, (*base, r.endpoint), 1.0 if r.ok else 0.0, current)
                else:
                    self._set(self.icmp, base, 1.0 if r.ok else 0.0, current)
                    if r.loss_ratio is not None:
                        self._set(self.loss, base, r.loss_ratio, current)
                    if r.jitter_ms is not None:
                        self._set(self.jitter, base, r.jitter_ms, current)
                if r.latency_ms is not None:
                    self._set(self.latency, (*base, r.kind, r.endpoint), r.latency_ms, current)
                    self.duration.labels(r.kind, where).observe(r.latency_ms / 1000)
                    current[self.duration].add((r.kind, where))
                if r.ok:
                    reached[(where, r.target_id)] = finished_at
            for key, when in reached.items():
                self._set(self.last_seen, key, when, current)
            # A target still in the mesh but unreached this round keeps its last success time.
            earlier = self._previous.get(self.last_seen, set())
            current[self.last_seen] |= {(target_locations.get(r.target_id, ""), r.target_id) for r in results} & earlier
            # The histogram is cumulative per (check, target location): it stays while the location
            # has targets, and goes when its last target left.
            checked = {(r.kind, target_locations.get(r.target_id, "")) for r in results}
            current[self.duration] |= checked & self._previous.get(self.duration, set())
            self.members.set(len({r.target_id for r in results}))
            self.round_seconds.labels(source_location).set(seconds)
            self.round_ts.labels(source_location).set(finished_at)
            self._remove_departed(current)

    def _series_metrics(self) -> Iterable[MetricWrapperBase]:
        """The labelled metrics whose series follow the targets of the latest round."""
        return (self.tcp, self.http, self.icmp, self.latency, self.loss, self.jitter, self.last_seen, self.duration)

    @staticmethod
    def _set(
        gauge: Gauge,
        labels: tuple[str, ...],
        value: float,
        current: dict[MetricWrapperBase, set[tuple[str, ...]]],
    ) -> None:
        gauge.labels(*labels).set(value)
        current[gauge].add(labels)

    def _remove_departed(self, current: dict[MetricWrapperBase, set[tuple[str, ...]]]) -> None:
        for metric, now_present in current.items():
            for labels in self._previous.get(metric, set()) - now_present:
                metric.remove(*labels)
        self._previous = current
