"""TCP check: a plain non-blocking connect with a timeout, timed on the monotonic clock.

Which clock reading counts: an event loop notices a finished connect only when it next polls,
and when it starts hundreds of connects at once that comes late. On loopback, 256 concurrent
checks read a ~20 us handshake as 5-20 ms, and the error would grow with the mesh. So when
Linux reports the handshake's own RTT sample (TCP_INFO, also taken on the monotonic clock) and
the SYN was never retransmitted, that sample is the connect time; otherwise (a lost SYN, or no
TCP_INFO) it is our own monotonic measurement, which then includes the retransmission wait.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
import time
from typing import Any

from probes.checks.result import CheckResult, ErrorClass

_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH}

# struct tcp_info (linux/tcp.h): 8 bytes of u8 fields, then u32 fields; tcpi_rtt is the 16th
# u32 (microseconds), tcpi_total_retrans the 24th. The layout only ever grows at the end.
_TCP_INFO_RTT = 8 + 15 * 4
_TCP_INFO_TOTAL_RETRANS = 8 + 23 * 4
_TCP_INFO_SIZE = _TCP_INFO_TOTAL_RETRANS + 4


async def tcp_check(host: str, port: int, timeout: float) -> CheckResult:
    """Open a TCP connection to ``host``:``port`` and close it at once.

    ``timeout`` bounds name resolution and connect together, but ``latency_ms`` is the connect
    alone (SYN to established), so a slow resolver does not look like a slow network.
    Only the first address the resolver returns is tried: a monitor must not hide a broken
    address family behind a fallback. Pass an IPv4 or IPv6 literal to choose the family.
    """
    started_at = time.time()
    try:
        async with asyncio.timeout(timeout):
            connect_ms = await _connect(host, port)
    except TimeoutError:
        return _failure(host, port, started_at, "timeout", f"no connection within {timeout:g}s")
    except OSError as exc:
        return _failure(host, port, started_at, classify_os_error(exc), str(exc))
    return CheckResult(
        kind="tcp", target=host, port=port, ok=True, latency_ms=connect_ms, connect_ms=connect_ms, started_at=started_at
    )


async def _connect(host: str, port: int) -> float:
    """Connect and return the connect time in ms; raise OSError on failure."""
    loop = asyncio.get_running_loop()
    try:
        # An IP literal needs no resolver: asyncio's getaddrinfo would still use a thread.
        ip = ipaddress.ip_address(host)
        family, kind, proto = (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), socket.SOCK_STREAM, 0
        address: tuple[Any, ...] = (host, port)
    except ValueError:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setblocking(False)
        begin = time.perf_counter()
        await loop.sock_connect(sock, address)
        measured_ms = (time.perf_counter() - begin) * 1000.0
        return _handshake_ms(sock) or measured_ms


def _handshake_ms(sock: socket.socket) -> float | None:
    """The kernel's RTT sample of the handshake, if the SYN went out once (see module docstring)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (AttributeError, OSError):  # not Linux
        return None
    if len(info) < _TCP_INFO_SIZE:
        return None
    (rtt_us,) = struct.unpack_from("I", info, _TCP_INFO_RTT)
    (retransmits,) = struct.unpack_from("I", info, _TCP_INFO_TOTAL_RETRANS)
    # With a retransmitted SYN the sample would hide the retransmission wait a user really waited.
    return rtt_us / 1000.0 if rtt_us and not retransmits else None


def classify_os_error(exc: OSError) -> ErrorClass:
    """Map a socket error to an error class."""
    if isinstance(exc, socket.gaierror):
        return "dns"
    if exc.errno == errno.ECONNREFUSED:
        return "refused"
    if exc.errno in _UNREACHABLE:
        return "unreachable"
    if exc.errno == errno.ETIMEDOUT:  # the kernel gave up on SYN retries before our timeout did
        return "timeout"
    if exc.errno == errno.ECONNRESET:
        return "reset"
    return "error"


def _failure(host: str, port: int, started_at: float, error_class: ErrorClass, error: str) -> CheckResult:
    return CheckResult(
        kind="tcp", target=host, port=port, ok=False, error_class=error_class, error=error, started_at=started_at
    )
