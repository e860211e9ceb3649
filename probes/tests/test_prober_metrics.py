"""The prober's Prometheus metrics, read from a real registry fed by the loop on a fake clock."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from probes.prober.loop import ProberLoop, Target
from probes.prober.spool import Row, Spool
from probes.prober.testing import FakeClock, FakeResponse, FakeTransport, json_lines
from probes.prober.ticks import MemoryProbeIdStore, ProbeIdAllocator, TickScheduler
from probes.prober.transport import SampleKey
from probes.prober.writer import BatchWriter
from probes.prober_metrics import PhaseMetrics, ProberCollector

HTTP = Target("http", "http://a.example/")
HTTPS = Target("https", "https://b.example/")


class Prober:
    """A loop wired to the metrics as ``run_prober`` wires it (the writer is not started)."""

    def __init__(self, tmp_path: Path, load_targets: Callable[[], Sequence[Target]], **options: float) -> None:
        self.clock = FakeClock(wall=1_700_000_000.4, mono=100.0)
        self.transport = FakeTransport(self.clock, self.respond)
        self.registry = CollectorRegistry()
        self.phases = PhaseMetrics("us1", self.registry)
        self.on_emit: Callable[[], None] = lambda: None
        self.loop = ProberLoop(
            clock=self.clock,
            scheduler=TickScheduler(self.clock, ProbeIdAllocator(MemoryProbeIdStore())),
            transport=self.transport,
            load_targets=load_targets,
            emit=self.emit,
            on_targets=self.phases.retain,
            run_async=lambda fn: fn(),
            **options,  # type: ignore[arg-type]
        )
        self.spool = Spool(tmp_path / "spool")
        self.writer = BatchWriter(lambda data: None, self.spool, encode=json_lines)
        self.registry.register(ProberCollector("us1", self.loop, self.writer))

    @staticmethod
    def respond(key: SampleKey, url: str) -> FakeResponse:
        return FakeResponse(duration=0.02)

    def emit(self, rows: Sequence[Row]) -> None:
        self.phases.observe(rows)
        self.on_emit()

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, {"location": "us1", **labels})


def test_the_wall_clock_drift_is_exported(tmp_path: Path) -> None:
    prober = Prober(tmp_path, lambda: [HTTP])
    prober.on_emit = lambda: prober.clock.step_wall(0.25) if prober.loop.stats.ticks == 2 else None

    prober.loop.run(max_ticks=4)

    assert prober.value("netring_prober_wall_clock_drift_seconds") == pytest.approx(0.25)


def test_spool_depth_and_damaged_records_are_exported(tmp_path: Path) -> None:
    spooled = Prober(tmp_path, lambda: [HTTP])
    spooled.spool.append(json_lines([{"probe_id": 1}, {"probe_id": 2}]), 2)
    spooled.spool.close()
    (segment,) = (tmp_path / "spool").glob("seg-*.log")
    with open(segment, "ab") as f:
        f.write(b"#00000000 1 3\nab")  # a record cut short by a power loss

    prober = Prober(tmp_path, lambda: [HTTP])  # the next start finds it
    assert prober.value("netring_prober_spool_depth") == 2
    assert prober.spool.read_batch(10) is not None
    assert prober.value("netring_prober_spool_corrupt_records_total") == 1


def test_tick_lateness_is_exported_as_a_histogram(tmp_path: Path) -> None:
    prober = Prober(tmp_path, lambda: [HTTP])
    # After tick 2 the loop waits for its 20 ms transfer; that wait comes back 0.9835 s late,
    # 3.5 ms past tick 3's deadline.
    prober.on_emit = lambda: prober.transport.stall_next_poll(0.9835) if prober.loop.stats.ticks == 2 else None

    prober.loop.run(max_ticks=5)

    bucket = "netring_prober_tick_start_lateness_seconds_bucket"
    assert prober.value("netring_prober_tick_start_lateness_seconds_count") == 5
    assert prober.value(bucket, le="0.002") == 4
    assert prober.value(bucket, le="0.005") == 5
    assert prober.value(bucket, le="+Inf") == 5
    assert prober.value("netring_prober_tick_start_lateness_seconds_sum") == pytest.approx(0.0035)


def test_the_phase_series_of_a_removed_target_disappear_on_reload(tmp_path: Path) -> None:
    lists = iter([[HTTP, HTTPS]] * 2)
    prober = Prober(tmp_path, lambda: next(lists, [HTTPS]), reload_interval=1.0)

    prober.loop.run(max_ticks=6)

    removed = {"source": "http", "phase": "total"}
    assert prober.value("netring_prober_phase_seconds_count", **removed) is None
    assert (prober.value("netring_prober_phase_seconds_count", source="https", phase="total") or 0) >= 4


def test_plain_http_samples_add_nothing_to_the_tls_histogram() -> None:
    registry = CollectorRegistry()
    phases = PhaseMetrics("us1", registry)
    http: Row = {"source": "http://a.example/", "ok": True, "dns_ms": 1.0, "tls_ms": 0.0, "total_ms": 9.0}

    phases.observe([http, {**http, "source": "https://b.example/", "tls_ms": 4.0}])

    def tls(value: str, source: str) -> float | None:
        return registry.get_sample_value(value, {"location": "us1", "phase": "tls", "source": source})

    assert tls("netring_prober_phase_seconds_count", "http://a.example/") is None
    assert tls("netring_prober_phase_seconds_sum", "https://b.example/") == pytest.approx(0.004)
    assert tls("netring_prober_phase_seconds_count", "https://b.example/") == 1
