"""One mesh round: TCP, HTTP and ICMP checks of every target, all at the same time.

Everything starts at once, so a dead or black-holed peer costs its timeout once, in parallel
with the others, and never stretches the round: the round lasts about as long as its slowest
single check. TCP and ICMP run on asyncio; the HTTP checks run in one CurlMulti on a worker
thread (pycurl releases the GIL while libcurl works).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from probes.checks.http import DEFAULT_EXPECTED, HttpRequest, StatusRange, run_many
from probes.checks.icmp import IcmpMode, icmp_check_many
from probes.checks.result import CheckResult
from probes.checks.tcp import tcp_check


@dataclass(frozen=True, slots=True)
class Target:
    """A peer to check: a member's instance and where its member endpoint listens."""

    instance_id: str
    host: str
    port: int
    location: str = ""


def run_checks(
    targets: Sequence[Target],
    *,
    endpoints: Sequence[str] = ("/health",),
    tcp_timeout: float = 1.5,
    http_timeout: float = 1.5,
    icmp_count: int = 3,
    icmp_interval: float = 0.2,
    icmp_timeout: float = 1.0,
    expected_status: StatusRange = DEFAULT_EXPECTED,
    max_in_flight: int = 256,
    icmp_capability: tuple[IcmpMode | None, str] | None = None,
) -> list[CheckResult]:
    """Check every target; returns the TCP results, then HTTP, then ICMP, each in target order.

    Per target: one TCP connect to ``port``, one GET ``http://host:port/<endpoint>`` per
    endpoint, and ``icmp_count`` pings (0 = no ICMP). Targets that share a host share one
    ping. ``max_in_flight`` bounds the sockets held at once by TCP and by HTTP checks (ICMP
    uses one socket per IP version). Every result carries its target's ``instance_id`` as
    ``target_id``. The round takes about the longest of ``tcp_timeout``, ``http_timeout`` and
    ``icmp_count * icmp_interval + icmp_timeout``, however many targets are dead.
    """
    return asyncio.run(
        run_checks_async(
            targets,
            endpoints=endpoints,
            tcp_timeout=tcp_timeout,
            http_timeout=http_timeout,
            icmp_count=icmp_count,
            icmp_interval=icmp_interval,
            icmp_timeout=icmp_timeout,
            expected_status=expected_status,
            max_in_flight=max_in_flight,
            icmp_capability=icmp_capability,
        )
    )


async def run_checks_async(
    targets: Sequence[Target],
    *,
    endpoints: Sequence[str] = ("/health",),
    tcp_timeout: float = 1.5,
    http_timeout: float = 1.5,
    icmp_count: int = 3,
    icmp_interval: float = 0.2,
    icmp_timeout: float = 1.0,
    expected_status: StatusRange = DEFAULT_EXPECTED,
    max_in_flight: int = 256,
    icmp_capability: tuple[IcmpMode | None, str] | None = None,
) -> list[CheckResult]:
    """:func:`run_checks` for callers that already run an event loop."""
    http_pairs = [(target, endpoint) for target in targets for endpoint in endpoints]
    requests = [
        HttpRequest(http_url(target.host, target.port, endpoint), timeout_s=http_timeout, expected=expected_status)
        for target, endpoint in http_pairs
    ]
    limit = asyncio.Semaphore(max_in_flight)

    async def tcp(target: Target) -> CheckResult:
        async with limit:
            return await tcp_check(target.host, target.port, tcp_timeout)

    async def icmp() -> list[CheckResult]:
        if icmp_count < 1:
            return []
        # icmp_check_many pings a host shared by several targets only once.
        hosts = [target.host for target in targets]
        return await icmp_check_many(
            hosts, count=icmp_count, interval=icmp_interval, timeout=icmp_timeout, capability=icmp_capability
        )

    tcp_results, http_results, icmp_results = await asyncio.gather(
        asyncio.gather(*(tcp(target) for target in targets)),
        asyncio.to_thread(run_many, requests, max_in_flight=max_in_flight),
        icmp(),
    )
    checked = [
        *zip(targets, tcp_results, strict=True),
        *zip((target for target, _ in http_pairs), http_results, strict=True),
        *(zip(targets, icmp_results, strict=True) if icmp_count >= 1 else ()),
    ]
    return [dataclasses.replace(result, target_id=target.instance_id) for target, result in checked]


def http_url(host: str, port: int, endpoint: str) -> str:
    """``http://host:port/endpoint``, with IPv6 literals in brackets."""
    authority = f"[{host}]" if ":" in host else host
    return f"http://{authority}:{port}/{endpoint.lstrip('/')}"
