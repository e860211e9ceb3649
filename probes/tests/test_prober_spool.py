"""The durable spool: ordered replay, crash safety, idempotent commits, bounded disk use."""

from __future__ import annotations

import json
import os
import threading
import zlib
from pathlib import Path

import pytest

from probes.prober import copy_text
from probes.prober.spool import Row, Spool, SpoolBatch, frame

LOCATION = "us1"


def rows(start: int, n: int, source: str = "a") -> list[Row]:
    """Sample rows as the loop emits them, with every column, so they survive a round trip."""
    return [
        {
            "ts": 1_700_000_000.0 + i,
            "probe_id": i,
            "location": LOCATION,
            "source": source,
            "target_id": None,
            "ok": i % 3 != 0,
            "disconnected": False,
            "status": 200 if i % 3 else None,
            "error_class": "" if i % 3 else "timeout",
            "error": "" if i % 3 else "no answer\tin 1.5 s",
            "dns_ms": 0.5,
            "connect_ms": None,
            "tls_ms": None,
            "ttfb_ms": i / 10,
            "total_ms": i / 10 + 1,
        }
        for i in range(start, start + n)
    ]


def put(spool: Spool, batch: list[Row]) -> None:
    """Append ``batch`` as one record, the way the writer spools one flush."""
    spool.append(copy_text.encode(LOCATION, batch), len(batch))


def drain(spool: Spool, chunk: int = 7) -> list[Row]:
    """Replay everything the way the writer does: read a chunk, 'store' it, commit it."""
    out: list[Row] = []
    while (batch := spool.read_batch(chunk)) is not None:
        decoded = copy_text.decode(batch.data)
        assert len(decoded) == batch.rows
        out.extend(decoded)
        spool.commit(batch)
    return out


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


def test_it_replays_rows_in_append_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    put(spool, rows(0, 10))
    put(spool, rows(10, 5))
    assert spool.depth == 15
    assert drain(spool) == rows(0, 15)
    assert spool.depth == 0
    assert spool.read_batch(10) is None


def test_a_batch_is_whole_records_up_to_the_asked_rows(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for start in range(0, 12, 3):
        put(spool, rows(start, 3))
    first = spool.read_batch(5)  # two records: the second one reaches 5 rows
    assert first is not None and first.rows == 6
    assert copy_text.decode(first.data) == rows(0, 6)
    spool.commit(first)
    assert spool.depth == 6
    big = spool.read_batch(1)  # never less than one record
    assert big is not None and big.rows == 3


def test_reading_does_not_consume_until_commit(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    put(spool, rows(0, 3))
    put(spool, rows(3, 2))
    first = spool.read_batch(3)
    assert first is not None
    again = spool.read_batch(3)
    assert again is not None and again.data == first.data
    assert copy_text.decode(first.data) == rows(0, 3)
    spool.commit(first)
    rest = spool.read_batch(10)
    assert rest is not None and copy_text.decode(rest.data) == rows(3, 2)
    assert spool.depth == 2


def test_commits_must_follow_the_cursor(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    put(spool, rows(0, 2))
    put(spool, rows(2, 3))
    first = spool.read_batch(2)
    assert first is not None
    spool.commit(first)
    with pytest.raises(ValueError, match="out of order"):
        spool.commit(first)  # committing the same batch twice would skip rows


def test_acknowledged_rows_survive_a_crash_in_the_middle_of_a_write(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    put(spool, rows(0, 4))  # acknowledged
    put(spool, rows(4, 4))  # acknowledged
    # The process dies while writing the third record: only part of its bytes reach the file.
    torn = frame(copy_text.encode(LOCATION, rows(8, 3)), 3)
    (segment,) = segment_files(tmp_path)
    with open(segment, "ab") as f:
        f.write(torn[:-17])
    del spool  # no close(): a crash does not close anything

    reopened = Spool(tmp_path)
    # Everything acknowledged is there, in order; the torn record never comes back.
    assert reopened.depth == 8
    assert drain(reopened) == rows(0, 8)
    assert reopened.corrupt_records == 1


def test_a_torn_header_is_skipped_too(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    put(spool, rows(0, 2))
    (segment,) = segment_files(tmp_path)
    with open(segment, "ab") as f:
        f.write(frame(copy_text.encode(LOCATION, rows(2, 1)), 1)[:10])
    reopened = Spool(tmp_path)
    assert drain(reopened) == rows(0, 2)
    assert reopened.corrupt_records == 1


def test_appends_after_a_crash_are_not_glued_to_the_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    put(spool, rows(0, 2))
    (segment,) = segment_files(tmp_path)
    with open(segment, "ab") as f:
        f.write(frame(copy_text.encode(LOCATION, rows(2, 1)), 1)[:30])
    reopened = Spool(tmp_path)
    put(reopened, rows(100, 3))
    assert len(segment_files(tmp_path)) == 2  # the new process writes a fresh segment
    assert drain(reopened) == rows(0, 2) + rows(100, 3)


def test_damaged_records_are_skipped_not_returned(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    for start in range(0, 5):
        put(spool, rows(start, 1))
    spool.close()
    (segment,) = segment_files(tmp_path)
    data = bytearray(segment.read_bytes())
    records = [i for i in range(len(data)) if data[i : i + 1] == b"#"]
    data[records[1] + 40] ^= 0x01  # flip one bit inside record 1's payload: the CRC no longer matches
    header_end = data.index(b"\n", records[3])
    data[header_end - 1 : header_end] = b"9"  # record 3's header claims a wrong length
    data += b"\x00" * 64  # zero-filled tail, as left by some filesystems after a power loss
    segment.write_bytes(bytes(data))

    reopened = Spool(tmp_path)
    assert reopened.depth == 3
    assert drain(reopened) == rows(0, 1) + rows(2, 1) + rows(4, 1)
    assert reopened.corrupt_records == 3


def test_a_header_whose_row_count_disagrees_with_its_payload_is_damage(tmp_path: Path) -> None:
    payload = copy_text.encode(LOCATION, rows(0, 3))
    (tmp_path / f"seg-{1:020d}.log").write_bytes(b"#%08x 5 %d\n" % (zlib.crc32(payload), len(payload)) + payload)
    spool = Spool(tmp_path)
    assert spool.depth == 0
    assert spool.read_batch(10) is None


def test_committed_rows_are_not_replayed_after_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    put(spool, rows(0, 6))
    put(spool, rows(6, 4))
    batch = spool.read_batch(6)
    assert batch is not None
    spool.commit(batch)
    reopened = Spool(tmp_path)
    assert reopened.depth == 4
    assert drain(reopened) == rows(6, 4)


def test_rows_read_but_not_committed_come_back_after_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    put(spool, rows(0, 6))
    assert spool.read_batch(6) is not None  # sent upstream, then the process died before commit
    reopened = Spool(tmp_path)
    assert drain(reopened) == rows(0, 6)  # at-least-once: the primary key absorbs the repeat


def test_a_damaged_cursor_replays_from_the_oldest_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    put(spool, rows(0, 3))
    put(spool, rows(3, 3))
    batch = spool.read_batch(2)
    assert batch is not None
    spool.commit(batch)
    (tmp_path / "cursor.json").write_text("{not json")
    assert drain(Spool(tmp_path)) == rows(0, 6)


def test_segments_rotate_and_are_deleted_once_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_bytes=2_000)
    for start in range(0, 200, 10):
        put(spool, rows(start, 10))
    assert len(segment_files(tmp_path)) > 3
    assert drain(spool, chunk=25) == rows(0, 200)
    assert segment_files(tmp_path) == []
    assert spool.size_bytes() == 0
    # And it keeps working (and keeps shrinking) afterwards.
    put(spool, rows(500, 3))
    assert drain(spool) == rows(500, 3)
    assert segment_files(tmp_path) == []


def test_disk_use_stays_bounded_over_many_outage_cycles(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_bytes=4_000)
    for cycle in range(50):
        put(spool, rows(cycle * 100, 30))
        put(spool, rows(cycle * 100 + 30, 30))
        assert len(drain(spool)) == 60
    assert spool.size_bytes() == 0
    assert spool.depth == 0


def test_depth_is_recounted_from_disk_on_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_bytes=500)
    for start in range(0, 40, 8):
        put(spool, rows(start, 8))
    batch = spool.read_batch(5)
    assert batch is not None
    spool.commit(batch)
    assert spool.depth == 32
    assert Spool(tmp_path).depth == 32


def test_appends_and_replay_can_run_on_different_threads(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_bytes=20_000, fsync=False)
    total = 2_000
    replayed: list[Row] = []

    def producer() -> None:
        for start in range(0, total, 20):
            put(spool, rows(start, 20))

    thread = threading.Thread(target=producer)
    thread.start()
    while thread.is_alive() or spool.depth:
        batch: SpoolBatch | None = spool.read_batch(64)
        if batch is not None:
            replayed.extend(copy_text.decode(batch.data))
            spool.commit(batch)
    thread.join()
    replayed.extend(drain(spool))
    assert replayed == rows(0, total)


def test_quarantined_rows_stay_out_of_the_replay(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.quarantine(copy_text.encode(LOCATION, rows(0, 2)), 2)
    assert spool.depth == 0
    assert spool.read_batch(10) is None
    header, payload = (tmp_path / "rejected.log").read_bytes().split(b"\n", 1)
    assert header.startswith(b"#") and copy_text.decode(payload) == rows(0, 2)


def test_the_framing_is_copy_text_behind_a_crc_header(tmp_path: Path) -> None:
    payload = copy_text.encode(LOCATION, rows(3, 2))
    record = frame(payload, 2)
    assert record == b"#%08x 2 %d\n" % (zlib.crc32(payload), len(payload)) + payload
    # What an operator sees with grep -v '^#': the rows exactly as COPY will read them.
    assert payload.decode().splitlines()[0].split("\t")[:4] == ["2023-11-14T22:13:23+00:00", "3", LOCATION, "a"]


def test_rows_of_the_earlier_json_framing_are_replayed_through_the_legacy_encoder(tmp_path: Path) -> None:
    """A prober upgraded with a backlog in its spool loses nothing: the old lines were
    ``<crc32> <json>``, one per row."""
    old = rows(0, 4)
    lines = b""
    for row in old:
        body = json.dumps({k: v for k, v in row.items() if k != "location"}, separators=(",", ":")).encode()
        lines += b"%08x " % zlib.crc32(body) + body + b"\n"
    lines += b"0badf00d {}\n"  # a damaged old line: skipped
    (tmp_path / f"seg-{1:020d}.log").write_bytes(lines)

    spool = Spool(tmp_path, legacy=lambda batch: copy_text.encode(LOCATION, batch))
    assert spool.depth == 4
    put(spool, rows(4, 2))  # new rows go behind, in the new framing
    assert drain(spool, chunk=3) == rows(0, 6)
    assert spool.corrupt_records == 1

    (tmp_path / f"seg-{9:020d}.log").write_bytes(lines)
    assert Spool(tmp_path).depth == 0  # without a legacy encoder such lines are damage


def test_files_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    spool = Spool(tmp_path)
    put(spool, rows(0, 3))
    assert synced, "append must fsync before it returns"
    synced.clear()
    batch = spool.read_batch(3)
    assert batch is not None
    spool.commit(batch)
    assert synced, "the cursor must be durable before segments are deleted"
