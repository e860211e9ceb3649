"""The durable spool: ordered replay, crash safety, idempotent commits, bounded disk use."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from probes.prober.spool import Row, Spool, SpoolBatch, decode, encode


def rows(start: int, n: int, source: str = "a") -> list[Row]:
    return [{"probe_id": i, "source": source, "ok": i % 3 != 0, "total_ms": i / 10} for i in range(start, start + n)]


def drain(spool: Spool, chunk: int = 7) -> list[Row]:
    """Replay everything the way the writer does: read a chunk, 'store' it, commit it."""
    out: list[Row] = []
    while (batch := spool.read_batch(chunk)) is not None:
        out.extend(batch.rows)
        spool.commit(batch)
    return out


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


def test_it_replays_rows_in_append_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(rows(0, 10))
    spool.append(rows(10, 5))
    assert spool.depth == 15
    assert drain(spool) == rows(0, 15)
    assert spool.depth == 0
    assert spool.read_batch(10) is None


def test_reading_does_not_consume_until_commit(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(rows(0, 5))
    first = spool.read_batch(3)
    assert first is not None
    again = spool.read_batch(3)
    assert again is not None and again.rows == first.rows == rows(0, 3)
    spool.commit(first)
    rest = spool.read_batch(10)
    assert rest is not None and rest.rows == rows(3, 2)
    assert spool.depth == 2


def test_commits_must_follow_the_cursor(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(rows(0, 5))
    first = spool.read_batch(2)
    assert first is not None
    spool.commit(first)
    with pytest.raises(ValueError, match="out of order"):
        spool.commit(first)  # committing the same batch twice would skip rows


def test_acknowledged_rows_survive_a_crash_in_the_middle_of_a_write(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(rows(0, 4))  # acknowledged
    spool.append(rows(4, 4))  # acknowledged
    # The process dies while writing the third batch: only part of its bytes reach the file,
    # the last record cut in the middle of its JSON.
    torn = b"".join(encode(r) for r in rows(8, 3))
    cut = len(torn) - 17
    (segment,) = segment_files(tmp_path)
    with open(segment, "ab") as f:
        f.write(torn[:cut])
    del spool  # no close(): a crash does not close anything

    reopened = Spool(tmp_path)
    # Everything acknowledged is there, in order; complete records of the unacknowledged batch
    # may come back too (at-least-once), the torn record never does.
    assert reopened.depth == 10
    replayed = drain(reopened)
    assert replayed[:8] == rows(0, 8)
    assert replayed[8:] == rows(8, 2)
    assert reopened.corrupt_records == 1


def test_appends_after_a_crash_are_not_glued_to_the_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(rows(0, 2))
    (segment,) = segment_files(tmp_path)
    with open(segment, "ab") as f:
        f.write(encode(rows(2, 1)[0])[:10])
    reopened = Spool(tmp_path)
    reopened.append(rows(100, 3))
    assert len(segment_files(tmp_path)) == 2  # the new process writes a fresh segment
    assert drain(reopened) == rows(0, 2) + rows(100, 3)


def test_damaged_records_are_skipped_not_returned(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.append(rows(0, 5))
    spool.close()
    (segment,) = segment_files(tmp_path)
    data = bytearray(segment.read_bytes())
    second_line = data.index(b"\n") + 1
    data[second_line + 20] ^= 0x01  # flip one bit inside record 1: the CRC no longer matches
    data += b"\x00" * 64  # zero-filled tail, as left by some filesystems after a power loss
    segment.write_bytes(bytes(data))

    reopened = Spool(tmp_path)
    replayed = drain(reopened)
    assert replayed == [r for i, r in enumerate(rows(0, 5)) if i != 1]
    assert reopened.corrupt_records == 2


def test_committed_rows_are_not_replayed_after_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(rows(0, 10))
    batch = spool.read_batch(6)
    assert batch is not None
    spool.commit(batch)
    reopened = Spool(tmp_path)
    assert reopened.depth == 4
    assert drain(reopened) == rows(6, 4)


def test_rows_read_but_not_committed_come_back_after_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(rows(0, 6))
    assert spool.read_batch(6) is not None  # sent upstream, then the process died before commit
    reopened = Spool(tmp_path)
    assert drain(reopened) == rows(0, 6)  # at-least-once: the primary key absorbs the repeat


def test_a_damaged_cursor_replays_from_the_oldest_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(rows(0, 3))
    spool.append(rows(3, 3))
    batch = spool.read_batch(2)
    assert batch is not None
    spool.commit(batch)
    (tmp_path / "cursor.json").write_text("{not json")
    assert drain(Spool(tmp_path)) == rows(0, 6)


def test_segments_rotate_and_are_deleted_once_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_bytes=1_000)
    for start in range(0, 200, 10):
        spool.append(rows(start, 10))
    assert len(segment_files(tmp_path)) > 3
    assert drain(spool, chunk=25) == rows(0, 200)
    assert segment_files(tmp_path) == []
    assert spool.size_bytes() == 0
    # And it keeps working (and keeps shrinking) afterwards.
    spool.append(rows(500, 3))
    assert drain(spool) == rows(500, 3)
    assert segment_files(tmp_path) == []


def test_disk_use_stays_bounded_over_many_outage_cycles(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_bytes=4_000)
    for cycle in range(50):
        spool.append(rows(cycle * 100, 30))
        spool.append(rows(cycle * 100 + 30, 30))
        assert len(drain(spool)) == 60
    assert spool.size_bytes() == 0
    assert spool.depth == 0


def test_depth_is_recounted_from_disk_on_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_bytes=500)
    for start in range(0, 40, 8):
        spool.append(rows(start, 8))
    batch = spool.read_batch(5)
    assert batch is not None
    spool.commit(batch)
    assert spool.depth == 35
    assert Spool(tmp_path).depth == 35


def test_appends_and_replay_can_run_on_different_threads(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_bytes=2_000, fsync=False)
    total = 2_000
    replayed: list[Row] = []

    def producer() -> None:
        for start in range(0, total, 20):
            spool.append(rows(start, 20))

    thread = threading.Thread(target=producer)
    thread.start()
    while thread.is_alive() or spool.depth:
        batch: SpoolBatch | None = spool.read_batch(64)
        if batch is not None:
            replayed.extend(batch.rows)
            spool.commit(batch)
    thread.join()
    replayed.extend(drain(spool))
    assert replayed == rows(0, total)


def test_quarantined_rows_stay_out_of_the_replay(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.quarantine(rows(0, 2))
    assert spool.depth == 0
    assert spool.read_batch(10) is None
    lines = (tmp_path / "rejected.log").read_bytes().splitlines()
    assert [decode(line) for line in lines] == rows(0, 2)


def test_the_framing_is_readable_json_behind_a_crc(tmp_path: Path) -> None:
    line = encode({"probe_id": 1, "source": "é", "ok": True})
    assert line.endswith(b"\n")
    assert line[9:-1] == '{"probe_id":1,"source":"é","ok":true}'.encode()
    assert decode(line[:-1]) == {"probe_id": 1, "source": "é", "ok": True}
    assert decode(b"00000000 {}") is None  # wrong CRC


def test_files_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    spool = Spool(tmp_path)
    spool.append(rows(0, 3))
    assert synced, "append must fsync before it returns"
    synced.clear()
    batch = spool.read_batch(3)
    assert batch is not None
    spool.commit(batch)
    assert synced, "the cursor must be durable before segments are deleted"
