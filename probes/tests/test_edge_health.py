"""The member endpoint's /health says what the edge cannot reach, instead of exiting."""

from __future__ import annotations

import time
import uuid
from typing import Any

from netring_site.embedded import free_port
from probes.edge import EdgeState, MemberEndpoint
from probes.edge_metrics import MeshMetrics
from probes.tests.loopback import black_hole


def _endpoint(registry: str = "registered") -> MemberEndpoint:
    state = EdgeState(location="us1", ip="127.0.0.1", port=0, instance_id=uuid.uuid4(), registry=registry)
    endpoint = MemberEndpoint(state, MeshMetrics(), "127.0.0.1", 0)
    endpoint.server.server_close()
    return endpoint


def test_it_is_healthy_when_registry_and_broker_answer() -> None:
    endpoint = _endpoint()
    assert endpoint.check_broker() == "ok"
    status, body = endpoint.health()
    assert status == 200
    assert body["status"] == "healthy"
    assert body["broker"] == "ok"
    assert body["location"] == "us1"


def test_it_reports_an_unreachable_broker(settings: Any) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    endpoint = _endpoint()
    endpoint.check_broker()
    status, body = endpoint.health()
    assert status == 503
    assert body["status"] == "degraded"
    assert body["broker"].startswith("unreachable: ")


def test_it_reports_an_unreachable_registry() -> None:
    status, body = _endpoint(registry="unreachable: OperationalError: connection refused").health()
    assert status == 503
    assert body["registry"].startswith("unreachable")


def test_a_healthy_member_answers_without_waiting_for_the_broker(settings: Any) -> None:
    # Peers time /health: a broker round trip must not show up as this member's latency.
    endpoint = _endpoint()
    assert endpoint.check_broker() == "ok"
    with black_hole() as port:
        settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"  # the broker stops answering
        began = time.monotonic()
        status, body = endpoint.health()
        answered = time.monotonic() - began

        assert answered < 0.05
        assert (status, body["broker"]) == (200, "ok")  # until the background check runs
        assert endpoint.check_broker().startswith("unreachable: TimeoutError")
        assert endpoint.health()[1]["broker"].startswith("unreachable: TimeoutError")


def test_a_degraded_member_sees_its_broker_come_back_at_the_next_request(settings: Any) -> None:
    url = settings.REDIS_URL
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    endpoint = _endpoint()
    assert endpoint.check_broker().startswith("unreachable")
    settings.REDIS_URL = url
    time.sleep(0.5)  # the degraded state is looked at again at most every half second

    assert endpoint.health()[0] == 200
