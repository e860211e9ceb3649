"""Edge code run inside lab namespaces (``Netns.call``, ``Lab.spawn``), with Django set up first.

A namespace cannot reach the test's PostgreSQL or Redis (they listen on the root namespace's
loopback), so the lab tests measure inside the namespace with the edge's own functions and
store the results from the test process through the same services the edge tasks call.
Django code is imported inside the functions: ``Netns.call`` unpickles them in a fresh
interpreter, before anything configured Django.

    python -m probes.tests.labcalls serve --host 10.231.3.2 --port 8757 --instance <uuid>

serves the member endpoint exactly as an edge worker wires it (``probes.edge.member_endpoint``)
until its stdin closes (the lab is gone).
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from typing import Any

import django


def _django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netring_site.settings")
    django.setup()


def trace_targets(targets: list[dict[str, Any]], **options: Any) -> Any:
    _django()
    from probes import traceroute_services

    return traceroute_services.trace_targets(targets, **options)


def measure_pair(target: dict[str, Any], duration_s: float, max_bytes: int, token: str | None) -> Any:
    _django()
    from probes import bandwidth_services

    return bandwidth_services.measure_pair(target, bandwidth_services.BandwidthOptions(duration_s, max_bytes), token)


def serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--instance", required=True)
    args = parser.parse_args(argv)
    _django()
    from probes import edge

    state = edge.EdgeState(location="lab", ip=args.host, port=args.port, instance_id=uuid.UUID(args.instance))
    endpoint = edge.member_endpoint(state, args.host, args.port)
    endpoint.start()
    print("ready", flush=True)
    sys.stdin.read()  # until the lab closes our stdin
    endpoint.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2:])
