"""The prober loop: on a fake clock and transport, and for ~5 real ticks with pycurl on 127.0.0.1."""

from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from probes.prober.curl_transport import CurlMultiTransport
from probes.prober.loop import MISSED, QUIET_AFTER_TICK, ProberLoop, Target
from probes.prober.spool import Row, Spool
from probes.prober.target_cache import TargetCache
from probes.prober.testing import (
    FakeClock,
    FakeResponse,
    FakeTransport,
    closed_port,
    from_json_lines,
    json_lines,
    local_http_server,
)
from probes.prober.ticks import (
    FileProbeIdStore,
    MemoryProbeIdStore,
    MissedTicks,
    ProbeIdAllocator,
    SystemClock,
    TickScheduler,
)
from probes.prober.transport import NOT_STARTED, OVERLOAD, STATUS, TIMEOUT, Completion, SampleKey
from probes.prober.writer import BatchWriter

FAST = Target("fast", "http://fast.example/")
SLOW = Target("slow", "http://slow.example/", timeout=1.5)
DEAD = Target("dead", "http://dead.example/", timeout=1.5)


def respond_by_url(key: SampleKey, url: str) -> FakeResponse:
    if "slow" in url:
        return FakeResponse(duration=1.3)
    if "dead" in url:
        return FakeResponse(duration=60.0)  # never answers: the timeout ends it
    if "error" in url:
        return FakeResponse(duration=0.05, status=500)
    return FakeResponse(duration=0.02)


class Harness:
    def __init__(
        self,
        targets: Sequence[Target] | Callable[[], Sequence[Target]],
        *,
        respond: Callable[[SampleKey, str], FakeResponse] = respond_by_url,
        **loop_options: Any,
    ) -> None:
        self.clock = FakeClock(wall=1_700_000_000.4, mono=100.0)
        self.transport = FakeTransport(self.clock, respond)
        self.store = MemoryProbeIdStore()
        self.scheduler = TickScheduler(self.clock, ProbeIdAllocator(self.store))
        self.emitted: list[list[Row]] = []
        load = targets if callable(targets) else (lambda: targets)
        self.loop = ProberLoop(
            clock=self.clock,
            scheduler=self.scheduler,
            transport=self.transport,
            load_targets=load,
            emit=lambda rows: self.emitted.append(list(rows)),
            run_async=lambda fn: fn(),  # reload inline: deterministic
            **loop_options,
        )

    @property
    def rows(self) -> list[Row]:
        return [row for batch in self.emitted for row in batch]

    def by_probe(self) -> dict[int, dict[str, Row]]:
        grouped: dict[int, dict[str, Row]] = defaultdict(dict)
        for row in self.rows:
            assert row["source"] not in grouped[int(str(row["probe_id"]))], "duplicate (probe_id, source)"
            grouped[int(str(row["probe_id"]))][str(row["source"])] = row
        return dict(grouped)

    def start_times(self, source: str) -> list[float]:
        return [t for key, _url, t in self.transport.started if key.source == source]


def test_one_sample_per_tick_per_target_on_whole_seconds() -> None:
    h = Harness([FAST, SLOW, Target("err", "http://error.example/")])
    h.loop.run(max_ticks=10)
    groups = h.by_probe()
    assert len(groups) == 10
    probe_ids = sorted(groups)
    assert probe_ids == list(range(probe_ids[0], probe_ids[0] + 10))
    for probe_id, group in groups.items():
        assert set(group) == {"fast", "slow", "err"}
        ts = {row["ts"] for row in group.values()}
        assert len(ts) == 1
        (only,) = ts
        assert isinstance(only, float) and only.is_integer()
        assert only - probe_id == probe_ids[0] - 1_700_000_001  # probe_id follows the tick
    assert h.loop.stats.samples == Counter({"ok": 20, STATUS: 10})
    assert h.loop.stats.ticks == 10


def test_a_slow_target_overlaps_the_next_tick_without_shifting_it() -> None:
    h = Harness([FAST, SLOW])
    h.loop.run(max_ticks=6)
    starts = h.start_times("slow")
    assert starts == pytest.approx([starts[0] + i for i in range(6)])  # exact 1 s cadence
    assert h.start_times("fast") == starts
    assert h.loop.stats.lateness_max == 0.0
    assert h.loop.stats.in_flight_max >= 2  # tick k's slow transfer still running at tick k+1
    slow_rows = [r for r in h.rows if r["source"] == "slow"]
    assert len(slow_rows) == 6  # including the one finished during the drain
    assert all(r["ok"] and r["total_ms"] == pytest.approx(1300.0) for r in slow_rows)


def test_a_dead_target_times_out_and_is_recorded_at_its_own_tick() -> None:
    h = Harness([FAST, DEAD])
    h.loop.run(max_ticks=4)
    dead = {int(str(r["probe_id"])): r for r in h.rows if r["source"] == "dead"}
    assert len(dead) == 4
    assert all(r["ok"] is False and r["error_class"] == TIMEOUT for r in dead.values())
    assert [r["ts"] for r in dead.values()] == [r["ts"] for r in h.rows if r["source"] == "fast"]


def test_success_is_the_status_the_target_expects() -> None:
    def respond(key: SampleKey, url: str) -> FakeResponse:
        return FakeResponse(status=int(url.rsplit("/", 1)[1]))

    h = Harness(
        [
            Target("ok", "http://x/200"),
            Target("redirect", "http://x/301"),
            Target("server-error", "http://x/500"),
            Target("not-found", "http://x/404"),
            Target("expect-404", "http://x/404", ok_statuses=frozenset({404})),
        ],
        respond=respond,
    )
    h.loop.run(max_ticks=1)
    result = {r["source"]: (r["ok"], r["error_class"]) for r in h.rows}
    assert result == {
        "ok": (True, None),
        "redirect": (True, None),
        "server-error": (False, STATUS),
        "not-found": (False, STATUS),
        "expect-404": (True, None),
    }


def test_the_in_flight_bound_records_overload_instead_of_dropping() -> None:
    targets = [Target(f"dead{i}", "http://dead.example/", timeout=1.5) for i in range(3)]
    h = Harness(targets, max_in_flight=4)
    h.loop.run(max_ticks=3)
    groups = h.by_probe()
    assert all(len(group) == 3 for group in groups.values())  # still one row per target per tick
    overload = [r for r in h.rows if r["error_class"] == OVERLOAD]
    assert overload and all(r["ok"] is False for r in overload)
    assert h.loop.stats.samples[OVERLOAD] == len(overload)
    assert len(h.transport.started) + len(overload) == 3 * 3  # every sample started or recorded


def test_the_in_flight_bound_starves_a_different_target_each_tick() -> None:
    def respond(key: SampleKey, url: str) -> FakeResponse:
        return FakeResponse(duration=0.5)  # done before the next tick: two slots each tick

    targets = [Target(f"t{i}", f"http://t{i}.example/") for i in range(4)]
    h = Harness(targets, respond=respond, max_in_flight=2)
    h.loop.run(max_ticks=4)
    starved_by_tick = [
        sorted(source for source, row in group.items() if row["error_class"] == OVERLOAD)
        for _, group in sorted(h.by_probe().items())
    ]
    # A fixed order would starve t2 and t3 at every tick; the starved go first next time.
    assert starved_by_tick == [["t2", "t3"], ["t0", "t1"], ["t2", "t3"], ["t0", "t1"]]


def test_without_overload_the_targets_start_in_their_order_every_tick() -> None:
    targets = [Target(f"t{i}", f"http://t{i}.example/") for i in range(4)]
    h = Harness(targets)
    h.loop.run(max_ticks=3)
    order = [key.source for key, _url, _at in h.transport.started]
    assert order == ["t0", "t1", "t2", "t3"] * 3


def test_an_unexpected_status_says_which_statuses_were_expected() -> None:
    def respond(key: SampleKey, url: str) -> FakeResponse:
        return FakeResponse(status=int(url.rsplit("/", 1)[1]))

    h = Harness(
        [
            Target("default", "http://x/404"),
            Target("listed", "http://x/302", ok_statuses=frozenset({200, 204, *range(300, 302)})),
        ],
        respond=respond,
    )
    h.loop.run(max_ticks=1)
    errors = {r["source"]: (r["error_class"], r["error"]) for r in h.rows}
    assert errors == {
        "default": (STATUS, "HTTP 404, expected 200-399"),
        "listed": (STATUS, "HTTP 302, expected 200,204,300-301"),
    }


def test_missed_ticks_are_counted_and_recorded_as_unknown() -> None:
    h = Harness([FAST, SLOW], missed_rows_max_ticks=300)
    ticks_seen = 0

    def emit(rows: Sequence[Row]) -> None:
        nonlocal ticks_seen
        ticks_seen += 1
        h.emitted.append(list(rows))
        if ticks_seen == 2:
            h.transport.stall_next_poll(3.4)  # the process freezes for 3.4 s

    h.loop._emit = emit
    h.loop.run(max_ticks=6)
    # The freeze began 20 ms after tick 3 (first emit is at tick 2: tick 1 has no results yet)
    # and ended 3.42 s later: ticks 4 and 5 were lost, tick 6 ran 0.42 s late.
    assert h.loop.stats.missed_ticks == 2
    assert h.loop.stats.lateness_max == pytest.approx(0.42)
    missed = [r for r in h.rows if r["error_class"] == MISSED]
    assert len(missed) == 2 * 2
    assert all(r["ok"] is None for r in missed)
    groups = h.by_probe()
    probe_ids = sorted(groups)
    assert probe_ids == list(range(probe_ids[0], probe_ids[0] + 8))  # 6 run + 2 missed, no hole
    assert [int(str(r["probe_id"])) - probe_ids[0] for r in missed] == [3, 3, 4, 4]
    # The late tick did not drag the schedule: the next ones are back on the original grid.
    starts = h.start_times("fast")
    assert [s - starts[0] for s in starts] == pytest.approx([0, 1, 2, 5.42, 6, 7])


def test_missed_ticks_go_to_the_callback_and_not_into_samples_by_default() -> None:
    reported: list[MissedTicks] = []
    h = Harness([FAST], on_missed=reported.append)
    h.transport.stall_next_poll(2.5)
    h.loop.run(max_ticks=3)
    (gap,) = reported
    assert gap.count == 2
    assert [m.probe_id for m in gap] == [gap.first_probe_id, gap.first_probe_id + 1]
    assert h.loop.stats.missed_ticks == 2 and h.loop.stats.last_missed == gap
    assert not [r for r in h.rows if r["error_class"] == MISSED]


def test_a_long_gap_is_counted_but_not_written_row_by_row() -> None:
    h = Harness([FAST], missed_rows_max_ticks=10)
    h.transport.stall_next_poll(3_600)
    h.loop.run(max_ticks=2)
    assert h.loop.stats.missed_ticks > 3_000
    assert not [r for r in h.rows if r["error_class"] == MISSED]


def test_targets_are_reloaded_periodically() -> None:
    added = Target("added", "http://fast.example/added")
    calls = 0

    def load() -> list[Target]:
        nonlocal calls
        calls += 1
        return [FAST] if calls < 3 else [FAST, added]

    h = Harness(load, reload_interval=2.0)
    h.loop.run(max_ticks=10)
    sources_by_tick = [set(group) for _, group in sorted(h.by_probe().items())]
    assert sources_by_tick[0] == {"fast"}
    assert sources_by_tick[-1] == {"fast", "added"}
    first_with_added = next(i for i, s in enumerate(sources_by_tick) if "added" in s)
    assert first_with_added <= 6  # within a few reload intervals, not at restart
    assert h.loop.stats.targets == 2


def test_a_failing_reload_keeps_probing_the_previous_targets() -> None:
    calls = 0

    def load() -> list[Target]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ConnectionError("database is down")
        return [FAST]

    h = Harness(load, reload_interval=1.0)
    h.loop.run(max_ticks=5)
    assert len(h.by_probe()) == 5
    assert h.loop.stats.reload_failures >= 3


def database_down() -> list[Target]:
    raise ConnectionError("could not connect to server: Connection refused")


def test_a_loop_started_while_the_database_is_down_probes_the_targets_it_last_loaded(tmp_path: Path) -> None:
    cache = TargetCache(tmp_path / "targets.json")
    Harness([FAST, SLOW], target_cache=cache).loop.run(max_ticks=1)  # the previous run

    h = Harness(database_down, target_cache=TargetCache(tmp_path / "targets.json"))
    h.loop.run(max_ticks=3)

    assert Counter(r["source"] for r in h.rows) == {"fast": 3, "slow": 3}
    assert h.loop.stats.targets_from_cache and h.loop.stats.targets == 2


def test_the_first_list_the_database_gives_replaces_the_cached_one(tmp_path: Path) -> None:
    cache = TargetCache(tmp_path / "targets.json")
    cache.save([FAST, SLOW])
    added = Target("added", "http://fast.example/added")
    calls = 0

    def load() -> list[Target]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return database_down()
        return [FAST, added]

    h = Harness(load, target_cache=cache, reload_interval=1.0)
    h.loop.run(max_ticks=4)

    sources_by_tick = [set(group) for _, group in sorted(h.by_probe().items())]
    assert sources_by_tick[0] == {"fast", "slow"}
    assert sources_by_tick[-1] == {"fast", "added"}
    assert not h.loop.stats.targets_from_cache
    assert cache.load() == [FAST, added]  # and it is what the next start falls back to


def test_an_unchanged_target_list_is_not_rewritten_at_every_reload(tmp_path: Path) -> None:
    cache = TargetCache(tmp_path / "targets.json")
    Harness([FAST], target_cache=cache).loop.run(max_ticks=1)
    written = (tmp_path / "targets.json").stat().st_ino

    h = Harness([FAST], target_cache=cache, reload_interval=1.0)
    h.loop.run(max_ticks=5)

    assert h.loop.stats.reloads >= 4
    assert (tmp_path / "targets.json").stat().st_ino == written  # an atomic rewrite is a new file


def test_without_a_cache_a_loop_started_while_the_database_is_down_waits_for_it(tmp_path: Path) -> None:
    h = Harness(database_down, target_cache=TargetCache(tmp_path / "targets.json"))
    h.loop.run(max_ticks=2)
    assert h.rows == [] and h.loop.stats.reload_failures >= 1


def test_each_new_target_list_is_handed_over_once_it_is_in_use() -> None:
    lists = iter([[FAST, SLOW], [FAST]])
    seen: list[list[str]] = []
    h = Harness(
        lambda: next(lists, [FAST]), reload_interval=2.0, on_targets=lambda t: seen.append([x.source for x in t])
    )
    h.loop.run(max_ticks=4)
    assert seen[:2] == [["fast", "slow"], ["fast"]]


def test_duplicate_sources_are_probed_once() -> None:
    h = Harness([FAST, Target("fast", "http://other.example/")])
    h.loop.run(max_ticks=2)
    assert len(h.rows) == 2


def test_a_transfer_the_transport_cannot_start_is_recorded_as_not_started() -> None:
    class Picky(FakeTransport):
        def start(self, key: SampleKey, url: str, timeout: float, **options: bool) -> None:
            if "bad" in url:
                raise ValueError("malformed URL")
            super().start(key, url, timeout, **options)

    h = Harness([FAST, Target("bad", "http://bad example/")])
    h.loop._transport = h.transport = Picky(h.clock, respond_by_url)
    h.loop.run(max_ticks=2)
    bad = [r for r in h.rows if r["source"] == "bad"]
    assert len(bad) == 2 and all(r["ok"] is False and r["error_class"] == NOT_STARTED for r in bad)
    assert all(str(r["error"]).startswith("start failed: ") for r in bad)


def test_stop_drains_in_flight_transfers_up_to_their_timeout() -> None:
    h = Harness([FAST, DEAD])

    def emit(rows: Sequence[Row]) -> None:
        h.emitted.append(list(rows))
        if len(h.emitted) == 3:
            h.loop.stop()

    h.loop._emit = emit
    h.loop.run()
    stop_tick_start = h.start_times("dead")[-1]
    assert h.clock.monotonic() == pytest.approx(stop_tick_start + 1.5)  # waited for the timeout
    dead = [r for r in h.rows if r["source"] == "dead"]
    assert len(dead) == len(h.start_times("dead")) == 4  # rows are first emitted at tick 2
    assert all(r["error_class"] == TIMEOUT for r in dead)
    assert h.transport.in_flight() == 0


def test_probe_ids_continue_after_a_restart_of_the_loop() -> None:
    h = Harness([FAST])
    h.loop.run(max_ticks=3)
    last = max(int(str(r["probe_id"])) for r in h.rows)
    h2 = Harness([FAST])
    h2.store.value = h.store.value  # same state file, same wall clock (a very fast restart)
    h2.scheduler = TickScheduler(h2.clock, ProbeIdAllocator(h2.store))
    h2.loop._scheduler = h2.scheduler
    h2.loop.run(max_ticks=3)
    assert min(int(str(r["probe_id"])) for r in h2.rows) > last


def test_a_replay_keeps_off_the_ticks_of_a_real_loop(tmp_path: Path) -> None:
    backlog = [{"probe_id": i, "source": "backlog", "ok": True} for i in range(60)]
    spool = Spool(tmp_path / "spool")
    for i in range(0, len(backlog), 2):  # records of two rows: the replay sends one per chunk
        spool.append(json_lines(backlog[i : i + 2]), 2)
    replay_calls: list[tuple[float, float]] = []
    received: list[Row] = []

    def database(data: bytes) -> None:
        rows = from_json_lines(data)
        started = time.monotonic()
        time.sleep(0.05)  # each insert takes 50 ms
        received.extend(rows)
        if rows[0]["source"] == "backlog":
            replay_calls.append((started, time.monotonic()))

    with local_http_server() as base:
        clock = SystemClock()
        transport = RecordingTransport()
        writer = BatchWriter(database, spool, encode=json_lines, replay_chunk=2)  # 30 chunks: 1.5 s of inserts at least
        loop = ProberLoop(
            clock=clock,
            scheduler=TickScheduler(clock, ProbeIdAllocator(MemoryProbeIdStore())),
            transport=transport,
            load_targets=lambda: [Target("ok", f"{base}/")],
            emit=writer.submit,
        )
        writer.pacer = loop.quiet_delay
        writer.start()
        loop.run(max_ticks=4)
        writer.close(timeout=5.0)
        transport.close()

    assert [r for r in received if r["source"] == "backlog"] == backlog
    tick_starts = sorted(transport.started_at.values())
    for started, ended in replay_calls:
        for tick in tick_starts:
            assert not started - QUIET_AFTER_TICK < tick < ended, (started - tick, ended - tick)


class Database:
    """A sink that is down for its first ``fail_first`` calls and slow (300 ms) afterwards."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.calls = 0
        self.received: list[Row] = []

    def __call__(self, data: bytes) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise ConnectionError("could not connect to server")
        time.sleep(0.3)  # a slow insert, on the writer's thread
        self.received.extend(from_json_lines(data))


class RecordingTransport(CurlMultiTransport):
    """The real transport, noting when each transfer started and when the loop got its result."""

    def __init__(self) -> None:
        super().__init__()
        self.started_at: dict[SampleKey, float] = {}
        self.finished_at: dict[SampleKey, float] = {}

    def start(
        self, key: SampleKey, url: str, timeout: float, *, follow_redirects: bool = False, verify_tls: bool = True
    ) -> None:
        self.started_at[key] = time.monotonic()
        super().start(key, url, timeout, follow_redirects=follow_redirects, verify_tls=verify_tls)

    def poll(self, timeout: float) -> list[Completion]:
        done = super().poll(timeout)
        for completion in done:
            self.finished_at[completion.key] = time.monotonic()
        return done


def test_five_real_ticks_with_pycurl_and_a_database_that_is_down_then_slow(tmp_path: Path) -> None:
    with local_http_server() as base:
        targets = [
            Target("ok", f"{base}/", target_id=1),
            Target("slow", f"{base}/?delay=1.3", timeout=1.5),
            Target("missing", f"{base}/status/404"),
            Target("refused", f"http://127.0.0.1:{closed_port()}/"),
        ]
        clock = SystemClock()
        store = FileProbeIdStore(tmp_path / "probe_id")
        scheduler = TickScheduler(clock, ProbeIdAllocator(store))
        transport = RecordingTransport()
        db = Database(fail_first=2)
        writer = BatchWriter(db, Spool(tmp_path / "spool"), encode=json_lines, flush_interval=0.5, backoff_initial=0.5)
        emitted: list[Row] = []

        def emit(rows: Sequence[Row]) -> None:
            emitted.extend(rows)
            writer.submit(rows)

        loop = ProberLoop(
            clock=clock, scheduler=scheduler, transport=transport, load_targets=lambda: targets, emit=emit
        )
        writer.start()
        loop.run(max_ticks=5)
        writer.close(timeout=5.0)
        transport.close()
        store.close()

    # One sample per tick per target, on whole seconds, ids strictly increasing.
    groups: dict[float, dict[str, Row]] = defaultdict(dict)
    for row in emitted:
        groups[float(str(row["ts"]))][str(row["source"])] = row
    assert len(emitted) == 5 * 4
    assert len(groups) == 5 and all(len(g) == 4 for g in groups.values())
    ts = sorted(groups)
    assert all(t.is_integer() for t in ts)
    assert ts == [ts[0] + i for i in range(5)]
    probe_ids = [int(str(groups[t]["ok"]["probe_id"])) for t in ts]
    assert probe_ids == sorted(set(probe_ids)) and probe_ids[-1] - probe_ids[0] == 4

    # What each target measured.
    for group in groups.values():
        ok, slow, missing, refused = (group[s] for s in ("ok", "slow", "missing", "refused"))
        assert ok["ok"] is True and ok["status"] == 200 and ok["tls_ms"] == 0.0
        assert ok["disconnected"] is False and ok["target_id"] == 1
        assert slow["ok"] is True and 1250 <= float(str(slow["total_ms"])) < 1500
        assert missing["ok"] is False and missing["status"] == 404 and missing["error_class"] == STATUS
        assert missing["disconnected"] is False
        assert refused["ok"] is False and refused["error_class"] == "refused" and refused["disconnected"] is True

    # The slow target overlapped the next tick, and the ticks did not move.
    slow_keys = sorted((k for k in transport.started_at if k.source == "slow"), key=lambda k: k.probe_id)
    starts = [transport.started_at[k] for k in slow_keys]
    for k, nxt in zip(slow_keys, starts[1:], strict=False):
        assert transport.finished_at[k] > nxt  # still running when the next tick started
    assert [b - a for a, b in itertools.pairwise(starts)] == pytest.approx([1.0] * 4, abs=0.05)
    stats = loop.stats
    assert stats.missed_ticks == 0
    assert stats.lateness_max < 0.05, f"tick lateness {stats.lateness_max * 1000:.1f} ms"

    # The database was down for two flushes, then slow: every row arrived exactly once, in order.
    assert db.received == emitted
    assert writer.stats.sink_failures == 2
    assert writer.stats.rows_spooled > 0
    assert writer.spool_depth == 0
    print(
        f"\nreal-time loop: lateness max {stats.lateness_max * 1e3:.2f} ms, "
        f"mean {stats.lateness_sum / stats.ticks * 1e3:.2f} ms; "
        f"spooled {writer.stats.rows_spooled}, replayed {writer.stats.rows_replayed}"
    )
