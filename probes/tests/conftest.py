"""Fixtures of the mesh tests: loopback peers, a clean broker, and edge workers run as users run them.

Nothing here is a stand-in for our own code: peers are real HTTP servers on loopback, the broker
is the real Redis, and an edge worker is ``python manage.py run_edge`` in a subprocess pointed at
the test database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from kombu.simple import SimpleQueue

from members.models import Member
from netring_site.celery import CENTRAL_QUEUE, app, queue_for_location
from netring_site.embedded import free_port
from probes import services
from probes.edge import EdgeState, MemberEndpoint
from probes.edge_metrics import MeshMetrics
from tests.support import database_url

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def _wait_until(predicate: Callable[[], T], timeout: float = 20.0, what: str = "the condition") -> T:
    """Poll ``predicate`` until it returns something true and return that; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        time.sleep(0.05)


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    return _wait_until


# --- Peers on loopback ----------------------------------------------------------------------


class PeerServer:
    """A member-like HTTP server on loopback that answers every GET with ``status`` after ``delay`` s."""

    def __init__(self, status: int = 200, delay: float = 0.0, host: str = "127.0.0.1") -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                time.sleep(delay)  # the peer is slow; nothing in the test waits on this
                body = b'{"status": "test"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.host = host
        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> PeerServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def peer_server() -> Iterator[Callable[..., PeerServer]]:
    """Start PeerServers for the test: ``peer_server(status=500)``, ``peer_server(delay=0.3)``."""
    started: list[PeerServer] = []

    def _start(status: int = 200, delay: float = 0.0, host: str = "127.0.0.1") -> PeerServer:
        server = PeerServer(status, delay, host).__enter__()
        started.append(server)
        return server

    yield _start
    for server in started:
        server.__exit__()


@pytest.fixture
def member_endpoint() -> Iterator[MemberEndpoint]:
    """The real member endpoint of an edge worker (/health, /metrics) on 127.0.0.1, registered."""
    state = EdgeState(location="peer", ip="127.0.0.1", port=0, instance_id=uuid.uuid4(), registry="registered")
    endpoint = MemberEndpoint(state, MeshMetrics(), "127.0.0.1", 0)
    state.port = endpoint.server.server_address[1]
    endpoint.start()
    yield endpoint
    endpoint.stop()


# --- The broker -----------------------------------------------------------------------------


def _clear(client: redis.Redis) -> None:
    # Round claims, bandwidth locks, and queued tasks of the edge queues, left by an earlier test.
    for pattern in ("netring:round:*", "netring:bw:*", "netring.loc.*", "netring.member.*"):
        keys = list(client.scan_iter(pattern))
        if keys:
            client.delete(*keys)


@pytest.fixture
def clean_broker() -> Iterator[redis.Redis]:
    """The real Redis, without round claims or queued edge tasks from other tests."""
    client = services.broker()
    _clear(client)
    yield client
    _clear(client)


def queued(location: str) -> list[Any]:
    """The task messages waiting in a location's queue (taken off it)."""
    return queued_on(queue_for_location(location))


def queued_on(name: str) -> list[Any]:
    """The task messages waiting in queue ``name`` (taken off it)."""
    messages = []
    with app.connection_for_read() as connection:
        queue: SimpleQueue = connection.SimpleQueue(name, no_ack=True)
        while True:
            try:
                messages.append(queue.get_nowait())  # dispatch returns once its messages are in Redis
            except queue.Empty:
                return messages


@pytest.fixture
def central_worker(transactional_db: None, clean_broker: redis.Redis) -> Iterator[Any]:
    """A Celery worker thread on the central queue, like `celery worker -Q netring.central`."""
    assert app.conf.broker_url == settings.CELERY_BROKER_URL
    with start_worker(app, queues=[CENTRAL_QUEUE], pool="solo", perform_ping_check=False) as worker:
        yield worker


# --- Edge workers as subprocesses -----------------------------------------------------------


@dataclass
class EdgeProcess:
    location: str
    ip: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    instance_id: uuid.UUID | None = None
    env: dict[str, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://{self.ip}:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of a GET on the member endpoint."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as response:  # noqa: S310 - http on loopback
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read()

    def health(self) -> dict[str, Any] | None:
        """The /health document, or None while nothing answers."""
        try:
            status, _, body = self.get("/health")
        except OSError:
            return None
        document: dict[str, Any] = json.loads(body)
        return document if status == 200 else None

    def member(self) -> Member | None:
        if self.instance_id is None:
            return None
        return Member.objects.with_status().select_related("location").filter(pk=self.instance_id).first()

    def wait_ready(self, timeout: float = 20.0) -> EdgeProcess:
        """Until /health says registered; then the member row is committed."""

        def registered() -> dict[str, Any] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"the {self.location} edge worker exited with {self.process.returncode}")
            return self.health()

        try:
            document = _wait_until(registered, timeout, f"registration of the {self.location} edge worker")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- its log ---\n{self.log_tail()}") from None
        assert document is not None
        self.instance_id = uuid.UUID(document["instance_id"])
        return self

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> None:
        """Warm shutdown, as an operator's SIGTERM; killed if it takes longer than 10 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.reap()

    def reap(self, timeout: float = 10.0) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture
def edge_worker(
    transactional_db: None, clean_broker: redis.Redis, tmp_path: Path
) -> Iterator[Callable[..., EdgeProcess]]:
    """Start ``python manage.py run_edge`` like a user does; every worker is stopped at teardown.

    ``edge_worker("us1", "127.0.0.21")`` waits until it registered; ``wait=False`` returns at
    once (start several, then ``wait_ready()`` each). Extra keyword arguments are environment
    variables. The worker uses the test database and the test Redis, heartbeats every second
    and has short check timeouts.
    """
    started: list[EdgeProcess] = []

    def _start(location: str, ip: str, *, wait: bool = True, **extra_env: str) -> EdgeProcess:
        port = free_port(host=ip)
        env = {
            **os.environ,
            "NETRING_DATABASE_URL": database_url(),
            "NETRING_REDIS_URL": settings.REDIS_URL,
            # The test's own folder: each test's workers start with identities of their own.
            "NETRING_DATA_DIR": str(tmp_path / "data"),
            "NETRING_LOCATION": location,
            "NETRING_ADVERTISE_IP": ip,
            "NETRING_MEMBER_PORT": str(port),
            "NETRING_HEARTBEAT_INTERVAL": "1",
            "NETRING_TCP_TIMEOUT": "2",
            "NETRING_HTTP_TIMEOUT": "2",
            "NETRING_ICMP_COUNT": "2",
            "NETRING_ICMP_INTERVAL": "0.05",
            "NETRING_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        log = tmp_path / f"edge-{location}-{len(started)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "run_edge", "--concurrency", "4"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = EdgeProcess(location, ip, port, process, log, env=env)
        started.append(worker)
        return worker.wait_ready() if wait else worker

    yield _start
    for worker in started:  # all at once: each warm shutdown takes about a second
        if worker.process.poll() is None:
            worker.signal(signal.SIGTERM)
    for worker in started:
        worker.reap()
