"""The edge worker's member lifecycle and its member endpoint.

An edge worker is a Celery worker of one location. Its lifecycle is the member's: it registers
when the worker is ready, heartbeats, registers again whenever the registry forgot it (restart,
purge, outage), and deregisters on warm shutdown so the dashboard shows "deregistered", not
"down". It also serves the member endpoint that peers probe: /health, /metrics and
/bandwidth_test. Database or broker outages never end the process: every step retries with a
capped backoff and the state is visible in the log and in /health.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.db import close_old_connections
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from members import services, tokens
from members.models import Member
from probes import bandwidth_services
from probes.checks import bandwidth
from probes.diagnostics_metrics import BandwidthMetrics, TracerouteMetrics
from probes.edge_metrics import MeshMetrics
from probes.identity import IdentityClaim

log = logging.getLogger("netring.edge")
VERSION = "netring/1"


def advertised_ip(spec: str, broker_url: str, environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The address peers should probe: an IP, ``env:VAR``, or ``auto``.

    ``auto`` asks the kernel which local address routes to the broker host (a UDP "connect"
    sends no packet), so it needs no outside service and gives the address of the interface
    that faces the central site.
    """
    if spec.startswith("env:"):
        name = spec[4:]
        value = environ.get(name, "")
        if not value:
            raise ValueError(f"NETRING_ADVERTISE_IP=env:{name}, but {name} is not set")
        spec = value
    if spec != "auto":
        return str(socket.getaddrinfo(spec, None, proto=socket.IPPROTO_TCP)[0][4][0])
    host = urlsplit(broker_url).hostname or "127.0.0.1"
    info = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
    with socket.socket(info[0], socket.SOCK_DGRAM) as probe:
        probe.connect(info[4])
        return str(probe.getsockname()[0])


@dataclass
class EdgeState:
    location: str
    ip: str
    port: int
    instance_id: uuid.UUID
    token: tokens.MemberToken | None = None
    registry: str = "starting"  # "registered", or what went wrong
    last_heartbeat: float = 0.0
    members_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class EdgeMember:
    """Registration, heartbeats and deregistration of this worker as a member."""

    def __init__(self, state: EdgeState, heartbeat_interval: float) -> None:
        self.state = state
        self.interval = heartbeat_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netring-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _register(self) -> None:
        registration = services.register(
            instance_id=self.state.instance_id,
            location=self.state.location,
            ip=self.state.ip,
            port=self.state.port,
            kind=Member.Kind.EDGE,
            hostname=socket.gethostname()[:253],
            version=VERSION,
        )
        with self.state.lock:
            self.state.token = registration.token
            self.state.registry = "registered"
            self.state.last_heartbeat = time.time()
        log.info(
            "registered as %s in %s (%s:%d)",
            self.state.instance_id,
            self.state.location,
            self.state.ip,
            self.state.port,
        )

    def _beat(self) -> None:
        token = self.state.token
        if token is None:
            self._register()
            return
        beat = services.heartbeat(token)
        if beat is services.Beat.OK:
            self.state.last_heartbeat = time.time()
            self.state.registry = "registered"
            return
        log.warning("registry answered %s to our heartbeat: registering again", beat.value)
        self._register()

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            close_old_connections()  # a connection broken by a PostgreSQL restart is replaced
            try:
                self._beat()
                backoff = 1.0
                wait = self.interval
            except Exception as exc:
                self.state.registry = f"unreachable: {type(exc).__name__}: {str(exc).strip()[:160]}"
                log.warning("registry %s; retrying in %.0fs", self.state.registry, backoff)
                # Never slower than the heartbeat itself: the member must be back within one
                # interval of the registry's return, or it turns stale (or offline) for nothing.
                wait, backoff = backoff, min(backoff * 2, 30.0, max(self.interval, 1.0))
            self._stop.wait(wait)

    def stop(self, deregister: bool = True) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if not deregister or self.state.token is None:
            return
        close_old_connections()
        try:
            member = services.authenticate(self.state.token)
            if member is not None:
                services.deregister(member)
                log.info("deregistered %s", self.state.instance_id)
        except Exception as exc:
            log.warning("could not deregister: %s", exc)


BROKER_CHECK_INTERVAL = 5.0  # seconds between the member endpoint's broker pings


class MemberEndpoint:
    """The HTTP endpoint peers probe: the seed's /health, /metrics, and /bandwidth_test."""

    def __init__(
        self,
        state: EdgeState,
        metrics: MeshMetrics,
        bind: str,
        port: int,
        routes: dict[str, Any] | None = None,
        bandwidth_test: bandwidth.BandwidthEndpoint | None = None,
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.routes = routes or {}
        self.bandwidth_test = bandwidth_test
        if bandwidth_test is not None:
            self.routes[bandwidth.PATH] = bandwidth_test.handle
        self._broker, self._checked_at = "unknown", -1e9
        self._recheck = threading.Lock()
        self._stopped = threading.Event()
        handler = _handler_class(self)
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        server_class = type(
            "Server",
            (ThreadingHTTPServer,),
            {"address_family": family, "daemon_threads": True, "request_queue_size": 1024},
        )
        self.server = server_class((bind, port), handler)
        self._thread = threading.Thread(target=self.server.serve_forever, name="netring-member-endpoint", daemon=True)

    def start(self) -> None:
        self.check_broker()  # so that the first /health already knows
        threading.Thread(target=self._watch_broker, name="netring-broker-check", daemon=True).start()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self.server.shutdown()
        self.server.server_close()

    def health(self) -> tuple[int, dict[str, Any]]:
        state = self.state
        broker = self.broker_state()
        healthy = state.registry == "registered" and broker == "ok"
        return (200 if healthy else 503), {
            "status": "healthy" if healthy else "degraded",
            "instance_id": str(state.instance_id),
            "location": state.location,
            "members_count": state.members_count,
            "registry": state.registry,
            "broker": broker,
            "last_heartbeat": state.last_heartbeat or None,
            "timestamp": time.time(),
        }

    def broker_state(self) -> str:
        """The latest broker check. Healthy: answered from memory (peers time /health, and a
        ping inside it would read as this member's latency). Degraded: looked at again now, at
        most every half second, so that a broker that came back shows at once and peers' checks
        of this member are green in the first round after an outage, not 5 s later."""
        if self._broker != "ok" and time.monotonic() - self._checked_at >= 0.5:
            with self._recheck:
                if self._broker != "ok" and time.monotonic() - self._checked_at >= 0.5:
                    self.check_broker()
        return self._broker

    def check_broker(self) -> str:
        """Ping Redis and remember the answer; ``/health`` reports the latest one."""
        try:
            client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
            try:
                client.ping()
            finally:
                client.close()
            state = "ok"
        except Exception as exc:
            state = f"unreachable: {type(exc).__name__}: {str(exc).strip()[:160]}"
        if state != "ok" and state != self._broker:
            log.warning("broker %s", state)
        self._broker, self._checked_at = state, time.monotonic()
        return state

    def _watch_broker(self) -> None:
        # In the background, not per request: peers time /health, and a ping to a distant or
        # struggling broker inside it would show up as this member's network latency.
        while not self._stopped.wait(BROKER_CHECK_INTERVAL):
            self.check_broker()


def _handler_class(endpoint: MemberEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = VERSION

        def log_message(self, format: str, *args: Any) -> None:
            return  # peers probe every round; access logs would drown the worker's log

        def handle_expect_100(self) -> bool:
            # An extra route (the bandwidth test) answers "100 Continue" itself once it has
            # accepted an upload, so a refused client never starts sending its body.
            if urlsplit(self.path).path in endpoint.routes:
                return True
            return super().handle_expect_100()

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/health":
                status, body = endpoint.health()
                self._send(status, json.dumps(body).encode(), "application/json")
            elif path == "/metrics":
                self._send(200, generate_latest(endpoint.metrics.registry), CONTENT_TYPE_LATEST)
            elif path in endpoint.routes:
                endpoint.routes[path](self)
            else:
                self._send(404, b'{"error": "not found"}', "application/json")

        do_HEAD = do_GET

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            if path in endpoint.routes:
                endpoint.routes[path](self)
            else:
                self._send(405, b'{"error": "method not allowed"}', "application/json")

    return Handler


# --- The running edge (one per worker process) ----------------------------------------------

_edge: dict[str, Any] = {}


def current() -> EdgeState | None:
    state: EdgeState | None = _edge.get("state")
    return state


def metrics() -> MeshMetrics:
    if "metrics" not in _edge:
        _edge["metrics"] = MeshMetrics()
    result: MeshMetrics = _edge["metrics"]
    return result


def bandwidth_metrics() -> BandwidthMetrics:
    if "bandwidth_metrics" not in _edge:
        _edge["bandwidth_metrics"] = BandwidthMetrics(metrics().registry)
    result: BandwidthMetrics = _edge["bandwidth_metrics"]
    return result


def traceroute_metrics() -> TracerouteMetrics:
    if "traceroute_metrics" not in _edge:
        _edge["traceroute_metrics"] = TracerouteMetrics(metrics().registry)
    result: TracerouteMetrics = _edge["traceroute_metrics"]
    return result


def retain_peers(active: Iterable[str]) -> None:
    """Drop the bandwidth and traceroute series of peers that left the mesh.

    Every mesh round carries the current member list, so its end is where departed peers'
    series go: waiting for the next bandwidth or traceroute round (minutes apart) would leave
    them frozen at their last value in between.
    """
    keep = set(active)
    bandwidth_metrics().retain(keep)
    traceroute_metrics().retain(keep)


def bandwidth_endpoint() -> bandwidth.BandwidthEndpoint | None:
    """This worker's ``/bandwidth_test`` (its slot is held while the worker runs a test itself)."""
    endpoint: MemberEndpoint | None = _edge.get("endpoint")
    return endpoint.bandwidth_test if endpoint is not None else None


def member_endpoint(state: EdgeState, bind: str, port: int) -> MemberEndpoint:
    """The member endpoint as an edge worker serves it: /health, /metrics and /bandwidth_test
    (one test at a time, bounded, for tokens signed for this member only)."""
    served = bandwidth_services.make_endpoint(str(state.instance_id), bandwidth_metrics())
    return MemberEndpoint(state, metrics(), bind, port, routes=_extra_routes(), bandwidth_test=served)


def raise_open_files_limit(needed: int) -> int:
    """Raise the soft limit of open files to the hard limit; returns the limit now in force.

    A round holds up to NETRING_MAX_IN_FLIGHT TCP and as many HTTP sockets at once, and the
    usual soft default (1024, systemd's and most shells') would turn the last ones into
    "Too many open files" errors that look like failing peers.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # an unlimited hard limit the kernel caps lower: keep what we have
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "only %d open files allowed, a round may need %d (NETRING_MAX_IN_FLIGHT=%d): raise the limit",
            soft,
            needed,
            settings.NETRING_MAX_IN_FLIGHT,
        )
    return soft


def start(location: str) -> EdgeState:
    """Start the member lifecycle and endpoint of this process (called when the worker is ready)."""
    raise_open_files_limit(2 * settings.NETRING_MAX_IN_FLIGHT + 256)
    ip = advertised_ip(settings.NETRING_ADVERTISE_IP, settings.REDIS_URL)
    if settings.NETRING_INSTANCE_ID:
        instance = uuid.UUID(settings.NETRING_INSTANCE_ID)
    else:
        claim = IdentityClaim(Path(settings.DATA_DIR) / f"edge-{location}")
        _edge["identity"] = claim  # held for the life of the process
        instance = claim.instance_id
        log.info(
            "member identity %s (slot %d of %s)", instance, claim.slot, Path(settings.DATA_DIR) / f"edge-{location}"
        )
    state = EdgeState(location=location, ip=ip, port=settings.NETRING_MEMBER_PORT, instance_id=instance)
    endpoint = member_endpoint(state, settings.NETRING_MEMBER_BIND or ip, settings.NETRING_MEMBER_PORT)
    endpoint.start()
    member = EdgeMember(state, settings.NETRING_HEARTBEAT_INTERVAL)
    member.start()
    _edge.update(state=state, endpoint=endpoint, member=member)
    log.info("member endpoint on %s:%d", settings.NETRING_MEMBER_BIND or ip, settings.NETRING_MEMBER_PORT)
    return state


def _extra_routes() -> dict[str, Any]:
    """Endpoints other modules add besides the bandwidth test; none by default."""
    return dict(_edge.get("routes", {}))


def stop() -> None:
    member: EdgeMember | None = _edge.pop("member", None)
    endpoint: MemberEndpoint | None = _edge.pop("endpoint", None)
    if member is not None:
        member.stop(deregister=True)
    if endpoint is not None:
        endpoint.stop()
    _edge.pop("state", None)
    identity: IdentityClaim | None = _edge.pop("identity", None)
    if identity is not None:
        identity.release()
