"""The mesh query API: latest state of every pair, the location matrix, and history over a range."""

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from probes import services
from probes.checks.result import CheckResult

LATEST, MATRIX, HISTORY = "/api/v1/mesh/latest/", "/api/v1/mesh/matrix/", "/api/v1/mesh/history/"
US1, EU1, AP1 = (str(uuid.uuid5(uuid.NAMESPACE_DNS, name)) for name in ("us1", "eu1", "ap1"))
WHERE = {US1: "us1", EU1: "eu1", AP1: "ap1"}
IPS = {US1: "10.0.1.1", EU1: "10.0.2.1", AP1: "10.0.3.1"}


def checks(target: str, ok: bool = True) -> list[CheckResult]:
    ip = IPS[target]
    return [
        CheckResult(kind="tcp", target=ip, port=8757, target_id=target, ok=ok, latency_ms=2.0 if ok else None,
                    error_class="" if ok else "timeout", started_at=0),
        CheckResult(kind="http", target=ip, port=8757, endpoint="/health", target_id=target, ok=ok,
                    status_code=200 if ok else None, latency_ms=5.0 if ok else None,
                    error_class="" if ok else "timeout", started_at=0),
    ]  # fmt: skip


def store(location: str, instance: str, started: datetime, number: int, results: list[CheckResult]) -> None:
    services.store_round(services.RoundSource(location, instance, number, started), results, WHERE)


@pytest.fixture
def mesh(db: None) -> datetime:
    """Two rounds: two hours ago all well, five minutes ago ap1 unreachable from us1."""
    now = timezone.now()
    for started, number, ap1_ok in ((now - timedelta(hours=2), 1, True), (now - timedelta(minutes=5), 2, False)):
        store("us1", US1, started, number, checks(EU1) + checks(AP1, ok=ap1_ok))
        store("eu1", EU1, started, number, checks(US1) + checks(AP1))
    return now


def rows(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content
    body = response.json()
    return list(body["results"] if isinstance(body, dict) else body)


# --- who may read ---------------------------------------------------------------------------


@pytest.mark.parametrize("url", [LATEST, MATRIX, HISTORY])
def test_anonymous_reads_are_refused(db: None, anon: APIClient, url: str) -> None:
    response = anon.get(url)
    assert response.status_code in (401, 403)
    assert "authentication required" in response.json()["detail"]


@pytest.mark.parametrize("url", [LATEST, MATRIX, HISTORY])
def test_the_api_is_read_only(staff_client: APIClient, url: str) -> None:
    assert staff_client.post(url, {}, format="json").status_code == 405


# --- latest ---------------------------------------------------------------------------------


def test_latest_has_one_row_per_source_target_and_check(mesh: datetime, viewer_client: APIClient) -> None:
    latest = rows(viewer_client.get(LATEST))

    assert len(latest) == 8
    assert {(r["source_location"], r["target_location"], r["kind"]) for r in latest} >= {
        ("us1", "eu1", "tcp"),
        ("us1", "ap1", "http"),
        ("eu1", "us1", "tcp"),
    }
    assert {r["round_id"] for r in latest} == {2}
    failed = [r for r in latest if not r["ok"]]
    assert {(r["source_location"], r["target_instance"], r["error_class"]) for r in failed} == {("us1", AP1, "timeout")}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("source_location=us1", 4),
        ("target_location=ap1", 4),
        ("source_location=us1&target_location=ap1", 2),
        ("kind=http", 4),
        ("failures=true", 2),
        ("failures=TRUE", 2),
        ("failures=1", 2),
        ("failures=false", 8),
        (f"target_instance={AP1}", 4),
        ("source_location=nowhere", 0),
    ],
)
def test_latest_filters(mesh: datetime, viewer_client: APIClient, query: str, expected: int) -> None:
    assert len(rows(viewer_client.get(f"{LATEST}?{query}"))) == expected


BAD_FILTERS = ["kind=smoke", "failures=perhaps", "failures=ture", "target_instance=not-a-uuid", "source_location=%00"]


@pytest.mark.parametrize(
    ("url", "query"),
    [
        *((url, query) for url in (LATEST, MATRIX, HISTORY) for query in BAD_FILTERS),
        (HISTORY, "since=yesterday"),
        (HISTORY, "until=2026-13-01"),
    ],
)
def test_bad_filter_values_are_a_400_not_a_500(mesh: datetime, viewer_client: APIClient, url: str, query: str) -> None:
    response = viewer_client.get(f"{url}?{query}")
    assert response.status_code == 400, response.content
    assert response.json()


def test_a_page_is_bounded_whatever_limit_is_asked(mesh: datetime, viewer_client: APIClient) -> None:
    response = viewer_client.get(f"{LATEST}?limit=1000000000&offset=2")
    assert response.status_code == 200
    assert response.json()["count"] == 8 and len(response.json()["results"]) == 6


# --- matrix ---------------------------------------------------------------------------------


def test_the_matrix_summarises_the_latest_results_per_location_pair_and_check(
    mesh: datetime, viewer_client: APIClient
) -> None:
    cells = {(c["source_location"], c["target_location"], c["kind"]): c for c in rows(viewer_client.get(MATRIX))}

    assert set(cells) == {(s, t, k) for s, t in [("us1", "eu1"), ("us1", "ap1"), ("eu1", "us1"), ("eu1", "ap1")]
                          for k in ("tcp", "http")}  # fmt: skip
    bad = cells[("us1", "ap1", "tcp")]
    assert (bad["checks"], bad["failed"], bad["latency_ms_avg"]) == (1, 1, None)
    good = cells[("eu1", "us1", "http")]
    assert (good["checks"], good["failed"], good["latency_ms_avg"], good["latency_ms_max"]) == (1, 0, 5.0, 5.0)


def test_the_matrix_takes_the_same_filters(mesh: datetime, viewer_client: APIClient) -> None:
    cells = rows(viewer_client.get(f"{MATRIX}?kind=tcp&failures=true"))
    assert [(c["source_location"], c["target_location"], c["failed"]) for c in cells] == [("us1", "ap1", 1)]


# --- history --------------------------------------------------------------------------------


def test_history_defaults_to_the_last_hour_newest_first(mesh: datetime, viewer_client: APIClient) -> None:
    recent = rows(viewer_client.get(HISTORY))
    assert len(recent) == 8 and {r["round_id"] for r in recent} == {2}


def test_history_of_one_pair_over_a_range(mesh: datetime, viewer_client: APIClient) -> None:
    since = (mesh - timedelta(hours=3)).isoformat()
    query = {"since": since, "source_location": "us1", "target_instance": AP1, "kind": "tcp"}

    history = rows(viewer_client.get(HISTORY, query))

    assert [(r["round_id"], r["ok"]) for r in history] == [(2, False), (1, True)]
    assert rows(viewer_client.get(HISTORY, {**query, "failures": "true"}))[0]["round_id"] == 2


def test_history_ranges_are_bounded_to_31_days(mesh: datetime, viewer_client: APIClient) -> None:
    long_ago = (mesh - timedelta(days=40)).isoformat()
    response = viewer_client.get(HISTORY, {"since": long_ago})
    assert response.status_code == 400
    assert "31 days" in str(response.json())

    until = (mesh - timedelta(days=9)).isoformat()
    assert rows(viewer_client.get(HISTORY, {"since": long_ago, "until": until})) == []


def test_an_inverted_range_is_empty_not_an_error(mesh: datetime, viewer_client: APIClient) -> None:
    query = {"since": mesh.isoformat(), "until": (mesh - timedelta(hours=3)).isoformat()}
    assert rows(viewer_client.get(HISTORY, query)) == []


# --- query counts ---------------------------------------------------------------------------


def queries(client: APIClient, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


@pytest.mark.parametrize("url", [LATEST, MATRIX, f"{HISTORY}?source_location=us1", f"{LATEST}?failures=true"])
def test_queries_do_not_grow_with_the_mesh(
    mesh: datetime, viewer_client: APIClient, url: str, django_assert_max_num_queries: Callable[..., Any]
) -> None:
    small = queries(viewer_client, url)
    now = timezone.now()
    for n in range(100):
        peer = str(uuid.uuid4())
        WHERE[peer], IPS[peer] = "sa1", f"10.9.{n // 250}.{n % 250}"
        store("us1", US1, now - timedelta(minutes=1), 3, checks(peer, ok=n % 2 == 0))

    with django_assert_max_num_queries(small):
        viewer_client.get(url)
    assert small <= 4
