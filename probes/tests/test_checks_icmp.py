"""ICMP echo checks on loopback, and how the ping privilege is worked out."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

from probes.checks.icmp import has_cap_net_raw, icmp_capability, icmp_check_many, ping_group_allows
from probes.checks.pinger import parse_reply, round_trip_ms

MODE, REASON = icmp_capability()
needs_icmp = pytest.mark.skipif(MODE is None, reason=f"cannot send ICMP here: {REASON}")


@needs_icmp
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_it_pings_loopback_without_loss(host: str) -> None:
    (result,) = asyncio.run(icmp_check_many([host], count=3, interval=0.02, timeout=1.0))

    assert result.ok
    assert (result.kind, result.target, result.port, result.error_class) == ("icmp", host, None, "")
    assert (result.packets_sent, result.packets_received, result.loss_ratio) == (3, 3, 0.0)
    assert result.rtt_min_ms is not None and result.rtt_avg_ms is not None and result.rtt_max_ms is not None
    assert 0 <= result.rtt_min_ms <= result.rtt_avg_ms <= result.rtt_max_ms < 10
    assert result.rtt_avg_ms > 0
    assert result.latency_ms == result.rtt_avg_ms
    assert result.jitter_ms is not None and result.jitter_ms >= 0


@needs_icmp
def test_it_pings_many_hosts_concurrently_in_order() -> None:
    hosts = ["127.0.0.1", "::1", "127.0.0.1"]

    results = asyncio.run(icmp_check_many(hosts, count=2, interval=0.02, timeout=1.0))

    assert [r.target for r in results] == hosts
    assert all(r.ok for r in results)


def test_it_reports_unavailable_with_the_reason() -> None:
    results = asyncio.run(icmp_check_many(["127.0.0.1"], capability=(None, "no privilege, for the test")))

    assert [(r.ok, r.error_class) for r in results] == [(False, "unavailable")]
    assert results[0].error == "ICMP unavailable: no privilege, for the test"
    assert results[0].packets_sent is None  # nothing was attempted, so no loss either
    assert results[0].loss_ratio is None


def test_the_capability_matches_this_process() -> None:
    mode, reason = icmp_capability()

    assert reason
    if os.geteuid() == 0:
        assert mode is not None  # root can always send, one way or the other
    if mode is None:
        assert "ping_group_range" in reason


@pytest.mark.parametrize(
    ("ping_range", "gids", "allowed"),
    [
        ("0\t2147483647\n", [1000], True),
        ("100 200", [50, 150], True),  # any supplementary group counts, as in the kernel
        ("1\t0\n", [0, 1000], False),  # Debian's default: nobody
        ("", [0], False),
    ],
)
def test_ping_group_range_admits_listed_groups(ping_range: str, gids: list[int], allowed: bool) -> None:
    assert ping_group_allows(ping_range, gids) is allowed


@pytest.mark.parametrize(
    ("cap_eff", "has_it"),
    [("000001ffffffffff", True), ("0000000000002000", True), ("0000000000000000", False), ("0000000000001000", False)],
)
def test_cap_net_raw_is_read_from_the_effective_set(cap_eff: str, has_it: bool) -> None:
    status = f"Name:\tpython\nCapPrm:\t000001ffffffffff\nCapEff:\t{cap_eff}\n"

    assert has_cap_net_raw(status) is has_it


@needs_icmp
def test_hundreds_of_hosts_share_a_socket_without_false_loss() -> None:
    # One socket per host (icmplib.async_multiping) lost about half the replies at this size,
    # each raw socket receiving every host's replies, and read loopback RTTs as tens of ms.
    hosts = [f"127.0.{n // 250}.{n % 250 + 1}" for n in range(300)]  # all of 127/8 is loopback

    results = asyncio.run(icmp_check_many(hosts, count=2, interval=0.05, timeout=1.0))

    assert [r.target for r in results] == hosts
    assert all(r.ok and r.loss_ratio == 0 for r in results)
    assert max(r.rtt_max_ms or 0.0 for r in results) < 10


def test_it_needs_at_least_one_echo() -> None:
    with pytest.raises(ValueError, match="count"):
        asyncio.run(icmp_check_many(["127.0.0.1"], count=0))


def echo(kind: int, identifier: int, sequence: int) -> bytes:
    return struct.pack("!BBHHH", kind, 0, 0, identifier, sequence) + b"payload"


IPV4_HEADER = bytes([0x45]) + bytes(19)  # version 4, 20-byte header
IPV6_HEADER = bytes([0x60]) + bytes(39)


@pytest.mark.parametrize(
    ("packet", "version", "ip_header", "parsed"),
    [
        (echo(0, 7, 3), 4, False, (0, 0, 7, 3)),  # datagram socket: ICMP only
        (IPV4_HEADER + echo(0, 7, 3), 4, True, (0, 0, 7, 3)),  # raw IPv4 socket: IP header first
        (echo(129, 7, 3), 6, False, (129, 0, 7, 3)),
        # Destination unreachable: the error quotes our request (IP header + echo request).
        (IPV4_HEADER + bytes([3, 1, 0, 0, 0, 0, 0, 0]) + IPV4_HEADER + echo(8, 7, 3), 4, True, (3, 1, 7, 3)),
        (bytes([1, 3, 0, 0, 0, 0, 0, 0]) + IPV6_HEADER + echo(128, 7, 3), 6, False, (1, 3, 7, 3)),
        (IPV4_HEADER + echo(8, 7, 3), 4, True, None),  # our own request, seen by a raw socket
        (IPV4_HEADER + bytes([3, 1, 0, 0]), 4, True, None),  # truncated
    ],
)
def test_replies_and_errors_are_matched_by_id_and_sequence(
    packet: bytes, version: int, ip_header: bool, parsed: tuple[int, int, int, int] | None
) -> None:
    # ICMP errors from routers cannot be produced on loopback without traffic elsewhere.
    assert parse_reply(packet, version, ip_header=ip_header) == parsed


def test_the_kernel_timestamp_is_used_unless_a_clock_step_broke_it() -> None:
    # Sent at wall 1000.0 / monotonic 50.0, read at monotonic 50.010: at most 10 ms.
    assert round_trip_ms(1000.0, 50.0, 1000.004, 50.010) == pytest.approx(4.0)  # kernel stamp
    assert round_trip_ms(1000.0, 50.0, None, 50.010) == pytest.approx(10.0)  # no stamp
    assert round_trip_ms(1000.0, 50.0, 999.5, 50.010) == pytest.approx(10.0)  # clock stepped back
    assert round_trip_ms(1000.0, 50.0, 1003.0, 50.010) == pytest.approx(10.0)  # clock stepped forward
