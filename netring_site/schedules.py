"""The periodic tasks beat fires, stored with django-celery-beat so operators edit them.

``manage.py netring_setup`` creates the missing entries; intervals come from the settings
named here the first time, and afterwards belong to the admin (``--reset`` re-applies them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    name: str
    task: str
    interval_setting: str
    queue: str = "netring.central"


SCHEDULES: list[Schedule] = [
    Schedule("registry housekeeping", "members.housekeeping", "NETRING_CLEANUP_INTERVAL"),
    Schedule("mesh round dispatch", "probes.dispatch_mesh", "NETRING_CHECK_INTERVAL"),
    Schedule("partition maintenance", "probes.maintain_partitions", "NETRING_PARTITION_INTERVAL"),
    Schedule("bandwidth round dispatch", "probes.dispatch_bandwidth", "NETRING_BANDWIDTH_TEST_INTERVAL"),
    Schedule("traceroute round dispatch", "probes.dispatch_traceroute", "NETRING_TRACEROUTE_INTERVAL"),
]
