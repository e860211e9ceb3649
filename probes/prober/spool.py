"""Durable local spool for rows the database has not accepted yet.

Layout of the spool directory::

    seg-00000000000000000001.log   segments, appended in order, sealed when they grow too big
    seg-00000000000000000002.log
    cursor.json                    {"segment": 1, "offset": 4096}: everything before is committed
    rejected.log                   rows the sink refused as invalid (kept for a human)

Record framing: one record per :meth:`Spool.append` (a writer flush, about a second of rows)::

    #<crc32 of the payload, 8 hex digits> <rows> <payload bytes>\\n
    <payload: the rows, one line each>

The payload is opaque here; the prober stores its rows in PostgreSQL's COPY text format
(``probes.prober.copy_text``), so a replay hands the bytes to ``COPY`` exactly as they were
written, with no decoding or formatting per row, and an operator can still read a segment
with ``grep -v '^#'``. The CRC catches what a trailing-newline check alone would not: after a
power loss some filesystems leave zero-filled or stale blocks at the end of a file. A record
that is torn (cut short), fails its CRC or whose line count disagrees with its header is
skipped and counted, never returned; the reader re-synchronises on the next header line.

Segments written before this framing (one ``<crc32> <json>`` line per row) are still read:
each such row is converted with the ``legacy`` encoder given to the spool, so a prober upgraded
in the middle of an outage loses nothing.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from probes.prober.ticks import atomic_write

log = logging.getLogger(__name__)

JsonScalar = str | int | float | bool | None
Row = dict[str, JsonScalar]
Encoder = Callable[[Sequence[Row]], bytes]
"""Turns rows into a record payload: one line per row, each ending with a newline."""

_SEGMENT_RE = re.compile(r"^seg-(\d{20})\.log$")
_HEADER_RE = re.compile(rb"^#([0-9a-f]{8}) (\d{1,9}) (\d{1,12})\n$")
_LEGACY_RE = re.compile(rb"^[0-9a-f]{8} \{")
_CURSOR = "cursor.json"
_REJECTED = "rejected.log"


@dataclass(frozen=True, slots=True)
class Position:
    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """Records read from the spool: their payloads joined, how many rows they hold, and the
    position just after the last one (for commit)."""

    data: bytes
    rows: int
    start: Position
    end: Position


def frame(payload: bytes, rows: int) -> bytes:
    """One record: header line, then the payload."""
    return b"#%08x %d %d\n" % (zlib.crc32(payload), rows, len(payload)) + payload


def decode_legacy(line: bytes) -> Row | None:
    """One row of the earlier ``<crc32> <json>`` framing (without its newline); None if damaged."""
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


@dataclass(frozen=True, slots=True)
class _Record:
    payload: bytes  # empty for a damaged record, which only moves the read position on
    rows: int
    end: int  # file offset just after the record


class Spool:
    """Append-only segmented spool with a committed-read cursor. Thread-safe."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_max_bytes: int = 16 * 1024 * 1024,
        fsync: bool = True,
        legacy: Encoder | None = None,
    ) -> None:
        """``legacy`` converts rows of the earlier JSON framing into payloads (see the module
        docstring); without it such rows are skipped as damaged."""
        self.directory = directory
        self.segment_max_bytes = segment_max_bytes
        self._fsync = fsync
        self._legacy = legacy
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

    def append(self, payload: bytes, rows: int) -> None:
        """Append one record of ``rows`` rows; returns once it is on disk (fsync)."""
        if not rows:
            return
        data = frame(payload, rows)
        with self._lock:
            if self._active_fd < 0 or self._active_size >= self.segment_max_bytes:
                self._open_new_segment()
            written = 0
            while written < len(data):  # os.write may write less than asked
                written += os.write(self._active_fd, data[written:])
            if self._fsync:
                os.fsync(self._active_fd)
            self._active_size += len(data)
            self._depth += rows

    def quarantine(self, payload: bytes, rows: int) -> None:
        """Keep rows the sink rejected as invalid (not an outage) out of the replay path."""
        if not rows:
            return
        with self._lock, open(self.directory / _REJECTED, "ab") as f:
            f.write(frame(payload, rows))
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
        """Return whole records from the cursor on, oldest first, until they hold ``max_rows``
        rows or more (at least one record), or None if the spool is empty.

        Reading does not consume: the same rows come back until :meth:`commit`.
        """
        with self._lock:
            pos = self._cursor
            while True:
                parts, rows, end = self._read_from(pos, max_rows)
                if rows:
                    return SpoolBatch(data=b"".join(parts), rows=rows, start=pos, end=end)
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
            self._depth = max(0, self._depth - batch.rows)
            self._delete_segments_before(end.segment)

    def close(self) -> None:
        with self._lock:
            self._close_active()

    # -- internals -----------------------------------------------------------------------

    def _read_from(self, pos: Position, max_rows: int) -> tuple[list[bytes], int, Position]:
        path = self.directory / _segment_name(pos.segment)
        parts: list[bytes] = []
        rows = 0
        end = pos.offset
        if not path.exists():  # segments are only deleted under the lock we hold
            return parts, rows, pos
        with open(path, "rb") as f:
            f.seek(pos.offset)
            for record in self._records(f, path.name, report=True):
                end = record.end
                if record.rows:
                    parts.append(record.payload)
                    rows += record.rows
                    if rows >= max_rows:
                        break
        return parts, rows, Position(pos.segment, end)

    def _records(self, f: BinaryIO, name: str, *, report: bool) -> Iterator[_Record]:
        """The records from ``f``'s position on; damaged ones come back empty (and, with
        ``report``, counted and logged) so the reader's position still moves past them."""
        resyncing = False  # inside damage: skip lines quietly until the next valid record
        while True:
            start = f.tell()
            line = f.readline()
            if not line:
                return
            if not line.endswith(b"\n"):
                # Torn tail of a segment the previous process was writing when it died.
                # (The live active segment never has one: appends happen under the lock.)
                self._damaged(report, "torn record", name, start)
                yield _Record(b"", 0, f.tell())
                return
            header = _HEADER_RE.match(line)
            if header is not None:
                rows, length = int(header[2]), int(header[3])
                payload = f.read(length)
                if len(payload) < length:
                    self._damaged(report, "torn record", name, start)
                    yield _Record(b"", 0, f.tell())
                    return
                if zlib.crc32(payload) == int(header[1], 16) and payload.count(b"\n") == rows and rows:
                    resyncing = False
                    yield _Record(payload, rows, f.tell())
                    continue
                # Header or payload damaged, so the length may be wrong too: go on line by
                # line right after the header.
                self._damaged(report, "damaged record", name, start)
                resyncing = True
                f.seek(start + len(line))
                yield _Record(b"", 0, f.tell())
                continue
            if self._legacy is not None and _LEGACY_RE.match(line):
                row = decode_legacy(line[:-1])
                if row is not None:
                    resyncing = False
                    yield _Record(self._legacy([row]), 1, f.tell())
                    continue
            if not resyncing:
                self._damaged(report, "damaged record", name, start)
                resyncing = True
            yield _Record(b"", 0, f.tell())

    def _damaged(self, report: bool, what: str, name: str, offset: int) -> None:
        if report:
            self.corrupt_records += 1
            log.warning("spool: skipping %s in %s at offset %d", what, name, offset)

    def _segment_size(self, segment: int) -> int:
        if segment == self._active and self._active_fd >= 0:
            return self._active_size
        try:
            return (self.directory / _segment_name(segment)).stat().st_size
        except FileNotFoundError:
            return 0

    def _count_rows(self, segment: int, offset: int) -> int:
        path = self.directory / _segment_name(segment)
        with open(path, "rb") as f:
            f.seek(offset)
            return sum(record.rows for record in self._records(f, path.name, report=False))

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
