"""The CurlMulti transport: phase arithmetic, error classes, and real transfers on 127.0.0.1."""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from typing import get_args

import pycurl
import pytest

from probes.checks.http import classify_curl_error
from probes.checks.result import ErrorClass
from probes.prober.curl_transport import CurlMultiTransport, completion_for
from probes.prober.testing import closed_port, local_http_server
from probes.prober.transport import (
    ABORTED,
    DNS,
    ERROR,
    REFUSED,
    RESET,
    STATUS,
    TIMEOUT,
    TLS,
    UNREACHABLE,
    Completion,
    Phases,
    SampleKey,
)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with local_http_server() as url:
        yield url


def wait_all(transport: CurlMultiTransport, limit: float = 5.0) -> list[Completion]:
    done: list[Completion] = []
    deadline = time.monotonic() + limit
    while transport.in_flight() and time.monotonic() < deadline:
        done.extend(transport.poll(0.1))
    return done


class FakeHandle:
    """A finished easy handle as ``completion_for`` reads it: curl's infos, offsets in us."""

    def __init__(self, offsets: tuple[int, int, int, int, int, int], status: int = 0, os_errno: int = 0) -> None:
        names = ("NAMELOOKUP", "CONNECT", "APPCONNECT", "PRETRANSFER", "STARTTRANSFER", "TOTAL")
        self.info: dict[int, object] = {getattr(pycurl, f"{n}_TIME_T"): v for n, v in zip(names, offsets, strict=True)}
        self.info |= {pycurl.RESPONSE_CODE: status, pycurl.OS_ERRNO: os_errno, pycurl.PRIMARY_IP: "192.0.2.1"}

    def getinfo(self, info: int) -> object:
        return self.info[info]


KEY = SampleKey(1, "s")


def test_phases_are_durations_not_curl_offsets() -> None:
    # curl offsets (us): resolved at 1 ms, connected at 3 ms, TLS done at 10 ms, request sent at
    # 10.5 ms, first byte at 40.5 ms, done at 42 ms.
    done = completion_for(FakeHandle((1_000, 3_000, 10_000, 10_500, 40_500, 42_000), status=200), KEY, 0, "")
    assert done.phases == Phases(dns_ms=1.0, connect_ms=2.0, tls_ms=7.0, ttfb_ms=30.0, total_ms=42.0)
    assert (done.status, done.error_class, done.error, done.remote_ip) == (200, None, None, "192.0.2.1")


def test_plain_http_has_a_zero_tls_phase_and_unreached_phases_are_none() -> None:
    plain = completion_for(FakeHandle((1_000, 3_000, 0, 3_100, 5_100, 6_000), status=200), KEY, 0, "")
    assert plain.phases.tls_ms == 0.0
    refused = completion_for(FakeHandle((1_000, 0, 0, 0, 0, 1_200), os_errno=111), KEY, 7, "Failed to connect")
    p = refused.phases
    assert (p.connect_ms, p.tls_ms, p.ttfb_ms, p.total_ms) == (None, None, None, 1.2)
    assert (refused.status, refused.error_class, refused.error) == (None, REFUSED, "Failed to connect")


def test_a_failed_transfer_reports_no_ttfb_even_though_curl_stamps_one() -> None:
    # Timed out after the request went out: libcurl stamps pretransfer/starttransfer at the
    # moment of failure, which is not a first byte.
    timeout = completion_for(FakeHandle((1_000, 2_000, 0, 2_100, 500_000, 500_000)), KEY, 28, "Operation timed out")
    assert timeout.phases.ttfb_ms is None and timeout.phases.tls_ms is None
    assert timeout.phases.total_ms == 500.0 and timeout.error_class == TIMEOUT


@pytest.mark.parametrize(
    ("code", "os_errno", "expected"),
    [
        (6, 0, DNS),
        (5, 0, DNS),
        (7, errno.ECONNREFUSED, REFUSED),
        (7, errno.EHOSTUNREACH, UNREACHABLE),
        (28, 0, TIMEOUT),
        (35, 0, TLS),
        (51, 0, TLS),
        (60, 0, TLS),
        (52, 0, RESET),
        (56, 0, RESET),
        (1, 0, ERROR),
    ],
)
def test_curl_errors_map_to_the_mesh_checks_error_classes(code: int, os_errno: int, expected: str) -> None:
    done = completion_for(FakeHandle((0, 0, 0, 0, 0, 1_000), os_errno=os_errno), KEY, code, "")
    assert done.error_class == expected == classify_curl_error(code, "", os_errno)
    assert done.error == f"curl error {code}"


def test_every_transfer_error_class_is_one_the_mesh_results_use() -> None:
    assert {DNS, REFUSED, UNREACHABLE, TIMEOUT, TLS, RESET, ERROR, STATUS} <= set(get_args(ErrorClass))


def test_a_real_transfer_reports_status_and_phases(base_url: str) -> None:
    transport = CurlMultiTransport()
    transport.start(SampleKey(1, "ok"), f"{base_url}/", timeout=2.0)
    transport.start(SampleKey(1, "missing"), f"{base_url}/status/404", timeout=2.0)
    done = {c.key.source: c for c in wait_all(transport)}
    ok, missing = done["ok"], done["missing"]
    assert ok.status == 200 and ok.error_class is None
    assert ok.remote_ip == "127.0.0.1"
    assert ok.phases.tls_ms == 0.0
    assert ok.phases.connect_ms is not None and ok.phases.connect_ms >= 0
    assert ok.phases.ttfb_ms is not None and ok.phases.ttfb_ms > 0
    assert ok.phases.total_ms is not None and ok.phases.total_ms >= ok.phases.ttfb_ms
    assert missing.status == 404 and missing.error_class is None  # success is the loop's call
    transport.close()


def test_refused_and_timed_out_transfers_are_classified(base_url: str) -> None:
    transport = CurlMultiTransport()
    transport.start(SampleKey(1, "refused"), f"http://127.0.0.1:{closed_port()}/", timeout=2.0)
    transport.start(SampleKey(1, "slow"), f"{base_url}/?delay=1", timeout=0.2)
    done = {c.key.source: c for c in wait_all(transport)}
    assert done["refused"].error_class == REFUSED
    assert done["refused"].status is None
    assert done["slow"].error_class == TIMEOUT
    assert done["slow"].phases.total_ms == pytest.approx(200, abs=60)
    transport.close()


def test_every_sample_opens_a_new_connection(base_url: str) -> None:
    transport = CurlMultiTransport()
    for probe_id in range(3):
        transport.start(SampleKey(probe_id, "ok"), f"{base_url}/", timeout=2.0)
        (done,) = wait_all(transport)
        # A reused connection would report a connect phase of exactly 0 after the first one.
        assert done.phases.connect_ms is not None and done.phases.connect_ms > 0
    transport.close()


def test_redirects_are_followed_only_when_the_target_asks(base_url: str) -> None:
    transport = CurlMultiTransport()
    transport.start(SampleKey(1, "follow"), f"{base_url}/redirect", timeout=2.0, follow_redirects=True)
    transport.start(SampleKey(1, "stay"), f"{base_url}/redirect", timeout=2.0)
    done = {c.key.source: c.status for c in wait_all(transport)}
    assert done == {"follow": 200, "stay": 302}
    transport.close()


def test_only_http_and_https_urls_are_fetched() -> None:
    transport = CurlMultiTransport()
    transport.start(SampleKey(1, "file"), "file:///etc/hostname", timeout=1.0)
    (done,) = wait_all(transport)
    assert done.error_class == ERROR  # UNSUPPORTED_PROTOCOL, nothing read from disk
    transport.close()


def test_abort_all_reports_every_in_flight_transfer(base_url: str) -> None:
    transport = CurlMultiTransport()
    transport.start(SampleKey(1, "slow"), f"{base_url}/?delay=1", timeout=2.0)
    assert transport.poll(0.05) == []
    (aborted,) = transport.abort_all()
    assert aborted.key == SampleKey(1, "slow") and aborted.error_class == ABORTED
    assert transport.in_flight() == 0
    transport.close()
