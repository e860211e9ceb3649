"""The one result shape every check returns, whatever the protocol."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

CheckKind = Literal["tcp", "http", "icmp"]

# Stored as-is in the ``error_class`` column; "" means the check succeeded.
ErrorClass = Literal[
    "",
    "refused",
    "timeout",
    "unreachable",
    "dns",
    "tls",
    "http_status",  # the transfer completed with a status the target is not expected to answer
    "reset",
    "unavailable",  # the check could not run here at all (e.g. no privilege to send ICMP)
    "error",
]

JsonScalar = str | int | float | bool | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """One check of one target.

    Fields that do not apply to a kind stay None (an HTTP check has no loss ratio, a TCP check
    no status code), so a stored row never pretends to have measured something it did not.
    Durations are milliseconds on the monotonic clock; ``started_at`` is wall-clock epoch
    seconds, only to place the sample in time.
    """

    kind: CheckKind
    target: str  # host name or IP address as given
    port: int | None  # None for ICMP
    endpoint: str = ""  # HTTP path (with query), "" for TCP and ICMP
    target_id: str = ""  # who the target is (a member's instance_id), attached by the caller
    ok: bool
    # The headline figure: connect time for TCP, total time for HTTP, average RTT for ICMP.
    latency_ms: float | None = None
    error_class: ErrorClass = ""
    error: str = ""
    status_code: int | None = None
    # HTTP phase durations (not curl's cumulative offsets).
    dns_ms: float | None = None
    connect_ms: float | None = None
    tls_ms: float | None = None
    ttfb_ms: float | None = None
    total_ms: float | None = None
    # ICMP statistics.
    rtt_min_ms: float | None = None
    rtt_avg_ms: float | None = None
    rtt_max_ms: float | None = None
    loss_ratio: float | None = None  # 0..1
    jitter_ms: float | None = None
    packets_sent: int | None = None
    packets_received: int | None = None
    started_at: float

    def to_dict(self) -> dict[str, JsonScalar]:
        # Every field is a scalar, so a flat copy is enough (and cheaper than dataclasses.asdict).
        return {field.name: getattr(self, field.name) for field in fields(self)}
