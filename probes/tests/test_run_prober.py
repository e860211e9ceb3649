"""``manage.py run_prober`` as operators run it: a subprocess probing real local servers into PostgreSQL.

Targets are HTTP and HTTPS servers on 127.0.0.1 whose delays are known (a self-signed
certificate made with ``openssl req -x509``), a closed port, a socket that accepts and never
answers, and a name under ``.invalid``. The prober writes into the test database (or, for the
outage test, into a PostgreSQL of its own that the test stops and starts again).
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from netring_site.embedded import EmbeddedPostgres, free_port
from probes.models import ProberSample, ProberTarget
from probes.prober import copy_text
from probes.prober.spool import Spool
from probes.prober.testing import closed_port
from tests.support import database_url

ROOT = Path(__file__).resolve().parents[2]
SLOW_S = 0.2  # what /slow waits before answering
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        time.sleep(0.1)


# --- Targets ----------------------------------------------------------------------------------


class TargetServer:
    """A threaded HTTP(S) server on 127.0.0.1 that logs when each request arrived.

    ``/slow`` waits 200 ms before answering, ``/slower`` 800 ms, ``/status/<code>`` answers
    that code, anything else 200.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, float]] = []  # (path, wall-clock arrival)
        log = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                log.append((self.path, time.time()))
                delay = {"/slow": SLOW_S, "/slower": 0.8}.get(self.path, 0.0)
                if delay:
                    time.sleep(delay)  # the slow target being simulated
                parts = self.path.partition("?")[0].strip("/").split("/")
                code = int(parts[1]) if parts[0] == "status" else 200
                self.send_response(code)
                self.send_header("Content-Length", "3")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"ok\n")

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

            def finish_request(self, request: Any, client_address: Any) -> None:
                if isinstance(request, ssl.SSLSocket):
                    request.do_handshake()  # in the request's thread, not the accept loop
                super().finish_request(request, client_address)

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that time out and hang up are part of the tests

        self._server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True, do_handshake_on_connect=False)
        self.scheme = "https" if tls else "http"
        self.port: int = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def arrivals(self, path: str) -> list[float]:
        return [at for p, at in self.requests if p == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made by ``openssl req -x509``."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def http_server() -> Iterator[TargetServer]:
    server = TargetServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def https_server(certificate: tuple[Path, Path]) -> Iterator[TargetServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server = TargetServer(tls=context)
    yield server
    server.close()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that accepts connections (the kernel completes the handshake) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def target(name: str, url: str, **fields: Any) -> ProberTarget:
    return ProberTarget.objects.create(name=name, url=url, **{"verify_tls": False, **fields})


def rows_of(location: str) -> list[ProberSample]:
    return list(ProberSample.objects.filter(location=location).order_by("ts", "source"))


# --- The prober process -----------------------------------------------------------------------


@dataclass
class ProberProcess:
    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int
    started_at: float = field(default_factory=time.time)

    def metrics(self) -> dict[str, float]:
        """The prober's /metrics, as {"name{label=value,...}": value}."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "location")
                values[f"{sample.name}{{{labels}}}"] = sample.value
        return values

    def metric(self, name: str) -> float | None:
        with contextlib.suppress(OSError):
            return self.metrics().get(name + "{}")
        return None

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout)

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def ticks(self) -> int:
        """Ticks run, from the exit log line."""
        match = re.search(r"prober stopped: (\d+) ticks, (\d+) missed", self.output())
        assert match, self.output()
        assert match.group(2) == "0", "the prober missed ticks"
        return int(match.group(1))

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def run_prober(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., ProberProcess]]:
    """Start ``python manage.py run_prober`` against the test database; stopped at teardown."""
    started: list[ProberProcess] = []

    def _start(location: str, *args: str, database: str | None = None, **extra_env: str) -> ProberProcess:
        port = free_port()
        env = {
            **os.environ,
            "NETRING_DATABASE_URL": database or database_url(),
            "NETRING_REDIS_URL": settings.REDIS_URL,
            "NETRING_DATA_DIR": str(tmp_path / "data"),
            "NETRING_LOCATION": location,
            "NETRING_PROBER_METRICS_ADDR": f"127.0.0.1:{port}",
            "NETRING_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        log = tmp_path / f"prober-{location}-{len(started)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "run_prober", *args],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        prober = ProberProcess(process, log, port)
        started.append(prober)
        return prober

    yield _start
    for prober in started:
        if prober.process.poll() is None:
            prober.process.kill()
            prober.process.wait()


# --- One row per tick and target --------------------------------------------------------------


def test_it_writes_one_row_per_tick_and_target_stamped_with_the_scheduled_second(
    run_prober: Callable[..., ProberProcess], http_server: TargetServer
) -> None:
    target("fast", http_server.url("/"))
    target("slow", http_server.url("/slower"))  # 800 ms: overlaps the next tick

    prober = run_prober("cadence", "--ticks", "5")

    assert prober.wait() == 0, prober.output()
    rows = rows_of("cadence")
    assert prober.ticks() == 5
    assert Counter(r.source for r in rows) == {http_server.url("/"): 5, http_server.url("/slower"): 5}
    by_tick: dict[int, list[ProberSample]] = defaultdict(list)
    for row in rows:
        by_tick[row.probe_id].append(row)
    probe_ids = sorted(by_tick)
    assert probe_ids == list(range(probe_ids[0], probe_ids[0] + 5))  # strictly increasing, no gap
    seconds = [by_tick[p][0].ts.timestamp() for p in probe_ids]
    assert all(s.is_integer() for s in seconds)
    assert seconds == [seconds[0] + i for i in range(5)]  # consecutive whole seconds
    assert all({r.ts for r in by_tick[p]} == {by_tick[p][0].ts} for p in probe_ids)
    assert prober.started_at < seconds[0] < prober.started_at + 10
    # ts is when the tick was scheduled to start, not when the row was written (~1 s later) or
    # the slow answer came back (0.8 s later): each request reached the server just after its
    # row's ts (a few ms on an idle machine; the bound leaves room for a loaded one).
    for path in ("/", "/slower"):
        arrivals = http_server.arrivals(path)[-5:]
        assert all(0 <= a - s < 0.25 for a, s in zip(arrivals, seconds, strict=True)), (arrivals, seconds)
    assert all(r.ok and r.total_ms is not None and r.total_ms >= 800 for r in rows if r.source.endswith("/slower"))


# --- What a sample measures -------------------------------------------------------------------


def test_it_measures_phase_durations_and_classifies_failures(
    run_prober: Callable[..., ProberProcess],
    http_server: TargetServer,
    https_server: TargetServer,
    blackhole: int,
) -> None:
    target("http-slow", http_server.url("/slow"))
    target("https-slow", https_server.url("/slow"))
    target("refused", f"http://127.0.0.1:{closed_port()}/")
    target("blackhole", f"http://127.0.0.1:{blackhole}/", timeout_s=0.5)
    target("dns", "http://netring-test.invalid/")
    target("not-found", http_server.url("/status/404"))
    target("expected-404", http_server.url("/status/404?expected"), expected_status="404")
    target("server-error", http_server.url("/status/503"))

    prober = run_prober("phases", "--ticks", "3")

    assert prober.wait() == 0, prober.output()
    rows = rows_of("phases")
    assert len(rows) == 3 * 8
    by_name: dict[str, list[ProberSample]] = defaultdict(list)
    names = {t.url: t.name for t in ProberTarget.objects.all()}
    for row in rows:
        by_name[names[row.source]].append(row)

    for name in ("http-slow", "https-slow"):
        for row in by_name[name]:
            assert row.ok and row.status == 200 and not row.disconnected and row.error_class == ""
            assert row.ttfb_ms == pytest.approx(SLOW_S * 1000, abs=5), name
            assert row.total_ms is not None and row.total_ms >= row.ttfb_ms
            assert row.dns_ms is not None and row.connect_ms is not None and row.connect_ms > 0
    assert all(r.tls_ms is not None and r.tls_ms > 0 for r in by_name["https-slow"])
    assert all(r.tls_ms == 0 for r in by_name["http-slow"])

    def failures(name: str) -> set[tuple[bool, bool, int | None, str]]:
        return {(r.ok, r.disconnected, r.status, r.error_class) for r in by_name[name]}

    assert failures("refused") == {(False, True, None, "refused")}
    assert failures("blackhole") == {(False, True, None, "timeout")}
    assert all(r.total_ms == pytest.approx(500, abs=50) and r.ttfb_ms is None for r in by_name["blackhole"])
    assert failures("dns") == {(False, True, None, "dns")}
    # Success is the status the target expects (default 200-399), not "anything below 500".
    assert failures("not-found") == {(False, False, 404, "http_status")}
    assert failures("expected-404") == {(True, False, 404, "")}
    assert failures("server-error") == {(False, False, 503, "http_status")}


def test_an_unexpected_status_is_stored_with_what_was_expected(
    run_prober: Callable[..., ProberProcess], http_server: TargetServer
) -> None:
    target("not-found", http_server.url("/status/404?message"))
    target("only-204", http_server.url("/?message"), expected_status="204,300-302")

    prober = run_prober("message", "--ticks", "2")

    assert prober.wait() == 0, prober.output()
    errors = {(r.source, r.error_class, r.error) for r in rows_of("message")}
    assert errors == {
        (http_server.url("/status/404?message"), "http_status", "HTTP 404, expected 200-399"),
        (http_server.url("/?message"), "http_status", "HTTP 200, expected 204,300-302"),
    }


CURL_TIMES = (
    "%{time_namelookup} %{time_connect} %{time_appconnect} %{time_pretransfer} %{time_starttransfer} %{time_total}"
)


def curl_cli_phases(url: str) -> dict[str, float]:
    """Phase durations (ms) of one ``curl -w`` fetch, from curl's cumulative offsets."""
    out = subprocess.run(
        ["curl", "-s", "-k", "-o", "/dev/null", "-w", CURL_TIMES, url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    namelookup, connect, appconnect, pretransfer, starttransfer, total = (float(v) * 1000 for v in out.split())
    return {
        "dns_ms": namelookup,
        "connect_ms": connect - namelookup,
        "tls_ms": appconnect - connect if appconnect else 0.0,
        "ttfb_ms": starttransfer - pretransfer,
        "total_ms": total,
    }


def test_its_phases_agree_with_the_curl_command_line(
    run_prober: Callable[..., ProberProcess], http_server: TargetServer, https_server: TargetServer
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("the curl command is not installed (Debian package curl)")
    urls = [http_server.url("/slow"), https_server.url("/slow")]
    target("http", urls[0])
    target("https", urls[1])

    prober = run_prober("curl", "--ticks", "5")
    cli = {url: [curl_cli_phases(url) for _ in range(5)] for url in urls}

    assert prober.wait() == 0, prober.output()
    for url in urls:
        ours = [r for r in rows_of("curl") if r.source == url]
        assert len(ours) == 5
        for phase in ("dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "total_ms"):
            mine = statistics.median(getattr(r, phase) for r in ours)
            theirs = statistics.median(c[phase] for c in cli[url])
            assert mine == pytest.approx(theirs, abs=3), f"{url} {phase}: prober {mine:.2f} ms, curl {theirs:.2f} ms"


# --- Live edits, SIGTERM ----------------------------------------------------------------------


def test_target_edits_take_effect_without_a_restart(
    run_prober: Callable[..., ProberProcess], http_server: TargetServer
) -> None:
    first = target("first", http_server.url("/?first"))
    prober = run_prober("edits", "--ticks", "12", NETRING_PROBER_RELOAD="1")
    wait_for(lambda: ProberSample.objects.filter(location="edits").exists(), 15, "the first rows")

    added_at = time.time()
    target("added", http_server.url("/?added"))
    wait_for(
        lambda: ProberSample.objects.filter(source=http_server.url("/?added")).exists(), 10, "rows of the new target"
    )
    assert time.time() - added_at < 10

    first.enabled = False
    first.save()
    disabled_at = time.time()

    assert prober.wait() == 0, prober.output()
    ticks = prober.ticks()
    first_rows = ProberSample.objects.filter(source=first.url)
    added_rows = ProberSample.objects.filter(source=http_server.url("/?added"))
    # Reload every second, installed at the next tick: at most ~2 more samples after the edit.
    assert first_rows.filter(ts__gt=datetime_of(disabled_at + 3)).count() == 0
    assert first_rows.count() + added_rows.count() < 2 * ticks
    assert added_rows.filter(ts__gt=datetime_of(disabled_at + 1)).exists()


def datetime_of(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def test_sigterm_flushes_the_last_ticks_before_exit(
    run_prober: Callable[..., ProberProcess], http_server: TargetServer
) -> None:
    target("fast", http_server.url("/?sigterm"))
    target("slow", http_server.url("/slower"))  # in flight when the signal arrives
    before = len(http_server.arrivals("/slower"))
    prober = run_prober("sigterm")
    wait_for(lambda: ProberSample.objects.filter(location="sigterm").count() >= 4, 20, "the first rows")
    # Signal just after a tick started: its rows exist only in memory, the slow one in flight.
    wait_for(lambda: 0.05 < time.time() % 1 < 0.3, 2, "the start of a second")

    assert prober.terminate() == 0, prober.output()

    ticks = prober.ticks()
    rows = rows_of("sigterm")
    assert Counter(r.source for r in rows) == {http_server.url("/?sigterm"): ticks, http_server.url("/slower"): ticks}
    assert len(http_server.arrivals("/slower")) - before == ticks  # every transfer started has its row
    assert all(r.ok for r in rows)  # the slow one finished during the drain, not aborted


def test_it_exports_its_metrics(run_prober: Callable[..., ProberProcess], http_server: TargetServer) -> None:
    target("fast", http_server.url("/?metrics"))
    target("missing", http_server.url("/status/404?metrics"))
    prober = run_prober("metrics")
    wait_for(lambda: (prober.metric("netring_prober_ticks_total") or 0) >= 3, 20, "three ticks")

    metrics = prober.metrics()
    prober.terminate()

    assert metrics["netring_prober_samples_total{result=ok}"] >= 2
    assert metrics["netring_prober_samples_total{result=http_status}"] >= 2
    assert metrics["netring_prober_missed_ticks_total{}"] == 0
    assert metrics["netring_prober_targets{}"] == 2
    assert metrics["netring_prober_spool_depth{}"] == 0
    assert metrics["netring_prober_last_flush_timestamp{}"] == pytest.approx(time.time(), abs=5)
    assert metrics["netring_prober_rows_total{fate=written}"] >= 2
    assert metrics[f"netring_prober_phase_seconds_count{{phase=ttfb,source={http_server.url('/?metrics')}}}"] >= 2
    for name in ("netring_prober_tick_lateness_seconds{}", "netring_prober_in_flight{}"):
        assert name in metrics
    assert metrics["netring_prober_wall_clock_drift_seconds{}"] == pytest.approx(0, abs=0.5)
    lateness = "netring_prober_tick_start_lateness_seconds"
    assert metrics[f"{lateness}_count{{}}"] == metrics[f"{lateness}_bucket{{le=+Inf}}"] >= 3
    assert metrics[f"{lateness}_bucket{{le=1.0}}"] == metrics[f"{lateness}_count{{}}"]
    assert metrics["netring_prober_targets_from_cache{}"] == 0


# --- A start while the database is down -------------------------------------------------------


def test_a_prober_started_while_the_database_is_down_probes_the_targets_it_last_loaded(
    run_prober: Callable[..., ProberProcess], http_server: TargetServer, tmp_path: Path
) -> None:
    target("cached", http_server.url("/?cached"))
    assert run_prober("cached", "--ticks", "1").wait() == 0  # loads the targets, keeps a copy
    before = len(http_server.arrivals("/?cached"))

    with contextlib.closing(socket.socket()) as nothing:
        nothing.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        unreachable = f"postgresql://netring:netring@127.0.0.1:{nothing.getsockname()[1]}/netring"
        prober = run_prober("cached", "--ticks", "3", database=unreachable)
        assert prober.wait() == 0, prober.output()

    assert "probing the 1 target(s) cached in" in prober.output()
    assert len(http_server.arrivals("/?cached")) - before == prober.ticks() == 3
    spooled = Spool(tmp_path / "data" / "prober-cached" / "spool").read_batch(100)
    assert spooled is not None
    assert [(r["source"], r["ok"]) for r in copy_text.decode(spooled.data)] == [(http_server.url("/?cached"), True)] * 3


# --- The outage test --------------------------------------------------------------------------


def test_a_database_outage_loses_no_row_and_doubles_none(
    run_prober: Callable[..., ProberProcess], http_server: TargetServer, tmp_path: Path
) -> None:
    """PostgreSQL stops for 20 s while the prober runs: rows are spooled, then replayed in order."""
    pg = EmbeddedPostgres(tmp_path / "pg", database="outage")
    url = pg.start()
    try:
        env = {**os.environ, "NETRING_DATABASE_URL": url, "NETRING_REDIS_URL": settings.REDIS_URL}
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"], env=env, cwd=ROOT, check=True)
        sources = [http_server.url("/?outage-a"), http_server.url("/?outage-b")]
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            for i, source in enumerate(sources):
                cur.execute(
                    'INSERT INTO probes_probertarget (name, url, enabled, "group", timeout_s, follow_redirects,'
                    " expected_status, verify_tls, updated_at) VALUES (%s, %s, true, '', 1.5, true, '200-399', true,"
                    " now())",
                    [f"outage-{i}", source],
                )
        conn.close()

        def stored() -> int:
            with psycopg2.connect(url) as conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM probes_probersample")
                count: int = cur.fetchone()[0]
            conn.close()
            return count

        prober = run_prober("outage", database=url)
        wait_for(lambda: stored() >= 3 * len(sources), 20, "three ticks stored")

        port = pg.port
        pg.stop()
        down_at = time.monotonic()
        depth = wait_for(lambda: prober.metric("netring_prober_spool_depth"), 10, "rows in the spool")
        assert depth > 0
        time.sleep(max(0.0, 20 - (time.monotonic() - down_at)))  # the outage itself, not a wait for a result
        spooled = prober.metric("netring_prober_spool_depth") or 0
        assert spooled >= 18 * len(sources)
        pg.start()
        assert pg.port == port, "PostgreSQL came back on another port"

        # The writer retries with a capped back-off (30 s at most), then replays the spool.
        wait_for(lambda: prober.metric("netring_prober_spool_depth") == 0, 45, "the spool replay")
        after = stored()
        wait_for(lambda: stored() >= after + 2 * len(sources), 10, "new rows after the replay")
        assert prober.terminate() == 0, prober.output()

        ticks = prober.ticks()
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT source, probe_id, count(*), min(extract(epoch FROM ts)) FROM probes_probersample "
                "GROUP BY source, probe_id ORDER BY source, probe_id"
            )
            groups = cur.fetchall()
        conn.close()
    finally:
        pg.stop()

    assert all(count == 1 for _, _, count, _ in groups), "a row was stored twice"
    for source in sources:
        mine = [(probe_id, float(ts)) for s, probe_id, _, ts in groups if s == source]
        assert len(mine) == ticks  # every tick of the run, outage included
        probe_ids = [p for p, _ in mine]
        assert probe_ids == list(range(probe_ids[0], probe_ids[0] + ticks))
        seconds = [ts for _, ts in mine]
        assert [b - a for a, b in itertools.pairwise(seconds)] == [1.0] * (ticks - 1)
    assert ticks >= 3 + 20 + 2
