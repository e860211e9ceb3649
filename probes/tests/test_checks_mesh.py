"""A whole mesh round: every check of every target at once, against loopback peers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from probes.checks.icmp import icmp_capability
from probes.checks.mesh import Target, http_url, run_checks
from probes.tests.loopback import HttpServer, black_hole


@pytest.fixture(scope="module")
def server() -> Iterator[HttpServer]:
    with HttpServer() as running:
        yield running


def test_dead_peers_cost_their_timeout_once_and_never_stretch_the_round(server: HttpServer) -> None:
    healthy = [Target(f"up-{n}", "127.0.0.1", server.port, "us1") for n in range(50)]
    with ExitStack() as stack:
        dead = [Target(f"dead-{n}", "127.0.0.1", stack.enter_context(black_hole()), "eu1") for n in range(5)]
        begin = time.monotonic()
        results = run_checks(
            healthy + dead,
            endpoints=["/health"],
            tcp_timeout=1.0,
            http_timeout=1.0,
            icmp_count=2,
            icmp_interval=0.05,
            icmp_timeout=0.5,
            max_in_flight=256,
        )
        elapsed = time.monotonic() - begin

    # The correctness property itself: 5 timeouts in parallel cost one timeout, not five.
    assert elapsed < 1.0 + 0.5
    by_kind = {kind: [r for r in results if r.kind == kind] for kind in ("tcp", "http", "icmp")}
    assert all(len(by_kind[kind]) == 55 for kind in ("tcp", "http"))
    for kind in ("tcp", "http"):
        assert [r.target_id for r in by_kind[kind]] == [t.instance_id for t in healthy + dead]
        assert all(r.ok for r in by_kind[kind][:50])
        assert [r.error_class for r in by_kind[kind][50:]] == ["timeout"] * 5
    assert all(r.endpoint == "/health" and r.status_code == 200 for r in by_kind["http"][:50])
    if icmp_capability()[0] is not None:
        # All targets share one host, pinged once; each target still gets its own row.
        assert [r.target_id for r in by_kind["icmp"]] == [t.instance_id for t in healthy + dead]
        assert all(r.ok and r.loss_ratio == 0 for r in by_kind["icmp"])


def test_every_endpoint_is_checked_and_icmp_can_be_unavailable(server: HttpServer) -> None:
    # The server listens on IPv4 only, so "b" (the same port on ::1) refuses every connection.
    targets = [Target("a", "127.0.0.1", server.port), Target("b", "::1", server.port)]

    results = run_checks(
        targets,
        endpoints=["/health", "status/500"],
        icmp_count=1,
        icmp_capability=(None, "not allowed in this test"),
    )

    http = [(r.target_id, r.endpoint, r.error_class) for r in results if r.kind == "http"]
    assert http[:2] == [("a", "/health", ""), ("a", "/status/500", "http_status")]
    assert [r.error_class for r in results if r.target_id == "b" and r.kind != "icmp"] == ["refused"] * 3
    assert [(r.target_id, r.error_class) for r in results if r.kind == "icmp"] == [
        ("a", "unavailable"),
        ("b", "unavailable"),
    ]


def test_no_icmp_when_the_count_is_zero(server: HttpServer) -> None:
    results = run_checks([Target("a", "127.0.0.1", server.port)], icmp_count=0)

    assert sorted(r.kind for r in results) == ["http", "tcp"]


@pytest.mark.parametrize(
    ("host", "endpoint", "url"),
    [
        ("10.0.0.1", "/health", "http://10.0.0.1:8757/health"),
        ("fd00::2", "health", "http://[fd00::2]:8757/health"),
        ("eu1-a.example", "/", "http://eu1-a.example:8757/"),
    ],
)
def test_urls_bracket_ipv6_literals(host: str, endpoint: str, url: str) -> None:
    assert http_url(host, 8757, endpoint) == url
