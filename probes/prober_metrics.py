"""The prober's Prometheus metrics, served by ``run_prober`` on NETRING_PROBER_METRICS_ADDR.

Counters come from the loop's and the writer's own statistics at scrape time (one source of
truth); phase durations are observed per sample as rows pass to the writer, and the series of
a target removed from the list are dropped when the loop stops probing it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from probes.prober.loop import LATENESS_BUCKETS, ProberLoop, Target
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
        yield self._lateness_histogram()
        for name, doc, value in (
            ("netring_prober_tick_lateness_seconds", "Lateness of the latest tick start.", stats.lateness_last),
            ("netring_prober_tick_lateness_max_seconds", "Largest tick lateness since start.", stats.lateness_max),
            (
                "netring_prober_wall_clock_drift_seconds",
                "How far the wall clock moved against the tick schedule since start (steps; ts labels are off by it).",
                stats.wall_clock_drift,
            ),
            ("netring_prober_in_flight", "Transfers in flight.", stats.in_flight),
            ("netring_prober_targets", "Targets probed each tick.", stats.targets),
            (
                "netring_prober_targets_from_cache",
                "1 while the targets come from the cached list (the database was unreachable at start).",
                int(stats.targets_from_cache),
            ),
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
        corrupt = CounterMetricFamily(
            "netring_prober_spool_corrupt_records",
            "Damaged spool records skipped (torn or failing their CRC, e.g. after a power loss).",
            labels=["location"],
        )
        corrupt.add_metric(loc, self.writer.spool.corrupt_records)
        yield corrupt

    def _lateness_histogram(self) -> HistogramMetricFamily:
        stats = self.loop.stats
        # The loop counts per bucket; Prometheus buckets are cumulative. A copy first: the
        # loop's thread may add a tick while this one reads.
        counts = list(stats.lateness_buckets)
        buckets, total = [], 0
        for bound, count in zip((*LATENESS_BUCKETS, float("inf")), counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        histogram = HistogramMetricFamily(
            "netring_prober_tick_start_lateness_seconds",
            "How late each tick started against its deadline.",
            labels=["location"],
        )
        histogram.add_metric([self.location], buckets, sum_value=stats.lateness_sum)
        return histogram


class PhaseMetrics:
    """``netring_prober_phase_seconds``: phase durations of successful samples, per source.

    :meth:`observe` is the loop's ``emit`` hook (rows on their way to the writer) and
    :meth:`retain` its ``on_targets`` hook: both run on the loop's thread. A target removed
    from the list loses its series, which would otherwise be exported, frozen, until restart.
    """

    def __init__(self, location: str, registry: CollectorRegistry) -> None:
        self.location = location
        self.histogram = Histogram(
            "netring_prober_phase_seconds",
            "Phase durations of successful samples (tls: only samples with a TLS handshake).",
            ["location", "source", "phase"],
            registry=registry,
            buckets=BUCKETS,
        )
        self._current: set[str] | None = None  # sources probed now; None until the loop says
        self._exported: set[str] = set()  # sources that have series

    def observe(self, rows: Sequence[Row]) -> None:
        for row in rows:
            if not row.get("ok"):
                continue
            source = str(row["source"])
            if self._current is not None and source not in self._current:
                continue  # a late answer of a removed target: its series are gone for good
            for phase in PHASES:
                value = row.get(phase)
                # A plain-HTTP sample's tls_ms is 0: no handshake, not a handshake of 0 s.
                if isinstance(value, int | float) and (phase != "tls_ms" or value > 0):
                    self.histogram.labels(self.location, source, phase[:-3]).observe(value / 1000)
                    self._exported.add(source)

    def retain(self, targets: Sequence[Target]) -> None:
        """Keep the series of ``targets`` only."""
        self._current = {t.source for t in targets}
        for source in self._exported - self._current:
            for phase in PHASES:  # a phase the source never had (tls of http) is a no-op
                self.histogram.remove(self.location, source, phase[:-3])
        self._exported &= self._current


def phase_observer(location: str, registry: CollectorRegistry) -> Callable[[Sequence[Row]], None]:
    """The ``observe`` of a new :class:`PhaseMetrics` (for callers that only feed it rows)."""
    return PhaseMetrics(location, registry).observe
