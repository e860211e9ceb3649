"""Who tests whom, and when: a round-robin pairing schedule for exclusive bandwidth tests.

perfSONAR's rule is that a host takes part in one throughput test at a time: two tests sharing
a host's link measure each other, not the path. A round-robin tournament gives exactly that.
With the circle method, ``n`` members (plus an idle "bye" when ``n`` is odd) sit in a circle;
the first stays put, the others move one seat per round, and round ``r`` pairs seat ``i`` with
seat ``n-1-i``. After ``n-1`` rounds every pair has met exactly once and no member ever plays
twice in one round, so the tests of one round (a *slot*) can all run at the same time.

Hosts are not the only thing tests share: members of one location usually leave it over the
same uplink, so two tests from one location at once (us1-a with eu1, us1-b with asia1) would each
read about half of that uplink. With ``exclusive`` (the member's location), the schedule is made
one level up: a round-robin over the locations gives rounds of disjoint location pairs, and each
such round becomes as many slots as its largest location pair has member pairs, one member pair
of every location pair per slot. No location is then in two tests of a slot, every pair of
members of different locations still meets once, and with ``m`` members in each of ``L``
locations a pass takes ``m**2`` times the ``L-1`` (``L`` when odd) location rounds, the fewest
possible: a location takes part in ``m**2 * (L-1)`` tests and only one per slot.

A test of a pair measures both directions (the first member of a pair downloads from and
uploads to the second), so one pass of the schedule covers every ordered pair exactly once.
Which member of a pair runs the test is chosen so that every member runs half of its tests
(rounded), and the choice is swapped every other interval.

Nothing here imports Django: ``probes.bandwidth_services`` turns the slots into tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# A slot holds a download and an upload of the configured duration, plus this much for the
# connections, the upload's report, storing the results and a late start.
SLOT_MARGIN_S = 5.0


def slot_seconds(duration_s: float) -> float:
    """How long one slot of tests lasts: both directions of one test, and the margin."""
    return 2 * duration_s + SLOT_MARGIN_S


@dataclass(frozen=True)
class Quiet:
    """Times the tests keep out of: ``busy_s`` seconds from ``first_s`` on, every ``period_s``
    (seconds from the start of the interval; ``first_s`` may be negative).

    The mesh rounds' windows: a bandwidth test fills the links it crosses, and latency, jitter
    and loss measured across a full link read the test's queue, not the path.
    """

    first_s: float
    period_s: float
    busy_s: float

    def clear_start(self, t: float, slot_s: float) -> float | None:
        """The earliest start from ``t`` on whose slot misses every window; None when no gap
        between two windows holds a slot."""
        if slot_s > self.period_s - self.busy_s:
            return None
        window = (
            self.first_s + math.floor((t - self.first_s) / self.period_s) * self.period_s
        )  # the last one at or before t
        if t < window + self.busy_s:
            return window + self.busy_s  # inside a window: right after it
        if t + slot_s > window + self.period_s:
            return window + self.period_s + self.busy_s  # would run into the next one: right after that
        return t


def clear_start(quiet: Sequence[Quiet], t: float, slot_s: float, latest: float) -> float | None:
    """The earliest start from ``t`` on whose slot misses the windows of every one of ``quiet``;
    None when there is none up to ``latest``."""
    while t <= latest:
        moved = False
        for windows in quiet:
            start = windows.clear_start(t, slot_s)
            if start is None:
                return None
            if start != t:
                t, moved = start, True  # always past the end of a window: this loop ends
        if not moved:
            return t
    return None


@dataclass(frozen=True)
class Slot(Generic[T]):
    """One round of the schedule, placed in the interval: its tests start ``offset_s`` in."""

    index: int
    offset_s: float
    pairs: tuple[tuple[T, T], ...]  # (source, target): the source runs the test


def round_robin(
    members: Sequence[T], allowed: Callable[[T, T], bool] | None = None, flip: bool = False
) -> list[tuple[tuple[T, T], ...]]:
    """Rounds of disjoint pairs covering every allowed pair of ``members`` exactly once.

    ``allowed(a, b)`` leaves a pair out (for example two members of one location); a round left
    without pairs is dropped. ``flip`` swaps the order of every pair (used on odd intervals, so
    the member that ran a pair's test last time is the target this time).
    """
    count = len(members)
    seats: list[int | None] = list(range(count))
    if count % 2:
        seats.append(None)  # the bye: whoever sits opposite has no test this round
    n = len(seats)
    odd = n - 1 if count % 2 else n + 1  # an odd circle for orienting pairs (the bye included)
    rounds: list[tuple[tuple[T, T], ...]] = []
    for _ in range(n - 1):
        pairs = []
        for i in range(n // 2):
            a, b = seats[i], seats[n - 1 - i]
            if a is None or b is None:
                continue
            # a runs the test when b is less than half way round the circle from it: every
            # member runs half of its tests (rounded), and ``flip`` hands them to the other side.
            if ((b - a) % odd <= odd // 2) == flip:
                a, b = b, a
            if allowed is None or allowed(members[a], members[b]):
                pairs.append((members[a], members[b]))
        if pairs:
            rounds.append(tuple(pairs))
        seats = [seats[0], seats[-1], *seats[1:-1]]  # everyone but the first moves one seat
    return rounds


def exclusive_rounds(
    members: Sequence[T],
    group: Callable[[T], Hashable],
    allowed: Callable[[T, T], bool] | None = None,
    flip: bool = False,
) -> list[tuple[tuple[T, T], ...]]:
    """Rounds covering every allowed pair of members of different groups exactly once, no group
    in two pairs of a round (see the module docstring).

    Within a pair of groups (g, h) the member pairs alternate which side runs the test, so every
    member runs about half of its tests, and ``flip`` swaps them all.
    """
    groups: dict[Hashable, list[T]] = {}
    for member in members:
        groups.setdefault(group(member), []).append(member)
    rounds: list[tuple[tuple[T, T], ...]] = []
    for group_round in round_robin(list(groups), flip=flip):
        queues = []
        for g, h in group_round:
            pairs = [
                (a, b) if (i + j) % 2 == 0 else (b, a)
                for i, a in enumerate(groups[g])
                for j, b in enumerate(groups[h])
                if allowed is None or allowed(a, b)
            ]
            queues.append(pairs)
        for k in range(max(map(len, queues), default=0)):
            rounds.append(tuple(queue[k] for queue in queues if k < len(queue)))
    return rounds


def plan_slots(
    members: Sequence[T],
    interval_s: float,
    slot_s: float,
    cycle: int = 0,
    allowed: Callable[[T, T], bool] | None = None,
    exclusive: Callable[[T], Hashable] | None = None,
    quiet: Sequence[Quiet] = (),
) -> tuple[list[Slot[T]], int]:
    """The slots of interval number ``cycle``, spread evenly across it; and the rounds in all.

    When every round fits (rounds x ``slot_s`` <= ``interval_s``) each interval runs the whole
    schedule, its slots ``interval_s / rounds`` apart. Otherwise each interval runs as many
    rounds as fit and the next interval goes on where this one stopped, so a full cycle takes
    ``ceil(rounds / fitting)`` intervals and no slot is ever shorter than ``slot_s``.

    With ``exclusive`` no two tests of a slot share a group (:func:`exclusive_rounds`), else
    only members are exclusive (:func:`round_robin`). With ``quiet`` each slot moves forward,
    as little as needed, out of their windows, when every slot then still fits the interval
    (:func:`place`); otherwise they keep their even spacing.
    """
    flip = bool(cycle % 2)
    if exclusive is None:
        rounds = round_robin(members, allowed, flip=flip)
    else:
        rounds = exclusive_rounds(members, exclusive, allowed, flip=flip)
    if not rounds:
        return [], 0
    fitting = max(1, int(interval_s // slot_s))
    if len(rounds) <= fitting:
        chosen = rounds
    else:
        first = (cycle * fitting) % len(rounds)
        chosen = [rounds[(first + k) % len(rounds)] for k in range(fitting)]
    spacing = interval_s / len(chosen)
    offsets = [k * spacing for k in range(len(chosen))]
    if quiet:
        offsets = place(offsets, slot_s, interval_s, quiet) or offsets
    return [Slot(k, offset, pairs) for k, (offset, pairs) in enumerate(zip(offsets, chosen, strict=True))], len(rounds)


def place(offsets: Sequence[float], slot_s: float, interval_s: float, quiet: Sequence[Quiet]) -> list[float] | None:
    """``offsets`` (ascending) moved forward out of the ``quiet`` windows, one after the other so
    that no two slots overlap; None when that is impossible within ``interval_s``."""
    placed: list[float] = []
    free_from = 0.0
    for offset in offsets:
        start = clear_start(quiet, max(offset, free_from), slot_s, interval_s - slot_s)
        if start is None:
            return None
        placed.append(start)
        free_from = start + slot_s
    return placed
