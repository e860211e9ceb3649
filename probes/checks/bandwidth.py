"""Bandwidth between members: duration-based, both directions, TCP slow start excluded.

A 1 MB transfer measures round trips, not bandwidth: on a 50 Mbit/s path with 30 ms RTT it
spends most of its time in the handshake, the request and slow start, and reports well under
half the rate (``naive_estimate`` keeps that method for comparison). Instead the client moves
data for a fixed time, the *receiver* records how many bytes it had at ~10 ms intervals, and the
rate is taken over the part of the transfer after the warm-up (``steady_window``), like
iperf3's ``--omit`` but with the warm-up found from the data.

Protocol, plain HTTP/1.1 on the member endpoint, one test per connection::

    GET  /bandwidth_test?bytes=N   -> 200, Content-Length min(N, max_bytes), random bytes
                                      (``size=N`` is the same).
                                      The client reads for its duration, then closes.
    POST /bandwidth_test           <- Content-Length N <= max_bytes, Expect: 100-continue.
                                      The client sends for its duration, then half-closes
                                      (a short body is the normal end of an upload test);
                                      the server answers 200 with JSON
                                      {"bytes", "elapsed_s", "complete", "samples": [[t_s, bytes]]}.
    401 bad token, 413 body too large, 503 another test is running (exclusive, perfSONAR's
    rule: a member takes part in one test at a time), 400/405 malformed.

Rates are goodput: application payload bytes, 10^6 bit/s. Protocol overhead is not counted,
so a link shaped to R carries at most R * 1448/1514 of payload over Ethernet-sized frames with
TCP timestamps (1448 payload bytes per 1514-byte frame; 1538 on a physical wire, where preamble,
FCS and inter-frame gap count too).

Nothing here imports Django; ``BandwidthEndpoint.handle`` serves from any
``http.server.BaseHTTPRequestHandler`` and ``make_server`` is a complete server.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

PATH = "/bandwidth_test"
CHUNK_SIZE = 256 * 1024  # one preallocated block, sent again and again
RECV_SIZE = 1024 * 1024
SAMPLE_INTERVAL_S = 0.01  # receiver records (time, bytes) at most this often
BIN_MIN_S = 0.1  # warm-up detection works on bins this wide (or 2 RTT when longer)
OMIT_MIN_S = 0.5  # never count the first half second
STABLE_TOLERANCE = 0.10  # a bin is "stable" within ±10 % of the steady reference rate
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024
DEFAULT_DURATION_S = 5.0
NAIVE_SIZE = 1_000_000
MAX_HEAD = 64 * 1024
NOTSENT_LOWAT = 256 * 1024  # unsent data an uploader may queue: bounds the drain after it stops
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25 if sys.platform.startswith("linux") else None)

Direction = Literal["download", "upload"]
Method = Literal["duration", "naive"]
EndedBy = Literal["", "duration", "max_bytes", "peer", "stall"]
ErrorClass = Literal["", "busy", "unauthorized", "refused", "timeout", "unreachable", "http_status", "error"]
Sample = tuple[float, int]  # (seconds since the first payload byte, payload bytes so far)


# -- the measurement rule -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """The part of a transfer the rate is measured over."""

    start_s: float  # offset from the first payload byte
    end_s: float
    bytes: int
    stable: bool  # a steady rate was found before half the transfer; False: second half used

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s

    @property
    def mbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds > 0 else 0.0


def steady_window(
    samples: Sequence[Sample],
    *,
    rtt_s: float | None = None,
    omit_min_s: float = OMIT_MIN_S,
    tolerance: float = STABLE_TOLERANCE,
) -> Window | None:
    """Find where the warm-up ends and measure from there to the last full bin.

    The rule: cut the receiver's byte count into bins of ``max(0.1 s, 2 RTT)``. The reference
    rate is the median of the second half of the bins (slow start and a shaper's initial burst
    are over by then). The warm-up ends at the first bin, not earlier than
    ``max(omit_min_s, 2 RTT)``, where that bin and the next are each within ``tolerance`` of
    the reference; slow start shows as bins below it, a token bucket's initial burst as bins
    above. If no such bin comes before half the transfer, the second half is used and the
    window is marked not stable. The last, partial bin is never counted.
    Returns None when there is too little data to say anything.
    """
    if len(samples) < 2 or samples[-1][0] <= 0:
        return None
    rtt = rtt_s or 0.0
    width = max(BIN_MIN_S, 2 * rtt)
    bins = int(samples[-1][0] / width)
    if bins < 4:
        # Too short to tell warm-up from steady state: the whole transfer, flagged.
        return Window(samples[0][0], samples[-1][0], samples[-1][1] - samples[0][1], stable=False)
    edges = _cumulative_at(samples, [k * width for k in range(bins + 1)])
    rates = [edges[k + 1] - edges[k] for k in range(bins)]
    reference = statistics.median(rates[bins // 2 :])
    first = math.ceil(max(omit_min_s, 2 * rtt) / width - 1e-9)
    start = None
    for k in range(first, bins // 2 + 1):
        if all(abs(rates[j] - reference) <= tolerance * reference for j in (k, k + 1) if j < bins):
            start = k
            break
    stable = start is not None
    if start is None:
        start = min(max(first, bins // 2), bins - 1)
    return Window(start * width, bins * width, edges[bins] - edges[start], stable)


def _cumulative_at(samples: Sequence[Sample], times: Sequence[float]) -> list[int]:
    """Bytes received by each of ``times`` (ascending), interpolated between samples."""
    out = []
    i = 0
    for t in times:
        while i + 1 < len(samples) and samples[i + 1][0] < t:
            i += 1
        t0, b0 = samples[i]
        if i + 1 >= len(samples) or t <= t0:
            out.append(b0 if t >= t0 else samples[0][1])
            continue
        t1, b1 = samples[i + 1]
        out.append(round(b0 + (b1 - b0) * (t - t0) / (t1 - t0)))
    return out


class _Sampler:
    """Receiver-side byte counter: one (t, bytes) pair at most every ``SAMPLE_INTERVAL_S``."""

    __slots__ = ("last", "samples", "start", "total")

    def __init__(self) -> None:
        self.start = 0.0
        self.last = -1.0
        self.total = 0
        self.samples: list[Sample] = []

    def add(self, nbytes: int, now: float) -> None:
        if not self.samples:
            self.start = now
            self.last = now
        self.total += nbytes
        if now - self.last >= SAMPLE_INTERVAL_S or not self.samples:
            self.samples.append((now - self.start, self.total))
            self.last = now

    def finish(self, now: float) -> list[Sample]:
        if self.samples and self.samples[-1][1] != self.total:
            self.samples.append((now - self.start, self.total))
        return self.samples


# -- the result -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BandwidthResult:
    """One bandwidth test of one direction. Failed tests have ``mbps`` None, never 0."""

    target: str  # host:port as given
    direction: Direction
    method: Method
    ok: bool
    mbps: float | None = None  # goodput over the window (naive: over the whole request)
    bytes_total: int = 0  # payload bytes the receiver got in the whole test
    bytes_measured: int = 0  # payload bytes inside the window
    transfer_s: float = 0.0  # first to last payload byte (naive: connect start to last byte)
    window_s: float = 0.0
    omitted_s: float = 0.0  # warm-up left out: slow start, a shaper's initial burst
    stable: bool = False  # False: no steady rate found early; the second half was measured
    ended_by: EndedBy = ""
    rtt_ms: float | None = None  # TCP connect time (one round trip)
    error_class: ErrorClass = ""
    error: str = ""
    started_at: float  # wall clock, epoch seconds, only to place the test in time

    def to_dict(self) -> dict[str, str | int | float | bool | None]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


# -- client ---------------------------------------------------------------------------------------


class _HTTPStatusError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200].decode(errors='replace')}")
        self.status = status
        self.max_bytes = 0  # a 413 names the peer's limit
        with contextlib.suppress(ValueError, TypeError, KeyError):
            self.max_bytes = int(json.loads(body)["max_bytes"])


def parse_target(target: str | tuple[str, int]) -> tuple[str, int, str]:
    """``"http://h:p/path"``, ``"h:p"``, ``"[v6]:p"`` or ``(h, p)`` -> (host, port, path)."""
    if isinstance(target, tuple):
        return target[0], target[1], PATH
    parts = urlsplit(target if "//" in target else f"http://{target}")
    if parts.scheme != "http":
        raise ValueError(f"bandwidth tests use plain http, not {parts.scheme!r}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"{target!r} needs a host and a port")
    return parts.hostname, parts.port, parts.path or PATH


def measure(
    target: str | tuple[str, int],
    direction: Direction,
    duration_s: float = DEFAULT_DURATION_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
    *,
    token: str | None = None,
    timeout_s: float = 10.0,
    omit_min_s: float = OMIT_MIN_S,
) -> BandwidthResult:
    """Move data to (``upload``) or from (``download``) the peer for ``duration_s`` and rate it.

    The rate comes from the receiver's own record (ours for downloads, the server's for
    uploads: bytes a sender has handed to its kernel are not bytes delivered) and leaves out
    the warm-up (``steady_window``). ``max_bytes`` caps the data; ``timeout_s`` bounds connect,
    stalls and the wait for the upload report. Never raises for network trouble: a failed
    test is a result with ``ok`` False and the reason.
    """
    started_at = time.time()
    label = target if isinstance(target, str) else f"{target[0]}:{target[1]}"
    base: dict[str, Any] = {"target": label, "direction": direction, "method": "duration", "started_at": started_at}
    try:
        host, port, path = parse_target(target)
        try:
            samples, ended_by, rtt_s = _transfer(host, port, path, direction, max_bytes, duration_s, token, timeout_s)
        except _HTTPStatusError as exc:
            if exc.status != 413 or not 0 < exc.max_bytes < max_bytes:
                raise
            # The peer takes smaller uploads than we asked for: once more, within its limit.
            samples, ended_by, rtt_s = _transfer(
                host, port, path, direction, exc.max_bytes, duration_s, token, timeout_s
            )
    except Exception as exc:  # a test never takes its caller down with it
        error_class, message = _classify(exc)
        return BandwidthResult(**base, ok=False, error_class=error_class, error=message)
    window = steady_window(samples, rtt_s=rtt_s, omit_min_s=omit_min_s)
    got = samples[-1][1] if samples else 0
    if window is None or window.seconds <= 0 or window.bytes <= 0:
        # Not a zero reading: a stalled or tiny transfer says nothing about the link's rate.
        why = "nothing arrived in the measurement window" if window and window.seconds > 0 else "too little data"
        return BandwidthResult(
            **base, ok=False, bytes_total=got, rtt_ms=rtt_s * 1000, ended_by=ended_by, error_class="error",
            error=f"{why} ({got} bytes in all)",
        )  # fmt: skip
    return BandwidthResult(
        **base,
        ok=True,
        mbps=window.mbps,
        bytes_total=got,
        bytes_measured=window.bytes,
        transfer_s=samples[-1][0],
        window_s=window.seconds,
        omitted_s=window.start_s,
        stable=window.stable,
        ended_by=ended_by,
        rtt_ms=rtt_s * 1000,
    )


def naive_estimate(
    target: str | tuple[str, int], size_bytes: int = NAIVE_SIZE, *, token: str | None = None, timeout_s: float = 10.0
) -> BandwidthResult:
    """The seed's method, kept only for comparison: time one GET of ``size_bytes``.

    The clock runs from the start of the TCP connect to the last byte, so the handshake, the
    request round trip and slow start are all in it. That is what a user of the seed saw.
    """
    started_at = time.time()
    label = target if isinstance(target, str) else f"{target[0]}:{target[1]}"
    base: dict[str, Any] = {"target": label, "direction": "download", "method": "naive", "started_at": started_at}
    try:
        host, port, path = parse_target(target)
        begin = time.monotonic()
        sock, rtt_s = _connect(host, port, timeout_s)
        with sock:
            samples, _ = _download(sock, host, port, path, size_bytes, math.inf, token, timeout_s)
        elapsed = time.monotonic() - begin
    except Exception as exc:
        error_class, message = _classify(exc)
        return BandwidthResult(**base, ok=False, error_class=error_class, error=message)
    got = samples[-1][1] if samples else 0
    return BandwidthResult(
        **base, ok=got > 0, mbps=got * 8 / elapsed / 1e6 if got else None, bytes_total=got, bytes_measured=got,
        transfer_s=elapsed, window_s=elapsed, ended_by="max_bytes", rtt_ms=rtt_s * 1000,
    )  # fmt: skip


def _transfer(
    host: str,
    port: int,
    path: str,
    direction: Direction,
    max_bytes: int,
    duration_s: float,
    token: str | None,
    timeout_s: float,
) -> tuple[list[Sample], EndedBy, float]:
    sock, rtt_s = _connect(host, port, timeout_s)
    with sock:
        move = _download if direction == "download" else _upload
        samples, ended_by = move(sock, host, port, path, max_bytes, duration_s, token, timeout_s)
    return samples, ended_by, rtt_s


def _connect(host: str, port: int, timeout_s: float) -> tuple[socket.socket, float]:
    begin = time.monotonic()
    sock = socket.create_connection((host, port), timeout=timeout_s)
    return sock, time.monotonic() - begin


def _request_head(method: str, host: str, port: int, path: str, token: str | None, extra: str = "") -> bytes:
    host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: netring-bandwidth\r\n"
        f"{auth}{extra}Connection: close\r\n\r\n"
    ).encode()


def _download(
    sock: socket.socket,
    host: str,
    port: int,
    path: str,
    max_bytes: int,
    duration_s: float,
    token: str | None,
    timeout_s: float,
) -> tuple[list[Sample], EndedBy]:
    sock.sendall(_request_head("GET", host, port, f"{path}?bytes={max_bytes}", token))
    status, headers, body = _read_head(sock)
    if status != 200:
        raise _HTTPStatusError(status, body + _read_rest(sock, headers, len(body)))
    length = int(headers.get("content-length", max_bytes))
    sampler = _Sampler()
    now = time.monotonic()
    if body:
        sampler.add(len(body), now)
    buf = memoryview(bytearray(RECV_SIZE))
    stop_at = math.inf
    ended_by: EndedBy = "max_bytes"
    while sampler.total < length:
        if sampler.samples:
            stop_at = sampler.start + duration_s
            if now >= stop_at:
                ended_by = "duration"
                break
        # Wake up at the end of the test even if the link stalls.
        sock.settimeout(min(timeout_s, max(stop_at - now, 0.001)))
        try:
            n = sock.recv_into(buf)
        except TimeoutError:
            now = time.monotonic()
            ended_by = "duration" if now >= stop_at else "stall"
            if ended_by == "stall" and not sampler.samples:
                raise
            break
        now = time.monotonic()
        if n == 0:
            ended_by = "peer"
            break
        sampler.add(n, now)
    return sampler.finish(now), ended_by


def _upload(
    sock: socket.socket,
    host: str,
    port: int,
    path: str,
    max_bytes: int,
    duration_s: float,
    token: str | None,
    timeout_s: float,
) -> tuple[list[Sample], EndedBy]:
    if _TCP_NOTSENT_LOWAT is not None:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
    extra = f"Content-Type: application/octet-stream\r\nContent-Length: {max_bytes}\r\nExpect: 100-continue\r\n"
    sock.sendall(_request_head("POST", host, port, path, token, extra))
    status, headers, pending = _read_head(sock)
    if status != 100:  # rejected before we sent a byte
        raise _HTTPStatusError(status, pending + _read_rest(sock, headers, len(pending)))
    chunk = memoryview(os.urandom(CHUNK_SIZE))
    sent = 0
    stop_at = time.monotonic() + duration_s
    try:
        while sent < max_bytes:
            now = time.monotonic()
            if now >= stop_at:
                break
            sock.settimeout(min(timeout_s, stop_at - now))
            try:
                sent += sock.send(chunk[: min(CHUNK_SIZE, max_bytes - sent)])
            except TimeoutError:
                if time.monotonic() < stop_at:
                    raise
        sock.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading (its own limits); its report may still be there
    # The server answers once it has drained what was in flight.
    sock.settimeout(timeout_s + duration_s)
    status, headers, body = _read_head(sock, pending)
    while status == 100:  # a handler that also answered Expect itself
        status, headers, body = _read_head(sock, body)
    body += _read_rest(sock, headers, len(body))
    if status != 200:
        raise _HTTPStatusError(status, body)
    report = json.loads(body)
    samples = [(float(t), int(b)) for t, b in report["samples"]]
    ended_by: EndedBy = "max_bytes" if report["complete"] else "duration" if sent else "peer"
    return samples, ended_by


def _read_head(sock: socket.socket, data: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Read one response head (``data``: bytes already read): status, headers, what follows."""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise ValueError("response head too large")
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("connection closed before a response")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def _read_rest(sock: socket.socket, headers: dict[str, str], have: int) -> bytes:
    """The rest of a small (error or report) body: up to Content-Length, or to EOF."""
    want = int(headers.get("content-length", MAX_HEAD * 16))
    chunks = []
    while have < want:
        chunk = sock.recv(min(65536, want - have))
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def _classify(exc: Exception) -> tuple[ErrorClass, str]:
    if isinstance(exc, _HTTPStatusError):
        by_status: dict[int, ErrorClass] = {503: "busy", 401: "unauthorized", 403: "unauthorized"}
        return by_status.get(exc.status, "http_status"), str(exc)
    if isinstance(exc, TimeoutError):
        return "timeout", str(exc) or "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", str(exc)
    if isinstance(exc, OSError) and exc.errno in (101, 113):  # ENETUNREACH, EHOSTUNREACH
        return "unreachable", str(exc)
    return "error", f"{type(exc).__name__}: {exc}"


# -- server ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransferStats:
    """What one served test cost; ``cpu_s`` is the serving thread's CPU time (user + system)."""

    direction: Direction
    bytes: int
    elapsed_s: float
    cpu_s: float


class BandwidthEndpoint:
    """Serves ``/bandwidth_test`` from an ``http.server`` request handler.

    ``max_concurrent`` tests at a time (default 1: exclusive); a request beyond that waits up
    to ``busy_wait_s`` (a test that just ended may still be closing its connection: a client
    can read the last byte before the serving thread lets go) and then gets 503, instead of
    sharing the link and halving both results. ``authorize`` receives the
    bearer token (None without one) and says whether to serve. ``max_duration_s`` and
    ``stall_timeout_s`` stop a client from holding the slot forever. ``on_done`` sees the
    ``TransferStats`` of each served test (for metrics).

    Serve it from a handler whose ``handle_expect_100`` returns True without answering (as
    ``make_server``'s does): the endpoint then sends ``100 Continue`` only once it has accepted
    the upload, so a rejected client (busy, bad token, too large) sends no body and reads a
    clean answer. A handler that keeps the default HTTP/1.1 behaviour still works, but a
    rejection then races the client's first bytes.
    """

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_concurrent: int = 1,
        max_duration_s: float = 30.0,
        stall_timeout_s: float = 10.0,
        busy_wait_s: float = 1.0,
        authorize: Callable[[str | None], bool] | None = None,
        on_done: Callable[[TransferStats], None] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.busy_wait_s = busy_wait_s
        self.max_duration_s = max_duration_s
        self.stall_timeout_s = stall_timeout_s
        self.authorize = authorize
        self.on_done = on_done
        self._slots = threading.BoundedSemaphore(max_concurrent)
        # Random, so no compressing middlebox can make the link look faster than it is.
        self._chunk = memoryview(os.urandom(CHUNK_SIZE))
        self._buffers = threading.local()

    @contextlib.contextmanager
    def slot(self, wait_s: float = 0.0) -> Iterator[bool]:
        """Take a test slot, waiting up to ``wait_s`` for one (yields False if none came free).
        Hold it while this member is the *client* of a test too, so it never measures and
        serves at the same time."""
        acquired = self._slots.acquire(timeout=wait_s) if wait_s > 0 else self._slots.acquire(blocking=False)
        try:
            yield acquired
        finally:
            if acquired:
                self._slots.release()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        """Answer one GET or POST of the bandwidth path; the connection is closed afterwards."""
        handler.close_connection = True
        handler.connection.settimeout(self.stall_timeout_s)
        auth = handler.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if self.authorize is not None and not self.authorize(token):
            _reply(handler, 401, {"error": "a valid bearer token is required"})
            return
        if handler.command not in ("GET", "POST"):
            _reply(handler, 405, {"error": "GET (download) or POST (upload)"})
            return
        with self.slot(self.busy_wait_s) as acquired:
            if not acquired:
                _reply(handler, 503, {"error": "busy: another bandwidth test is running"}, retry_after=5)
                return
            if handler.command == "GET":
                self._serve_download(handler)
            else:
                self._serve_upload(handler)

    def _serve_download(self, handler: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(handler.path).query)
        asked = query.get("bytes") or query.get("size")  # "size" as the seed's members ask
        try:
            nbytes = min(int(asked[0]) if asked else self.max_bytes, self.max_bytes)
        except ValueError:
            _reply(handler, 400, {"error": "bytes (or size) must be an integer"})
            return
        if nbytes < 0:
            _reply(handler, 400, {"error": "bytes (or size) must not be negative"})
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(nbytes))
        handler.send_header("Cache-Control", "no-store")
        handler.send_header("Connection", "close")
        handler.end_headers()
        begin, cpu = time.monotonic(), time.thread_time()
        sent = send_stream(handler.connection, nbytes, self._chunk, deadline=begin + self.max_duration_s)
        self._done("download", sent, begin, cpu)

    def _serve_upload(self, handler: BaseHTTPRequestHandler) -> None:
        try:
            nbytes = int(handler.headers.get("Content-Length", ""))
        except ValueError:
            _reply(handler, 400, {"error": "Content-Length is required"})
            return
        if not 0 <= nbytes <= self.max_bytes:
            _reply(handler, 413, {"error": f"at most {self.max_bytes} bytes", "max_bytes": self.max_bytes})
            return
        if handler.headers.get("Expect", "").lower() == "100-continue" and not _continued_already(handler):
            handler.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        buf = getattr(self._buffers, "buf", None)
        if buf is None:
            buf = self._buffers.buf = memoryview(bytearray(RECV_SIZE))
        begin, cpu = time.monotonic(), time.thread_time()
        samples = sink_stream(handler.rfile.readinto1, nbytes, buf, deadline=begin + self.max_duration_s)
        total = samples[-1][1] if samples else 0
        self._done("upload", total, begin, cpu)
        _reply(
            handler, 200,
            {"bytes": total, "elapsed_s": samples[-1][0] if samples else 0.0, "complete": total == nbytes,
             "samples": [[round(t, 5), b] for t, b in samples]},
        )  # fmt: skip

    def _done(self, direction: Direction, nbytes: int, begin: float, cpu: float) -> None:
        if self.on_done is not None:
            self.on_done(TransferStats(direction, nbytes, time.monotonic() - begin, time.thread_time() - cpu))


def send_stream(sock: socket.socket, nbytes: int, chunk: memoryview, *, deadline: float = math.inf) -> int:
    """Send ``nbytes`` by repeating ``chunk``; stop early if the client leaves or at ``deadline``.

    Returns the bytes handed to the kernel. Each call copies one preallocated block, so the
    cost is the kernel's copy and a few hundred system calls per second at 1 Gbit/s.
    """
    sent = 0
    size = len(chunk)
    try:
        while sent < nbytes and time.monotonic() < deadline:
            n = min(size, nbytes - sent)
            sock.sendall(chunk if n == size else chunk[:n])
            sent += n
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass  # the client stops a download by closing: the normal end of a test
    return sent


def sink_stream(
    read_into: Callable[[memoryview], int | None], nbytes: int, buf: memoryview, *, deadline: float = math.inf
) -> list[Sample]:
    """Read and discard up to ``nbytes`` into ``buf``, recording (t, bytes) samples.

    Stops at EOF (an uploader half-closes when its time is up), after ``nbytes``, at
    ``deadline`` or when the peer stalls or resets. ``read_into`` is ``sock.recv_into`` or a
    buffered reader's ``readinto1`` (which drains what the request parser buffered first).
    """
    sampler = _Sampler()
    now = time.monotonic()
    try:
        while sampler.total < nbytes and now < deadline:
            n = read_into(buf[: min(len(buf), nbytes - sampler.total)])
            now = time.monotonic()
            if not n:
                break
            sampler.add(n, now)
    except (ConnectionResetError, TimeoutError):
        pass
    return sampler.finish(now)


def _continued_already(handler: BaseHTTPRequestHandler) -> bool:
    """Whether ``http.server`` sent 100 Continue itself while parsing the request (it does for
    HTTP/1.1 handlers that keep the default ``handle_expect_100``)."""
    return (
        handler.protocol_version >= "HTTP/1.1"
        and handler.request_version >= "HTTP/1.1"
        and type(handler).handle_expect_100 is BaseHTTPRequestHandler.handle_expect_100
    )


def _reply(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any], retry_after: int = 0) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Connection", "close")
    if retry_after:
        handler.send_header("Retry-After", str(retry_after))
    handler.end_headers()
    with contextlib.suppress(OSError):
        handler.wfile.write(body)


def make_server(host: str, port: int, endpoint: BandwidthEndpoint | None = None) -> ThreadingHTTPServer:
    """A threaded HTTP server answering only the bandwidth path (for tests, the lab, and members
    without another HTTP server). Call ``serve_forever()`` on it; ``server_address`` has the port."""
    served = endpoint or BandwidthEndpoint()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "netring-bandwidth"

        def handle_expect_100(self) -> bool:
            return True  # the endpoint sends 100 Continue once it has accepted the upload

        def do_GET(self) -> None:
            if urlsplit(self.path).path == PATH:
                served.handle(self)
            else:
                self.send_error(404)

        do_POST = do_GET

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per test on stderr helps nobody; metrics come from on_done

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    return Server((host, port), Handler)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m probes.checks.bandwidth serve|measure ...``: a peer for the lab and by hand."""
    import argparse  # noqa: PLC0415 - only the command line needs it

    parser = argparse.ArgumentParser(prog="python -m probes.checks.bandwidth")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve /bandwidth_test")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8757)
    serve.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    run = sub.add_parser("measure", help="test against a peer")
    run.add_argument("target")
    run.add_argument("--direction", choices=["download", "upload", "naive"], default="download")
    run.add_argument("--duration", type=float, default=DEFAULT_DURATION_S)
    args = parser.parse_args(argv)
    if args.command == "serve":
        server = make_server(args.host, args.port, BandwidthEndpoint(max_bytes=args.max_bytes))
        print(f"listening on {args.host}:{server.server_address[1]}", flush=True)
        server.serve_forever()
    elif args.direction == "naive":
        print(json.dumps(naive_estimate(args.target).to_dict()))
    else:
        print(json.dumps(measure(args.target, args.direction, args.duration).to_dict()))


if __name__ == "__main__":
    main()
