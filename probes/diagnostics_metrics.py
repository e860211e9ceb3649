"""The edge worker's bandwidth and traceroute metrics, in the registry of its mesh metrics.

Seed names where the seed has them (``netring_bandwidth_mbps``, ``netring_traceroute_hops_total``,
``netring_traceroute_max_hop_latency_ms``) with the mesh metrics' pair labels. A figure that was
not measured is absent, never 0: a failed bandwidth test removes its rate, a trace that could
not run removes the pair's traceroute series (``netring_traceroute_available`` says why), and
series of targets that left the mesh are removed (``retain``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import Metric, UnknownMetricFamily
from prometheus_client.metrics import MetricWrapperBase

from probes.checks.bandwidth import BandwidthResult, TransferStats
from probes.checks.traceroute import TraceResult

PAIR_LABELS = ("source_location", "source_instance", "target_location", "target_instance", "target_ip")
BANDWIDTH_LABELS = (*PAIR_LABELS, "direction")
_TARGET = PAIR_LABELS.index("target_instance")


class UntypedGauge:
    """A labelled gauge exported as *untyped*: the seed's ``netring_traceroute_hops_total`` is a
    gauge, and the exposition format reserves the ``_total`` suffix for counters and untyped
    metrics (``promtool check metrics``). Prometheus stores it like a gauge."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> _UntypedChild:
        return _UntypedChild(self, tuple(values))

    def remove(self, *values: str) -> None:
        with self._lock:
            self._values.pop(tuple(values), None)

    def describe(self) -> list[Metric]:
        return [UnknownMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = UnknownMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            for values, value in self._values.items():
                family.add_metric(list(values), value)
        yield family


class _UntypedChild:
    def __init__(self, parent: UntypedGauge, values: tuple[str, ...]) -> None:
        self.parent, self.values = parent, values

    def set(self, value: float) -> None:
        with self.parent._lock:
            self.parent._values[self.values] = value

    def get(self) -> float | None:
        return self.parent._values.get(self.values)


Series = MetricWrapperBase | UntypedGauge


class _PairSeries:
    """Which label sets each metric has, so the series of one target can be removed together."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._present: dict[Series, set[tuple[str, ...]]] = {}

    def put(self, gauge: Gauge | UntypedGauge, labels: tuple[str, ...], value: float) -> None:
        gauge.labels(*labels).set(value)
        self._present.setdefault(gauge, set()).add(labels)

    def inc(self, counter: Counter, labels: tuple[str, ...], amount: float = 1.0) -> None:
        counter.labels(*labels).inc(amount)
        self._present.setdefault(counter, set()).add(labels)

    def touch(self, counter: Counter, labels: tuple[str, ...]) -> None:
        """Export a counter at 0 for a pair as soon as it is measured (rate() needs a start)."""
        counter.labels(*labels)
        self._present.setdefault(counter, set()).add(labels)

    def remove(self, metric: Series, labels: tuple[str, ...]) -> None:
        if labels in self._present.get(metric, set()):
            metric.remove(*labels)
            self._present[metric].discard(labels)

    def retain(self, keep: set[str]) -> int:
        """Remove every series whose target_instance is not in ``keep``; returns how many went."""
        removed = 0
        for metric, present in self._present.items():
            for labels in [labels for labels in present if labels[_TARGET] not in keep]:
                metric.remove(*labels)
                present.discard(labels)
                removed += 1
        return removed


class BandwidthMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._series = _PairSeries()
        self.mbps = Gauge(
            "netring_bandwidth_mbps",
            "Goodput (application payload, 10^6 bit/s) of the latest bandwidth test in this direction; "
            "absent when that test failed. download: the target sent, upload: the source sent.",
            BANDWIDTH_LABELS,
            registry=self.registry,
        )
        self.success = Gauge(
            "netring_bandwidth_test_success",
            "1 when the latest bandwidth test in this direction produced a rate, 0 when it failed.",
            BANDWIDTH_LABELS,
            registry=self.registry,
        )
        self.timestamp = Gauge(
            "netring_bandwidth_test_timestamp",
            "Unix time the latest bandwidth test in this direction started.",
            BANDWIDTH_LABELS,
            registry=self.registry,
        )
        self.served_bytes = Counter(
            "netring_bandwidth_served_bytes",
            "Payload bytes this member's endpoint sent (download) or received (upload) in peers' tests.",
            ("direction",),
            registry=self.registry,
        )
        self.served_cpu = Counter(
            "netring_bandwidth_served_cpu_seconds",
            "CPU time this member's endpoint spent serving peers' tests.",
            ("direction",),
            registry=self.registry,
        )

    def observe(self, pair: tuple[str, str, str, str, str], results: Sequence[BandwidthResult]) -> None:
        """Record the results of one test; ``pair`` is the PAIR_LABELS values."""
        with self._series.lock:
            for result in results:
                labels = (*pair, result.direction)
                self._series.put(self.success, labels, 1.0 if result.ok else 0.0)
                self._series.put(self.timestamp, labels, result.started_at)
                if result.ok and result.mbps is not None:
                    self._series.put(self.mbps, labels, result.mbps)
                else:
                    self._series.remove(self.mbps, labels)  # a failed test has no rate, not rate 0

    def observe_served(self, stats: TransferStats) -> None:
        self.served_bytes.labels(stats.direction).inc(stats.bytes)
        self.served_cpu.labels(stats.direction).inc(stats.cpu_s)

    def retain(self, active: Iterable[str]) -> int:
        with self._series.lock:
            return self._series.retain(set(active))


class TracerouteMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._series = _PairSeries()
        self.hops = UntypedGauge(
            "netring_traceroute_hops_total",
            "Hops to the target in the latest trace, when it reached the target (seed name; a gauge).",
            PAIR_LABELS,
            registry=self.registry,
        )
        self.max_hop_latency = Gauge(
            "netring_traceroute_max_hop_latency_ms",
            "The largest average RTT of any answering hop of the latest trace (seed name): the RTT to "
            "the farthest-responding hop, usually the target. Not the bottleneck: see "
            "netring_traceroute_bottleneck_added_ms.",
            PAIR_LABELS,
            registry=self.registry,
        )
        self.bottleneck = Gauge(
            "netring_traceroute_bottleneck_added_ms",
            "Latency the bottleneck hop adds over the previous answering hop (the largest increase "
            "along the latest trace's path).",
            PAIR_LABELS,
            registry=self.registry,
        )
        self.reached = Gauge(
            "netring_traceroute_reached",
            "1 when the latest trace reached the target, 0 when it did not; absent when it could not run.",
            PAIR_LABELS,
            registry=self.registry,
        )
        self.changes = Counter(
            "netring_traceroute_path_changes",
            "Route changes towards the target seen by this edge (a hop going silent is not one).",
            PAIR_LABELS,
            registry=self.registry,
        )
        self.available = Gauge(
            "netring_traceroute_available",
            "1 when this edge can trace (raw ICMP socket: root or CAP_NET_RAW), 0 when it cannot.",
            ("source_location",),
            registry=self.registry,
        )

    def observe_round(
        self,
        source: tuple[str, str],
        traces: Sequence[tuple[Mapping[str, object], TraceResult]],
        rerouted: Iterable[str] = (),
        available: bool = True,
    ) -> None:
        """Record one round: ``traces`` pairs each target (instance_id, host, location) with its
        trace; ``rerouted`` names the targets whose route changed in this round; ``available``
        whether this edge may trace at all."""
        changed = set(rerouted)
        with self._series.lock:
            for target, result in traces:
                instance = str(target["instance_id"])
                labels = (*source, str(target.get("location", "")), instance, result.address or str(target["host"]))
                self._observe(labels, result, instance in changed)
            self.available.labels(source[0]).set(1.0 if available else 0.0)
            self._series.retain({str(target["instance_id"]) for target, _ in traces})

    def _observe(self, labels: tuple[str, ...], result: TraceResult, changed: bool) -> None:
        gauges = (self.hops, self.max_hop_latency, self.bottleneck, self.reached)
        if result.status not in ("ok", "unreached"):
            for gauge in gauges:  # nothing was measured: no figure, rather than a zero
                self._series.remove(gauge, labels)
            return
        self._series.put(self.reached, labels, 1.0 if result.reached else 0.0)
        if result.reached and result.hop_count is not None:
            self._series.put(self.hops, labels, result.hop_count)
        else:
            self._series.remove(self.hops, labels)
        latencies = [hop.rtt_avg_ms for hop in result.hops if hop.rtt_avg_ms is not None]
        bottleneck = result.bottleneck
        if latencies:
            self._series.put(self.max_hop_latency, labels, max(latencies))
        else:
            self._series.remove(self.max_hop_latency, labels)
        if bottleneck is not None and bottleneck.added_ms is not None:
            self._series.put(self.bottleneck, labels, bottleneck.added_ms)
        else:
            self._series.remove(self.bottleneck, labels)
        if changed:
            self._series.inc(self.changes, labels)
        else:
            self._series.touch(self.changes, labels)

    def retain(self, active: Iterable[str]) -> int:
        with self._series.lock:
            return self._series.retain(set(active))
