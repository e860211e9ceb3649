"""Bandwidth tests: the pairing schedule (central), exclusive runs under Redis locks (edge), history.

Central: ``plan_bandwidth_round`` claims the interval (``SET NX``, as mesh rounds do), reads the
edge members once and lays the round-robin schedule of ``probes.checks.pairing`` over the
interval; each test becomes one task on its source's location queue with a countdown to its
slot and an expiry at the slot's end.

Edge: ``run_test`` locks both members in Redis at once (a Lua script: both or neither), measures
download then upload against the target's member endpoint with a token for that target, stores
both directions and releases the locks. A test that finds either member busy (a lock held, this
worker's own endpoint serving, or the target answering 503) is *postponed*: stored with the
reason and queued again shortly, until the end of its interval, when it is *skipped*. It never
runs overlapping another test of either member.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from django.conf import settings
from django.utils import timezone

from members.models import Member
from probes import partitions, services, traceroute_services
from probes.checks import bandwidth, bandwidth_auth, pairing
from probes.diagnostics_metrics import BandwidthMetrics
from probes.models import BandwidthResult, BandwidthStatus

log = logging.getLogger(__name__)

SCHEDULE = "bandwidth round dispatch"  # the beat entry (netring_site.schedules)
TIMEOUT_S = 5.0  # connect, stall and report timeout of each transfer
MAX_POSTPONES = 5
TOKEN_SLACK_S = 30.0
_LOCK = "netring:bw:busy:"
_DONE = "netring:bw:done:"

# Both keys or neither: returns nil when both were free (and are now ours), else {key, holder}.
_ACQUIRE = """
for _, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder then return {key, holder} end
end
for _, key in ipairs(KEYS) do redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) end
return nil
"""
# Release only what we hold: a lock that expired and was taken by another test stays its own.
_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""


@dataclass(frozen=True)
class BandwidthOptions:
    duration_s: float
    max_bytes: int
    timeout_s: float = TIMEOUT_S

    @property
    def lock_ttl_s(self) -> float:
        """The longest a test can hold its members: both transfers with their timeouts."""
        return 2 * (self.duration_s + 2 * self.timeout_s) + pairing.SLOT_MARGIN_S


def current_options() -> BandwidthOptions:
    cap_mb = settings.NETRING_BANDWIDTH_TEST_SIZE_MB or settings.NETRING_BANDWIDTH_MAX_MB
    return BandwidthOptions(
        settings.NETRING_BANDWIDTH_TEST_DURATION, int(min(cap_mb, settings.NETRING_BANDWIDTH_MAX_MB) * 1_000_000)
    )


def signing_secret() -> bytes:
    return bandwidth_auth.derive_secret(settings.SECRET_KEY, settings.NETRING_BANDWIDTH_SECRET)


# --- The member endpoint --------------------------------------------------------------------


def make_endpoint(instance_id: str, metrics: BandwidthMetrics | None = None) -> bandwidth.BandwidthEndpoint:
    """``/bandwidth_test`` of a member endpoint: one test at a time, bounded in size and time, and
    only for a token signed for this member."""
    secret = signing_secret()

    def authorize(token: str | None) -> bool:
        return bandwidth_auth.verify(secret, token, instance_id, time.time())

    return bandwidth.BandwidthEndpoint(
        max_bytes=settings.NETRING_BANDWIDTH_MAX_MB * 1_000_000,
        max_concurrent=1,
        max_duration_s=settings.NETRING_BANDWIDTH_TEST_DURATION + TIMEOUT_S,
        authorize=authorize,
        on_done=metrics.observe_served if metrics is not None else None,
    )


# --- Central: the schedule of a round -------------------------------------------------------


@dataclass(frozen=True)
class BandwidthPlan:
    round_id: int
    started: datetime
    interval: int
    slot_s: float
    tests: list[tuple[float, dict[str, Any]]]  # (offset from ``started`` in seconds, test)
    slots: int
    rounds: int  # rounds of the whole schedule; more than ``slots``: a cycle spans intervals


def plan_bandwidth_round(now: datetime | None = None) -> BandwidthPlan | None:
    """This interval's tests, or None when another beat claimed it already.

    Every pair of edge members in different locations, each pair once, both directions; no
    location (``NETRING_BANDWIDTH_EXCLUSIVE=member``: no member) in two tests of one slot; the
    slots spread evenly over the interval.
    """
    now = now or timezone.now()
    interval = services.scheduled_interval(SCHEDULE, settings.NETRING_BANDWIDTH_TEST_INTERVAL)
    number = services.round_id(now, interval)
    if not services.claim_round("bandwidth", number, interval * 2):
        return None
    members = sorted(
        Member.objects.active(now)
        .filter(kind=Member.Kind.EDGE)
        .select_related("location")
        .only("instance_id", "ip", "port", "location__name"),
        key=lambda m: str(m.instance_id),
    )
    slot_s = pairing.slot_seconds(current_options().duration_s)
    by_location = settings.NETRING_BANDWIDTH_EXCLUSIVE == "location"
    quiet = quiet_windows(now)
    slots, rounds = pairing.plan_slots(
        members,
        interval,
        slot_s,
        cycle=number,
        allowed=lambda a, b: a.location.name != b.location.name,
        exclusive=(lambda m: m.location.name) if by_location else None,
        quiet=quiet,
    )
    if any(pairing.clear_start(quiet, s.offset_s, slot_s, interval) != s.offset_s for s in slots):
        log.warning(
            "bandwidth: tests of %.0fs do not fit between the mesh and traceroute rounds; rounds that "
            "overlap a test measure the links it fills (lengthen NETRING_CHECK_INTERVAL or shorten the tests)",
            slot_s,
        )
    if rounds > len(slots):
        log.warning(
            "bandwidth: %d edge members need %d slots of %.0fs, an interval of %ds holds %d: "
            "a full cycle takes %d intervals",
            len(members), rounds, slot_s, interval, len(slots), -(-rounds // len(slots)),
        )  # fmt: skip
    not_after = now.timestamp() + interval
    tests = [
        (slot.offset_s, _test(number, slot.index, source, target, not_after))
        for slot in slots
        for source, target in slot.pairs
    ]
    return BandwidthPlan(number, now, interval, slot_s, tests, len(slots), rounds)


def quiet_windows(now: datetime) -> list[pairing.Quiet]:
    """When mesh and traceroute rounds run, from their last dispatch on: windows for the slots
    to keep out of.

    A bandwidth test fills the links it crosses. A mesh round meanwhile would read the test's
    queue as latency, jitter and loss of those paths, and a traceroute as the hops' latency
    (a false bottleneck). Rounds are dispatched every interval of their beat entry; a mesh
    round takes at most ``services.round_seconds()``, a traceroute round its deadline, plus a
    second for the task to reach the edges and the results to be stored. A kind not dispatched
    lately has no windows.
    """
    kinds = [
        (services.MESH_SCHEDULE, "mesh", settings.NETRING_CHECK_INTERVAL, services.round_seconds()),
        (traceroute_services.SCHEDULE, "traceroute", settings.NETRING_TRACEROUTE_INTERVAL,
         settings.NETRING_TRACEROUTE_DEADLINE),
    ]  # fmt: skip
    windows = []
    for schedule, kind, default, busy in kinds:
        last = services.broker().get(services.dispatched_key(kind))
        if last is None:
            continue
        period = services.scheduled_interval(schedule, default)
        windows.append(
            pairing.Quiet(first_s=(float(last) - now.timestamp()) % period - period, period_s=period, busy_s=busy + 1.0)
        )
    return windows


def _test(number: int, slot: int, source: Member, target: Member, not_after: float) -> dict[str, Any]:
    return {
        "round_id": number,
        "slot": slot,
        "attempt": 0,
        "not_after": not_after,
        "source": {"instance_id": str(source.instance_id), "location": source.location.name},
        "target": {
            "instance_id": str(target.instance_id),
            "host": target.ip,
            "port": target.port,
            "location": target.location.name,
        },
    }


# --- Edge: one test -------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """The edge worker that runs a test: the planned source (the test came on its own queue)."""

    location: str
    instance_id: str


@dataclass(frozen=True)
class Outcome:
    status: Literal["ran", "postponed", "skipped", "duplicate"]
    reason: str = ""
    retry_in: float | None = None  # postponed: queue the test again after this many seconds
    results: tuple[bandwidth.BandwidthResult, ...] = ()


def measure_pair(
    target: dict[str, Any], options: BandwidthOptions, token: str | None
) -> tuple[bandwidth.BandwidthResult, ...]:
    """Download from, then upload to, the target's member endpoint; only the download when the
    target refuses it as busy (the upload would be refused too)."""
    where = (str(target["host"]), int(target["port"]))
    results = []
    for direction in ("download", "upload"):
        results.append(
            bandwidth.measure(
                where, direction, options.duration_s, options.max_bytes, token=token, timeout_s=options.timeout_s
            )
        )
        if results[0].error_class == "busy":
            break
    return tuple(results)


def run_test(
    source: Source,
    test: dict[str, Any],
    *,
    endpoint: bandwidth.BandwidthEndpoint | None = None,
    metrics: BandwidthMetrics | None = None,
) -> Outcome:
    """Run one scheduled test exclusively, store it, update the metrics; see the module docstring.

    ``endpoint`` is this worker's own ``/bandwidth_test``: its slot is held while we measure, so
    this member never serves a peer's test and runs its own at the same time.
    """
    options = current_options()
    target = test["target"]
    holder = (
        f"{source.location}/{source.instance_id} -> {target['location']}/{target['instance_id']} "
        f"(round {test['round_id']}, slot {test['slot']})"
    )
    keys = [_LOCK + source.instance_id, _LOCK + str(target["instance_id"])]
    busy = _acquire(keys, holder, options.lock_ttl_s)
    if busy is not None:
        key, other = busy
        who = "this member" if key == keys[0] else f"target {target['location']}/{target['instance_id']}"
        return _postpone(source, test, options, f"{who} is in another bandwidth test: {other}")
    try:
        with _own_slot(endpoint) as free:
            if not free:
                return _postpone(source, test, options, "this member is serving a peer's bandwidth test")
            done_key = f"{_DONE}{test['round_id']}:{test['source']['instance_id']}:{target['instance_id']}"
            if services.broker().exists(done_key):
                return Outcome("duplicate", "this test ran already (a redelivered task)")
            token = bandwidth_auth.sign(
                signing_secret(), str(target["instance_id"]), time.time() + options.lock_ttl_s + TOKEN_SLACK_S
            )
            results = measure_pair(target, options, token)
        if results[0].error_class == "busy":
            return _postpone(source, test, options, f"the target refused: {results[0].error}")
        services.broker().set(done_key, holder, ex=int(options.lock_ttl_s + test["not_after"] - time.time()) + 60)
    finally:
        _release(keys, holder)
    store_results(source, test, results, options)
    if metrics is not None:
        pair = (source.location, source.instance_id, target["location"], str(target["instance_id"]), target["host"])
        metrics.observe(pair, results)
    return Outcome("ran", results=results)


@contextlib.contextmanager
def _own_slot(endpoint: bandwidth.BandwidthEndpoint | None) -> Iterator[bool]:
    if endpoint is None:
        yield True
        return
    with endpoint.slot() as acquired:
        yield acquired


def _acquire(keys: Sequence[str], holder: str, ttl_s: float) -> tuple[str, str] | None:
    answer = services.broker().eval(_ACQUIRE, len(keys), *keys, holder, int(ttl_s * 1000))
    if not answer:
        return None
    key, other = (item.decode() if isinstance(item, bytes) else str(item) for item in answer)
    return key, other


def _release(keys: Sequence[str], holder: str) -> None:
    try:
        services.broker().eval(_RELEASE, len(keys), *keys, holder)
    except Exception:  # the locks expire by themselves; a broker hiccup must not lose the results
        log.exception("could not release the bandwidth locks of %s", holder)


def _postpone(source: Source, test: dict[str, Any], options: BandwidthOptions, reason: str) -> Outcome:
    """Store that the test could not run now; queue it again while its interval lasts."""
    delay = options.duration_s + 2 + random.uniform(0, 1)  # noqa: S311 - jitter, not a secret
    again = test["attempt"] < MAX_POSTPONES and time.time() + delay <= float(test["not_after"])
    status = BandwidthStatus.POSTPONED if again else BandwidthStatus.SKIPPED
    store_results(source, test, (), options, status=status, reason=f"busy: {reason}")
    log.info("bandwidth test %s: %s", status.value, reason)
    return Outcome("postponed" if again else "skipped", reason, retry_in=delay if again else None)


# --- Storage --------------------------------------------------------------------------------


def store_results(
    source: Source,
    test: dict[str, Any],
    results: Sequence[bandwidth.BandwidthResult],
    options: BandwidthOptions,
    *,
    status: BandwidthStatus | None = None,
    reason: str = "",
) -> list[BandwidthResult]:
    """One row per direction measured; a postponed or skipped test is one row with the reason."""
    target = test["target"]
    common: dict[str, Any] = {
        "round_id": test["round_id"],
        "slot": test["slot"],
        "attempt": test["attempt"],
        "source_location": source.location,
        "source_instance": source.instance_id,
        "target_location": target["location"],
        "target_instance": target["instance_id"],
        "target_ip": target["host"],
        "target_port": target["port"],
        "duration_s": options.duration_s,
    }
    if status is not None:
        rows = [
            BandwidthResult(
                ts=timezone.now(), status=status, direction="", error_class="busy", error=reason[:300], **common
            )
        ]
    else:
        rows = [_row(result, common) for result in results]
    if not rows:
        return []
    partitions.write_creating(
        [BandwidthResult._meta.db_table], rows[0].ts, lambda: BandwidthResult.objects.bulk_create(rows)
    )
    return rows


def _row(result: bandwidth.BandwidthResult, common: dict[str, Any]) -> BandwidthResult:
    return BandwidthResult(
        ts=datetime.fromtimestamp(result.started_at, UTC),
        direction=result.direction,
        status=BandwidthStatus.OK if result.ok else BandwidthStatus.FAILED,
        mbps=result.mbps,
        bytes_total=result.bytes_total,
        bytes_measured=result.bytes_measured,
        transfer_s=result.transfer_s or None,
        window_s=result.window_s or None,
        omitted_s=result.omitted_s if result.ok else None,
        stable=result.stable,
        ended_by=result.ended_by,
        rtt_ms=result.rtt_ms,
        error_class=result.error_class,
        error=result.error[:300],
        **common,
    )


def retry_expiry(test: dict[str, Any]) -> datetime:
    """A postponed test still queued when its interval is over is dropped."""
    return datetime.fromtimestamp(float(test["not_after"]), UTC)


def slot_expiry(plan: BandwidthPlan, offset_s: float) -> datetime:
    """A test not started by the end of its slot is dropped, not run in someone else's."""
    return plan.started + timedelta(seconds=offset_s + plan.slot_s)
