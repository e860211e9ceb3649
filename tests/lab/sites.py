"""The whole system as deployed, in a network lab: a central site and three locations.

``Deployment`` builds ``Lab.SITES`` (us1, eu1 and asia1 behind chains of routers of different
lengths, every one reaching the central namespace), shapes links with tbf, and runs every
process the way the README tells users to, with only the variables it documents:

- central namespace: PostgreSQL and Redis (the embedded servers, listening on the central
  address), then ``migrate``, ``collectstatic``, ``netring_setup``, and the web (gunicorn),
  ``celery beat`` and the central worker;
- each location: ``manage.py run_edge`` and ``manage.py run_prober`` with
  ``NETRING_ADVERTISE_IP=auto``; every prober fetches the other locations' member ``/health``.

The test process sees the lab only through Unix sockets relayed into the namespaces
(``tests.lab.gate``): the web, PostgreSQL, Redis, and every edge's and prober's ``/metrics``. A
cut link or a lossy router therefore changes what the system sees, never what the test sees.

``python -m tests.lab`` (``make lab``) builds the same deployment and leaves it running
for a person, with the web on http://127.0.0.1:8756/, until Ctrl-C.

No Django import here: the test process's own Django settings point at another database.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import http.client
import itertools
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import redis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from netring_site.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.lab.netns import PROJECT_ROOT, Lab, LabError, Netns, _run, available, tool

T = TypeVar("T")

LOCATIONS = ("us1", "eu1", "asia1")
CENTRAL = "central"
ACCESS_ROUTER = {"us1": "rus", "eu1": "reu", "asia1": "ras"}  # each location's uplink goes there
# tbf shaping (Mbit/s, both directions): two access links and one core link, so the pairs'
# bottlenecks sit at different places of their paths.
SHAPING_MBIT = {("us1", "rus"): 40.0, ("eu1", "reu"): 30.0, ("rt2", "rt3"): 20.0}
# TCP payload per 1514-byte frame with timestamps, as tbf counts frames on a veth.
GOODPUT_FACTOR = 1448 / 1514
WEB_PORT, PG_PORT, REDIS_PORT, MEMBER_PORT, PROBER_METRICS = 8756, 5432, 6379, 8757, "127.0.0.1:8758"
ADMIN = "admin"
BANDWIDTH_SCHEDULE = "bandwidth round dispatch"  # netring_site.schedules
HTTP_ENDPOINTS = ("/health", "/metrics")  # NETRING_HTTP_ENDPOINTS' default: each one is an HTTP check


@dataclass(frozen=True)
class RoundRows:
    """One source location's stored results of one mesh round."""

    rows: int
    ok: int
    instances: int  # distinct source instances: 1 unless the round ran twice
    stamps: int  # distinct round start times: 1 unless the round ran twice
    ts: datetime


@dataclass(frozen=True)
class Timing:
    """The lab's settings: short intervals so that every scenario fits in seconds."""

    check_interval: int = 5  # NETRING_CHECK_INTERVAL, the minimum the settings allow
    heartbeat: int = 1
    stale_after: int = 4
    offline_after: int = 15
    tcp_timeout: float = 2.0
    http_timeout: float = 2.0
    # 100 echoes per pair and round, 10 ms apart: enough for a loss estimate in a few rounds.
    icmp_count: int = 100
    icmp_interval: float = 0.01
    prober_reload: float = 1.0
    bandwidth_duration: float = 2.0  # per direction; rates are steady after ~0.5 s on the lab's links
    traceroute_interval: int = 15

    @property
    def bandwidth_interval(self) -> int:
        """Room for the 3 pairs' slots, one after the other (probes.checks.pairing.slot_seconds)."""
        pairs = len(LOCATIONS) * (len(LOCATIONS) - 1) // 2
        return math.ceil(pairs * (2 * self.bandwidth_duration + 5.0))

    @property
    def icmp_timeout(self) -> float:
        return min(self.tcp_timeout, 2.0)  # probes.services.check_options

    @property
    def round_bound(self) -> float:
        """The longest a round's checks take, whatever fails (they all run at once)."""
        return max(self.tcp_timeout, self.http_timeout, self.icmp_count * self.icmp_interval + self.icmp_timeout)

    def environment(self) -> dict[str, str]:
        return {
            "NETRING_CHECK_INTERVAL": str(self.check_interval),
            "NETRING_HEARTBEAT_INTERVAL": str(self.heartbeat),
            "NETRING_STALE_AFTER": str(self.stale_after),
            "NETRING_OFFLINE_AFTER": str(self.offline_after),
            "NETRING_TCP_TIMEOUT": f"{self.tcp_timeout:g}",
            "NETRING_HTTP_TIMEOUT": f"{self.http_timeout:g}",
            "NETRING_ICMP_COUNT": str(self.icmp_count),
            "NETRING_ICMP_INTERVAL": f"{self.icmp_interval:g}",
            "NETRING_PROBER_RELOAD": f"{self.prober_reload:g}",
            "NETRING_BANDWIDTH_TEST_INTERVAL": str(self.bandwidth_interval),
            "NETRING_BANDWIDTH_TEST_DURATION": f"{self.bandwidth_duration:g}",
            "NETRING_TRACEROUTE_INTERVAL": str(self.traceroute_interval),
        }


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something true and return that; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        time.sleep(interval)


# --- Paths through the lab --------------------------------------------------------------------


def path_nodes(lab: Lab, a: str, b: str) -> list[str]:
    """The nodes packets cross from ``a`` to ``b`` (both included): the lab's shortest path."""
    previous: dict[str, str | None] = {a: None}
    queue = collections.deque([a])
    while queue:
        node = queue.popleft()
        if node == b:
            break
        if node != a and node not in lab.routers:
            continue
        for link in lab.links_of(node):
            peer = link.peer(node)
            if peer not in previous:
                previous[peer] = node
                queue.append(peer)
    nodes = [b]
    while (before := previous[nodes[-1]]) is not None:
        nodes.append(before)
    return nodes[::-1]


def routers_between(lab: Lab, a: str, b: str) -> list[str]:
    return path_nodes(lab, a, b)[1:-1]


def hop_addresses(lab: Lab, a: str, b: str) -> list[str]:
    """What a traceroute from ``a`` to ``b`` reports: each router's address on the link the probe
    came in on (the lab sets ``icmp_errors_use_inbound_ifaddr``), then ``b``'s own address."""
    nodes = path_nodes(lab, a, b)
    hops = [lab.addr(node, before) for before, node in itertools.pairwise(nodes)]
    hops[-1] = lab.addr(b)
    return hops


def bottleneck_mbit(lab: Lab, a: str, b: str) -> float | None:
    nodes = path_nodes(lab, a, b)
    rates = [SHAPING_MBIT.get((x, y)) or SHAPING_MBIT.get((y, x)) for x, y in itertools.pairwise(nodes)]
    shaped = [rate for rate in rates if rate]
    return min(shaped) if shaped else None


# --- Processes ----------------------------------------------------------------------------------


@dataclass
class Process:
    """One long-running process of the deployment, in one namespace, logging to one file."""

    name: str
    node: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    wanted: bool = False  # started and not stopped on purpose: should be running

    def start(self, ns: Netns) -> Process:
        self.starts += 1
        self.wanted = True
        with open(self.log, "ab") as out:
            out.write(f"\n--- lab: start #{self.starts} at {datetime.now(UTC).isoformat()} ---\n".encode())
            out.flush()
            self.popen = ns.popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def signal(self, signum: int) -> None:
        if self.alive:
            assert self.popen is not None
            self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a warm shutdown, as an operator's), SIGKILL after ``timeout``."""
        self.wanted = False
        if self.popen is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def http_over_unix(
    path: Path, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, bytes]:
    conn = _UnixHTTPConnection(str(path), timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        all_headers = {"Accept": "application/json", **(headers or {})}
        if payload is not None:
            all_headers["Content-Type"] = "application/json"
        conn.request(method, url, body=payload, headers=all_headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _start_postgres(root: Path, host: str, port: int) -> tuple[str, str]:
    """Runs inside the central namespace (``Netns.call``): start PostgreSQL, return (url, password)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pg.port").write_text(str(port))
    server = EmbeddedPostgres(root, host=host)
    return server.start(), server.password


def _prepare_redis(root: Path, host: str, port: int) -> tuple[list[str], str]:
    """Runs inside the central namespace: the redis-server command line and the password."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "redis.port").write_text(str(port))
    server = EmbeddedRedis(root, host=host)
    server.prepare()
    return server.command(), server.password


def _bin(name: str) -> list[str]:
    """A console script of the venv (``celery``, ``gunicorn``), as the README runs them."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", name]


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "manage.py"), *args]


# --- The deployment -------------------------------------------------------------------------------


@dataclass
class Deployment:
    """Build with ``start()`` (or ``with``); ``close()`` tears everything down, also half-built."""

    base: Path
    timing: Timing = field(default_factory=Timing)
    extra_env: dict[str, str] = field(default_factory=dict)
    # False: the bandwidth beat entry starts disabled (as an operator can in the admin), and a
    # test runs a round when it wants one (``run_task``): saturated links would disturb the
    # other scenarios' measurements.
    bandwidth_schedule: bool = True

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.logs = self.base / "logs"
        self.logs.mkdir(exist_ok=True)
        # Unix socket paths must stay short (108 bytes): their own folder under /tmp.
        self.sockets = Path(tempfile.mkdtemp(prefix="nrlab-", dir="/tmp"))
        self.lab = Lab(Lab.SITES)
        self.processes: dict[str, Process] = {}
        self.secret_key = secrets.token_urlsafe(40)
        self.admin_password = secrets.token_urlsafe(12)
        self.api_token = ""
        self.pg_password = ""
        self.redis_password = ""
        self.redis_argv: list[str] = []
        self._db: Any = None
        self._closed = False
        self._lock = threading.Lock()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def central_ip(self) -> str:
        return self.lab.addr(CENTRAL)

    def ip(self, location: str) -> str:
        """The address the location's edge advertises (its only link faces the central site)."""
        return self.lab.addr(location)

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres:{self.pg_password}@{self.central_ip}:{PG_PORT}/netring"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@{self.central_ip}:{REDIS_PORT}/0"

    def socket(self, name: str) -> Path:
        return self.sockets / f"{name}.sock"

    # -- building ----------------------------------------------------------------------------

    def __enter__(self) -> Deployment:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Deployment:
        self.lab.build()
        for (a, b), mbit in SHAPING_MBIT.items():
            self.lab.shape_link(a, b, mbit)
        self._start_gates()
        central = self.lab[CENTRAL]
        self.pg_password = central.call(_start_postgres, self.base / "postgres", self.central_ip, PG_PORT)[1]
        self.redis_argv, self.redis_password = central.call(
            _prepare_redis, self.base / "redis", self.central_ip, REDIS_PORT
        )
        self._add("redis", CENTRAL, self.redis_argv, netring=False).start(central)
        for args in (("migrate", "--noinput", "-v0"), ("collectstatic", "--noinput", "-v0"), ("netring_setup",)):
            self.run_central(_manage(*args))
        out = self.run_central(_manage("drf_create_token", ADMIN))
        self.api_token = out.split()[2]  # "Generated token <key> for user admin"
        if not self.bandwidth_schedule:
            self.set_schedule(BANDWIDTH_SCHEDULE, enabled=False)
        celery = [*_bin("celery"), "-A", "netring_site"]
        gunicorn = [*_bin("gunicorn"), "netring_site.wsgi", "--config", str(PROJECT_ROOT / "compose/gunicorn.conf.py")]
        self._add("web", CENTRAL, [*gunicorn, "--bind", f"0.0.0.0:{WEB_PORT}"]).start(central)
        central_worker = ["worker", "-Q", "netring.central", "--pool", "threads", "-c", "4", "--loglevel", "INFO"]
        self._add("central", CENTRAL, [*celery, *central_worker]).start(central)
        self._add("beat", CENTRAL, [*celery, "beat", "--loglevel", "INFO"]).start(central)
        for location in LOCATIONS:
            where = {"NETRING_LOCATION": location, "NETRING_ADVERTISE_IP": "auto"}
            self._add(f"edge-{location}", location, _manage("run_edge"), env=where).start(self.lab[location])
            self._add(f"prober-{location}", location, _manage("run_prober"), env=where).start(self.lab[location])
        wait_until(lambda: self.api_ok("/health"), 60, "the web answering /health")
        for location in LOCATIONS:
            self.wait_registered(location, timeout=60)
        self._add_prober_targets()
        return self

    def environment(self, data_dir: Path, **extra: str) -> dict[str, str]:
        """What every process gets: a clean environment with the README's variables only."""
        data_dir.mkdir(parents=True, exist_ok=True)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "NETRING_DATABASE_URL": self.database_url,
            "NETRING_REDIS_URL": self.redis_url,
            "NETRING_SECRET_KEY": self.secret_key,
            "NETRING_DATA_DIR": str(data_dir),
            "NETRING_LOG_LEVEL": "INFO",
            "NETRING_ADMIN_PASSWORD": self.admin_password,
            **self.timing.environment(),
            **self.extra_env,
            **extra,
        }

    def _add(
        self, name: str, node: str, argv: list[str], env: dict[str, str] | None = None, *, netring: bool = True
    ) -> Process:
        """A process of ``node`` with the deployment's environment (``netring=False``: a bare one)."""
        data = self.base / "data" / node
        environment = self.environment(data, **(env or {})) if netring else {"PATH": os.environ.get("PATH", "")}
        process = Process(name, node, argv, environment, self.logs / f"{name}.log")
        self.processes[name] = process
        return process

    def run_central(self, argv: list[str], timeout: float = 180) -> str:
        """A one-off command in the central namespace (migrate, setup); its output."""
        env = self.environment(self.base / "data" / "central")
        done = subprocess.run(
            self.lab[CENTRAL].exec_argv(argv),
            env={**env, "PYTHONPATH": str(PROJECT_ROOT)},
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        with open(self.logs / "setup.log", "a") as log:
            log.write(f"$ {' '.join(argv[1:])}\n{done.stdout}{done.stderr}\n")
        if done.returncode != 0:
            raise LabError(f"{' '.join(argv[1:])} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout

    def _start_gates(self) -> None:
        c = self.central_ip
        mappings = {
            CENTRAL: [
                f"{self.socket('web')}={c}:{WEB_PORT}",
                f"{self.sockets}/.s.PGSQL.{PG_PORT}={c}:{PG_PORT}",
                f"{self.socket('redis')}={c}:{REDIS_PORT}",
            ]
        }
        for location in LOCATIONS:
            mappings[location] = [
                f"{self.socket(location + '-edge')}={self.ip(location)}:{MEMBER_PORT}",
                f"{self.socket(location + '-prober')}={PROBER_METRICS}",
            ]
        for node, maps in mappings.items():
            self.lab.spawn(node, [sys.executable, "-m", "tests.lab.gate", *maps], ready="ready")

    def _add_prober_targets(self) -> None:
        for source in LOCATIONS:
            for target in LOCATIONS:
                if source == target:
                    continue
                status, body = self.api(
                    "POST",
                    "/api/v1/prober/targets/",
                    {
                        "name": f"{target} health from {source}",
                        "url": f"http://{self.ip(target)}:{MEMBER_PORT}/health",
                        "locations": [source],
                    },
                )
                if status != 201:
                    raise LabError(f"creating a prober target answered {status}: {body!r}")

    # -- looking at the system ---------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
        """A request to the lab's web, as an admin's API token; (status, decoded JSON or bytes)."""
        headers = {"Authorization": f"Token {self.api_token}"} if self.api_token else {}
        status, raw = http_over_unix(self.socket("web"), method, path, body, headers, timeout)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw

    def api_ok(self, path: str) -> Any:
        try:
            status, body = self.api("GET", path, timeout=5)
        except OSError:
            return None
        return body if status == 200 else None

    def get_json(self, path: str) -> Any:
        status, body = self.api("GET", path)
        if status != 200:
            raise AssertionError(f"GET {path} answered {status}: {body!r}")
        return body

    def members(self, **filters: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in {"limit": "1000", **filters}.items())
        return list(self.get_json(f"/api/v1/members/?{query}")["results"])

    def member(self, instance_id: str) -> dict[str, Any] | None:
        status, body = self.api("GET", f"/api/v1/members/{instance_id}/")
        return body if status == 200 else None

    def matrix(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        """(source location, target location, check) -> the matrix cell."""
        cells = self.get_json("/api/v1/mesh/matrix/")
        return {(c["source_location"], c["target_location"], c["kind"]): c for c in cells}

    def sql(self, query: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query on the lab's database (one kept connection, reopened after errors)."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._db is None or self._db.closed:
                        self._db = psycopg2.connect(
                            host=str(self.sockets),
                            port=PG_PORT,
                            user="postgres",
                            password=self.pg_password,
                            dbname="netring",
                            connect_timeout=5,
                        )
                        self._db.autocommit = True
                    with self._db.cursor() as cursor:
                        cursor.execute(query, params)
                        return list(cursor.fetchall()) if cursor.description else []
                except (psycopg2.OperationalError, psycopg2.InterfaceError):
                    with contextlib.suppress(Exception):
                        self._db.close()
                    self._db = None
                    if attempt == 2:
                        raise
        return []

    def broker(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket("redis")), password=self.redis_password, socket_timeout=5)

    def _member_endpoint(self, location: str, path: str, kind: str = "edge") -> tuple[int, bytes]:
        return http_over_unix(self.socket(f"{location}-{kind}"), "GET", path, timeout=5)

    def health(self, location: str) -> dict[str, Any] | None:
        """The edge's /health document (200 or 503), or None while nothing answers."""
        try:
            status, body = self._member_endpoint(location, "/health")
        except OSError:
            return None
        if status not in (200, 503) or not body:
            return None
        document: dict[str, Any] = json.loads(body)
        return document

    def metrics(self, location: str, kind: str = "edge") -> list[Sample]:
        """Every sample of the edge's (or prober's) /metrics."""
        status, body = self._member_endpoint(location, "/metrics", kind)
        if status != 200:
            raise AssertionError(f"{kind} /metrics of {location} answered {status}")
        return [s for family in text_string_to_metric_families(body.decode()) for s in family.samples]

    def wait_registered(self, location: str, timeout: float = 30) -> str:
        """Until the location's edge says it is registered and healthy; its instance id."""
        process = self.processes[f"edge-{location}"]

        def registered() -> str | None:
            if not process.alive:
                raise AssertionError(f"edge-{location} exited with {process.returncode}:\n{process.log_tail()}")
            health = self.health(location)
            return str(health["instance_id"]) if health and health["status"] == "healthy" else None

        return wait_until(registered, timeout, f"registration of the {location} edge")

    def instance_id(self, location: str) -> str:
        health = self.health(location)
        assert health is not None, f"the {location} edge does not answer"
        return str(health["instance_id"])

    # -- mesh rounds -------------------------------------------------------------------------

    @staticmethod
    def rows_per_source() -> int:
        """Results one location stores per round: TCP, ICMP and HTTP per endpoint, per peer."""
        return (len(LOCATIONS) - 1) * (2 + len(HTTP_ENDPOINTS))

    def rounds(self, since: datetime, until: datetime | None = None) -> dict[int, dict[str, RoundRows]]:
        """Stored mesh rounds that started in [since, until): round id -> source location -> rows."""
        rows = self.sql(
            "SELECT round_id, source_location, count(*), count(*) FILTER (WHERE ok), "
            "count(DISTINCT source_instance), count(DISTINCT ts), min(ts) "
            "FROM probes_meshresult WHERE ts >= %s AND ts < %s GROUP BY 1, 2 ORDER BY 1, 2",
            (since, until or datetime(9999, 1, 1, tzinfo=UTC)),
        )
        result: dict[int, dict[str, RoundRows]] = {}
        for round_id, source, n, ok, instances, stamps, ts in rows:
            result.setdefault(round_id, {})[source] = RoundRows(n, ok, instances, stamps, ts)
        return result

    def complete_rounds(self, since: datetime, *, all_ok: bool = True) -> list[int]:
        """Rounds since ``since`` that every location stored in full (and all green)."""
        full = self.rows_per_source()
        return [
            round_id
            for round_id, sources in self.rounds(since).items()
            if set(sources) == set(LOCATIONS)
            and all(r.rows == full and (r.ok == full or not all_ok) for r in sources.values())
        ]

    def wait_rounds(self, since: datetime, count: int = 1, timeout: float = 30, *, all_ok: bool = True) -> list[int]:
        """Until ``count`` complete rounds started after ``since``; their ids."""
        what = f"{count} complete{' green' if all_ok else ''} round(s) after {since:%H:%M:%S}"
        return wait_until(
            lambda: (done := self.complete_rounds(since, all_ok=all_ok)) and len(done) >= count and done,
            timeout,
            what,
            interval=0.25,
        )

    def steady(self, timeout: float = 45) -> int:
        """Wait for a healthy system: every edge registered, a complete green round after now."""
        now = datetime.now(UTC)
        for location in LOCATIONS:
            self.wait_registered(location, timeout)
        return self.wait_rounds(now, 1, timeout)[0]

    # -- changing the system -----------------------------------------------------------------

    def process(self, name: str) -> Process:
        return self.processes[name]

    def restart(self, name: str, **extra_env: str) -> Process:
        """Start ``name`` again (after it stopped or was killed), with extra variables if any."""
        process = self.processes[name]
        if process.alive:
            raise LabError(f"{name} is still running")
        process.env = {**process.env, **extra_env}
        return process.start(self.lab[process.node])

    def add_process(self, name: str, node: str, argv: list[str]) -> Process:
        """Start one more process (a second beat) with the deployment's environment."""
        return self._add(name, node, argv).start(self.lab[node])

    def set_schedule(self, name: str, *, enabled: bool) -> None:
        """Enable or disable a beat entry, as the admin's "Periodic tasks" page does."""
        self.sql("UPDATE django_celery_beat_periodictask SET enabled = %s WHERE name = %s", (enabled, name))
        self.sql("UPDATE django_celery_beat_periodictasks SET last_update = now()")  # beat re-reads

    def run_task(self, name: str) -> None:
        """Send a task to the central queue now (the admin's "Run selected tasks" action)."""
        self.run_central([*_bin("celery"), "-A", "netring_site", "call", name, "--queue", "netring.central"])

    def silence_consumer(self, location: str, *, off: bool = False) -> int:
        """Black-hole the edge's BRPOP connection to Redis, both ways, in the central namespace:
        the worker keeps a connection that looks open and never answers (a half-open TCP
        connection). Its other connections are untouched. Returns the client port."""
        if off:
            self._black_hole("nrlab_silence", "", [])
            return 0
        ip = self.ip(location)
        waiting = [c["addr"] for c in self.broker().client_list() if c["cmd"] == "brpop"]
        port = next(int(addr.rsplit(":", 1)[1]) for addr in waiting if addr.startswith(f"{ip}:"))
        self._black_hole("nrlab_silence", ip, [port])
        return port

    def silence_database(self, location: str, *, off: bool = False) -> list[int]:
        """Black-hole every connection the location has open to PostgreSQL (edge worker threads,
        the prober's writer), both ways, as a NAT or firewall that forgot them would: to their
        processes they look open and never answer. New connections work. Returns the client
        ports."""
        if off:
            self._black_hole("nrlab_pg_silence", "", [])
            return []
        ip = self.ip(location)
        rows = self.sql("SELECT client_port FROM pg_stat_activity WHERE client_addr = %s", (ip,))
        ports = sorted(int(row[0]) for row in rows)
        self._black_hole("nrlab_pg_silence", ip, ports)
        return ports

    def _black_hole(self, table: str, ip: str, ports: list[int]) -> None:
        """Drop, in the central namespace, the packets from and to ``ip``'s client ``ports``;
        no ports: remove the table again."""
        if not ports:
            self.lab[CENTRAL].nft(f"delete table inet {table}\n")
            return
        listed = "{ " + ", ".join(str(port) for port in ports) + " }"
        self.lab[CENTRAL].nft(
            f"add table inet {table}\n"
            f"add chain inet {table} in {{ type filter hook input priority 0; policy accept; }}\n"
            f"add chain inet {table} out {{ type filter hook output priority 0; policy accept; }}\n"
            f"add rule inet {table} in ip saddr {ip} tcp sport {listed} drop\n"
            f"add rule inet {table} out ip daddr {ip} tcp dport {listed} drop\n"
        )

    def stop_postgres(self) -> None:
        EmbeddedPostgres(self.base / "postgres", host=self.central_ip).stop()

    def start_postgres(self) -> None:
        self.lab[CENTRAL].call(_start_postgres, self.base / "postgres", self.central_ip, PG_PORT)

    def set_uplink(self, location: str, up: bool) -> None:
        """Cut (``ip link set down``) or restore the link between a location and its router."""
        self.lab.set_link(location, ACCESS_ROUTER[location], up)

    def drop_from(self, location: str, percent: int) -> None:
        """Drop ``percent`` % of the packets the location sends up its uplink, at random.

        One direction only, in the access router's forward path: an echo crosses the lossy hop
        once (the request from the location, or the reply to a peer's request), so a round trip
        is lost with probability ``percent`` %, not 1 - (1 - p)^2. 0 removes the rule.
        """
        router = ACCESS_ROUTER[location]
        dev = self.lab.dev(router, location)
        script = (
            "add table inet nrlab\n"
            "add chain inet nrlab lab_loss { type filter hook forward priority 0; policy accept; }\n"
            "flush chain inet nrlab lab_loss\n"
        )
        if percent > 0:
            script += f'add rule inet nrlab lab_loss iifname "{dev}" numgen random mod 100 < {int(percent)} drop\n'
        self.lab[router].nft(script)

    def alive(self) -> dict[str, bool]:
        """Whether each process that should run (not stopped on purpose) runs."""
        return {name: process.alive for name, process in self.processes.items() if process.wanted}

    # -- tearing down ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process (edges first: they deregister), the servers, the namespaces."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._db is not None:
                with contextlib.suppress(Exception):
                    self._db.close()
        order = [n for n in self.processes if n.startswith(("prober-", "edge-"))]
        order += [n for n in self.processes if n not in order and n != "redis"]
        for name in order:
            self.processes[name].signal(signal.SIGTERM)
        for name in order:
            with contextlib.suppress(Exception):
                self.processes[name].stop(timeout=15)
        if "redis" in self.processes:
            self.processes["redis"].stop(timeout=10)
        with contextlib.suppress(Exception):
            self.stop_postgres()
        self._sweep_namespaces()
        self.lab.close()
        shutil.rmtree(self.sockets, ignore_errors=True)

    def _sweep_namespaces(self) -> None:
        """Whatever still runs inside our namespaces was started by this lab: end it."""
        pids: list[int] = []
        for ns in self.lab.ns.values():
            out = _run([tool("ip"), "netns", "pids", ns.name], check=False)
            pids += [int(p) for p in out.split()]
        own = {p.pid for p in self.processes.values() if p.popen is not None}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline:
                pids = [pid for pid in pids if _exists(pid)]
                for pid in own & set(pids):
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)
                time.sleep(0.05)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for every purpose here
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# --- make lab -----------------------------------------------------------------------------------


async def _serve_tcp_to_unix(port: int, path: Path, stop: asyncio.Event) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(path))
        except OSError:
            writer.close()
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            with contextlib.suppress(Exception):
                w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await stop.wait()


@contextlib.contextmanager
def _forward(port: int, path: Path) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(_serve_tcp_to_unix(port, path, stop),))
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)  # the server closes, then the loop ends by itself
        thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make lab", description=__doc__)
    parser.add_argument("--dir", type=Path, default=PROJECT_ROOT / ".netring" / "lab", help="logs and data")
    parser.add_argument("--port", type=int, default=WEB_PORT, help="local port of the web (127.0.0.1)")
    args = parser.parse_args(argv)
    ok, why = available("tc", "nft")
    if not ok:
        print(f"make lab: cannot build the network lab here: {why}", file=sys.stderr)
        return 2
    shutil.rmtree(args.dir, ignore_errors=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("Building the lab (namespaces, PostgreSQL, Redis, 9 processes): about 30 s...", flush=True)
    with Deployment(args.dir) as lab, _forward(args.port, lab.socket("web")):
        names = ", ".join(f"{loc} {lab.lab[loc].name}" for loc in (*LOCATIONS, CENTRAL))
        print(
            "\nThe Netring lab is running.\n"
            f"  Dashboard   http://127.0.0.1:{args.port}/   (login {ADMIN} / {lab.admin_password})\n"
            f"  API         http://127.0.0.1:{args.port}/api/v1/mesh/matrix/  (token: {lab.api_token})\n"
            f"  Edge        curl --unix-socket {lab.socket('us1-edge')} http://x/metrics   (also eu1-, asia1-)\n"
            f"  Prober      curl --unix-socket {lab.socket('us1-prober')} http://x/metrics\n"
            f"  Database    psql 'host={lab.sockets} port={PG_PORT} user=postgres dbname=netring' "
            f"(password {lab.pg_password})\n"
            f"  Namespaces  ip netns exec <name> bash   ({names})\n"
            f"  Logs        {lab.logs}/\n"
            "Press Ctrl-C to tear it down.\n",
            flush=True,
        )
        try:
            while not stop.is_set():
                dead = [n for n, p in lab.processes.items() if not p.alive]
                if dead:
                    print(f"make lab: {', '.join(dead)} exited; see {lab.logs}/", flush=True)
                    break
                stop.wait(1)
        except KeyboardInterrupt:
            pass
        print("\nTearing the lab down...", flush=True)
    print("Done.", flush=True)
    return 0
