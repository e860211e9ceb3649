"""One location's mesh round against 1,000 live loopback targets, from task start to rows committed.

The targets are one asyncio process (not this one, so its CPU is not ours) listening on 1,000
loopback addresses (127.1.x.y:8757) that answer ``GET /health`` with a tiny 200 at once. Each
target gets the round's checks with ICMP off: a TCP connect and one HTTP GET, as
``NETRING_HTTP_ENDPOINTS=/health`` and ``NETRING_ICMP_COUNT=0`` configure them.
``probes.services.run_round`` runs in this process exactly as the edge task calls it (metrics
included) and returns once the batch is committed.

Figures, compared in the same run:

- the round's wall time and CPU time (``time.process_time``: every thread of this process, that
  is the asyncio loop of the TCP checks, the CurlMulti thread and the database write);
- a sequential baseline: the same targets checked one after another with the same check
  functions, measured on 100 targets and extrapolated to 1,000 (said so in the output);
- a round in which 100 of the 1,000 targets are black holes (listeners whose accept queue is
  full, so SYNs are dropped and both checks time out): it must finish within one timeout of the
  healthy round.

    python -m bench mesh             # under `make bench`
    python -m bench.mesh serve N     # the target process alone (used by the benchmark)
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from bench.common import ROOT, line, setup_django

TARGETS = 1_000
BLACK_HOLES = 100
BASELINE_SAMPLE = 100
PORT = 8757
TIMEOUT = 2.0  # NETRING_TCP_TIMEOUT and NETRING_HTTP_TIMEOUT of the benchmark
ROUNDS = 5  # measured healthy rounds, after one warm-up round
BLACK_ROUNDS = 3  # measured rounds with black holes
TARGET_WALL = 2.0
TARGET_CPU = 1.0

_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n"
    b"Connection: close\r\n\r\n"
    b'{"status":"healthy"}'
)


def healthy_address(n: int) -> str:
    return f"127.1.{n // 250}.{n % 250 + 1}"


def black_hole_address(n: int) -> str:
    return f"127.2.{n // 250}.{n % 250 + 1}"


# --- The target process ---------------------------------------------------------------------


class _Health(asyncio.Protocol):
    """Answers the first request on a connection with a 200 and closes it (the checks never reuse one)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.transport.write(_RESPONSE)
            self.transport.close()


def _raise_file_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve(healthy: int, black_holes: int) -> None:
    loop = asyncio.get_running_loop()
    for n in range(healthy):
        await loop.create_server(_Health, healthy_address(n), PORT, backlog=1024, reuse_address=True)
    held = []
    for n in range(black_holes):
        # Backlog 0 holds one connection, which we make ourselves and never accept: every later
        # SYN is dropped, so a TCP connect or an HTTP GET to it times out (a firewalled peer).
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((black_hole_address(n), PORT))
        listener.listen(0)
        held += [listener, socket.create_connection((black_hole_address(n), PORT), timeout=1)]
    print("ready", flush=True)
    await asyncio.Event().wait()


def serve(healthy: int, black_holes: int) -> None:
    _raise_file_limit()
    asyncio.run(_serve(healthy, black_holes))


@contextmanager
def target_process() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.mesh", "serve", str(TARGETS), str(BLACK_HOLES)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the target process did not start")
        yield process
    finally:
        process.terminate()
        process.wait(10)


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- The benchmark --------------------------------------------------------------------------


@contextmanager
def peak_threads() -> Iterator[list[int]]:
    """The most threads this process ran at once inside the block (the sampler not counted)."""
    peak = [threading.active_count()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], threading.active_count() - 1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


@dataclass(frozen=True)
class Measured:
    wall: float
    cpu: float
    rows: int
    failures: int


def _targets(addresses: list[str]) -> list[dict[str, object]]:
    return [
        {"instance_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, a)), "host": a, "port": PORT, "location": "far"}
        for a in addresses
    ]


def _round(number: int, targets: list[dict[str, object]], metrics: object) -> Measured:
    from probes import services
    from probes.models import MeshResult

    source = services.RoundSource("bench", str(uuid.uuid4()), number, datetime.now(UTC))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    report = services.run_round(source, targets, metrics)  # type: ignore[arg-type]
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    rows = MeshResult.objects.filter(source_location="bench", round_id=number).count()
    return Measured(wall, cpu, rows, report.failures)


def _sequential(targets: list[dict[str, object]]) -> Measured:
    """The same checks (the same functions, one target at a time) and the same batch write."""
    from probes import services
    from probes.checks.mesh import Target, run_checks

    options = services.check_options()
    source = services.RoundSource("bench", str(uuid.uuid4()), 0, datetime.now(UTC))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    results = []
    for t in targets:
        peer = Target(str(t["instance_id"]), str(t["host"]), int(str(t["port"])), str(t["location"]))
        results += run_checks([peer], **options)  # type: ignore[arg-type]
    services.store_round(source, results, {str(t["instance_id"]): "far" for t in targets})
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return Measured(wall, cpu, len(results), sum(1 for r in results if not r.ok))


def _clean() -> None:
    from probes.models import MeshLatest, MeshResult

    MeshResult.objects.filter(source_location="bench").delete()
    MeshLatest.objects.filter(source_location="bench").delete()


def main() -> bool:
    print(
        f"mesh: one round against {TARGETS:,} loopback targets (TCP + GET /health each, ICMP off), "
        f"timeouts {TIMEOUT:g}s, {os.cpu_count()} CPUs",
        flush=True,
    )
    _raise_file_limit()
    setup_django()
    from django.test import override_settings

    from probes.edge_metrics import MeshMetrics

    overrides = override_settings(
        NETRING_HTTP_ENDPOINTS=["/health"],
        NETRING_ICMP_COUNT=0,
        NETRING_TCP_TIMEOUT=TIMEOUT,
        NETRING_HTTP_TIMEOUT=TIMEOUT,
    )
    healthy = _targets([healthy_address(n) for n in range(TARGETS)])
    holed = healthy[: TARGETS - BLACK_HOLES] + _targets([black_hole_address(n) for n in range(BLACK_HOLES)])
    with target_process() as server, overrides:
        _clean()
        metrics = MeshMetrics()
        with peak_threads() as threads:  # warm-up (database connection, metric series), not counted
            _round(1, healthy, metrics)
        server_cpu0 = cpu_of(server.pid)
        runs = [_round(2 + n, healthy, metrics) for n in range(ROUNDS)]
        server_cpu = (cpu_of(server.pid) - server_cpu0) / ROUNDS
        baseline = _sequential(healthy[:BASELINE_SAMPLE])
        blacks = [_round(10 + n, holed, metrics) for n in range(BLACK_ROUNDS)]
        _clean()

    wall = statistics.median(r.wall for r in runs)
    cpu = statistics.median(r.cpu for r in runs)
    per_target = baseline.wall / BASELINE_SAMPLE
    sequential = per_target * TARGETS
    complete = all(r.rows == TARGETS * 2 and r.failures == 0 for r in runs)
    ok_wall, ok_cpu = wall <= TARGET_WALL and complete, cpu <= TARGET_CPU and complete
    black_wall = statistics.median(r.wall for r in blacks)
    ok_black = black_wall <= wall + TIMEOUT and all(
        r.rows == TARGETS * 2 and r.failures == BLACK_HOLES * 2 for r in blacks
    )
    line(
        f"round, {TARGETS:,} targets: wall (median of {ROUNDS})",
        f"{wall:.2f} s",
        f"target <= {TARGET_WALL:g} s",
        "PASS" if ok_wall else "FAIL",
    )
    line(
        "  sequential baseline, same checks",
        f"{sequential:.1f} s",
        f"{BASELINE_SAMPLE} targets x {TARGETS // BASELINE_SAMPLE}",
        f"{sequential / wall:.0f}x slower",
    )
    line(
        f"round, {TARGETS:,} targets: CPU (median of {ROUNDS})",
        f"{cpu:.2f} s",
        f"target <= {TARGET_CPU:g} s",
        "PASS" if ok_cpu else "FAIL",
    )
    line(
        "  sequential baseline CPU",
        f"{baseline.cpu / BASELINE_SAMPLE * TARGETS:.1f} s",
        f"{BASELINE_SAMPLE} targets x {TARGETS // BASELINE_SAMPLE}",
        "",
    )
    line(
        "  slowest round: wall / CPU",
        f"{max(r.wall for r in runs):.2f} / {max(r.cpu for r in runs):.2f} s",
        f"CPU of all {threads[0]} threads at peak",
        "",
    )
    line(
        "  rows committed per round / failed checks",
        f"{runs[-1].rows:,} / {runs[-1].failures}",
        f"{TARGETS * 2:,} / 0",
        "",
    )
    line("  target process CPU per round", f"{server_cpu:.2f} s", "(not counted above)", "")
    line(
        f"round with {BLACK_HOLES} black holes: wall (median of {BLACK_ROUNDS})",
        f"{black_wall:.2f} s",
        f"healthy {wall:.2f} s + {TIMEOUT:g} s",
        "PASS" if ok_black else "FAIL",
    )
    line(
        "  failed checks (TCP + HTTP of each black hole)",
        f"{blacks[-1].failures}",
        f"{BLACK_HOLES * 2}",
        "",
    )
    line(
        "  black holes one after another would cost",
        f"{BLACK_HOLES * TIMEOUT:.0f} s",
        "(they are last in the target list)",
        "",
    )
    return ok_wall and ok_cpu and ok_black


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(0 if main() else 1)
