"""The bandwidth pairing schedule: every pair once per interval in both directions, nobody twice
in a slot, slots spread over the interval and never shorter than a test needs."""

import itertools
import random
from collections import Counter
from itertools import permutations

import pytest

from probes.checks.pairing import Quiet, clear_start, place, plan_slots, round_robin, slot_seconds

DIRECTIONS = ("download", "upload")  # what one test of a pair measures, from its source


def traffic(pairs: list[tuple[str, str]]) -> Counter[tuple[str, str]]:
    """(sender, receiver) of every transfer the tests make: download = target sends."""
    flows: Counter[tuple[str, str]] = Counter()
    for source, target in pairs:
        flows[(target, source)] += 1  # download
        flows[(source, target)] += 1  # upload
    return flows


@pytest.mark.parametrize("n", range(2, 14))
def test_every_pair_is_measured_in_both_directions_exactly_once_per_interval(n: int) -> None:
    members = [f"m{i:02}" for i in range(n)]

    slots, rounds = plan_slots(members, interval_s=3600, slot_s=15)

    pairs = [pair for slot in slots for pair in slot.pairs]
    assert traffic(pairs) == Counter(permutations(members, 2))  # every ordered pair, once
    assert rounds == len(slots) == (n - 1 if n % 2 == 0 else n)
    for slot in slots:
        in_slot = [member for pair in slot.pairs for member in pair]
        assert len(in_slot) == len(set(in_slot)), f"a member is in two tests of slot {slot.index}"


def test_slots_are_spread_evenly_across_the_interval() -> None:
    slots, _ = plan_slots([f"m{i}" for i in range(6)], interval_s=300, slot_s=15)

    assert [slot.offset_s for slot in slots] == [0, 60, 120, 180, 240]


def test_every_member_runs_half_of_its_tests_and_the_other_half_next_interval() -> None:
    members = [f"m{i}" for i in range(7)]
    even = [pair for slot in plan_slots(members, 600, 15, cycle=10)[0] for pair in slot.pairs]
    odd = [pair for slot in plan_slots(members, 600, 15, cycle=11)[0] for pair in slot.pairs]

    assert set(Counter(source for source, _ in even).values()) == {3}
    assert {(b, a) for a, b in even} == set(odd)  # the roles swap


def test_pairs_that_are_not_allowed_are_left_out_and_empty_slots_dropped() -> None:
    where = {"a1": "us1", "a2": "us1", "b1": "eu1", "b2": "eu1"}

    rounds = round_robin(list(where), allowed=lambda a, b: where[a] != where[b])

    pairs = [pair for slot in rounds for pair in slot]
    assert {frozenset(p) for p in pairs} == {frozenset({a, b}) for a in ("a1", "a2") for b in ("b1", "b2")}
    assert all(rounds)  # the slot pairing a1-a2 and b1-b2 is gone, not left empty


def test_a_schedule_longer_than_the_interval_continues_in_the_next_interval() -> None:
    members = [f"m{i:02}" for i in range(10)]  # 9 rounds of 5 tests; 300 s of 60 s slots hold 5
    seen: set[frozenset[str]] = set()

    for cycle in (0, 1):
        slots, rounds = plan_slots(members, interval_s=300, slot_s=60, cycle=cycle)
        assert rounds == 9 and len(slots) == 5
        assert [slot.offset_s for slot in slots] == [0, 60, 120, 180, 240]  # never below a slot
        seen.update(frozenset(pair) for slot in slots for pair in slot.pairs)

    assert len(seen) == 45  # two intervals covered every pair


def test_one_member_or_none_has_nothing_to_test() -> None:
    assert plan_slots(["alone"], 300, 15) == ([], 0)
    assert plan_slots([], 300, 15) == ([], 0)


def test_a_slot_holds_both_directions_and_a_margin() -> None:
    assert slot_seconds(5) == 15


def located(counts: dict[str, int]) -> dict[str, str]:
    """Members named after their location: {"us1-0": "us1", "us1-1": "us1", ...}."""
    return {f"{location}-{i}": location for location, n in counts.items() for i in range(n)}


@pytest.mark.parametrize(
    "counts",
    [
        {"us1": 1, "eu1": 1, "asia1": 1},
        {"us1": 2, "eu1": 2},
        {"us1": 2, "eu1": 2, "asia1": 2},
        {"us1": 3, "eu1": 1, "asia1": 2, "sa1": 1},
        {"us1": 2, "eu1": 2, "asia1": 2, "sa1": 2, "af1": 2},
    ],
)
def test_with_location_exclusivity_no_location_is_in_two_tests_of_a_slot(counts: dict[str, int]) -> None:
    where = located(counts)
    members = list(where)

    slots, rounds = plan_slots(members, interval_s=86_400, slot_s=15, allowed=lambda a, b: where[a] != where[b],
                               exclusive=where.__getitem__)  # fmt: skip

    pairs = [pair for slot in slots for pair in slot.pairs]
    across = Counter((a, b) for a, b in permutations(members, 2) if where[a] != where[b])
    assert traffic(pairs) == across  # every pair of different locations, both directions, once
    for slot in slots:
        in_slot = [where[member] for pair in slot.pairs for member in pair]
        assert len(in_slot) == len(set(in_slot)), f"a location is in two tests of slot {slot.index}"
    # The fewest slots possible when every location has m members: a location takes part in
    # m * m * (L - 1) tests, one per slot.
    if len(set(counts.values())) == 1:
        m, locations = next(iter(counts.values())), len(counts)
        assert rounds == len(slots) == m * m * (locations - 1 if locations % 2 == 0 else locations)


def test_member_exclusivity_alone_lets_two_tests_leave_one_location_at_once() -> None:
    """What the location rule prevents: us1-0 and us1-1 testing at once through us1's uplink."""
    where = located({"us1": 2, "eu1": 2, "asia1": 2})
    slots, _ = plan_slots(list(where), 86_400, 15, allowed=lambda a, b: where[a] != where[b])
    shared = [slot for slot in slots if len({where[m] for pair in slot.pairs for m in pair}) < 2 * len(slot.pairs)]
    assert shared  # member-exclusive slots do share locations


def test_with_location_exclusivity_members_still_run_half_of_their_tests_and_swap_roles() -> None:
    where = located({"us1": 2, "eu1": 2, "asia1": 2, "sa1": 2})
    options = {"allowed": lambda a, b: where[a] != where[b], "exclusive": where.__getitem__}
    even = [pair for slot in plan_slots(list(where), 86_400, 15, cycle=4, **options)[0] for pair in slot.pairs]
    odd = [pair for slot in plan_slots(list(where), 86_400, 15, cycle=5, **options)[0] for pair in slot.pairs]

    assert set(Counter(source for source, _ in even).values()) == {3}  # 6 tests each, 3 as the source
    assert {(b, a) for a, b in even} == set(odd)


def windows_hit(offsets: list[float], slot_s: float, quiet: Quiet, until: float) -> list[float]:
    """The slot starts whose slot overlaps one of ``quiet``'s windows before ``until``."""
    windows = [quiet.first_s + k * quiet.period_s for k in range(int(until / quiet.period_s) + 3)]
    return [o for o in offsets for w in windows if o < w + quiet.busy_s - 1e-9 and w < o + slot_s - 1e-9]


def test_slots_keep_out_of_the_mesh_rounds_when_they_fit_between_them() -> None:
    # Rounds every 60 s for 4 s, the last one dispatched 1 s before this interval began.
    quiet = Quiet(first_s=-1.0, period_s=60, busy_s=4)
    members = [f"m{i}" for i in range(4)]  # 3 slots, evenly 100 s apart

    slots, _ = plan_slots(members, interval_s=300, slot_s=15, quiet=[quiet])

    offsets = [slot.offset_s for slot in slots]
    assert windows_hit(offsets, 15, quiet, 300) == []
    assert offsets == [
        3.0,
        100.0,
        200.0,
    ]  # ...but runs into the one at 59 s... no: only 0 s moves, past the round at -1 s
    assert all(b - a >= 15 for a, b in itertools.pairwise(offsets))


@pytest.mark.parametrize("seed", range(40))
def test_placement_either_misses_every_window_or_keeps_the_even_spacing(seed: int) -> None:
    rng = random.Random(seed)
    period = rng.choice([10, 30, 60, 120])
    quiet = Quiet(first_s=-rng.uniform(0, period), period_s=period, busy_s=rng.uniform(1, 8))
    interval, slot_s, count = rng.choice([300, 600, 900]), rng.choice([9, 15, 25, 45]), rng.randint(1, 12)
    even = [k * interval / count for k in range(count)]

    placed = place(even, slot_s, interval, [quiet])

    if placed is None:  # no room: fine, as long as it says so rather than placing badly
        return
    assert windows_hit(placed, slot_s, quiet, interval) == []
    assert all(b - a >= slot_s - 1e-9 for a, b in itertools.pairwise(placed))  # never two slots at once
    assert placed[-1] + slot_s <= interval and all(p >= e for p, e in zip(placed, even, strict=True))


def test_a_slot_longer_than_the_gap_between_rounds_cannot_be_placed() -> None:
    quiet = Quiet(first_s=0.0, period_s=10, busy_s=3)
    assert quiet.clear_start(0.0, 8) is None
    assert place([0.0, 50.0], 8, 100, [quiet]) is None
    slots, _ = plan_slots(["a", "b", "c"], interval_s=100, slot_s=8, quiet=[quiet])
    assert [slot.offset_s for slot in slots] == [0.0, 100 / 3, 200 / 3]  # evenly spaced, as without


def test_slots_keep_out_of_several_series_of_windows_at_once() -> None:
    mesh = Quiet(first_s=0.0, period_s=60, busy_s=4)  # rounds at 0, 60, 120...
    traceroute = Quiet(first_s=0.0, period_s=300, busy_s=11)  # a trace round at 0 for 11 s

    placed = place([0.0, 100.0, 200.0], 15, 300, [mesh, traceroute])

    assert placed == [11.0, 100.0, 200.0]  # after both rounds that start with the interval
    assert clear_start([mesh, traceroute], 50.0, 15, 300) == 64.0  # 50-65 meets the round at 60
    assert clear_start([mesh, traceroute], 290.0, 15, 300) is None  # nothing fits before the end
