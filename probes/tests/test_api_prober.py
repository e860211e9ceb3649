"""The prober's API: targets (staff edit them), samples, and SLA reports; client mistakes are 4xx, never 500."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rest_framework.test import APIClient

from members.models import Location
from probes import partitions
from probes.models import ProberSample, ProberTarget

TARGETS = "/api/v1/prober/targets/"
SAMPLES = "/api/v1/prober/samples/"
SLA = "/api/v1/prober/sla/"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def at(second: int) -> datetime:
    return T0 + timedelta(seconds=second)


@pytest.fixture
def samples(db: None) -> None:
    """Ten seconds of one source in us1: up, then down from second 6 on (and eu1 always up)."""
    partitions.ensure(ProberSample._meta.db_table, T0.date(), T0.date())
    ProberSample.objects.bulk_create(
        ProberSample(
            ts=at(s),
            probe_id=100 + s,
            location=location,
            source="https://a.example/",
            ok=location == "eu1" or s < 6,
            disconnected=False,
            status=200 if location == "eu1" or s < 6 else 503,
            error_class="" if location == "eu1" or s < 6 else "http_status",
            ttfb_ms=10.0 + s,
            total_ms=20.0 + s,
        )
        for s in range(10)
        for location in ("us1", "eu1")
    )


# --- SLA --------------------------------------------------------------------------------------


def test_the_sla_report_needs_a_login(anon: APIClient) -> None:
    response = anon.get(SLA, {"start": at(0).isoformat(), "end": at(10).isoformat()})

    assert response.status_code == 401
    assert "authentication required" in response.json()["detail"]


def test_the_sla_report_of_a_location(viewer_client: APIClient, samples: None) -> None:
    response = viewer_client.get(SLA, {"start": at(0).isoformat(), "end": at(10).isoformat(), "location": "us1"})

    assert response.status_code == 200, response.content
    report = response.json()
    assert (report["up_seconds"], report["down_seconds"], report["unknown_seconds"]) == (6, 4, 0)
    assert report["uptime_pct"] == pytest.approx(60.0) and report["coverage_pct"] == 100.0
    assert report["downtime_events"] == [
        {
            "start": "2024-05-01T12:00:06Z",
            "end": "2024-05-01T12:00:10Z",
            "duration_s": 4,
            "bounded_start": True,
            "bounded_end": False,
        }
    ]
    assert report["sources"][0]["availability_pct"] == pytest.approx(60.0)
    assert report["latency_ms"]["ttfb_ms"] == {"p50": 12.0, "p95": 15.0, "p99": 15.0}
    assert report["latency_ms"]["tls_ms"] is None


def test_the_sla_report_defaults_to_the_last_24_hours(viewer_client: APIClient, samples: None) -> None:
    report = viewer_client.get(SLA).json()

    assert report["seconds"] == 86400
    assert datetime.fromisoformat(report["end"]) == pytest.approx(datetime.now(UTC), abs=timedelta(seconds=5))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"start": at(10).isoformat(), "end": at(0).isoformat()}, "start must be before end"),
        ({"start": at(0).isoformat(), "end": at(0).isoformat()}, "start must be before end"),
        ({"start": at(0).isoformat(), "end": (at(0) + timedelta(days=32)).isoformat()}, "at most 31 days"),
        ({"start": "yesterday"}, "Datetime has wrong format"),
        ({"end": "0001-01-01T00:00:00Z"}, "out of range"),
        ({"start": "9999-12-31T23:00:00Z"}, "start must be before end"),
        ({"merge_unknown_gap": "-1"}, "greater than or equal to 0"),
        ({"merge_unknown_gap": "many"}, "valid integer"),
    ],
)
def test_a_bad_sla_range_is_a_400_that_says_why(viewer_client: APIClient, query: dict[str, str], message: str) -> None:
    response = viewer_client.get(SLA, query)

    assert response.status_code == 400, response.content
    assert message in str(response.json())


# --- Samples ----------------------------------------------------------------------------------


def test_samples_are_listed_newest_first_with_filters(viewer_client: APIClient, samples: None) -> None:
    response = viewer_client.get(SAMPLES, {"since": at(0).isoformat(), "location": "us1", "failures": "true"})

    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [r["probe_id"] for r in results] == [109, 108, 107, 106]
    assert results[0] | {"ts": None} == {
        "ts": None,
        "probe_id": 109,
        "location": "us1",
        "source": "https://a.example/",
        "target_id": None,
        "ok": False,
        "disconnected": False,
        "status": 503,
        "error_class": "http_status",
        "error": "",
        "dns_ms": None,
        "connect_ms": None,
        "tls_ms": None,
        "ttfb_ms": 19.0,
        "total_ms": 29.0,
    }


def test_samples_default_to_the_last_ten_minutes(viewer_client: APIClient, samples: None) -> None:
    assert viewer_client.get(SAMPLES).json()["results"] == []


@pytest.mark.parametrize("query", [{"since": "soon"}, {"until": "2024-13-01"}, {"failures": "maybe"}])
def test_bad_sample_filters_are_400(viewer_client: APIClient, query: dict[str, str]) -> None:
    assert viewer_client.get(SAMPLES, query).status_code == 400


def test_samples_need_a_login(anon: APIClient) -> None:
    assert anon.get(SAMPLES).status_code == 401


# --- Targets ----------------------------------------------------------------------------------


def test_staff_add_a_target(staff_client: APIClient) -> None:
    Location.objects.create(name="us1")

    response = staff_client.post(
        TARGETS,
        {"name": "example", "url": "https://example.com/", "locations": ["us1"], "expected_status": "200,204"},
        format="json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body | {"id": None, "updated_at": None} == {
        "id": None,
        "updated_at": None,
        "name": "example",
        "url": "https://example.com/",
        "enabled": True,
        "group": "",
        "locations": ["us1"],
        "timeout_s": 1.5,
        "follow_redirects": True,
        "expected_status": "200,204",
        "verify_tls": True,
    }
    target = ProberTarget.objects.get(pk=body["id"])
    assert list(target.locations.values_list("name", flat=True)) == ["us1"]


def test_staff_disable_and_delete_a_target(staff_client: APIClient) -> None:
    target = ProberTarget.objects.create(name="example", url="https://example.com/")

    patched = staff_client.patch(f"{TARGETS}{target.pk}/", {"enabled": False}, format="json")
    deleted = staff_client.delete(f"{TARGETS}{target.pk}/")

    assert patched.status_code == 200 and patched.json()["enabled"] is False
    assert deleted.status_code == 204 and not ProberTarget.objects.exists()


def test_users_who_are_not_staff_read_targets_but_cannot_change_them(viewer_client: APIClient) -> None:
    target = ProberTarget.objects.create(name="example", url="https://example.com/")

    assert viewer_client.get(TARGETS).json()["results"][0]["name"] == "example"
    assert viewer_client.post(TARGETS, {"name": "x", "url": "https://x.example/"}, format="json").status_code == 403
    assert viewer_client.patch(f"{TARGETS}{target.pk}/", {"enabled": False}, format="json").status_code == 403
    assert viewer_client.delete(f"{TARGETS}{target.pk}/").status_code == 403
    assert ProberTarget.objects.get().enabled


def test_targets_need_a_login(anon: APIClient) -> None:
    assert anon.get(TARGETS).status_code == 401
    assert anon.post(TARGETS, {"name": "x", "url": "https://x.example/"}, format="json").status_code == 401


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"url": "ftp://example.com/"}, "url", "only http:// and https://"),
        ({"url": "file:///etc/passwd"}, "url", "valid URL"),
        ({"url": "javascript:alert(1)"}, "url", "valid URL"),
        ({"url": "https://"}, "url", "valid URL"),
        ({"expected_status": "ok"}, "expected_status", "not a status or a range"),
        ({"expected_status": "200-"}, "expected_status", "not a status or a range"),
        ({"expected_status": "600"}, "expected_status", "within 100-599"),
        ({"expected_status": "399-200"}, "expected_status", "within 100-599"),
        ({"timeout_s": 0}, "timeout_s", "greater than or equal to 0.1"),
        ({"timeout_s": 31}, "timeout_s", "less than or equal to 30"),
        ({"locations": ["nowhere"]}, "locations", "does not exist"),
        ({"locations": "us1"}, "locations", "Expected a list"),
        ({"enabled": "perhaps"}, "enabled", "Must be a valid boolean"),
        ({"name": ""}, "name", "may not be blank"),
        ({"name": "x" * 101}, "name", "no more than 100"),
    ],
)
def test_a_bad_target_is_a_400_that_names_the_field(
    staff_client: APIClient, fields: dict[str, Any], field: str, message: str
) -> None:
    body = {"name": "example", "url": "https://example.com/", **fields}

    response = staff_client.post(TARGETS, body, format="json")

    assert response.status_code == 400, response.content
    assert message in str(response.json()[field])
    assert not ProberTarget.objects.exists()


def test_a_duplicate_name_is_a_400(staff_client: APIClient) -> None:
    ProberTarget.objects.create(name="example", url="https://example.com/")

    response = staff_client.post(TARGETS, {"name": "example", "url": "https://other.example/"}, format="json")

    assert response.status_code == 400 and "name" in response.json()


@pytest.mark.parametrize(
    "body",
    [
        '["not", "an", "object"]',
        '"text"',
        "{",
        "null",
        '{"name": "\\ud800", "url": "https://x.example/"}',
        '{"name": "x", "url": "https://x.example/", "timeout_s": NaN}',
        '{"name": "x", "url": "https://x.example/", "timeout_s": 1e999}',
    ],
)
def test_a_malformed_body_is_a_400(staff_client: APIClient, body: str) -> None:
    response = staff_client.post(TARGETS, body, content_type="application/json")

    assert response.status_code == 400, response.content


@pytest.mark.parametrize(
    ("start", "end"),
    [("0001-01-01T00:00:00Z", "0001-01-02T00:00:00Z"), ("9999-12-30T00:00:00Z", "9999-12-31T23:59:59Z")],
)
def test_an_sla_range_at_the_ends_of_the_calendar_is_answered(viewer_client: APIClient, start: str, end: str) -> None:
    response = viewer_client.get(SLA, {"start": start, "end": end})

    assert response.status_code == 200, response.content
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    assert response.json()["unknown_seconds"] == seconds
