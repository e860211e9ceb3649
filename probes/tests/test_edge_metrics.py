"""The edge's /metrics: the seed's names and labels, and series of departed targets removed."""

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from probes.checks.result import CheckResult
from probes.edge_metrics import MeshMetrics

SOURCE = ("us1", "11111111-1111-1111-1111-111111111111")
EU, AP = "22222222-2222-2222-2222-222222222222", "33333333-3333-3333-3333-333333333333"
WHERE = {EU: "eu1", AP: "ap1"}


def round_results(*targets: str, eu_ok: bool = True) -> list[CheckResult]:
    results: list[CheckResult] = []
    for target in targets:
        ip = "10.0.2.1" if target == EU else "10.0.3.1"
        ok = eu_ok if target == EU else True
        results += [
            CheckResult(kind="tcp", target=ip, port=8757, target_id=target, ok=ok,
                        latency_ms=1.5 if ok else None, error_class="" if ok else "timeout", started_at=0),
            CheckResult(kind="http", target=ip, port=8757, endpoint="/health", target_id=target, ok=ok,
                        latency_ms=4.0 if ok else None, status_code=200 if ok else None, started_at=0),
            CheckResult(kind="icmp", target=ip, port=None, target_id=target, ok=True, latency_ms=0.5,
                        loss_ratio=0.25, jitter_ms=0.1, packets_sent=4, packets_received=3, started_at=0),
        ]  # fmt: skip
    return results


def samples(metrics: MeshMetrics) -> list[Sample]:
    text = generate_latest(metrics.registry).decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def find(metrics: MeshMetrics, name: str, **labels: str) -> list[Sample]:
    return [s for s in samples(metrics) if s.name == name and labels.items() <= s.labels.items()]


def value(metrics: MeshMetrics, name: str, **labels: str) -> float:
    (sample,) = find(metrics, name, **labels)
    return sample.value


def test_a_round_exports_the_seeds_metrics_with_the_seeds_labels() -> None:
    metrics = MeshMetrics()

    metrics.observe_round(*SOURCE, round_results(EU, AP), WHERE, seconds=0.8, finished_at=1_700_000_000.0)

    (tcp,) = find(metrics, "netring_connectivity_tcp", target_instance=EU)
    assert tcp.labels == {
        "source_location": "us1",
        "source_instance": SOURCE[1],
        "target_location": "eu1",
        "target_instance": EU,
        "target_ip": "10.0.2.1",
    }
    assert tcp.value == 1.0
    (http,) = find(metrics, "netring_connectivity_http", target_instance=AP)
    assert http.labels == {
        "source_location": "us1",
        "source_instance": SOURCE[1],
        "target_location": "ap1",
        "target_instance": AP,
        "target_ip": "10.0.3.1",
        "endpoint": "/health",
    }
    assert http.value == 1.0
    assert value(metrics, "netring_members_total") == 2
    assert value(metrics, "netring_member_last_seen_timestamp", location="eu1", instance_id=EU) == 1_700_000_000.0
    # Histogram by check type and target location, as the seed's alert rules expect.
    assert value(metrics, "netring_check_duration_seconds_count", check_type="tcp", target_location="eu1") == 1
    assert value(metrics, "netring_check_duration_seconds_sum", check_type="http", target_location="ap1") == 0.004
    buckets = find(metrics, "netring_check_duration_seconds_bucket", check_type="tcp", target_location="eu1")
    assert {s.labels["le"] for s in buckets} >= {"0.001", "0.0025", "+Inf"}
    # Latency and ICMP gauges.
    assert value(metrics, "netring_check_latency_ms", target_instance=EU, check_type="tcp") == 1.5
    assert value(metrics, "netring_connectivity_icmp", target_instance=AP) == 1.0
    assert value(metrics, "netring_icmp_loss_ratio", target_instance=EU) == 0.25
    assert value(metrics, "netring_icmp_jitter_ms", target_instance=EU) == 0.1
    assert value(metrics, "netring_mesh_round_duration_seconds", source_location="us1") == 0.8


def test_a_failed_check_reads_zero_and_keeps_the_last_time_the_target_was_reached() -> None:
    metrics = MeshMetrics()
    metrics.observe_round(*SOURCE, round_results(EU), WHERE, seconds=1, finished_at=1000.0)

    metrics.observe_round(*SOURCE, round_results(EU, eu_ok=False)[:2], WHERE, seconds=1, finished_at=1060.0)

    assert value(metrics, "netring_connectivity_tcp", target_instance=EU) == 0.0
    assert value(metrics, "netring_connectivity_http", target_instance=EU) == 0.0
    # No latency for a check that failed: the series goes away rather than showing the old figure.
    assert find(metrics, "netring_check_latency_ms", target_instance=EU, check_type="tcp") == []
    assert value(metrics, "netring_member_last_seen_timestamp", instance_id=EU) == 1000.0


def test_a_target_that_left_the_mesh_disappears_from_the_exposition() -> None:
    metrics = MeshMetrics()
    metrics.observe_round(*SOURCE, round_results(EU, AP), WHERE, seconds=1, finished_at=1000.0)
    assert find(metrics, "netring_connectivity_tcp", target_instance=AP)

    metrics.observe_round(*SOURCE, round_results(EU), WHERE, seconds=1, finished_at=1060.0)

    left = [s for s in samples(metrics) if AP in s.labels.values()]
    assert left == []
    assert value(metrics, "netring_members_total") == 1
    assert value(metrics, "netring_connectivity_tcp", target_instance=EU) == 1.0
    # The histogram is per target location: a location with no target left goes too.
    assert find(metrics, "netring_check_duration_seconds_count", target_location="ap1") == []
    assert find(metrics, "netring_check_duration_seconds_count", target_location="eu1")


def test_an_empty_round_empties_the_mesh() -> None:
    metrics = MeshMetrics()
    metrics.observe_round(*SOURCE, round_results(EU, AP), WHERE, seconds=1, finished_at=1000.0)

    metrics.observe_round(*SOURCE, [], {}, seconds=0, finished_at=1060.0)

    assert [s.name for s in samples(metrics) if "target_instance" in s.labels or "instance_id" in s.labels] == []
    assert value(metrics, "netring_members_total") == 0
