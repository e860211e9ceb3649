"""The prober's Prometheus metrics, served by ``run_prober`` on NETRING_PROBER_METRICS_ADDR.

Counters come from the loop's and the writer's own statistics at scrape time (one source of
truth); phase durations are observed per sample as rows pass to the writer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from probes.prober.loop import ProberLoop
from probes.prober.spool import Row
from probes.prober.writer import BatchWriter

PHASES = ("dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "total_ms")
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0)


class ProberCollector(Collector):
    def __init__(self, location: str, loop: ProberLoop, writer: BatchWriter) -> None:
        self.location, self.loop, self.writer = location, loop, writer

    def collect(self) -> Iterator[Metric]:
        stats, wstats, loc = self.loop.stats, self.writer.stats, [self.location]
        samples = CounterMetricFamily(
            "netring_prober_samples", "Samples by result ('ok' or the error class).", labels=["location", "result"]
        )
        for result, count in sorted(stats.samples.items()):
            samples.add_metric([self.location, result], count)
        yield samples
        ticks = CounterMetricFamily("netring_prober_ticks", "Ticks run.", labels=["location"])
        ticks.add_metric(loc, stats.ticks)
        yield ticks
        missed = CounterMetricFamily(
            "netring_prober_missed_ticks",
            "Ticks that could not run on time (process stalled, machine overloaded).",
            labels=["location"],
        )
        missed.add_metric(loc, stats.missed_ticks)
        yield missed
        for name, doc, value in (
            ("netring_prober_tick_lateness_seconds", "Lateness of the latest tick start.", stats.lateness_last),
            ("netring_prober_tick_lateness_max_seconds", "Largest tick lateness since start.", stats.lateness_max),
            ("netring_prober_in_flight", "Transfers in flight.", stats.in_flight),
            ("netring_prober_targets", "Targets probed each tick.", stats.targets),
            (
                "netring_prober_spool_depth",
                "Rows waiting in the local spool for the database.",
                self.writer.spool_depth,
            ),
            ("netring_prober_backoff_seconds", "Current retry backoff towards the database.", wstats.backoff_s),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["location"])
            gauge.add_metric(loc, value)
            yield gauge
        flush = GaugeMetricFamily(
            "netring_prober_last_flush_timestamp", "Unix time rows last reached the database.", labels=["location"]
        )
        if wstats.last_success_at is not None:
            # The writer's clock is monotonic: convert to wall time for dashboards.
            flush.add_metric(loc, time.time() - (time.monotonic() - wstats.last_success_at))
        yield flush
        rows = CounterMetricFamily("netring_prober_rows", "Rows by fate in the writer.", labels=["location", "fate"])
        for fate in ("written", "replayed", "spooled", "rejected", "dropped"):
            rows.add_metric([self.location, fate], getattr(wstats, f"rows_{fate}"))
        yield rows


def phase_observer(location: str, registry: CollectorRegistry) -> Callable[[Sequence[Row]], None]:
    histogram = Histogram(
        "netring_prober_phase_seconds",
        "Phase durations of successful samples.",
        ["location", "source", "phase"],
        registry=registry,
        buckets=BUCKETS,
    )

    def observe(rows: Sequence[Row]) -> None:
        for row in rows:
            if not row.get("ok"):
                continue
            for phase in PHASES:
                value = row.get(phase)
                if isinstance(value, int | float):
                    histogram.labels(location, str(row["source"]), phase[:-3]).observe(value / 1000)

    return observe
