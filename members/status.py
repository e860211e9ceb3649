"""Member status from the time since the last heartbeat. No Django import.

online        last heartbeat younger than ``stale_after``
stale         older than ``stale_after`` but younger than ``offline_after``
offline       older than ``offline_after``
deregistered  shut down gracefully (kept visible, then purged)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class Status(enum.StrEnum):
    ONLINE = "online"
    STALE = "stale"
    OFFLINE = "offline"
    DEREGISTERED = "deregistered"


# The seed's colours: green, yellow, red, purple.
STATUS_COLOURS = {
    Status.ONLINE: "#22c55e",
    Status.STALE: "#eab308",
    Status.OFFLINE: "#ef4444",
    Status.DEREGISTERED: "#a855f7",
}


@dataclass(frozen=True)
class Thresholds:
    stale_after: float
    offline_after: float


def member_status(
    last_seen: datetime, deregistered_at: datetime | None, now: datetime, thresholds: Thresholds
) -> Status:
    if deregistered_at is not None:
        return Status.DEREGISTERED
    age = (now - last_seen).total_seconds()
    if age < thresholds.stale_after:
        return Status.ONLINE
    if age < thresholds.offline_after:
        return Status.STALE
    return Status.OFFLINE
