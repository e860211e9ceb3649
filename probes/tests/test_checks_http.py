"""HTTP checks with pycurl against real servers on loopback."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from statistics import median

import pycurl
import pytest

from probes.checks.http import (
    DEFAULT_EXPECTED,
    HttpRequest,
    StatusRange,
    classify_curl_error,
    configure,
    read_timings,
    run_many,
)
from probes.checks.result import CheckResult
from probes.tests.loopback import SLOW_DELAY_S, HttpServer, black_hole, closed_port, self_signed_context, silent_port


@pytest.fixture(scope="module")
def server() -> Iterator[HttpServer]:
    with HttpServer() as running:
        yield running


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    with HttpServer(tls=self_signed_context(tmp_path_factory.mktemp("tls"))) as running:
        yield running


def check(
    url: str,
    timeout_s: float = 2.0,
    *,
    expected: StatusRange = DEFAULT_EXPECTED,
    follow_redirects: bool = False,
    verify_tls: bool = True,
) -> CheckResult:
    request = HttpRequest(url, timeout_s, expected=expected, follow_redirects=follow_redirects, verify_tls=verify_tls)
    (result,) = run_many([request])
    return result


def test_it_reports_a_healthy_endpoint(server: HttpServer) -> None:
    result = check(server.url("/health"))

    assert result.ok
    assert (result.kind, result.target, result.port, result.endpoint) == ("http", "127.0.0.1", server.port, "/health")
    assert (result.status_code, result.error_class, result.error) == (200, "", "")
    assert result.latency_ms == result.total_ms
    for phase in (result.dns_ms, result.connect_ms, result.ttfb_ms, result.total_ms):
        assert phase is not None and 0 <= phase < 100
    assert result.tls_ms == 0  # plain HTTP has no handshake


def test_it_works_over_ipv6() -> None:
    with HttpServer("::1") as v6:
        result = check(v6.url("/health"))

    assert (result.ok, result.target, result.status_code) == (True, "::1", 200)


def test_it_measures_time_to_first_byte(server: HttpServer) -> None:
    # Three in a row, judged by the median: a loaded CI machine can skew any one sample.
    results = run_many([HttpRequest(server.url("/slow"), 2.0)] * 3, max_in_flight=1)

    assert all(r.ok and r.ttfb_ms is not None and r.total_ms is not None for r in results)
    assert all((r.total_ms or 0.0) >= (r.ttfb_ms or 0.0) for r in results)
    ttfb = median(r.ttfb_ms or 0.0 for r in results)
    assert SLOW_DELAY_S * 1000 <= ttfb < SLOW_DELAY_S * 1000 + 15


def test_it_agrees_with_the_curl_cli_on_phases(server: HttpServer) -> None:
    url = server.url("/slow")
    write_out = "%{time_pretransfer} %{time_starttransfer} %{time_total}"
    cli_ttfb, cli_total = [], []
    for _ in range(3):  # the median of three on each side, so scheduling noise does not decide
        cli = subprocess.run(
            ["curl", "--silent", "--noproxy", "*", "--output", "/dev/null", "--write-out", write_out, url],
            check=True,
            capture_output=True,
            text=True,
        )
        pretransfer, starttransfer, total = (float(value) * 1000 for value in cli.stdout.split())
        cli_ttfb.append(starttransfer - pretransfer)
        cli_total.append(total)

    results = run_many([HttpRequest(url, 2.0)] * 3, max_in_flight=1)

    assert median(r.ttfb_ms or 0.0 for r in results) == pytest.approx(median(cli_ttfb), abs=5)
    assert median(r.total_ms or 0.0 for r in results) == pytest.approx(median(cli_total), abs=5)


def test_it_sums_the_phases_of_followed_redirects(server: HttpServer) -> None:
    # /slow-redirect answers 302 after the delay, then /health answers at once: the last hop
    # alone has a tiny TTFB, so a TTFB over the delay shows the phases are summed over hops.
    result = check(server.url("/slow-redirect"), follow_redirects=True)

    assert (result.ok, result.status_code) == (True, 200)
    assert result.ttfb_ms is not None and result.total_ms is not None
    assert SLOW_DELAY_S * 1000 <= result.ttfb_ms <= result.total_ms


def test_it_reports_a_redirect_as_is_when_not_following(server: HttpServer) -> None:
    result = check(server.url("/slow-redirect"))

    assert (result.ok, result.status_code) == (True, 302)  # 3xx is expected by default


def test_it_fails_an_unexpected_status_with_its_latency(server: HttpServer) -> None:
    result = check(server.url("/status/500"))

    assert (result.ok, result.error_class, result.status_code) == (False, "http_status", 500)
    assert result.error == "HTTP 500, expected 200-399"
    assert result.latency_ms is not None  # the exchange completed; its duration is real


def test_it_does_not_count_4xx_as_success(server: HttpServer) -> None:
    result = check(server.url("/status/404"))

    assert (result.ok, result.error_class) == (False, "http_status")


def test_it_accepts_the_statuses_the_target_expects(server: HttpServer) -> None:
    result = check(server.url("/status/500"), expected=StatusRange.parse("500"))

    assert (result.ok, result.status_code) == (True, 500)


def test_it_classifies_a_closed_port_as_refused() -> None:
    with closed_port() as port:
        result = check(f"http://127.0.0.1:{port}/health")

    assert (result.ok, result.error_class, result.status_code) == (False, "refused", None)
    assert result.latency_ms is None and result.ttfb_ms is None
    assert result.total_ms is not None  # how long it took to fail is still known


def test_it_times_out_on_a_server_that_never_answers() -> None:
    with silent_port() as port:
        result = check(f"http://127.0.0.1:{port}/health", timeout_s=0.3)

    assert (result.ok, result.error_class) == (False, "timeout")
    assert result.connect_ms is not None  # the connection itself was fine
    assert result.ttfb_ms is None
    assert result.total_ms is not None and 300 <= result.total_ms < 400


def test_it_times_out_connecting_to_a_black_hole() -> None:
    with black_hole() as port:
        result = check(f"http://127.0.0.1:{port}/health", timeout_s=0.3)

    assert (result.ok, result.error_class) == (False, "timeout")
    assert result.connect_ms is None


def test_it_classifies_a_failed_lookup_as_dns_without_traffic() -> None:
    # A name under .invalid (RFC 6761) would still be sent to the configured DNS server, which
    # is not on loopback. libcurl refuses .onion names itself (RFC 7686), sending nothing.
    begin = time.monotonic()
    result = check("http://nonexistent.onion/health")

    assert (result.ok, result.error_class) == (False, "dns")
    assert time.monotonic() - begin < 0.1


def test_it_times_the_tls_handshake(tls_server: HttpServer, server: HttpServer) -> None:
    secure = check(tls_server.url("/health"), verify_tls=False)
    plain = check(server.url("/health"))

    assert (secure.ok, secure.port) == (True, tls_server.port)
    assert secure.tls_ms is not None and secure.tls_ms > 0
    assert plain.tls_ms == 0


def test_it_classifies_an_untrusted_certificate_as_tls(tls_server: HttpServer) -> None:
    result = check(tls_server.url("/health"))

    assert (result.ok, result.error_class) == (False, "tls")
    assert "certificate" in result.error


def test_each_request_keeps_its_own_timeout_and_order(server: HttpServer) -> None:
    with silent_port() as port:
        silent = f"http://127.0.0.1:{port}/health"
        results = run_many(
            [HttpRequest(silent, 0.5), HttpRequest(server.url("/health"), 0.5), HttpRequest(silent, 0.2)],
            max_in_flight=10,
        )

    assert [r.error_class for r in results] == ["timeout", "", "timeout"]
    first, healthy, last = (r.total_ms or 0.0 for r in results)
    assert 500 <= first < 600
    assert healthy < 100  # never held back by the slow ones
    assert 200 <= last < 300


def test_it_opens_a_fresh_connection_for_every_request_despite_reusing_handles(server: HttpServer) -> None:
    before = len(server.client_ports)

    results = run_many([HttpRequest(server.url("/health"), 2.0)] * 20, max_in_flight=2)

    assert all(r.ok for r in results)
    ports = server.client_ports[before:]
    assert len(ports) == 20 and len(set(ports)) == 20


def test_it_runs_a_thousand_requests_on_little_cpu(server: HttpServer) -> None:
    requests = [HttpRequest(server.url("/health"), 5.0)] * 1000

    cpu = time.thread_time()  # this thread only: the test server's threads are not ours
    results = run_many(requests, max_in_flight=100)
    cpu = time.thread_time() - cpu

    assert all(r.ok for r in results)
    assert cpu < 1.0


def test_run_many_rejects_a_zero_bound() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        run_many([], max_in_flight=0)


def test_the_primitives_work_on_a_plain_easy_handle(server: HttpServer) -> None:
    # What the 1 Hz prober does with its own multi: configure, perform, read the phases.
    curl = pycurl.Curl()
    configure(curl, server.url("/slow"), timeout_s=2.0)
    curl.perform()
    timings = read_timings(curl)
    curl.close()

    assert timings.ttfb_ms is not None and timings.ttfb_ms >= SLOW_DELAY_S * 1000
    assert timings.tls_ms == 0


@pytest.mark.parametrize(
    ("code", "message", "os_errno", "expected"),
    [
        (6, "Could not resolve host: x", 0, "dns"),
        (7, "Failed to connect: Could not connect to server", 111, "refused"),
        (7, "Failed to connect: Could not connect to server", 113, "unreachable"),  # EHOSTUNREACH
        (7, "Failed to connect to x port 80: Network is unreachable", 0, "unreachable"),
        (7, "Failed to connect: Connection timed out", 110, "timeout"),
        (28, "Operation timed out", 0, "timeout"),
        *((code, "", 0, "tls") for code in (35, 51, 53, 54, 58, 59, 60, 77, 80, 83, 90, 91)),
        (52, "Empty reply from server", 0, "reset"),
        (56, "Recv failure: Connection reset by peer", 0, "reset"),
        (3, "URL malformed", 0, "error"),
    ],
)
def test_it_classifies_curl_errors(code: int, message: str, os_errno: int, expected: str) -> None:
    assert classify_curl_error(code, message, os_errno) == expected


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("200-399", [200, 301, 399], [199, 400, 500]),
        ("200,204,300-399", [200, 204, 302], [201, 299, 400]),
        (" 500 ", [500], [200]),
    ],
)
def test_status_ranges_contain_what_they_list(text: str, inside: list[int], outside: list[int]) -> None:
    expected = StatusRange.parse(text)

    assert all(expected.contains(status) for status in inside)
    assert not any(status in expected for status in outside)
    assert not expected.contains(None)


@pytest.mark.parametrize("text", ["", "ok", "200-", "399-200", "99", "200,,300", "600"])
def test_status_ranges_reject_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="bad expected status"):
        StatusRange.parse(text)


def test_the_default_expects_2xx_and_3xx() -> None:
    assert str(DEFAULT_EXPECTED) == "200-399"
    assert str(StatusRange.parse("200, 204,300-399")) == "200,204,300-399"


def test_results_serialise_to_flat_dicts(server: HttpServer) -> None:
    data = check(server.url("/health")).to_dict()

    assert data["kind"] == "http" and data["status_code"] == 200 and data["loss_ratio"] is None
    assert all(not isinstance(value, (dict, list)) for value in data.values())
