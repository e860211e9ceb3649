"""HTTP check with pycurl: set-up, phase timings, error classes, expected statuses, run_many.

The pieces are separate so the 1 Hz prober, which drives its own ``CurlMulti`` across ticks,
uses the same set-up, timings and classification as the mesh round.

Timings are *phase durations* derived from curl's ``*_TIME_T`` offsets (microseconds):

    dns     = NAMELOOKUP
    connect = CONNECT - NAMELOOKUP
    tls     = APPCONNECT - CONNECT   (0 for plain HTTP)
    ttfb    = STARTTRANSFER - PRETRANSFER   (request sent -> first response byte)
    total   = TOTAL

With redirects followed, libcurl *adds up* each offset over the hops (each hop's offsets count
from that hop's start), so every phase above is a sum over the chain, ``total`` covers the
whole chain and ``status_code`` is the last response's; the tests pin this down. One blind
spot: in a chain mixing http and https hops, ``tls`` also subtracts the plain hops' connect
offsets and so reads low.
"""

from __future__ import annotations

import errno
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pycurl

from probes.checks.curlmulti import MultiDriver
from probes.checks.result import CheckResult, ErrorClass

USER_AGENT = "netring/1"

# Curl error codes by class. Numbers rather than pycurl names because libcurl merged some
# (51 SSL_PEER_CERTIFICATE is now 60 PEER_FAILED_VERIFICATION) and pycurl aliases them.
_DNS = {5, 6}  # COULDNT_RESOLVE_PROXY, COULDNT_RESOLVE_HOST
_CONNECT = 7  # COULDNT_CONNECT: refused, unreachable or timed out, told apart by errno
_UNREACHABLE_ERRNOS = {errno.EHOSTUNREACH, errno.ENETUNREACH}
_TIMEOUT = 28  # OPERATION_TIMEDOUT
# SSL_CONNECT_ERROR, PEER_FAILED_VERIFICATION (old 51), SSL_ENGINE_NOTFOUND, SSL_ENGINE_SETFAILED,
# SSL_CERTPROBLEM, SSL_CIPHER, SSL_CACERT, USE_SSL_FAILED, SSL_ENGINE_INITFAILED,
# SSL_CACERT_BADFILE, SSL_SHUTDOWN_FAILED, SSL_CRL_BADFILE, SSL_ISSUER_ERROR,
# SSL_PINNEDPUBKEYNOTMATCH, SSL_INVALIDCERTSTATUS, SSL_CLIENTCERT
_TLS = {35, 51, 53, 54, 58, 59, 60, 64, 66, 77, 80, 82, 83, 90, 91, 98}
# GOT_NOTHING (closed before any response), SEND_ERROR, RECV_ERROR: the peer dropped us.
_RESET = {52, 55, 56}


@dataclass(frozen=True, slots=True)
class StatusRange:
    """The HTTP statuses a target is expected to answer, e.g. "200-399" or "200,204,300-399"."""

    spans: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, text: str) -> StatusRange:
        spans: list[tuple[int, int]] = []
        for part in text.split(","):
            low, dash, high = part.strip().partition("-")
            try:
                span = (int(low), int(high) if dash else int(low))
            except ValueError:
                raise ValueError(f"bad expected status {text!r}: {part.strip()!r} is not a status or a range") from None
            if not 100 <= span[0] <= span[1] <= 599:
                raise ValueError(f"bad expected status {text!r}: {part.strip()!r} is not within 100-599")
            spans.append(span)
        return cls(tuple(spans))

    def contains(self, status: int | None) -> bool:
        return status is not None and any(low <= status <= high for low, high in self.spans)

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and self.contains(status)

    def __str__(self) -> str:
        return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in self.spans)


# Success is a status the target is configured to expect, not "anything below 500".
DEFAULT_EXPECTED = StatusRange.parse("200-399")


def status_mismatch(status: int | None, expected: object) -> str:
    """The ``error`` of an ``http_status`` failure, worded alike by the mesh and the prober:
    ``HTTP 404, expected 200-399``."""
    return f"HTTP {status}, expected {expected}"


@dataclass(frozen=True, slots=True)
class PhaseTimings:
    """Phase durations in ms; None for a phase the transfer never reached."""

    dns_ms: float | None
    connect_ms: float | None
    tls_ms: float | None
    ttfb_ms: float | None
    total_ms: float | None


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One HTTP check to run: a GET of ``url`` with its own timeout and expected statuses."""

    url: str
    timeout_s: float
    connect_timeout_s: float | None = None  # None: the whole timeout may go to connecting
    expected: StatusRange = DEFAULT_EXPECTED
    follow_redirects: bool = False
    verify_tls: bool = True
    resolve: Sequence[str] | None = None  # CURLOPT_RESOLVE entries, "host:port:address"


def configure(
    curl: Any,
    url: str,
    *,
    timeout_s: float,
    connect_timeout_s: float | None = None,
    follow_redirects: bool = False,
    fresh: bool = True,
    resolve: Sequence[str] | None = None,
    verify_tls: bool = True,
) -> None:
    """Set a (new or reset) Curl handle up for one GET of ``url`` whose body is discarded.

    ``fresh`` makes every sample pay for its own name lookup, connection and TLS handshake,
    which is what a reachability probe measures; reused connections or cached answers would
    report the first sample's cost only.
    """
    curl.setopt(pycurl.URL, url)
    # Only HTTP(S): URLs come from the registry, and file:// or gopher:// must not be probed.
    curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
    curl.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
    # max(1, ...): libcurl reads a timeout of 0 as "no timeout at all".
    curl.setopt(pycurl.TIMEOUT_MS, max(1, round(timeout_s * 1000)))
    curl.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, round((connect_timeout_s or timeout_s) * 1000)))
    curl.setopt(pycurl.FOLLOWLOCATION, follow_redirects)
    curl.setopt(pycurl.MAXREDIRS, 5)
    # Signals cannot time out the threaded resolver and are unsafe in threaded callers.
    curl.setopt(pycurl.NOSIGNAL, True)
    # A proxy from the environment (http_proxy) would measure the proxy, not the target.
    curl.setopt(pycurl.PROXY, "")
    curl.setopt(pycurl.USERAGENT, USER_AGENT)
    # Discard the body; ``len`` is the cheapest callback that accepts every byte (returning the
    # count is "all consumed"), and libcurl counts the bytes itself (SIZE_DOWNLOAD_T).
    curl.setopt(pycurl.WRITEFUNCTION, len)
    if fresh:
        curl.setopt(pycurl.FRESH_CONNECT, True)
        curl.setopt(pycurl.FORBID_REUSE, True)
        curl.setopt(pycurl.DNS_CACHE_TIMEOUT, 0)
        # A resumed TLS session skips most of the handshake, so tls_ms would shrink after the
        # first sample; the session cache is shared by the handles of one multi.
        curl.setopt(pycurl.SSL_SESSIONID_CACHE, False)
    if not verify_tls:
        curl.setopt(pycurl.SSL_VERIFYPEER, False)
        curl.setopt(pycurl.SSL_VERIFYHOST, 0)
    if resolve:
        # Note: these pins live in the multi's DNS cache until the multi is closed.
        curl.setopt(pycurl.RESOLVE, list(resolve))


def read_timings(curl: Any, *, completed: bool = True) -> PhaseTimings:
    """Phase durations of the transfer that just finished on ``curl`` (see the module docstring).

    A zero offset means the phase was never reached. When a transfer fails (``completed``
    False), libcurl stamps the pretransfer and starttransfer offsets with the moment of failure,
    so only the phases that really finished are reported then: dns, connect, TLS handshake, and
    the total time spent before giving up.
    """
    namelookup, connect, appconnect, pretransfer, starttransfer, total = (
        int(curl.getinfo(info)) / 1000.0
        for info in (
            pycurl.NAMELOOKUP_TIME_T,
            pycurl.CONNECT_TIME_T,
            pycurl.APPCONNECT_TIME_T,
            pycurl.PRETRANSFER_TIME_T,
            pycurl.STARTTRANSFER_TIME_T,
            pycurl.TOTAL_TIME_T,
        )
    )
    tls: float | None = None
    if appconnect > 0:
        tls = appconnect - connect
    elif completed:
        tls = 0.0  # plain HTTP: the request went out without a TLS handshake
    return PhaseTimings(
        dns_ms=namelookup if namelookup > 0 else None,
        connect_ms=connect - namelookup if connect > 0 else None,
        tls_ms=tls,
        ttfb_ms=starttransfer - pretransfer if completed else None,
        total_ms=total if total > 0 else None,
    )


def classify_curl_error(code: int, message: str = "", os_errno: int = 0) -> ErrorClass:
    """Map a curl error code to an error class.

    COULDNT_CONNECT covers refused, unreachable and kernel-timed-out connects alike; the
    socket's errno (``CURLINFO_OS_ERRNO``) tells them apart, or else the message does.
    """
    if code in _DNS:
        return "dns"
    if code == _TIMEOUT:
        return "timeout"
    if code in _TLS:
        return "tls"
    if code in _RESET:
        return "reset"
    if code != _CONNECT:
        return "error"
    lowered = message.lower()
    if os_errno in _UNREACHABLE_ERRNOS or "no route to host" in lowered or "network is unreachable" in lowered:
        return "unreachable"
    if os_errno == errno.ETIMEDOUT or "timed out" in lowered:  # the kernel's SYN retries ran out first
        return "timeout"
    return "refused"


def to_result(curl: Any, request: HttpRequest, code: int, message: str, started_at: float) -> CheckResult:
    """Turn a finished transfer on ``curl`` into a CheckResult (``code`` 0 = completed)."""
    parts = urlsplit(request.url)
    timings = read_timings(curl, completed=not code)
    status = int(curl.getinfo(pycurl.RESPONSE_CODE)) or None
    error_class: ErrorClass = ""
    error = ""
    if code:
        os_errno = int(curl.getinfo(pycurl.OS_ERRNO))
        error_class, error = classify_curl_error(code, message, os_errno), message or f"curl error {code}"
    elif status not in request.expected:
        error_class, error = "http_status", status_mismatch(status, request.expected)
    return CheckResult(
        kind="http",
        target=parts.hostname or "",
        port=parts.port or (443 if parts.scheme == "https" else 80),
        endpoint=parts.path + (f"?{parts.query}" if parts.query else ""),
        ok=not error_class,
        # Any completed exchange has a meaningful duration, even with an unexpected status.
        latency_ms=timings.total_ms if not code else None,
        error_class=error_class,
        error=error,
        status_code=status,
        dns_ms=timings.dns_ms,
        connect_ms=timings.connect_ms,
        tls_ms=timings.tls_ms,
        ttfb_ms=timings.ttfb_ms,
        total_ms=timings.total_ms,
        started_at=started_at,
    )


def run_many(requests: Sequence[HttpRequest], *, max_in_flight: int = 256) -> list[CheckResult]:
    """Run every request concurrently through one CurlMulti; results come back in input order.

    At most ``max_in_flight`` transfers run at once (each holds a socket); the rest start as
    others finish. Each request is bounded by its own timeout. Curl handles are reset and
    reused, which saves their set-up cost but never a connection (``fresh``).
    """
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    results: list[CheckResult | None] = [None] * len(requests)
    waiting = deque(range(len(requests)))
    running: dict[Any, tuple[int, float]] = {}  # handle -> (request index, started_at)
    idle: list[Any] = []
    with MultiDriver() as driver:
        try:
            while waiting or running:
                while waiting and len(running) < max_in_flight:
                    index = waiting.popleft()
                    curl = idle.pop() if idle else pycurl.Curl()
                    _prepare(curl, requests[index])
                    running[curl] = (index, time.time())
                    driver.add(curl)
                # The wait is only a cap: libcurl's timer wakes us for every transfer's timeout.
                for curl, code, message in driver.poll(1.0):
                    index, started_at = running.pop(curl)
                    results[index] = to_result(curl, requests[index], code, message, started_at)
                    curl.reset()
                    idle.append(curl)
        finally:
            for curl in [*idle, *running]:
                curl.close()
    return [result for result in results if result is not None]


def _prepare(curl: Any, request: HttpRequest) -> None:
    configure(
        curl,
        request.url,
        timeout_s=request.timeout_s,
        connect_timeout_s=request.connect_timeout_s,
        follow_redirects=request.follow_redirects,
        resolve=request.resolve,
        verify_tls=request.verify_tls,
    )
