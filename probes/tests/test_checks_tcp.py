"""TCP connect checks against real sockets on loopback (IPv4 and IPv6)."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from typing import Any

import pytest

from probes.checks.result import CheckResult
from probes.checks.tcp import classify_os_error, tcp_check
from probes.tests.loopback import black_hole, closed_port, silent_port

LOOPBACKS = ["127.0.0.1", "::1"]


@pytest.mark.parametrize("host", LOOPBACKS)
def test_it_times_a_successful_connect(host: str) -> None:
    with silent_port(host) as port:
        result = asyncio.run(tcp_check(host, port, timeout=1.0))

    assert result.ok
    assert (result.kind, result.target, result.port, result.error_class) == ("tcp", host, port, "")
    assert result.latency_ms is not None and 0 < result.latency_ms < 100
    assert result.connect_ms == result.latency_ms
    assert result.status_code is None and result.loss_ratio is None  # HTTP/ICMP fields stay empty


@pytest.mark.parametrize("host", LOOPBACKS)
def test_it_classifies_a_closed_port_as_refused(host: str) -> None:
    with closed_port(host) as port:
        result = asyncio.run(tcp_check(host, port, timeout=1.0))

    assert not result.ok
    assert result.error_class == "refused"
    assert result.latency_ms is None
    assert result.error


@pytest.mark.parametrize("host", LOOPBACKS)
def test_it_times_out_on_a_black_hole_within_its_timeout(host: str) -> None:
    with black_hole(host) as port:
        begin = time.monotonic()
        result = asyncio.run(tcp_check(host, port, timeout=0.3))
        elapsed = time.monotonic() - begin

    assert result.error_class == "timeout"
    assert not result.ok and result.latency_ms is None
    assert 0.3 <= elapsed < 0.6


def test_it_classifies_a_failed_lookup_as_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    # Resolving a real name would query the configured (non-loopback) DNS server, so the
    # resolver, the one piece of the outside world involved, is replaced.
    def no_such_name(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)

    result = asyncio.run(tcp_check("nonexistent.invalid", 80, timeout=1.0))

    assert (result.ok, result.error_class) == (False, "dns")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "refused"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "unreachable"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "unreachable"),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), "timeout"),
        (ConnectionResetError(errno.ECONNRESET, "reset"), "reset"),
        (socket.gaierror(socket.EAI_NONAME, "unknown"), "dns"),
        (OSError(errno.EMFILE, "Too many open files"), "error"),
    ],
)
def test_it_classifies_socket_errors(exc: OSError, expected: str) -> None:
    # Unreachable networks cannot be produced on loopback without sending traffic elsewhere.
    assert classify_os_error(exc) == expected


def test_it_runs_many_checks_concurrently() -> None:
    async def many(port: int, dead: int) -> list[CheckResult]:
        return list(await asyncio.gather(*(tcp_check("127.0.0.1", p, 0.3) for p in [port] * 20 + [dead] * 5)))

    with silent_port() as port, black_hole() as dead:
        begin = time.monotonic()
        results = asyncio.run(many(port, dead))
        elapsed = time.monotonic() - begin

    assert [r.error_class for r in results] == [""] * 20 + ["timeout"] * 5
    assert elapsed < 0.6  # five timeouts in parallel cost one timeout


def test_many_concurrent_connects_do_not_inflate_the_connect_time() -> None:
    # Timed on the event loop alone, 256 simultaneous loopback connects read as 5-15 ms because
    # the loop notices each one late; the kernel's handshake sample is what we report.
    async def many(port: int) -> list[CheckResult]:
        return list(await asyncio.gather(*(tcp_check("127.0.0.1", port, 1.0) for _ in range(256))))

    with silent_port(backlog=512) as port:
        results = asyncio.run(many(port))

    assert all(r.ok for r in results)
    assert max(r.latency_ms or 0.0 for r in results) < 1.0
