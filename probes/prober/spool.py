"""Durable local spool for rows the database has not accepted yet.

Layout of the spool directory::

    seg-00000000000000000001.log   segments, appended in order, sealed when they grow too big
    seg-00000000000000000002.log
    cursor.json                    {"segment": 1, "offset": 4096}: everything before is committed
    rejected.log                   rows the sink refused as invalid (kept for a human)

Record framing: one line per row, ``<crc32 as 8 hex digits> <compact JSON>\\n``. JSON keeps the
spool readable with ``cut -c10- | jq`` during an incident, and at ~10 rows/s the size difference
against a binary framing does not matter. The CRC catches what a trailing-newline check alone
would not: after a power loss some filesystems leave zero-filled or stale blocks at the end of a
file. A record that is torn (no newline), fails its CRC or is not JSON is skipped and counted,
never returned; the reader re-synchronises on the next newline.

Guarantees:

- :meth:`Spool.append` returns only after the rows are fsync'd: from then on they survive a
  crash (they are *acknowledged*).
- Rows leave the spool only through :meth:`Spool.commit`, which the writer calls after the sink
  took them. The cursor is replaced atomically, then fully consumed segments are deleted. A
  crash in between re-delivers rows (at-least-once); the database's primary key
  (location, probe_id, source) makes that harmless.
- After a restart appends go to a new segment, so a torn tail left by the crash is never glued
  to the first new record.
- Once the reader catches up with the active segment, that segment is dropped and a new one
  started, so disk use returns to ~zero after every recovery instead of growing forever.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probes.prober.ticks import atomic_write

log = logging.getLogger(__name__)

JsonScalar = str | int | float | bool | None
Row = dict[str, JsonScalar]

_SEGMENT_RE = re.compile(r"^seg-(\d{20})\.log$")
_CURSOR = "cursor.json"
_REJECTED = "rejected.log"


@dataclass(frozen=True, slots=True)
class Position:
    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """Rows read from the spool, with the position just after the last one (for commit)."""

    rows: list[Row]
    start: Position
    end: Position


def encode(row: Row) -> bytes:
    payload = json.dumps(row, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def decode(line: bytes) -> Row | None:
    """Decode one framed line (without its newline); None if it is damaged."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    payload = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        value: Any = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Spool:
    """Append-only segmented spool with a committed-read cursor. Thread-safe."""

    def __init__(self, directory: Path, *, segment_max_bytes: int = 16 * 1024 * 1024, fsync: bool = True) -> None:
        self.directory = directory
        self.segment_max_bytes = segment_max_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self.corrupt_records = 0  # damaged records skipped since start (metric)
        directory.mkdir(parents=True, exist_ok=True)
        self._cursor = self._load_cursor()
        self._delete_segments_before(self._cursor.segment)
        segments = self._segments()
        if segments and segments[0] > self._cursor.segment:
            self._cursor = Position(segments[0], 0)
        # Count what is pending once, at start; afterwards appends and commits keep it exact.
        self._depth = sum(
            self._count_rows(seg, self._cursor.offset if seg == self._cursor.segment else 0) for seg in segments
        )
        # Never append after a possibly torn tail: this process writes to a fresh segment.
        self._active = max(segments[-1] + 1 if segments else 1, self._cursor.segment)
        self._active_fd = -1
        self._active_size = 0

    # -- writing -------------------------------------------------------------------------

    def append(self, rows: Sequence[Row]) -> None:
        """Append ``rows`` in order; returns once they are on disk (fsync)."""
        if not rows:
            return
        data = b"".join(encode(r) for r in rows)
        with self._lock:
            if self._active_fd < 0 or self._active_size >= self.segment_max_bytes:
                self._open_new_segment()
            written = 0
            while written < len(data):  # os.write may write less than asked
                written += os.write(self._active_fd, data[written:])
            if self._fsync:
                os.fsync(self._active_fd)
            self._active_size += len(data)
            self._depth += len(rows)

    def quarantine(self, rows: Sequence[Row]) -> None:
        """Keep rows the sink rejected as invalid (not an outage) out of the replay path."""
        if not rows:
            return
        with self._lock, open(self.directory / _REJECTED, "ab") as f:
            f.write(b"".join(encode(r) for r in rows))
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())

    # -- reading -------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Rows appended and not yet committed."""
        return self._depth

    def size_bytes(self) -> int:
        return sum((self.directory / _segment_name(s)).stat().st_size for s in self._segments())

    def read_batch(self, max_rows: int) -> SpoolBatch | None:
        """Return up to ``max_rows`` rows from the cursor on, oldest first, or None if empty.

        Reading does not consume: the same rows come back until :meth:`commit`.
        """
        with self._lock:
            pos = self._cursor
            while True:
                rows, end = self._read_from(pos, max_rows)
                if rows:
                    return SpoolBatch(rows=rows, start=pos, end=end)
                following = [s for s in self._segments() if s > pos.segment]
                if not following:
                    return None
                # Nothing (valid) left in this segment: move on to the next one.
                pos = Position(following[0], 0)

    def commit(self, batch: SpoolBatch) -> None:
        """Mark ``batch`` as stored upstream; its rows are never returned again."""
        with self._lock:
            if batch.start != self._cursor and not (
                batch.start.offset == 0 and batch.start.segment > self._cursor.segment
            ):
                raise ValueError(f"commit out of order: batch starts at {batch.start}, cursor is {self._cursor}")
            end = batch.end
            if end.offset >= self._segment_size(end.segment):
                # The segment is fully consumed. Point the cursor at the next one so this one
                # can be deleted; if it was the one being appended to, appends move on too, so
                # disk use drops back to ~zero every time the reader catches up.
                if end.segment == self._active:
                    self._close_active()
                    self._active += 1
                end = Position(end.segment + 1, 0)
            self._write_cursor(end)
            self._depth = max(0, self._depth - len(batch.rows))
            self._delete_segments_before(end.segment)

    def close(self) -> None:
        with self._lock:
            self._close_active()

    # -- internals -----------------------------------------------------------------------

    def _read_from(self, pos: Position, max_rows: int) -> tuple[list[Row], Position]:
        path = self.directory / _segment_name(pos.segment)
        rows: list[Row] = []
        offset = pos.offset
        if not path.exists():  # segments are only deleted under the lock we hold
            return rows, pos
        with open(path, "rb") as f:
            f.seek(offset)
            # Bounded read: a chunk of rows is a few hundred KiB at most.
            while len(rows) < max_rows:
                line = f.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    # Torn tail of a segment the previous process was writing when it died.
                    # (The live active segment never has one: appends happen under the lock.)
                    self.corrupt_records += 1
                    log.warning("spool: ignoring torn record at %s:%d", path.name, offset)
                    offset += len(line)
                    break
                offset += len(line)
                row = decode(line[:-1])
                if row is None:
                    self.corrupt_records += 1
                    log.warning("spool: skipping damaged record in %s before offset %d", path.name, offset)
                    continue
                rows.append(row)
        return rows, Position(pos.segment, offset)

    def _segment_size(self, segment: int) -> int:
        if segment == self._active and self._active_fd >= 0:
            return self._active_size
        try:
            return (self.directory / _segment_name(segment)).stat().st_size
        except FileNotFoundError:
            return 0

    def _count_rows(self, segment: int, offset: int) -> int:
        count = 0
        with open(self.directory / _segment_name(segment), "rb") as f:
            f.seek(offset)
            for line in f:
                if line.endswith(b"\n") and decode(line[:-1]) is not None:
                    count += 1
        return count

    def _segments(self) -> list[int]:
        found = []
        for name in os.listdir(self.directory):
            m = _SEGMENT_RE.match(name)
            if m:
                found.append(int(m.group(1)))
        return sorted(found)

    def _open_new_segment(self) -> None:
        if self._active_fd >= 0:
            self._close_active()
            self._active += 1
        path = self.directory / _segment_name(self._active)
        self._active_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._active_size = os.fstat(self._active_fd).st_size
        if self._fsync:
            _fsync_dir(self.directory)  # the new file's directory entry must survive a crash too

    def _close_active(self) -> None:
        if self._active_fd >= 0:
            os.close(self._active_fd)
            self._active_fd = -1
            self._active_size = 0

    def _load_cursor(self) -> Position:
        try:
            raw: Any = json.loads((self.directory / _CURSOR).read_bytes())
            return Position(int(raw["segment"]), int(raw["offset"]))
        except FileNotFoundError:
            return Position(0, 0)
        except (ValueError, KeyError, TypeError):
            # The cursor is replaced atomically, so this is outside damage. Replaying from the
            # oldest segment re-sends committed rows (the primary key absorbs them) but loses none.
            log.error("spool: unreadable %s, replaying from the oldest segment", _CURSOR)
            return Position(0, 0)

    def _write_cursor(self, pos: Position) -> None:
        data = json.dumps({"segment": pos.segment, "offset": pos.offset}).encode()
        if self._fsync:
            atomic_write(self.directory / _CURSOR, data)
        else:
            tmp = self.directory / (_CURSOR + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, self.directory / _CURSOR)
        self._cursor = pos

    def _delete_segments_before(self, segment: int) -> None:
        for seg in self._segments():
            if seg < segment:
                (self.directory / _segment_name(seg)).unlink(missing_ok=True)


def _segment_name(seq: int) -> str:
    return f"seg-{seq:020d}.log"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
