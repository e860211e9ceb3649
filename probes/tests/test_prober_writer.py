"""The batching writer: spool on failure, replay in order, back off, never block the loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from probes.prober.spool import Row, Spool
from probes.prober.testing import from_json_lines, json_lines
from probes.prober.writer import BatchWriter, RejectedRowsError


class FakeTime:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def writer_for(sink: Callable[[bytes], None], spool: Spool, **options: Any) -> BatchWriter:
    return BatchWriter(sink, spool, encode=json_lines, **options)


class Database:
    """A sink that is down while ``down`` is set (or for its first ``fail_first`` calls)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.down = False
        self.calls = 0
        self.failed_calls = 0
        self.received: list[Row] = []
        self.batches: list[int] = []

    def __call__(self, data: bytes) -> None:
        self.calls += 1
        if self.down or self.calls <= self.fail_first:
            self.failed_calls += 1
            raise ConnectionError("could not connect to server")
        rows = from_json_lines(data)
        self.received.extend(rows)
        self.batches.append(len(rows))


def tick_rows(probe_id: int, sources: int = 3) -> list[Row]:
    return [{"probe_id": probe_id, "source": f"s{i}", "ok": True} for i in range(sources)]


def make_writer(sink: Database, tmp_path: Path, clock: FakeTime, **kwargs: float) -> BatchWriter:
    options: dict[str, float] = {"backoff_initial": 1.0, "backoff_max": 8.0, "backoff_jitter": 0.0} | kwargs
    return writer_for(sink, Spool(tmp_path), clock=clock, **options)


def run_flushes(writer: BatchWriter, clock: FakeTime, first_id: int, n: int) -> list[Row]:
    """n ticks of 3 rows each, one flush per second, as the writer thread would do."""
    submitted: list[Row] = []
    for probe_id in range(first_id, first_id + n):
        batch = tick_rows(probe_id)
        submitted.extend(batch)
        writer.submit(batch)
        writer.flush_once()
        clock.now += 1.0
    return submitted


def test_a_healthy_sink_gets_each_batch_directly(tmp_path: Path) -> None:
    db, clock = Database(), FakeTime()
    writer = make_writer(db, tmp_path, clock)
    submitted = run_flushes(writer, clock, 100, 5)
    assert db.received == submitted
    assert db.batches == [3] * 5
    assert writer.stats.rows_written == 15
    assert writer.stats.rows_spooled == 0
    assert writer.spool_depth == 0


def test_after_n_failed_flushes_every_row_arrives_exactly_once_in_order(tmp_path: Path) -> None:
    db, clock = Database(fail_first=4), FakeTime()
    writer = make_writer(db, tmp_path, clock)
    submitted = run_flushes(writer, clock, 100, 40)
    assert db.received == submitted  # nothing lost, nothing doubled, order kept
    assert writer.spool_depth == 0
    assert writer.stats.sink_failures == 4
    assert writer.stats.rows_spooled > 0
    assert writer.stats.rows_replayed == writer.stats.rows_spooled
    assert writer.stats.rows_written + writer.stats.rows_replayed == len(submitted)
    assert writer.stats.backoff_s == 0.0  # reset by the first success


def test_it_backs_off_with_a_cap_while_the_database_is_down(tmp_path: Path) -> None:
    db, clock = Database(), FakeTime()
    writer = make_writer(db, tmp_path, clock)
    db.down = True
    submitted = run_flushes(writer, clock, 100, 60)
    # Attempts at t=0, 1, 3, 7, 15, then every 8 s (the cap): far fewer than 60 flushes.
    assert db.calls == 5 + (60 - 15) // 8
    assert writer.stats.backoff_s == 8.0
    assert writer.spool_depth == len(submitted)  # all of it safe on disk
    db.down = False
    submitted += run_flushes(writer, clock, 160, 10)
    assert db.received == submitted


def test_replay_goes_in_chunks_and_before_new_rows(tmp_path: Path) -> None:
    db, clock = Database(), FakeTime()
    writer = make_writer(db, tmp_path, clock, replay_chunk=9)
    db.down = True
    submitted = run_flushes(writer, clock, 100, 20)
    db.down = False
    clock.now += 60
    submitted += run_flushes(writer, clock, 200, 1)
    assert db.received == submitted
    assert max(db.batches[:-1]) == 9  # whole spooled flushes of 3 rows, up to the chunk size
    assert db.batches[-1] == 3  # the new batch, after the backlog


def test_a_long_backlog_is_replayed_over_several_flushes_without_reordering(tmp_path: Path) -> None:
    clock = FakeTime()

    class SlowDatabase(Database):
        def __call__(self, data: bytes) -> None:
            clock.now += 0.2  # each insert takes 200 ms of (fake) time
            super().__call__(data)

    db = SlowDatabase()
    writer = make_writer(db, tmp_path, clock, replay_chunk=5, replay_budget=0.5)
    db.down = True
    submitted = run_flushes(writer, clock, 100, 30)
    db.down = False
    clock.now += 60
    depth_before = writer.spool_depth
    submitted += run_flushes(writer, clock, 200, 1)
    assert 0 < writer.spool_depth < depth_before  # budget hit: the new batch waits in the spool
    submitted += run_flushes(writer, clock, 201, 40)
    assert db.received == submitted
    assert writer.spool_depth == 0


class PacedDatabase(Database):
    """A sink on its own (fake) clock: every insert takes 300 ms, so a 0.5 s replay budget
    holds two chunks. ``on_call`` runs before each insert (e.g. the loop submitting rows);
    ``done`` is set once ``expect`` rows arrived."""

    def __init__(self, clock: FakeTime, expect: int) -> None:
        super().__init__()
        self.clock = clock
        self.expect = expect
        self.done = threading.Event()
        self.on_call: Callable[[], None] = lambda: None

    def __call__(self, data: bytes) -> None:
        self.on_call()
        self.clock.now += 0.3
        super().__call__(data)
        if len(self.received) >= self.expect:
            self.done.set()


def spool_backlog(tmp_path: Path, ticks: int) -> list[Row]:
    """What an outage left in the spool: ``ticks`` ticks of 3 rows, one record per flush."""
    spool = Spool(tmp_path)
    backlog = []
    for probe_id in range(ticks):
        rows = tick_rows(probe_id)
        spool.append(json_lines(rows), len(rows))
        backlog += rows
    spool.close()
    return backlog


def test_a_backlog_is_replayed_back_to_back_not_one_budget_per_flush_interval(tmp_path: Path) -> None:
    backlog = spool_backlog(tmp_path, 20)
    clock = FakeTime()
    db = PacedDatabase(clock, expect=len(backlog))
    # Ten flushes' worth of budget, and an hour between flushes: a writer that waited a flush
    # interval after each budget would replay two chunks, then nothing for an hour.
    writer = writer_for(db, Spool(tmp_path), clock=clock, replay_chunk=3, replay_budget=0.5, flush_interval=3600)

    writer.start()
    replayed = db.done.wait(10)
    writer.close(timeout=2.0)

    assert replayed and db.received == backlog
    assert writer.stats.flushes >= 10  # the budget still bounded each flush
    assert writer.spool_depth == 0


def test_rows_submitted_during_a_replay_follow_the_backlog_in_order(tmp_path: Path) -> None:
    backlog = spool_backlog(tmp_path, 20)
    clock = FakeTime()
    db = PacedDatabase(clock, expect=len(backlog) + 3 * 5)
    writer = writer_for(db, Spool(tmp_path), clock=clock, replay_chunk=3, replay_budget=0.5, flush_interval=3600)
    live: list[Row] = []

    def tick() -> None:  # the loop hands over a tick's rows while the replay runs
        if len(live) < 3 * 5 and db.calls % 3 == 0:
            rows = tick_rows(100 + len(live) // 3)
            live.extend(rows)
            writer.submit(rows)

    db.on_call = tick
    writer.start()
    replayed = db.done.wait(10)
    writer.close(timeout=2.0)

    assert replayed and db.received == backlog + live
    assert writer.stats.rows_spooled == len(live)  # behind the backlog, not ahead of it


def test_a_sink_that_fails_during_a_replay_sends_the_writer_back_to_its_back_off(tmp_path: Path) -> None:
    spool_backlog(tmp_path, 20)
    db, clock = Database(fail_first=2), FakeTime()
    writer = make_writer(db, tmp_path, clock, replay_chunk=3)

    assert writer.flush_once() is False  # the sink failed: wait, do not hammer it
    assert db.calls == 1 and writer.spool_depth == 60

    clock.now += 1.0
    writer.flush_once()
    clock.now += 2.0
    assert writer.flush_once() is False  # the whole backlog went within the budget
    assert len(db.received) == 60 and writer.spool_depth == 0


def test_each_replayed_chunk_waits_for_the_pacer_first(tmp_path: Path) -> None:
    backlog = spool_backlog(tmp_path, 4)
    asked: list[float] = []

    def pacer(chunk_seconds: float) -> float:  # the loop: "a tick is near, wait 50 ms" once
        asked.append(chunk_seconds)
        return 0.05 if len(asked) == 1 else 0.0

    db = Database()
    writer = writer_for(db, Spool(tmp_path), replay_chunk=3, pacer=pacer)
    started = time.monotonic()
    writer.flush_once()
    elapsed = time.monotonic() - started

    assert db.received == backlog and db.batches == [3] * 4
    assert len(asked) == 1 + 4 and all(seconds > 0 for seconds in asked)  # asked again after waiting
    assert elapsed >= 0.05


def test_rows_spooled_by_a_previous_process_are_replayed_first(tmp_path: Path) -> None:
    old = Spool(tmp_path)
    old.append(json_lines(tick_rows(1) + tick_rows(2)), 6)
    old.close()
    db, clock = Database(), FakeTime()
    writer = make_writer(db, tmp_path, clock)
    submitted = run_flushes(writer, clock, 3, 2)
    assert db.received == tick_rows(1) + tick_rows(2) + submitted


def test_a_hanging_sink_is_abandoned_and_its_rows_delivered_at_least_once(tmp_path: Path) -> None:
    release = threading.Event()
    finished = threading.Event()
    received: list[Row] = []
    calls = 0

    def sink(data: bytes) -> None:
        nonlocal calls
        calls += 1
        rows = from_json_lines(data)
        if calls == 1:
            release.wait(10)  # the first insert hangs (a lock wait, a blackholed connection)
            received.extend(rows)  # ... and commits after all
            finished.set()
            return
        received.extend(rows)

    clock = FakeTime()
    writer = writer_for(sink, Spool(tmp_path), clock=clock, sink_timeout=0.05, backoff_jitter=0.0)
    writer.submit(tick_rows(1))
    writer.flush_once()
    assert writer.stats.sink_timeouts == 1
    assert writer.spool_depth == 3  # abandoned rows are safe on disk

    clock.now += 5
    writer.submit(tick_rows(2))
    writer.flush_once()
    assert calls == 1  # no second call while the first is still stuck
    assert writer.spool_depth == 6

    release.set()
    assert finished.wait(5)
    clock.now += 5
    writer.submit(tick_rows(3))
    writer.flush_once()
    # Probe 1 arrived twice (the stuck call committed, then the replay): at-least-once, which
    # the primary key absorbs. First occurrences are complete and in order.
    first_seen = list(dict.fromkeys((r["probe_id"], r["source"]) for r in received))
    assert first_seen == [(r["probe_id"], r["source"]) for r in tick_rows(1) + tick_rows(2) + tick_rows(3)]
    assert len(received) == 12
    assert writer.spool_depth == 0


def test_rejected_rows_are_quarantined_instead_of_blocking_the_rest(tmp_path: Path) -> None:
    received: list[Row] = []

    def sink(data: bytes) -> None:
        rows = from_json_lines(data)
        if any(r["probe_id"] == 2 for r in rows):
            raise RejectedRowsError("value too long for column source")
        received.extend(rows)

    clock = FakeTime()
    writer = writer_for(sink, Spool(tmp_path), clock=clock)
    for probe_id in (1, 2, 3):
        writer.submit(tick_rows(probe_id))
        writer.flush_once()
    assert received == tick_rows(1) + tick_rows(3)
    assert writer.stats.rows_rejected == 3
    assert writer.stats.sink_failures == 0
    header, rejected = (tmp_path / "rejected.log").read_bytes().split(b"\n", 1)
    assert header.startswith(b"#") and from_json_lines(rejected) == tick_rows(2)


def test_a_failing_spool_keeps_rows_in_memory_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, clock = Database(), FakeTime()
    writer = make_writer(db, tmp_path, clock)
    db.down = True
    real_append = writer.spool.append
    failures = iter([OSError(28, "No space left on device")])

    def append(payload: bytes, rows: int) -> None:
        error = next(failures, None)
        if error is not None:
            raise error
        real_append(payload, rows)

    monkeypatch.setattr(writer.spool, "append", append)
    submitted = run_flushes(writer, clock, 100, 3)
    assert writer.stats.spool_errors == 1
    db.down = False
    clock.now += 60
    submitted += run_flushes(writer, clock, 200, 1)
    assert db.received == submitted


def test_the_in_memory_buffer_is_bounded(tmp_path: Path) -> None:
    writer = writer_for(Database(), Spool(tmp_path), max_pending_rows=5)
    writer.submit(tick_rows(1) + tick_rows(2))
    assert writer.stats.rows_dropped == 1


def test_close_spools_what_the_sink_cannot_take(tmp_path: Path) -> None:
    db = Database()
    db.down = True
    writer = writer_for(db, Spool(tmp_path), flush_interval=3600)
    writer.start()
    writer.submit(tick_rows(1))
    writer.close(timeout=2.0)
    assert db.calls == 1  # one attempt with the remaining deadline
    assert writer.spool_depth == 3
    writer.submit(tick_rows(2))  # late rows after close still reach the spool
    assert writer.spool_depth == 6
    assert [r["probe_id"] for r in from_json_lines(Spool(tmp_path).read_batch(10).data)] == [1, 1, 1, 2, 2, 2]  # type: ignore[union-attr]


def test_close_writes_pending_rows_when_the_sink_is_up(tmp_path: Path) -> None:
    db = Database()
    writer = writer_for(db, Spool(tmp_path), flush_interval=3600)
    writer.start()
    writer.submit(tick_rows(1))
    writer.close(timeout=2.0)
    assert db.received == tick_rows(1)
    assert writer.spool_depth == 0


def test_close_respects_its_deadline_with_a_hanging_sink(tmp_path: Path) -> None:
    release = threading.Event()

    def hanging(data: bytes) -> None:
        release.wait(10)

    writer = writer_for(hanging, Spool(tmp_path), flush_interval=3600)
    writer.start()
    writer.submit(tick_rows(1))
    started = time.monotonic()
    writer.close(timeout=0.3)
    elapsed = time.monotonic() - started
    release.set()
    assert elapsed < 1.0
    assert writer.spool_depth == 3


def test_submit_never_waits_for_a_slow_database(tmp_path: Path) -> None:
    entered = threading.Event()
    release = threading.Event()
    received: list[Row] = []

    def sink(data: bytes) -> None:
        entered.set()
        release.wait(10)  # the database hangs until the test releases it
        received.extend(from_json_lines(data))

    writer = writer_for(sink, Spool(tmp_path), flush_interval=0.01, sink_timeout=0.2)
    writer.start()
    writer.submit(tick_rows(0))
    assert entered.wait(5)
    worst = 0.0
    for probe_id in range(1, 3_001):
        t0 = time.perf_counter()
        writer.submit(tick_rows(probe_id))
        worst = max(worst, time.perf_counter() - t0)
    release.set()
    writer.close(timeout=5.0)
    # The sink hangs for seconds; a submit that waited for it would take that long. 0.5 s
    # leaves room for a loaded CI machine descheduling this thread, and still proves it.
    assert worst < 0.5
    # Nothing is lost: what the sink has not taken is in the spool.
    spooled = Spool(tmp_path).read_batch(100_000)
    stored = received + (from_json_lines(spooled.data) if spooled is not None else [])
    assert {(r["probe_id"], r["source"]) for r in stored} == {
        (r["probe_id"], r["source"]) for probe_id in range(3_001) for r in tick_rows(probe_id)
    }
