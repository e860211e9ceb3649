"""ICMP echo with icmplib: RTT, loss and jitter, and whether this process may send pings at all.

Two ways to ping on Linux:

- *unprivileged* ICMP datagram sockets, allowed to the groups in ``net.ipv4.ping_group_range``
  (the same sysctl governs IPv6). The kernel matches replies to sockets, so many concurrent
  pings stay cheap. Preferred whenever allowed.
- *privileged* raw sockets, for root or CAP_NET_RAW. A raw socket sees every ICMP packet the
  host receives, so it costs more; second choice.

Without either, every result says "unavailable" and why, instead of reporting 100% loss.

How the echoes are sent and timed (one socket for many hosts, kernel receive timestamps)
is in ``pinger``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import icmplib

from probes.checks.pinger import MAX_ECHOES, Echoes, ping_hosts
from probes.checks.result import CheckResult, ErrorClass

IcmpMode = Literal["unprivileged", "privileged"]

CAP_NET_RAW = 13  # bit number in the capability masks of /proc/<pid>/status
_PROC_STATUS = Path("/proc/self/status")
_PING_GROUP_RANGE = Path("/proc/sys/net/ipv4/ping_group_range")


def icmp_capability() -> tuple[IcmpMode | None, str]:
    """How this process can send ICMP echo requests, and why (or why not)."""
    gids = {os.getegid(), *os.getgroups()}
    try:
        ping_range = _PING_GROUP_RANGE.read_text()
    except OSError:
        ping_range = ""
    if ping_group_allows(ping_range, gids):
        return "unprivileged", f"net.ipv4.ping_group_range ({ping_range.strip()}) includes one of our groups"
    if os.geteuid() == 0:
        return "privileged", "running as root"
    try:
        status = _PROC_STATUS.read_text()
    except OSError:
        status = ""
    if has_cap_net_raw(status):
        return "privileged", "process has CAP_NET_RAW"
    return None, (
        f"not root, no CAP_NET_RAW, and net.ipv4.ping_group_range ({ping_range.strip() or 'unreadable'}) "
        f"excludes our groups {sorted(gids)}"
    )


def ping_group_allows(ping_range: str, gids: Iterable[int]) -> bool:
    """Whether the sysctl text "low high" admits one of ``gids`` (the kernel checks them all)."""
    try:
        low, high = (int(value) for value in ping_range.split())
    except ValueError:
        return False
    return any(low <= gid <= high for gid in gids)


def has_cap_net_raw(proc_status: str) -> bool:
    """Whether the effective capability set in /proc/<pid>/status text includes CAP_NET_RAW."""
    for line in proc_status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_RAW & 1)
    return False


async def icmp_check_many(
    hosts: Sequence[str],
    *,
    count: int = 3,
    interval: float = 0.2,
    timeout: float = 1.0,
    capability: tuple[IcmpMode | None, str] | None = None,
) -> list[CheckResult]:
    """Ping every host concurrently, ``count`` echoes each; results come in input order.

    A host listed twice is pinged once. Echo ``k`` of every host leaves during
    ``[k * interval, (k + 1) * interval)`` and waits at most ``timeout`` for its reply, so the
    call takes at most about ``count * interval + timeout``. ``capability`` defaults to
    :func:`icmp_capability`.

    Reported: min/avg/max RTT over the replies received (send to kernel receive timestamp, see
    ``pinger``), ``loss_ratio`` = 1 - received/sent, and ``jitter_ms`` as icmplib defines it:
    the mean absolute difference between successive RTTs (no RFC 3550 smoothing; 0 with fewer
    than two replies). A host that never answers is "timeout", or "unreachable" when a router
    said so (ICMP destination unreachable or time exceeded; raw sockets only, datagram sockets
    do not receive ICMP errors).
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    started_at = time.time()
    mode, reason = capability or icmp_capability()
    if mode is None:
        return [_failure(host, started_at, "unavailable", f"ICMP unavailable: {reason}") for host in hosts]
    unique = list(dict.fromkeys(hosts))
    echoes = {host: Echoes() for host in unique}
    failures: dict[str, tuple[ErrorClass, str]] = {}  # hosts that could not be pinged at all
    addresses = await _resolve_all(unique, failures)
    groups: list[list[tuple[str, str]]] = []
    for version in (4, 6):
        family = [(host, address) for host, address in addresses.items() if (":" in address) == (version == 6)]
        per_socket = MAX_ECHOES // count
        groups += [family[i : i + per_socket] for i in range(0, len(family), per_socket)]
    privileged = mode == "privileged"
    await asyncio.gather(
        *(_ping_group(group, echoes, failures, count, interval, timeout, privileged) for group in groups)
    )
    return [
        _failure(host, started_at, *failures[host]) if host in failures else _result(host, echoes[host], started_at)
        for host in hosts
    ]


def _result(host: str, echoes: Echoes, started_at: float) -> CheckResult:
    if not echoes.rtts:
        error_class: ErrorClass = "unreachable" if echoes.errors else "timeout"
        detail = echoes.errors[-1] if echoes.errors else f"no echo reply to {echoes.sent} requests"
        return _failure(host, started_at, error_class, detail, sent=echoes.sent)
    stats = icmplib.Host(host, echoes.sent, echoes.rtts)  # icmplib's min/avg/max/jitter definitions
    return CheckResult(
        kind="icmp",
        target=host,
        port=None,
        ok=True,
        latency_ms=stats.avg_rtt,
        rtt_min_ms=stats.min_rtt,
        rtt_avg_ms=stats.avg_rtt,
        rtt_max_ms=stats.max_rtt,
        # icmplib's packet_loss is rounded to 2 places (1/3 -> 0.33); keep the exact ratio.
        loss_ratio=1.0 - len(echoes.rtts) / echoes.sent,
        jitter_ms=stats.jitter,
        packets_sent=echoes.sent,
        packets_received=len(echoes.rtts),
        started_at=started_at,
    )


async def _resolve_all(hosts: list[str], failures: dict[str, tuple[ErrorClass, str]]) -> dict[str, str]:
    """Host -> IP address; a name that does not resolve is marked as a DNS failure."""

    async def resolve(host: str) -> str | None:
        if not icmplib.is_hostname(host):
            return host
        try:
            return str((await icmplib.async_resolve(host))[0])
        except icmplib.NameLookupError as exc:
            failures[host] = ("dns", str(exc))
            return None

    resolved = await asyncio.gather(*(resolve(host) for host in hosts))
    return {host: address for host, address in zip(hosts, resolved, strict=True) if address is not None}


async def _ping_group(
    targets: list[tuple[str, str]],
    echoes: dict[str, Echoes],
    failures: dict[str, tuple[ErrorClass, str]],
    count: int,
    interval: float,
    timeout: float,
    privileged: bool,
) -> None:
    try:
        await ping_hosts(targets, echoes, count=count, interval=interval, timeout=timeout, privileged=privileged)
    except icmplib.SocketPermissionError as exc:
        failures.update((host, ("unavailable", f"ICMP unavailable: {exc}")) for host, _ in targets)
    except (icmplib.ICMPLibError, OSError) as exc:
        failures.update((host, ("error", str(exc))) for host, _ in targets)


def _failure(host: str, started_at: float, error_class: ErrorClass, error: str, sent: int | None = None) -> CheckResult:
    return CheckResult(
        kind="icmp",
        target=host,
        port=None,
        ok=False,
        error_class=error_class,
        error=error,
        loss_ratio=1.0 if sent else None,
        packets_sent=sent,
        packets_received=0 if sent is not None else None,
        started_at=started_at,
    )
