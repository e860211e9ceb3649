"""The dedicated 1 Hz curl prober of one location (NETRING_LOCATION).

A long-running process, not a beat task: beat re-anchors every run at send time and cannot
hold a 1 Hz cadence. SIGTERM or Ctrl-C stops the loop, waits for transfers in flight, and
flushes every row to PostgreSQL or, if it is down, to the local spool.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from prometheus_client import CollectorRegistry, start_http_server

from probes import prober_services
from probes.prober import copy_text
from probes.prober.curl_transport import CurlMultiTransport
from probes.prober.loop import ProberLoop, Target
from probes.prober.spool import Row, Spool
from probes.prober.target_cache import TargetCache
from probes.prober.ticks import Clock, FileProbeIdStore, ProbeIdAllocator, SystemClock, TickScheduler
from probes.prober.writer import BatchWriter
from probes.prober_metrics import PhaseMetrics, ProberCollector

log = logging.getLogger("netring.prober")

# A replayed chunk is one COPY: large chunks replay a long outage's backlog quickly (see
# bench/prober.py), small enough that one chunk stays well inside the writer's sink timeout.
REPLAY_CHUNK = 5000


def make_spool(location: str, directory: Path) -> Spool:
    """The spool of ``location``'s rows (spools of earlier versions are read too)."""
    return Spool(directory, legacy=partial(copy_text.encode, location))


def make_writer(location: str, spool: Spool) -> BatchWriter:
    """The writer as production runs it (``bench/prober.py`` measures this very one)."""
    return BatchWriter(
        prober_services.make_sink(), spool, encode=partial(copy_text.encode, location), replay_chunk=REPLAY_CHUNK
    )


@dataclass
class Prober:
    """The wired-up pieces of one location's prober (what ``run_prober`` runs)."""

    location: str
    state: Path
    loop: ProberLoop
    writer: BatchWriter
    transport: CurlMultiTransport
    store: FileProbeIdStore
    registry: CollectorRegistry

    def run(self, ticks: int | None = None) -> None:
        """Probe until :meth:`ProberLoop.stop` (or ``ticks`` ticks), then flush and release."""
        self.writer.start()
        try:
            self.loop.run(max_ticks=ticks)
        finally:
            self.writer.close(timeout=10.0)
            self.transport.close()
            self.store.close()


def build(
    location: str,
    state: Path,
    *,
    clock: Clock | None = None,
    scheduler: Callable[[Clock, ProbeIdAllocator], TickScheduler] = TickScheduler,
) -> Prober:
    """Wire the loop to the database, the spool and the target cache in ``state``, and the
    metrics registry.

    ``scheduler`` lets a benchmark record every tick; everything else is what production runs.
    """
    state.mkdir(parents=True, exist_ok=True)
    clock = clock or SystemClock()
    store = FileProbeIdStore(state / "probe_id")
    transport = CurlMultiTransport()
    writer = make_writer(location, make_spool(location, state / "spool"))
    registry = CollectorRegistry()
    phases = PhaseMetrics(location, registry)

    def emit(rows: Sequence[Row]) -> None:
        phases.observe(rows)
        writer.submit(rows)

    def load_targets() -> list[Target]:
        # Runs on a reload thread that ends right after: close its connection now rather
        # than leave one idle server connection per reload to the garbage collector.
        try:
            return prober_services.targets_for(location)
        finally:
            connection.close()

    loop = ProberLoop(
        clock=clock,
        scheduler=scheduler(clock, ProbeIdAllocator(store)),
        transport=transport,
        load_targets=load_targets,
        emit=emit,
        max_in_flight=settings.NETRING_PROBER_MAX_IN_FLIGHT,
        reload_interval=settings.NETRING_PROBER_RELOAD,
        on_targets=phases.retain,
        target_cache=TargetCache(state / "targets.json"),
    )
    writer.pacer = loop.quiet_delay  # replay keeps off the ticks
    registry.register(ProberCollector(location, loop, writer))
    return Prober(location, state, loop, writer, transport, store, registry)


class Command(BaseCommand):
    help = "Probe this location's prober targets every second (NETRING_LOCATION)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--ticks", type=int, default=None, help="stop after this many ticks (tests, benchmarks)")

    def handle(self, *args: Any, ticks: int | None = None, **options: Any) -> None:
        location = settings.NETRING_LOCATION
        if not location:
            raise CommandError("NETRING_LOCATION is not set: a prober belongs to one location")
        try:
            prober = build(location, Path(settings.DATA_DIR) / f"prober-{location}")
        except RuntimeError as exc:  # the probe_id state is locked by another prober
            raise CommandError(str(exc)) from None
        if settings.NETRING_PROBER_METRICS_ADDR:
            host, _, port = settings.NETRING_PROBER_METRICS_ADDR.rpartition(":")
            start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=prober.registry)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: prober.loop.stop())
        log.info(
            "prober for %s: spool %s, metrics on %s",
            location,
            prober.state / "spool",
            settings.NETRING_PROBER_METRICS_ADDR or "(off)",
        )
        prober.run(ticks)
        stats = prober.loop.stats
        log.info(
            "prober stopped: %d ticks, %d missed, %d rows spooled for later",
            stats.ticks,
            stats.missed_ticks,
            prober.writer.spool_depth,
        )
