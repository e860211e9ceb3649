"""The interface between the prober loop and whatever performs the transfers.

The loop only starts transfers and polls for finished ones, so one pycurl ``CurlMulti``
(``curl_transport.CurlMultiTransport``) drives every in-flight sample from a single thread, and
the tests drive the same loop with an in-memory fake (``testing.FakeTransport``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Error classes, stored in the ``error_class`` column. The transfer classes are the mesh
# checks' (``probes.checks.result.ErrorClass``, produced by ``probes.checks.http``), so a
# refused connect or an unexpected status reads the same in mesh results and prober samples;
# ``overload``, ``not_started``, ``aborted`` and ``missed`` exist only in the prober.
# docs/prober.md lists them all.
DNS = "dns"
REFUSED = "refused"
UNREACHABLE = "unreachable"
TIMEOUT = "timeout"
TLS = "tls"
RESET = "reset"
ERROR = "error"
STATUS = "http_status"  # transfer completed, but with a status the target does not expect
OVERLOAD = "overload"  # not started: the in-flight bound was reached
NOT_STARTED = "not_started"  # the transport refused to start the transfer (out of sockets...)
ABORTED = "aborted"  # still in flight when the prober stopped and the drain deadline passed
MISSED = "missed"  # a placeholder for a tick that never ran (``ok`` None, off by default)

PROBER_SIDE = frozenset({OVERLOAD, NOT_STARTED, ABORTED, MISSED})
"""Error classes that say something about the prober, not the target: the target was never
measured. Their rows are stored (they are facts about the prober) but every SLA figure counts
them as *unknown*, like a second without samples, never as a failure of the target."""


@dataclass(frozen=True, slots=True)
class SampleKey:
    """Identifies one transfer: which tick started it, for which target."""

    probe_id: int
    source: str


@dataclass(frozen=True, slots=True)
class Phases:
    """Phase durations in milliseconds (not curl's cumulative offsets); None = not reached."""

    dns_ms: float | None = None
    connect_ms: float | None = None
    tls_ms: float | None = None
    ttfb_ms: float | None = None
    total_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished transfer, successful or not.

    ``error_class`` is None when the transfer completed at the protocol level; whether ``status``
    counts as success is the loop's decision (it knows what the target expects).
    """

    key: SampleKey
    status: int | None
    error_class: str | None
    error: str | None = None
    phases: Phases = Phases()
    remote_ip: str | None = None


class Transport(Protocol):
    """Starts transfers and reports them when they finish. Used from one thread only."""

    def start(
        self, key: SampleKey, url: str, timeout: float, *, follow_redirects: bool = False, verify_tls: bool = True
    ) -> None:
        """Begin a transfer; must not block. ``timeout`` bounds the whole transfer."""

    def poll(self, timeout: float) -> list[Completion]:
        """Wait up to ``timeout`` seconds; return the transfers that finished (maybe none).

        May return early as soon as something finished.
        """
        ...

    def in_flight(self) -> int:
        """Number of transfers started and not yet returned by :meth:`poll`."""
        ...

    def abort_all(self) -> list[Completion]:
        """Cancel every in-flight transfer and report each one with error_class ``aborted``."""
        ...
