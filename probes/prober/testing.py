"""Test support: deterministic fakes (clock, transport) and a local HTTP server for real transfers.

They live in the package (not in a conftest) so the loop, scheduler and any Django-side test
of ``run_prober`` share one implementation. Nothing here sleeps: time only moves when the
transport is polled, so a test of a minute of probing runs in milliseconds.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from probes.prober.spool import Row
from probes.prober.transport import ABORTED, TIMEOUT, Completion, Phases, SampleKey


class FakeClock:
    """Monotonic and wall clocks that move only when told to."""

    def __init__(self, wall: float = 1_700_000_000.25, mono: float = 5_000.0) -> None:
        self._wall = wall
        self._mono = mono

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards on the monotonic clock")
        self._mono += seconds
        self._wall += seconds

    def step_wall(self, seconds: float) -> None:
        """Step the wall clock alone, like an NTP step or an operator's ``date -s``."""
        self._wall += seconds


def json_lines(rows: Sequence[Row]) -> bytes:
    """An encoder for writers under test: one JSON line per row, so sinks can read rows back
    with :func:`from_json_lines` (production uses ``copy_text``)."""
    return b"".join(json.dumps(row, separators=(",", ":")).encode() + b"\n" for row in rows)


def from_json_lines(data: bytes) -> list[Row]:
    return [json.loads(line) for line in data.splitlines()]


@dataclass(frozen=True, slots=True)
class FakeResponse:
    """What a fake transfer does: finish after ``duration`` with ``status`` or ``error_class``."""

    duration: float = 0.02
    status: int | None = 200
    error_class: str | None = None


Responder = Callable[[SampleKey, str], FakeResponse]


@dataclass(slots=True)
class _FakeTransfer:
    key: SampleKey
    finish_at: float
    completion: Completion


class FakeTransport:
    """In-memory :class:`~probes.prober.transport.Transport` running on a :class:`FakeClock`.

    ``poll(timeout)`` moves the clock to the earliest of "next transfer finishes" and "timeout
    expires", exactly like a real event loop would wake up.
    """

    def __init__(self, clock: FakeClock, respond: Responder | None = None) -> None:
        self.clock = clock
        self._respond = respond or (lambda key, url: FakeResponse())
        self._transfers: list[_FakeTransfer] = []
        self.started: list[tuple[SampleKey, str, float]] = []  # (key, url, monotonic start)
        self._stall = 0.0

    def stall_next_poll(self, seconds: float) -> None:
        """Make the next poll return ``seconds`` late, as if the process had been frozen."""
        self._stall += seconds

    def start(
        self, key: SampleKey, url: str, timeout: float, *, follow_redirects: bool = False, verify_tls: bool = True
    ) -> None:
        now = self.clock.monotonic()
        self.started.append((key, url, now))
        response = self._respond(key, url)
        if response.error_class is None and response.duration >= timeout:
            finish_at = now + timeout
            completion = Completion(key=key, status=None, error_class=TIMEOUT, error="fake timeout")
        else:
            finish_at = now + response.duration
            total_ms = response.duration * 1000.0
            completion = Completion(
                key=key,
                status=response.status if response.error_class is None else None,
                error_class=response.error_class,
                phases=Phases(dns_ms=0.0, connect_ms=0.0, tls_ms=0.0, ttfb_ms=total_ms, total_ms=total_ms),
            )
        self._transfers.append(_FakeTransfer(key=key, finish_at=finish_at, completion=completion))

    def in_flight(self) -> int:
        return len(self._transfers)

    def poll(self, timeout: float) -> list[Completion]:
        now = self.clock.monotonic()
        wake = now + max(0.0, timeout)
        if self._transfers:
            wake = min(wake, min(t.finish_at for t in self._transfers))
        wake = max(wake, now) + self._stall
        self._stall = 0.0
        self.clock.advance(wake - now)
        done = [t for t in self._transfers if t.finish_at <= wake]
        self._transfers = [t for t in self._transfers if t.finish_at > wake]
        done.sort(key=lambda t: t.finish_at)
        return [t.completion for t in done]

    def abort_all(self) -> list[Completion]:
        aborted = [Completion(key=t.key, status=None, error_class=ABORTED) for t in self._transfers]
        self._transfers = []
        return aborted


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/status/<code>`` answers with that code, ``/redirect`` with a 302 to ``/``;
    ``?delay=<seconds>`` waits before answering."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        delay = float(query.get("delay", ["0"])[0])
        if delay:
            time.sleep(delay)  # the slow target being simulated, not a test waiting
        parts = url.path.strip("/").split("/")
        code = int(parts[1]) if len(parts) == 2 and parts[0] == "status" else 200
        body = b"ok\n"
        if parts == ["redirect"]:
            code = 302
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # Every sample opens a new connection: the default backlog of 5 would drop SYNs (and turn
    # them into 1 s retransmits, i.e. timeouts) as soon as a test starts a few dozen at once.
    request_queue_size = 256

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that timed out and hung up is what some tests do on purpose; stay quiet.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@contextlib.contextmanager
def local_http_server() -> Iterator[str]:
    """A threaded HTTP server on 127.0.0.1 (random port) for real-transfer tests; yields its base URL."""
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A local TCP port with nothing listening (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
