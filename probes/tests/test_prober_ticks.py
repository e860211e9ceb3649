"""The 1 Hz tick scheduler and the probe_id allocator, on a fake clock (nothing sleeps)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from probes.prober.testing import FakeClock
from probes.prober.ticks import (
    FileProbeIdStore,
    MemoryProbeIdStore,
    ProbeIdAllocator,
    Tick,
    TickScheduler,
)

WALL = 1_700_000_000.25  # a quarter past a whole second
MONO = 5_000.0


def make_scheduler(
    clock: FakeClock, store: MemoryProbeIdStore | None = None, lease: int = 60
) -> tuple[TickScheduler, MemoryProbeIdStore]:
    store = store if store is not None else MemoryProbeIdStore()
    return TickScheduler(clock, ProbeIdAllocator(store, lease=lease)), store


def run_to_next(clock: FakeClock, scheduler: TickScheduler, late: float = 0.0) -> Tick:
    clock.advance(max(0.0, scheduler.time_until_next()) + late)
    tick = scheduler.poll()
    assert tick is not None
    return tick


def test_it_starts_on_the_next_whole_wall_second() -> None:
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock)
    first = scheduler.start()
    assert first.wall_ts == 1_700_000_001.0
    assert first.deadline == pytest.approx(MONO + 0.75)
    assert first.probe_id == 1_700_000_001  # the epoch second when nothing says otherwise
    assert scheduler.time_until_next() == pytest.approx(0.75)
    assert scheduler.poll() is None


def test_it_runs_ticks_on_absolute_deadlines() -> None:
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock)
    scheduler.start()
    ticks = [run_to_next(clock, scheduler) for _ in range(5)]
    assert [t.wall_ts for t in ticks] == [1_700_000_001.0 + i for i in range(5)]
    assert [t.deadline - ticks[0].deadline for t in ticks] == pytest.approx([0, 1, 2, 3, 4])
    assert [t.probe_id for t in ticks] == [ticks[0].probe_id + i for i in range(5)]
    assert all(t.lateness == 0 and t.missed is None for t in ticks)
    assert scheduler.poll() is None  # a tick runs once


def test_an_overrun_does_not_shift_later_ticks() -> None:
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock)
    first = scheduler.start()
    late = run_to_next(clock, scheduler, late=0.9)
    assert late.lateness == pytest.approx(0.9)
    assert late.missed is None
    assert scheduler.next_tick.deadline == pytest.approx(first.deadline + 1.0)
    on_time = run_to_next(clock, scheduler)
    assert on_time.deadline == pytest.approx(first.deadline + 1.0)
    assert on_time.lateness == pytest.approx(0.0)


def test_it_reports_ticks_it_woke_up_too_late_for_as_missed() -> None:
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock)
    first = scheduler.start()
    clock.advance(0.75 + 3.5)  # wake 3.5 s after tick 0's deadline: ticks 0, 1, 2 are lost
    tick = scheduler.poll()
    assert tick is not None
    assert tick.probe_id == first.probe_id + 3
    assert tick.wall_ts == first.wall_ts + 3
    assert tick.lateness == pytest.approx(0.5)
    assert tick.missed is not None
    assert tick.missed.count == 3
    assert [(m.probe_id, m.wall_ts) for m in tick.missed] == [(first.probe_id + i, first.wall_ts + i) for i in range(3)]
    assert [m.deadline for m in tick.missed] == pytest.approx([first.deadline + i for i in range(3)])


def test_a_wake_exactly_one_period_late_misses_one_tick() -> None:
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock)
    scheduler.start()
    tick = run_to_next(clock, scheduler, late=1.0)
    assert tick.missed is not None and tick.missed.count == 1
    assert tick.lateness == pytest.approx(0.0)


def test_every_scheduled_tick_is_either_run_or_missed_under_random_wakeups() -> None:
    rnd = random.Random(7)
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock)
    first = scheduler.start()
    seen: list[int] = []
    for _ in range(2_000):
        clock.advance(rnd.choice([0.01, 0.3, 0.99, 1.0, 1.7, 4.2]))
        tick = scheduler.poll()
        if tick is None:
            continue
        assert 0 <= tick.lateness < 1.0
        if tick.missed is not None:
            seen.extend(m.probe_id for m in tick.missed)
        seen.append(tick.probe_id)
    assert seen == list(range(first.probe_id, first.probe_id + len(seen)))


def test_a_wall_clock_step_changes_neither_cadence_nor_probe_ids() -> None:
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock)
    scheduler.start()
    before = run_to_next(clock, scheduler)
    clock.step_wall(-3600.0)  # NTP step back one hour
    after = [run_to_next(clock, scheduler) for _ in range(3)]
    assert [t.probe_id for t in after] == [before.probe_id + 1, before.probe_id + 2, before.probe_id + 3]
    assert [t.wall_ts for t in after] == [before.wall_ts + 1, before.wall_ts + 2, before.wall_ts + 3]
    assert all(t.lateness == 0 for t in after)
    assert scheduler.wall_offset_drift() == pytest.approx(-3600.0)


def test_a_restart_continues_above_the_previous_ids_even_after_the_clock_went_back() -> None:
    store = MemoryProbeIdStore()
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock, store)
    scheduler.start()
    last = [run_to_next(clock, scheduler) for _ in range(10)][-1]

    # New process, wall clock an hour behind, monotonic clock restarted from a small value.
    clock2 = FakeClock(wall=WALL - 3600, mono=12.0)
    scheduler2, _ = make_scheduler(clock2, store)
    first2 = scheduler2.start()
    assert first2.probe_id > last.probe_id
    assert first2.wall_ts == 1_699_996_401.0  # ts still follows the (new) wall clock
    ticks2 = [run_to_next(clock2, scheduler2) for _ in range(3)]
    assert [t.probe_id for t in ticks2] == [first2.probe_id, first2.probe_id + 1, first2.probe_id + 2]


def test_a_normal_restart_goes_back_to_the_epoch_second() -> None:
    store = MemoryProbeIdStore()
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock, store)
    scheduler.start()
    run_to_next(clock, scheduler)
    clock2 = FakeClock(wall=WALL + 600, mono=1.0)  # restarted ten minutes later
    scheduler2, _ = make_scheduler(clock2, store)
    assert scheduler2.start().probe_id == 1_700_000_601


def test_the_persisted_mark_always_covers_every_issued_id() -> None:
    """The crash-safety invariant: an id is only issued if a durable mark >= it exists."""
    store = MemoryProbeIdStore()
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock, store, lease=10)
    scheduler.start()
    for i in range(200):
        tick = run_to_next(clock, scheduler, late=3.3 if i % 37 == 0 else 0.0)
        assert store.value is not None and store.value >= tick.probe_id
        scheduler.checkpoint()
    # Reserved in blocks: a handful of writes for 200 ticks, not one per tick.
    assert store.saves < 200 / 4


def test_issue_persists_on_its_own_when_checkpoint_is_never_called() -> None:
    store = MemoryProbeIdStore()
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock, store, lease=4)
    scheduler.start()
    for _ in range(20):
        tick = run_to_next(clock, scheduler)
        assert store.value is not None and store.value >= tick.probe_id


def test_the_allocator_refuses_to_go_backwards() -> None:
    allocator = ProbeIdAllocator(MemoryProbeIdStore(), lease=10)
    first = allocator.begin(100)
    allocator.issue(first)
    with pytest.raises(ValueError, match="not above"):
        allocator.issue(first)


def test_index_based_deadlines_do_not_accumulate_float_error() -> None:
    clock = FakeClock(wall=WALL, mono=123_456.789)
    scheduler, _ = make_scheduler(clock)
    first = scheduler.start()
    far = scheduler.scheduled(30 * 86_400 * 12)  # a year of ticks
    assert far.deadline - first.deadline == 30 * 86_400 * 12
    assert far.wall_ts == first.wall_ts + 30 * 86_400 * 12


def test_file_store_round_trips_and_survives_a_new_process(tmp_path: Path) -> None:
    path = tmp_path / "state" / "probe_id"
    store = FileProbeIdStore(path)
    assert store.load() is None
    store.save(1_700_000_123)
    store.close()
    again = FileProbeIdStore(path)
    assert again.load() == 1_700_000_123
    assert not path.with_name("probe_id.tmp").exists()
    again.close()


def test_file_store_refuses_a_second_prober_on_the_same_state(tmp_path: Path) -> None:
    first = FileProbeIdStore(tmp_path / "probe_id")
    with pytest.raises(RuntimeError, match="another prober"):
        FileProbeIdStore(tmp_path / "probe_id")
    first.close()
    FileProbeIdStore(tmp_path / "probe_id").close()  # free again once the first one is gone


def test_file_store_does_not_guess_over_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "probe_id"
    path.write_text("12ab\n")
    store = FileProbeIdStore(path)
    with pytest.raises(ValueError, match="corrupt"):
        store.load()
    store.close()


def test_scheduler_with_file_store_continues_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "probe_id"
    ids: list[int] = []
    for run in range(3):
        store = FileProbeIdStore(path)
        clock = FakeClock(wall=WALL, mono=MONO)  # every run sees the same wall clock
        scheduler = TickScheduler(clock, ProbeIdAllocator(store, lease=5))
        scheduler.start()
        for _ in range(4 + run):
            ids.append(run_to_next(clock, scheduler).probe_id)
            scheduler.checkpoint()
        store.close()
    assert ids == sorted(set(ids))  # strictly increasing, no repeats


def test_poll_before_start_is_an_error() -> None:
    scheduler, _ = make_scheduler(FakeClock())
    with pytest.raises(RuntimeError):
        scheduler.poll()


# --- Quiet windows: when other work of the process keeps off the ticks --------------------------


def test_work_that_fits_before_the_next_tick_starts_now() -> None:
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock)
    scheduler.start()
    run_to_next(clock, scheduler)
    clock.advance(0.3)
    assert scheduler.quiet_delay(0.2, after=0.1) == 0.0  # ends 0.5 s before the next tick


def test_work_that_would_run_into_the_next_tick_waits_until_just_after_it() -> None:
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock)
    scheduler.start()
    run_to_next(clock, scheduler)
    clock.advance(0.85)
    assert scheduler.quiet_delay(0.2, after=0.1) == pytest.approx(0.15 + 0.1)


def test_work_keeps_off_the_first_moments_after_a_tick() -> None:
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock)
    scheduler.start()
    run_to_next(clock, scheduler)
    clock.advance(0.04)
    assert scheduler.quiet_delay(0.2, after=0.1) == pytest.approx(0.06)


def test_a_due_tick_the_loop_has_not_run_yet_is_waited_for() -> None:
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock)
    scheduler.start()
    run_to_next(clock, scheduler)
    clock.advance(1.02)  # the loop is 20 ms late for the next tick
    assert scheduler.quiet_delay(0.2, after=0.1) == pytest.approx(0.1)


def test_work_too_long_for_any_window_only_keeps_off_the_tick_start() -> None:
    clock = FakeClock(wall=WALL, mono=MONO)
    scheduler, _ = make_scheduler(clock)
    scheduler.start()
    run_to_next(clock, scheduler)
    clock.advance(0.5)
    assert scheduler.quiet_delay(0.95, after=0.1) == 0.0  # waiting would not make it fit


def test_before_start_the_first_tick_is_on_the_next_whole_wall_second() -> None:
    clock = FakeClock(wall=WALL, mono=MONO)  # a quarter past: the first tick is 0.75 s away
    scheduler, _ = make_scheduler(clock)
    assert scheduler.quiet_delay(0.8, after=0.1) == pytest.approx(0.75 + 0.1)
    assert scheduler.quiet_delay(0.5, after=0.1) == 0.0
