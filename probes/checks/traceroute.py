"""Traceroute over ICMP echo (icmplib sockets): one row per TTL, silent hops included.

``trace_many`` traces many destinations at once from one raw socket per address family and
one thread: probes for every TTL go out in rounds (``probes_per_hop`` rounds), the traces
taking turns so a destination's answer usually arrives before probes beyond it would go out;
replies are matched by ICMP identifier (one per trace) and sequence (one per probe), then by
the address they concern (an echo reply must come from the destination, an error must quote
a probe to it), and everything stops at ``deadline_s``. RTTs use the kernel's receive
timestamps, so a busy host does not inflate them.

**Flow identity (why paths do not flap between rounds).** Routers that balance flows over
equal-cost paths hash ICMP on fields that include the identifier and checksum. Every probe of
a trace has the same checksum (the first two payload bytes offset the sequence number), so a
trace stays on one path, as Paris traceroute does. With ``flow_key`` (the edge passes its
member's instance id) the identifier is also the same every round: a 16-bit blake2b hash of
(flow key, destination address), so round N and round N+1 take the same path and a path change
is a route change, not a different ECMP pick. Without ``flow_key`` each trace takes a fresh
identifier from icmplib's process-wide counter. Guards, since a raw socket sees every ICMP
reply of its network namespace:

- In one process no two running traces share an identifier (a process-wide set, under a
  lock): a trace whose hash is taken (another destination of the same call, or a concurrent
  call, e.g. Celery threads) takes the next free value for that call. Hashed identifiers also
  keep clear of the values icmplib's counter handed out lately or is about to, which the ICMP
  pinger of the same process uses and matches by (identifier, sequence) alone.
- Members on one host (separate processes) have different keys, hence different identifiers
  for a destination except by a 1-in-65536 hash collision; each trace also starts its sequence
  numbers at a random value (which does not change the checksum), so even then, and for a late
  reply to the previous round's trace, probes rarely share an (identifier, sequence).

Rules a reader of a stored trace needs:

- **Rows.** ``hops`` has one row per TTL from 1 to the destination (or, when the destination
  never answered, to the last TTL anything answered from). A TTL nobody answered is a row
  with ``address`` None: a silent hop. Silent TTLs after the last answer are not rows; they
  are indistinguishable from "further than we looked".
- **Added latency.** ``added_ms`` = this hop's average RTT minus the average RTT of the
  previous hop that *answered* (the source, 0 ms, for the first). A silent hop has None and
  the next answering hop carries the latency of both links (``added_from_ttl`` says from
  where). Negative values are kept, not floored: they happen when a router is slow to
  generate ICMP (its own CPU, not the path), and hiding them would hide that the previous
  figure was inflated. The **bottleneck** is the hop with the largest ``added_ms``, not the
  largest cumulative RTT (which is usually just the last hop).
- **Fingerprint.** sha256 over the row addresses in TTL order, ``*`` for a silent row,
  joined by ``|``. Trailing silent TTLs are not rows, so they do not count; a silent hop in the
  middle does (a router that stops answering changes the fingerprint, and ``compare_paths``
  tells that apart from a route change).
- **Loss** per hop = unanswered / sent probes of that TTL. Loss at a router that the
  destination does not show is that router rate-limiting ICMP, not loss on the path.
- **Deadline.** Never runs longer than ``deadline_s``; probes still in flight then are not
  counted as sent (neither answered nor lost) and ``deadline_hit`` is set.
- **Privilege.** Setting the TTL and reading time-exceeded answers needs a raw socket: root or
  CAP_NET_RAW. Without it every result is ``unavailable`` with the reason, never a crash and
  never an empty "0 hops" trace.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import heapq
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from icmplib import ICMPRequest, ICMPv4Socket, ICMPv6Socket
from icmplib import utils as icmplib_utils
from icmplib.exceptions import ICMPLibError, SocketPermissionError
from icmplib.utils import unique_identifier

Status = Literal["ok", "unreached", "unavailable", "error"]
ReplyKind = Literal["", "time-exceeded", "echo-reply", "unreachable"]

# What each ICMP type answering a probe means, per address family.
_KINDS: dict[int, dict[int, ReplyKind]] = {
    4: {0: "echo-reply", 11: "time-exceeded", 3: "unreachable"},
    6: {129: "echo-reply", 3: "time-exceeded", 1: "unreachable"},
}
_ECHO_REQUEST = {4: 8, 6: 128}
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python 3.11 lacks the name
_ANCILLARY_SIZE = socket.CMSG_SPACE(16)
_CAP_NET_RAW = 13
_PAYLOAD_SIZE = 56
_FLOW_PERSON = b"netring-flow-v1"  # blake2b personalisation: these hashes mean nothing elsewhere
# Identifiers icmplib's counter handed out lately (up to and including its current value) or will
# hand out soon: the pinger of this process may have echoes out, or soon will, under them.
_COUNTER_BEHIND, _COUNTER_AHEAD = 64, 64

# (family, identifier) of every trace running in this process. Replies are matched by them and
# every raw socket of the process sees every reply, so two running traces must not share one.
_in_use: set[tuple[int, int]] = set()
_in_use_lock = threading.Lock()


@dataclass(frozen=True, slots=True, kw_only=True)
class Hop:
    """One TTL of a trace. Times are milliseconds on the monotonic clock."""

    ttl: int
    address: str | None  # the responder (the most frequent one under ECMP); None = silent hop
    addresses: tuple[str, ...] = ()  # every responder seen at this TTL, most frequent first
    reply: ReplyKind = ""
    sent: int
    received: int
    rtt_min_ms: float | None = None
    rtt_avg_ms: float | None = None
    rtt_max_ms: float | None = None
    added_ms: float | None = None  # avg minus the previous answering hop's avg (may be negative)
    added_from_ttl: int | None = None  # TTL of that previous answering hop; 0 = the source

    @property
    def silent(self) -> bool:
        return self.address is None

    @property
    def loss(self) -> float:
        """Share of this TTL's probes that got no answer (0..1)."""
        return (self.sent - self.received) / self.sent if self.sent else 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceResult:
    """A traceroute to one destination; see the module docstring for the rules."""

    destination: str  # as given
    address: str = ""  # the IP address traced
    status: Status
    reason: str = ""  # why unavailable / error / unreached
    hops: tuple[Hop, ...] = ()
    reached: bool = False
    deadline_hit: bool = False
    probes_per_hop: int = 0
    max_hops: int = 0
    duration_s: float = 0.0  # monotonic
    started_at: float  # wall clock, epoch seconds, only to place the trace in time

    @property
    def state(self) -> str:
        """``ok``, ``unreached``, ``unavailable: <why>`` or ``error: <why>``."""
        return self.status if self.status in ("ok", "unreached") else f"{self.status}: {self.reason}"

    @property
    def hop_count(self) -> int | None:
        """Rows traced: the destination's distance when reached, a lower bound otherwise."""
        return len(self.hops) if self.status in ("ok", "unreached") else None

    @property
    def bottleneck(self) -> Hop | None:
        """The hop that adds the most latency (earliest on a tie); None without answers."""
        answering = [hop for hop in self.hops if hop.added_ms is not None]
        return max(answering, key=lambda hop: hop.added_ms or 0.0) if answering else None

    @property
    def path(self) -> tuple[str | None, ...]:
        return tuple(hop.address for hop in self.hops)

    @property
    def fingerprint(self) -> str | None:
        """sha256 of the path (None when nothing was traced)."""
        return path_fingerprint(self.path) if self.hops else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived figures a row in storage wants."""
        data = asdict(self)
        bottleneck = self.bottleneck
        data.update(
            state=self.state,
            hop_count=self.hop_count,
            fingerprint=self.fingerprint,
            bottleneck_ttl=bottleneck.ttl if bottleneck else None,
            bottleneck_added_ms=bottleneck.added_ms if bottleneck else None,
        )
        for hop_data, hop in zip(data["hops"], self.hops, strict=True):
            hop_data["loss"] = hop.loss
        return data


def path_fingerprint(path: Sequence[str | None]) -> str:
    """sha256 hex of the addresses in TTL order, ``*`` for silent hops, joined by ``|``."""
    return hashlib.sha256("|".join(address or "*" for address in path).encode()).hexdigest()


def path_changed(previous: str | None, new: str | None) -> bool:
    """Whether a new fingerprint is a path-change event. A first trace (``previous`` None) and a
    trace that produced nothing (``new`` None) are not changes: unknown is not different."""
    return previous is not None and new is not None and previous != new


@dataclass(frozen=True, slots=True)
class PathChange:
    """How two traces of the same pair differ."""

    changed: bool  # routed differently (False when only silence differs)
    kind: Literal["same", "silence", "rerouted"]
    first_ttl: int | None  # first TTL where the paths really differ
    description: str


def compare_paths(old: Sequence[Hop | str | None], new: Sequence[Hop | str | None]) -> PathChange:
    """Describe the change from ``old`` to ``new`` (rows or addresses, None/'*' for silent).

    A silent hop matches any address: when the paths have the same length and differ only
    where one side is silent, the route is taken to be the same (``kind`` "silence"), because
    a router that skips answering is far more common than a route change that happens to
    keep every other hop. Otherwise the description names replaced, removed and added hops.
    """
    a, b = _addresses(old), _addresses(new)
    if a == b:
        return PathChange(False, "same", None, f"same path ({len(a)} hops)")
    if len(a) == len(b) and all(x == y or None in (x, y) for x, y in zip(a, b, strict=True)):
        ttls = [ttl for ttl, (x, y) in enumerate(zip(a, b, strict=True), start=1) if x != y]
        detail = ", ".join(f"hop {ttl} {_show(a[ttl - 1])} -> {_show(b[ttl - 1])}" for ttl in ttls)
        return PathChange(False, "silence", None, f"same route, only answering differs: {detail}")
    tokens_a = [x or "*" for x in a]
    tokens_b = [x or "*" for x in b]
    parts: list[str] = []
    first: int | None = None
    matcher = difflib.SequenceMatcher(None, tokens_a, tokens_b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        if first is None:
            first = min(i1, j1) + 1
        if op == "replace":
            parts.append(f"{_span(i1, i2)} {', '.join(tokens_a[i1:i2])} -> {', '.join(tokens_b[j1:j2])}")
        elif op == "delete":
            parts.append(f"{_span(i1, i2)} {', '.join(tokens_a[i1:i2])} gone")
        else:
            parts.append(f"new {_span(j1, j2)} {', '.join(tokens_b[j1:j2])}")
    if len(a) != len(b):
        parts.append(f"{len(a)} -> {len(b)} hops")
    return PathChange(True, "rerouted", first, "; ".join(parts))


def _addresses(path: Sequence[Hop | str | None]) -> list[str | None]:
    out: list[str | None] = []
    for item in path:
        address = item.address if isinstance(item, Hop) else item
        out.append(None if address in (None, "*") else address)
    return out


def _show(address: str | None) -> str:
    return address or "*"


def _span(i1: int, i2: int) -> str:
    return f"hop {i1 + 1}" if i2 - i1 == 1 else f"hops {i1 + 1}-{i2}"


def privilege() -> tuple[bool, str]:
    """Whether this process may open raw ICMP sockets, and if not, why."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    if int(line.split()[1], 16) >> _CAP_NET_RAW & 1:
                        return True, "CAP_NET_RAW"
                    return False, (
                        f"traceroute needs a raw ICMP socket: root or CAP_NET_RAW (uid {os.geteuid()} has "
                        "neither; unprivileged ICMP sockets cannot read time-exceeded answers)"
                    )
    except OSError:
        pass
    if os.geteuid() == 0:
        return True, "root"
    return False, f"traceroute needs a raw ICMP socket: root or CAP_NET_RAW (uid {os.geteuid()})"


def trace(destination: str, **options: Any) -> TraceResult:
    """Trace one destination; ``options`` as for ``trace_many``."""
    return trace_many([destination], **options)[0]


@dataclass
class _Probe:
    ttl: int
    sent_at: float  # monotonic, for timeouts
    sent_wall: float  # wall clock, the same clock as the kernel's receive timestamps
    answered: bool = False


@dataclass
class _Trace:
    destination: str
    address: str
    family: int
    ident: int
    ttl_limit: int
    probes: dict[int, _Probe] = field(default_factory=dict)  # by ICMP sequence number
    answers: dict[int, list[tuple[str, float, ReplyKind]]] = field(default_factory=dict)  # by TTL
    reached: bool = False
    rounds_done: int = 0
    cursor: int = 1  # next TTL to probe in the current round
    next_round_at: float = 0.0
    next_seq: int = 0  # the last sequence number used (set at random per trace: see _first_sequence)
    error: str = ""  # sending failed: the trace stops with this reason


def trace_many(
    destinations: Sequence[str],
    *,
    probes_per_hop: int = 3,
    max_hops: int = 30,
    probe_timeout_s: float = 1.0,
    deadline_s: float = 10.0,
    round_interval_s: float = 0.05,
    max_pps: float = 1000.0,
    source: str | None = None,
    flow_key: str | None = None,
) -> list[TraceResult]:
    """Trace every destination concurrently; one result per destination, in order.

    ``probes_per_hop`` rounds of probes go out ``round_interval_s`` apart, each round covering
    TTL 1 up to the destination's distance once it is known (``max_hops`` before). A probe
    unanswered after ``probe_timeout_s`` is lost. All sending is paced to ``max_pps`` packets
    per second in total. Nothing runs past ``deadline_s`` (name resolution of host names
    included, though a hung resolver cannot be interrupted: pass addresses).

    ``flow_key`` names the tracer (a stable identity such as the member's instance id): each
    destination's ICMP identifier is then ``flow_identifier(flow_key, address)`` every call,
    unless taken (see the module docstring); without it, a fresh one per trace.
    """
    started_at = time.time()
    begin = time.monotonic()
    deadline = begin + deadline_s
    common: dict[str, Any] = {"probes_per_hop": probes_per_hop, "max_hops": max_hops, "started_at": started_at}
    results: dict[int, TraceResult] = {}
    allowed, why = privilege()
    if not allowed:
        return [TraceResult(destination=d, status="unavailable", reason=why, **common) for d in destinations]
    resolved: dict[int, tuple[str, int]] = {}
    for index, destination in enumerate(destinations):
        try:
            resolved[index] = _resolve(destination)
        except (OSError, ValueError) as exc:
            results[index] = TraceResult(
                destination=destination, status="error", reason=f"cannot resolve: {exc}", **common
            )
    traces: dict[int, _Trace] = {}
    # The identifiers are released only when the sockets are closed: no reply can be filed
    # under them any more.
    with _identifiers([(family, address) for address, family in resolved.values()], flow_key) as idents:
        for (index, (address, family)), ident in zip(resolved.items(), idents, strict=True):
            if ident is None:  # 65536 traces of this family already running in this process
                reason = "no free ICMP identifier: too many traces at once"
                results[index] = _failed(_Trace(destinations[index], address, family, 0, 0), "error", reason, common)
                continue
            traces[index] = _Trace(
                destinations[index], address, family, ident, max_hops, next_round_at=begin, next_seq=_first_sequence()
            )
        _trace_all(
            traces, results, common, source, probes_per_hop, probe_timeout_s, deadline, round_interval_s, max_pps
        )
    end = time.monotonic()
    for index, state in traces.items():
        if index not in results:
            results[index] = _build(state, probe_timeout_s, end, deadline, begin, common)
    return [results[index] for index in range(len(destinations))]


def _trace_all(
    traces: dict[int, _Trace],
    results: dict[int, TraceResult],
    common: dict[str, Any],
    source: str | None,
    rounds: int,
    timeout: float,
    deadline: float,
    round_interval: float,
    max_pps: float,
) -> None:
    """Open the sockets and run the traces; a socket failure ends every trace in ``results``."""
    sockets: dict[int, ICMPv4Socket | ICMPv6Socket] = {}
    try:
        for family in sorted({t.family for t in traces.values()}):
            sockets[family] = _open_socket(family, source)
            _enable_kernel_timestamps(sockets[family])
        _run(traces, sockets, rounds, timeout, deadline, round_interval, max_pps)
    except SocketPermissionError as exc:
        for index, state in traces.items():
            results[index] = _failed(state, "unavailable", f"raw ICMP socket refused: {exc}", common)
    except (ICMPLibError, OSError) as exc:
        for index, state in traces.items():
            results[index] = _failed(state, "error", f"{type(exc).__name__}: {exc}", common)
    finally:
        for sock in sockets.values():
            sock.close()


def flow_identifier(flow_key: str, address: str) -> int:
    """The ICMP identifier a trace of ``address`` (an IP address as ``_resolve`` spells it) by
    the tracer ``flow_key`` asks for: 16 bits of blake2b, the same in every process and run
    (Python's ``hash()`` is salted per process), and for two tracers or two destinations
    different but for a 1-in-65536 chance."""
    digest = hashlib.blake2b(f"{flow_key}\n{address}".encode(), digest_size=2, person=_FLOW_PERSON).digest()
    return int.from_bytes(digest, "big")


@contextlib.contextmanager
def _identifiers(wanted: Sequence[tuple[int, str]], flow_key: str | None) -> Iterator[list[int | None]]:
    """An identifier for each (family, address), none shared with another of ``wanted`` or with
    a trace running in this process (None where every value is taken), held until the block ends."""
    claimed: list[int | None] = []
    with _in_use_lock:
        counter = _icmplib_counter()
        for family, address in wanted:
            ident = (
                _next_counter_identifier(family)
                if flow_key is None
                else _free_identifier(family, flow_identifier(flow_key, address), counter)
            )
            if ident is not None:
                _in_use.add((family, ident))
            claimed.append(ident)
    try:
        yield claimed
    finally:
        with _in_use_lock:
            _in_use.difference_update(
                (family, ident) for (family, _), ident in zip(wanted, claimed, strict=True) if ident is not None
            )


def _next_counter_identifier(family: int) -> int | None:
    """Without a flow key: the next value of icmplib's counter (as before flow keys existed),
    skipping values a running trace of this process holds."""
    for _ in range(0x10000):
        ident: int = unique_identifier()
        if (family, ident) not in _in_use:
            return ident
    return None


def _free_identifier(family: int, wanted: int, counter: int | None) -> int | None:
    """``wanted`` if free, else the next free value up (wrapping). Values near icmplib's counter
    count as taken (the pinger's), unless nothing else is free."""
    fallback: int | None = None
    for step in range(0x10000):
        ident = (wanted + step) & 0xFFFF
        if (family, ident) in _in_use:
            continue
        if not _near_counter(ident, counter):
            return ident
        if fallback is None:
            fallback = ident
    return fallback


def _icmplib_counter() -> int | None:
    """The last identifier icmplib's ``unique_identifier`` handed out. Private to icmplib, so
    read defensively: without it hashed identifiers simply do not avoid the pinger's."""
    current = getattr(icmplib_utils, "_current_id", None)
    return current if isinstance(current, int) else None


def _near_counter(ident: int, counter: int | None) -> bool:
    if counter is None:
        return False
    return (counter - ident) & 0xFFFF < _COUNTER_BEHIND or 0 < (ident - counter) & 0xFFFF <= _COUNTER_AHEAD


def _first_sequence() -> int:
    """A random start for a trace's sequence numbers. The checksum does not depend on them (see
    ``_payload``), so the flow stays the same; but a late reply to the previous round's trace,
    which had the same identifier, does not match a probe of this one."""
    return int.from_bytes(os.urandom(2), "big")


def _resolve(destination: str) -> tuple[str, int]:
    try:
        ip = ipaddress.ip_address(destination)
    except ValueError:
        info = socket.getaddrinfo(destination, None, type=socket.SOCK_RAW)
        ip = ipaddress.ip_address(info[0][4][0])
    return str(ip), ip.version


def _open_socket(family: int, source: str | None) -> ICMPv4Socket | ICMPv6Socket:
    if family == 4:
        return ICMPv4Socket(source, privileged=True)
    return ICMPv6Socket(source, privileged=True)


def _payload(sequence: int) -> bytes:
    """Payload that keeps the ICMP checksum the same for every sequence number (Paris-style):
    the first 16-bit word is the one's complement of the sequence, so their sum is constant."""
    return struct.pack("!H", 0xFFFF - sequence) + b"netring-traceroute".ljust(_PAYLOAD_SIZE - 2, b".")


def _run(
    traces: dict[int, _Trace],
    sockets: dict[int, ICMPv4Socket | ICMPv6Socket],
    rounds: int,
    timeout: float,
    deadline: float,
    round_interval: float,
    max_pps: float,
) -> None:
    """Send, pace and receive until every trace is finished or the deadline comes.

    Sending takes the traces in turn, one probe each, so successive TTLs of one trace are
    spread out and an answer from the destination usually arrives before probes beyond it are
    sent (those are skipped). A trace's next round starts ``round_interval`` after its last one.
    """
    by_ident = {(state.family, state.ident): state for state in traces.values()}
    turn = deque(traces.values())  # traces with rounds left to send
    expiries: list[tuple[float, int, int, int]] = []  # heap: (timeout at, family, ident, sequence)
    gap = 1.0 / max_pps
    next_send = time.monotonic()
    fds = {sock.sock.fileno(): family for family, sock in sockets.items()}
    while True:
        now = time.monotonic()
        if now >= deadline:
            return
        ready = True
        while now >= next_send and ready:
            ready = False
            for _ in range(len(turn)):
                state = turn.popleft()
                if state.error or state.rounds_done >= rounds:
                    continue  # finished sending: leaves the turn
                turn.append(state)
                if now < state.next_round_at:
                    continue
                if state.cursor > state.ttl_limit:  # the destination turned out nearer
                    state.cursor, state.rounds_done, state.next_round_at = (
                        1,
                        state.rounds_done + 1,
                        now + round_interval,
                    )
                    continue
                sequence = _send(sockets[state.family], state, state.cursor)
                now = time.monotonic()
                next_send = max(next_send, now - gap) + gap
                if sequence is not None:
                    heapq.heappush(expiries, (now + timeout, state.family, state.ident, sequence))
                state.cursor += 1
                if state.cursor > state.ttl_limit:  # round complete
                    state.cursor = 1
                    state.rounds_done += 1
                    state.next_round_at = now + round_interval
                ready = True
                break
        # Forget probes that are answered, timed out, or beyond a destination found nearer.
        while expiries and not _waiting(expiries[0], by_ident, now):
            heapq.heappop(expiries)
        if not turn and not expiries:
            return
        # Sleep until the next thing to do: a send, a round, a probe timing out, the deadline.
        wake = deadline
        if turn:
            wake = min(wake, max(next_send, min(state.next_round_at for state in turn)))
        if expiries:
            wake = min(wake, expiries[0][0])
        readable, _, _ = select.select(list(fds), [], [], max(0.0, wake - time.monotonic()))
        for fd in readable:
            _receive(sockets[fds[fd]], fds[fd], by_ident)


def _waiting(entry: tuple[float, int, int, int], by_ident: dict[tuple[int, int], _Trace], now: float) -> bool:
    expiry, family, ident, sequence = entry
    state = by_ident[(family, ident)]
    probe = state.probes[sequence]
    return expiry > now and not probe.answered and probe.ttl <= state.ttl_limit


def _send(sock: ICMPv4Socket | ICMPv6Socket, state: _Trace, ttl: int) -> int | None:
    """Send one probe; return its sequence number, or None if sending failed (trace stops)."""
    sequence = state.next_seq = (state.next_seq + 1) & 0xFFFF
    request = ICMPRequest(state.address, state.ident, sequence, payload=_payload(sequence), ttl=ttl)
    try:
        sock.send(request)  # stamps request.time (wall clock) just before sendto()
    except ICMPLibError as exc:  # e.g. no route to the destination: this trace only
        state.error = f"cannot send to {state.address}: {exc}"
        return None
    state.probes[sequence] = _Probe(ttl, time.monotonic(), float(request.time))
    return sequence


def _enable_kernel_timestamps(sock: ICMPv4Socket | ICMPv6Socket) -> None:
    """Ask the kernel to stamp each reply on arrival: RTTs then do not grow while this process
    waits for a CPU (a prober shares its host with workers). Without it, user-space times."""
    with contextlib.suppress(OSError):
        sock.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)


def _kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) in (8, 16):
            seconds, nanoseconds = struct.unpack("@qq" if len(data) == 16 else "@ii", data)
            return int(seconds) + int(nanoseconds) / 1e9
    return None


def _receive(sock: ICMPv4Socket | ICMPv6Socket, family: int, by_ident: dict[tuple[int, int], _Trace]) -> None:
    """Read every reply waiting on the socket and file it under its trace and probe."""
    kinds = _KINDS[family]
    while True:
        try:
            packet, ancillary, _, source = sock.sock.recvmsg(2048, _ANCILLARY_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        now = time.monotonic()
        parsed = _parse_reply(packet, family)
        if parsed is None:
            continue
        icmp_type, ident, sequence, inner_destination = parsed
        kind = kinds.get(icmp_type)
        state = by_ident.get((family, ident))
        if kind is None or state is None:
            continue  # someone else's ICMP: a raw socket sees all of it
        address = str(ipaddress.ip_address(source[0].split("%", 1)[0]))
        # Another process (another member on this host) may use the same identifier for another
        # destination: an error must be about a probe to ours, an echo reply must come from it.
        ours = _unscoped(state.address)
        if (inner_destination if inner_destination is not None else address) != ours:
            continue
        probe = state.probes.get(sequence)
        if probe is None or probe.answered:
            continue
        probe.answered = True
        rtt = now - probe.sent_at
        arrived = _kernel_time(ancillary)
        if arrived is not None and 0 <= arrived - probe.sent_wall <= rtt:
            rtt = arrived - probe.sent_wall  # else the wall clock stepped: keep the monotonic figure
        state.answers.setdefault(probe.ttl, []).append((address, rtt * 1000.0, kind))
        if kind != "time-exceeded":
            # The destination answered, or a router says it cannot get there: nothing lies beyond.
            state.ttl_limit = min(state.ttl_limit, probe.ttl)
            if kind == "echo-reply" or address == state.address:
                state.reached = True


def _unscoped(address: str) -> str:
    """An IPv6 address without its zone (``fe80::1%eth0``), as reply addresses come."""
    return address.split("%", 1)[0]


def _parse_reply(packet: bytes, family: int) -> tuple[int, int, int, str | None] | None:
    """(ICMP type, identifier, sequence, destination of the packet an error is about) or None.

    IPv4 raw sockets hand over the IP header, IPv6 ones do not. An error message quotes the
    IP header and the first 8 bytes of the probe, which hold its identifier and sequence.
    """
    try:
        if family == 4:
            icmp = packet[(packet[0] & 0x0F) * 4 :]
            if icmp[0] == 0:
                return 0, *struct.unpack_from("!HH", icmp, 4), None
            inner = icmp[8:]
            if inner[9] != 1:  # the quoted packet is not ICMP
                return None
            quoted = inner[(inner[0] & 0x0F) * 4 :]
            destination = str(ipaddress.IPv4Address(inner[16:20]))
        else:
            icmp = packet
            if icmp[0] == 129:
                return 129, *struct.unpack_from("!HH", icmp, 4), None
            inner = icmp[8:]
            if inner[6] != 58:  # not ICMPv6 right after the fixed header
                return None
            quoted = inner[40:]
            destination = str(ipaddress.IPv6Address(inner[24:40]))
        if quoted[0] != _ECHO_REQUEST[family]:
            return None
        ident, sequence = struct.unpack_from("!HH", quoted, 4)
        return icmp[0], ident, sequence, destination
    except (IndexError, struct.error, ValueError):
        return None


def _failed(state: _Trace, status: Status, reason: str, common: dict[str, Any]) -> TraceResult:
    return TraceResult(destination=state.destination, address=state.address, status=status, reason=reason, **common)


Answer = tuple[str, float, ReplyKind]  # (responder, RTT in ms, what it answered)


def build_hops(answers: Mapping[int, Sequence[Answer]], sent: Mapping[int, int]) -> tuple[Hop, ...]:
    """Rows for TTL 1 up to the last TTL with an answer, silent TTLs included.

    ``answers`` maps TTL to the answers its probes got, ``sent`` TTL to how many probes count
    as sent. Implements the added-latency rule of the module docstring.
    """
    hops: list[Hop] = []
    previous_avg, previous_ttl = 0.0, 0
    for ttl in range(1, max((ttl for ttl, got in answers.items() if got), default=0) + 1):
        got = answers.get(ttl, ())
        if not got:
            hops.append(Hop(ttl=ttl, address=None, sent=sent.get(ttl, 0), received=0))
            continue
        # The most frequent responder names the row; ties go to the lowest address (stable).
        counts = Counter(source for source, _, _ in got)
        ranked = sorted(counts, key=lambda source: (-counts[source], _sort_key(source)))
        rtts = [rtt for _, rtt, _ in got]
        avg = sum(rtts) / len(rtts)
        hops.append(
            Hop(
                ttl=ttl,
                address=ranked[0],
                addresses=tuple(ranked),
                reply=got[0][2],
                sent=max(sent.get(ttl, 0), len(got)),
                received=len(got),
                rtt_min_ms=min(rtts),
                rtt_avg_ms=avg,
                rtt_max_ms=max(rtts),
                added_ms=avg - previous_avg,
                added_from_ttl=previous_ttl,
            )
        )
        previous_avg, previous_ttl = avg, ttl
    return tuple(hops)


def _build(
    state: _Trace, timeout: float, end: float, deadline: float, begin: float, common: dict[str, Any]
) -> TraceResult:
    # A probe counts as sent once it is answered or its timeout has passed; probes cut off by
    # the deadline while still in flight are neither answered nor lost. TTLs beyond the
    # destination (answered by it because they were sent before its distance was known) go.
    sent: Counter[int] = Counter()
    for probe in state.probes.values():
        if probe.ttl <= state.ttl_limit and (probe.answered or end - probe.sent_at >= timeout):
            sent[probe.ttl] += 1
    hops = build_hops({ttl: got for ttl, got in state.answers.items() if ttl <= state.ttl_limit}, sent)
    hit = end >= deadline
    if state.error and not hops:
        return _failed(state, "error", state.error, common)
    if state.reached:
        status: Status = "ok"
        reason = ""
    elif hops and hops[-1].reply == "unreachable":
        status = "unreached"
        reason = f"hop {hops[-1].ttl} ({hops[-1].address}) answered that {state.address} is unreachable"
    else:
        status = "unreached"
        reason = f"no answer from {state.address}; " + (
            f"the last answer came from hop {len(hops)}" if hops else "no hop answered"
        )
        if hit:
            reason += ", deadline reached"
        elif state.error:
            reason += f" ({state.error})"
    return TraceResult(
        destination=state.destination,
        address=state.address,
        status=status,
        reason=reason,
        hops=hops,
        reached=state.reached,
        deadline_hit=hit,
        duration_s=end - begin,
        **common,
    )


def _sort_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m probes.checks.traceroute DEST...``: print the traces as JSON (as root)."""
    import argparse  # noqa: PLC0415 - only the command line needs it
    import json  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m probes.checks.traceroute")
    parser.add_argument("destinations", nargs="+")
    parser.add_argument("--deadline", type=float, default=10.0)
    parser.add_argument("--probes", type=int, default=3)
    parser.add_argument("--flow-key", help="trace with the ICMP identifiers this tracer name gets every time")
    args = parser.parse_args(argv)
    traces = trace_many(args.destinations, deadline_s=args.deadline, probes_per_hop=args.probes, flow_key=args.flow_key)
    for result in traces:
        print(json.dumps(result.to_dict()))


if __name__ == "__main__":
    main()
