"""The 1 Hz prober: cadence, CPU and spool replay, against the issue's targets.

Cadence: the prober as ``run_prober`` wires it (``probes.management.commands.run_prober.build``)
runs in its own process for ``BENCH_PROBER_TICKS`` ticks (default 300, five minutes) against 50
targets on one local threaded HTTP server (its own process too), writing into the bench
database. A scheduler subclass records every tick's lateness and wall-clock offset; nothing
else differs from production. In the same minutes a naive loop (start the fetches, then
``time.sleep(1)``, the usual way to write "every second") runs in a third process against the
same targets, for the drift baseline.

Replay: 200,000 rows are appended to a prober's spool as an outage leaves it (one record of 50
rows per second, in the COPY text the writer spools), then that
prober starts as ``run_prober`` builds it, in its own process, probing 50 local targets: its
writer replays the backlog with the production settings (thread, flush interval, replay
budget, chunk size, ``make_sink``'s COPY, and the pacing that keeps replay off the ticks) while
the loop ticks. The rate is timed from the start until the spool is empty, beside Django's
``bulk_create`` of the same rows; the ticks' lateness meanwhile shows the cadence holds.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import ROOT, line, setup_django

TARGETS = 50
TICKS = int(os.environ.get("BENCH_PROBER_TICKS", "300"))
REPLAY_ROWS = 200_000
LOCATION = "bench"
REPLAY_LOCATION = "bench-replay"
REPLAY_GIVE_UP_S = 300.0

LATENESS_P99_MS = 2.0
DRIFT_MS = 1.0
CPU_PCT = 10.0
REPLAY_RATE = 50_000


def main() -> bool:
    print(f"prober: {TICKS} ticks against {TARGETS} local targets, then a {REPLAY_ROWS:,}-row spool replay", flush=True)
    setup_django()
    with tempfile.TemporaryDirectory(prefix="bench-prober-") as tmp:
        cadence_ok = _cadence(Path(tmp))
        replay_ok = _replay(Path(tmp) / "replay")
    return cadence_ok and replay_ok


# --- Cadence ----------------------------------------------------------------------------------


def _targets(location_name: str, base: str) -> list[str]:
    """50 targets on the local server, probed from ``location_name`` only."""
    from members.models import Location
    from probes.models import ProberTarget

    urls = [f"{base}/{location_name}/{i}" for i in range(TARGETS)]
    ProberTarget.objects.filter(name__startswith="bench-").delete()
    location, _ = Location.objects.get_or_create(name=location_name)
    for i, url in enumerate(urls):
        ProberTarget.objects.create(name=f"bench-{i:02d}", url=url).locations.add(location)
    return urls


def _cadence(tmp: Path) -> bool:
    from probes.models import ProberSample, ProberTarget

    server = subprocess.Popen(
        [sys.executable, "-m", "bench.prober", "serve"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        base = server.stdout.readline().decode().strip()
        ProberSample.objects.filter(location=LOCATION).delete()
        urls = _targets(LOCATION, base)
        out, naive_out = tmp / "prober.json", tmp / "naive.json"
        env = {**os.environ, "NETRING_PROBER_METRICS_ADDR": ""}
        prober = subprocess.Popen(
            [sys.executable, "-m", "bench.prober", "run-prober", str(TICKS), str(tmp / "state"), str(out)],
            cwd=ROOT,
            env=env,
        )
        naive = subprocess.Popen(
            [sys.executable, "-m", "bench.prober", "run-naive", str(TICKS), str(naive_out), *urls], cwd=ROOT, env=env
        )
        prober.wait()
        naive.wait()
        stored = ProberSample.objects.filter(location=LOCATION).count()
        ProberTarget.objects.filter(name__startswith="bench-").delete()
    finally:
        server.terminate()
        server.wait(10)
    if prober.returncode != 0 or naive.returncode != 0:
        line("prober run", f"exit {prober.returncode}/{naive.returncode}", "0", "FAIL")
        return False
    result, baseline = json.loads(out.read_text()), json.loads(naive_out.read_text())

    lateness = sorted(result["lateness_ms"])
    p50, p99, worst = _pct(lateness, 50), _pct(lateness, 99), lateness[-1]
    drift = result["wall_offset_ms"][-1]
    naive_drift = baseline["wall_offset_ms"][-1]
    naive_lateness = sorted(baseline["wall_offset_ms"])
    cpu = 100.0 * result["cpu_s"] / result["wall_s"]
    missed = result["missed"]
    late_ok = p99 <= LATENESS_P99_MS and missed == 0 and len(lateness) == TICKS
    drift_ok = abs(drift) < DRIFT_MS
    cpu_ok = cpu < CPU_PCT
    rows_ok = stored == TICKS * TARGETS
    line(
        "tick start lateness p50 / p99 / max",
        f"{p50:.2f} / {p99:.2f} / {worst:.2f} ms",
        f"target p99 <= {LATENESS_P99_MS:g} ms",
        "PASS" if late_ok else "FAIL",
    )
    line("  ticks run / missed", f"{len(lateness)} / {missed}", f"{TICKS} / 0", "")
    line(
        f"drift after tick {TICKS} (wall clock vs schedule)",
        f"{drift:+.2f} ms",
        f"naive sleep(1) loop {naive_drift:+.1f} ms",
        "PASS" if drift_ok else "FAIL",
    )
    line("  naive loop's offset p50 / max", f"{_pct(naive_lateness, 50):.1f} / {naive_lateness[-1]:.1f} ms", "", "")
    line(
        "prober CPU (all threads, user + system)",
        f"{cpu:.1f}% of one core",
        f"target < {CPU_PCT:g}%",
        "PASS" if cpu_ok else "FAIL",
    )
    line("  rows stored (ticks x targets)", f"{stored:,}", f"{TICKS * TARGETS:,}", "PASS" if rows_ok else "FAIL")
    line("  samples ok / failed", f"{result['ok']:,} / {result['failed']:,}", "", "")
    return late_ok and drift_ok and cpu_ok and rows_ok


def _pct(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


# --- Replay -----------------------------------------------------------------------------------


def _replay(state: Path) -> bool:
    from django.db import connection

    from probes.management.commands.run_prober import REPLAY_CHUNK
    from probes.models import ProberSample, ProberTarget
    from probes.prober import copy_text
    from probes.prober.spool import Row, Spool

    # An hour and more of 50 targets, ending now (the partitions of today and yesterday exist).
    now = math.floor(time.time())
    seconds = REPLAY_ROWS // TARGETS
    rows: list[Row] = [
        {
            "ts": float(now - seconds + s),
            "probe_id": now - seconds + s,
            "source": f"https://target-{t:02d}.example/favicon.ico",
            "target_id": None,
            "ok": t % 17 != 0,
            "disconnected": False,
            "status": 200 if t % 17 else 503,
            "error_class": None if t % 17 else "http_status",
            "error": None,
            "dns_ms": 1.25,
            "connect_ms": 10.5 + t,
            "tls_ms": 21.0,
            "ttfb_ms": 40.0 + s % 50,
            "total_ms": 75.0 + s % 50,
        }
        for s in range(seconds)
        for t in range(TARGETS)
    ]
    ProberSample.objects.filter(location__in=[REPLAY_LOCATION, "bench-bulk"]).delete()
    # One record per second of rows, as the writer spools them during an outage (one per flush).
    spool = Spool(state / "spool", fsync=False)
    for i in range(0, len(rows), TARGETS):
        tick = rows[i : i + TARGETS]
        spool.append(copy_text.encode(REPLAY_LOCATION, tick), len(tick))
    spool.close()

    # The prober as run_prober builds it, started with that backlog, as after an outage.
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.prober", "serve"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        _targets(REPLAY_LOCATION, server.stdout.readline().decode().strip())
        connection.close()
        out = state / "replay.json"
        env = {**os.environ, "NETRING_PROBER_METRICS_ADDR": ""}
        child = subprocess.run(
            [sys.executable, "-m", "bench.prober", "run-replay", str(state), str(out)], cwd=ROOT, env=env, check=False
        )
        ProberTarget.objects.filter(name__startswith="bench-").delete()
    finally:
        server.terminate()
        server.wait(10)
    if child.returncode != 0:
        line("replay run", f"exit {child.returncode}", "0", "FAIL")
        return False
    result = json.loads(out.read_text())
    replay_s = result["replay_s"]
    # The backlog's rows, not those the prober measured meanwhile (they are stamped now).
    replayed = ProberSample.objects.filter(location=REPLAY_LOCATION, probe_id__lte=now).count()
    connection.close()

    objects = [
        ProberSample(
            ts=datetime.fromtimestamp(float(str(r["ts"])), tz=UTC),
            location="bench-bulk",
            **{k: v for k, v in r.items() if k not in ("ts", "error_class", "error")},
            error_class=str(r["error_class"] or ""),
            error="",
        )
        for r in rows
    ]
    started = time.perf_counter()
    ProberSample.objects.bulk_create(objects, batch_size=REPLAY_CHUNK, ignore_conflicts=True)
    bulk_s = time.perf_counter() - started
    ProberSample.objects.filter(location__in=[REPLAY_LOCATION, "bench-bulk"]).delete()

    rate, bulk_rate = REPLAY_ROWS / replay_s, REPLAY_ROWS / bulk_s
    ok = rate >= REPLAY_RATE and replayed == REPLAY_ROWS and result["sink_failures"] == 0
    line(
        f"spool replay into PostgreSQL ({REPLAY_CHUNK:,}-row chunks)",
        f"{rate:,.0f} rows/s",
        f"bulk_create {bulk_rate:,.0f} rows/s (prebuilt)",
        "PASS" if ok else "FAIL",
    )
    line("  target", f">= {REPLAY_RATE:,} rows/s", "", "")
    line("  rows replayed / in the spool", f"{replayed:,}", f"{REPLAY_ROWS:,}", "")
    lateness = sorted(result["lateness_ms"])
    late_ok = bool(lateness) and _pct(lateness, 99) <= LATENESS_P99_MS and result["missed"] == 0
    line(
        "  tick lateness meanwhile p50 / p99 / max",
        f"{_pct(lateness, 50):.2f} / {_pct(lateness, 99):.2f} / {lateness[-1]:.2f} ms" if lateness else "no tick",
        f"target p99 <= {LATENESS_P99_MS:g} ms",
        "PASS" if late_ok else "FAIL",
    )
    line("  ticks meanwhile / missed", f"{len(lateness)} / {result['missed']}", "", "")
    return ok and late_ok


# --- Child processes --------------------------------------------------------------------------


def _serve() -> int:
    """The targets: one threaded HTTP server on 127.0.0.1; runs until stdin closes."""
    from probes.prober.testing import local_http_server

    with local_http_server() as base:
        print(base, flush=True)
        sys.stdin.read()
    return 0


def _run_prober(ticks: int, state: Path, out: Path) -> int:
    """The prober as run_prober builds it, with a scheduler that records every tick."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netring_site.settings")
    import django

    django.setup()
    from probes.management.commands.run_prober import build
    from probes.prober.ticks import Tick, TickScheduler

    lateness: list[float] = []
    wall_offset: list[float] = []

    class RecordingScheduler(TickScheduler):
        def poll(self) -> Tick | None:
            tick = super().poll()
            if tick is not None:
                # When the tick's transfers start, on both clocks, against the schedule.
                wall_offset.append((time.time() - tick.wall_ts) * 1000)
                lateness.append(tick.lateness * 1000)
            return tick

    prober = build(LOCATION, state, scheduler=RecordingScheduler)
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    prober.run(ticks)
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - started
    samples = prober.loop.stats.samples
    result = {
        "lateness_ms": lateness,
        "wall_offset_ms": wall_offset,
        "missed": prober.loop.stats.missed_ticks,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "wall_s": wall,
        "ok": samples["ok"],
        "failed": sum(samples.values()) - samples["ok"],
    }
    out.write_text(json.dumps(result))
    return 0


def _run_replay(state: Path, out: Path) -> int:
    """The prober as run_prober builds it, started with a backlog in its spool; stops once the
    spool is empty and reports how long that took and how late the ticks started meanwhile."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netring_site.settings")
    import django

    django.setup()
    from probes.management.commands.run_prober import build
    from probes.prober.ticks import Tick, TickScheduler

    lateness: list[float] = []
    replaying = True

    class RecordingScheduler(TickScheduler):
        def poll(self) -> Tick | None:
            tick = super().poll()
            if tick is not None and replaying:
                lateness.append(tick.lateness * 1000)
            return tick

    prober = build(REPLAY_LOCATION, state, scheduler=RecordingScheduler)
    replay_s: list[float] = []

    def watch(started: float) -> None:
        nonlocal replaying
        while prober.writer.spool_depth and time.perf_counter() - started < REPLAY_GIVE_UP_S:
            time.sleep(0.01)  # the bench watching, not part of the replay: 10 ms on seconds
        if not prober.writer.spool_depth:
            replay_s.append(time.perf_counter() - started)
        replaying = False
        prober.loop.stop()

    threading.Thread(target=watch, args=(time.perf_counter(),), daemon=True).start()
    prober.run()
    result = {
        "replay_s": replay_s[0] if replay_s else math.inf,
        "lateness_ms": lateness,
        "missed": prober.loop.stats.missed_ticks,
        "sink_failures": prober.writer.stats.sink_failures,
    }
    out.write_text(json.dumps(result))
    return 0


def _run_naive(ticks: int, out: Path, urls: list[str]) -> int:
    """The baseline: fire the fetches, then ``time.sleep(1)``; drift is whatever each turn costs."""
    import pycurl

    from probes.checks.http import configure

    def fetch(url: str) -> None:
        curl = pycurl.Curl()
        configure(curl, url, timeout_s=1.5)
        try:
            curl.perform()
        except pycurl.error:
            pass
        finally:
            curl.close()

    first = math.floor(time.time()) + 1
    time.sleep(first - time.time())
    wall_offset = []
    for k in range(ticks):
        wall_offset.append((time.time() - (first + k)) * 1000)
        for url in urls:
            threading.Thread(target=fetch, args=(url,), daemon=True).start()
        time.sleep(1)
    out.write_text(json.dumps({"wall_offset_ms": wall_offset}))
    return 0


def _child(argv: list[str]) -> int:
    role, args = argv[0], argv[1:]
    if role == "serve":
        return _serve()
    if role == "run-prober":
        return _run_prober(int(args[0]), Path(args[1]), Path(args[2]))
    if role == "run-replay":
        return _run_replay(Path(args[0]), Path(args[1]))
    if role == "run-naive":
        return _run_naive(int(args[0]), Path(args[1]), args[2:])
    raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
