"""Tick scheduling for the 1 Hz prober.

Ticks sit on absolute deadlines of the monotonic clock: tick ``k`` is due at
``anchor + k * period``. The anchor is chosen once, at start, so that tick 0 falls on a whole
wall-clock second; after that the wall clock is never consulted again, so NTP steps cannot
shift, repeat or skip ticks. A tick that runs late does not move the ticks after it.

When the loop wakes up more than one period after a deadline (the process was stopped, the
host was suspended, a GC pause...), it runs only the newest due tick and reports the skipped
ones as *missed*, with their scheduled timestamps and probe_ids, so the gap is visible in the
data instead of silently missing.

probe_id scheme
---------------
``probe_id`` must be unique and strictly increasing per location, across wall-clock steps and
across restarts. Within one run it is ``base + k``: it follows the monotonic schedule, so a wall
clock step changes nothing. The base is chosen at start as::

    base = max(reserved + 1, int(first_tick_wall_ts))

where ``reserved`` is a high-water mark persisted by :class:`ProbeIdAllocator` *before* any id
up to it is handed out. In the normal case (clock right, restart takes more than a few seconds)
``probe_id`` equals the tick's epoch second, which keeps it readable; after a quick restart or a
backwards clock step it runs ahead of the epoch second, which is harmless because ``ts`` is a
separate column and ``probe_id`` is only an identifier.

The high-water mark is reserved in blocks (``lease`` ids at a time, default 60), so the state
file is written and fsync'd about once a minute, never on every tick, and the write is done in
:meth:`TickScheduler.checkpoint` after the tick's transfers have started, off the time-critical
path. A crash (even a power loss) can therefore only leave unused gaps in the id sequence, never
reuse an id: every id issued is <= a value that was durable before it was issued.
"""

from __future__ import annotations

import fcntl
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    """The two clocks the prober reads; injectable so tests never sleep."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


@dataclass(frozen=True, slots=True)
class ScheduledTick:
    """A tick as planned: its id, its wall-clock second and its monotonic deadline."""

    probe_id: int
    wall_ts: float
    deadline: float


@dataclass(frozen=True, slots=True)
class MissedTicks:
    """A run of consecutive ticks that were due but never ran.

    Kept as a range rather than a list because a suspended host can wake up hours later.
    """

    first_probe_id: int
    first_wall_ts: float
    first_deadline: float
    count: int
    period: float

    def __iter__(self) -> Iterator[ScheduledTick]:
        for i in range(self.count):
            yield ScheduledTick(
                probe_id=self.first_probe_id + i,
                wall_ts=self.first_wall_ts + i * self.period,
                deadline=self.first_deadline + i * self.period,
            )


@dataclass(frozen=True, slots=True)
class Tick:
    """A tick the loop runs now.

    ``lateness`` is how long after ``deadline`` the loop noticed it (always < one period, since
    older due ticks are reported in ``missed`` instead of being run late).
    """

    probe_id: int
    wall_ts: float
    deadline: float
    lateness: float
    missed: MissedTicks | None = None


class ProbeIdStore(Protocol):
    """Persists the probe_id high-water mark (every issued id is <= the stored value)."""

    def load(self) -> int | None: ...

    def save(self, value: int) -> None: ...


class MemoryProbeIdStore:
    """In-memory store, for tests and for one-off runs that need no restart guarantee."""

    def __init__(self, value: int | None = None) -> None:
        self.value = value
        self.saves = 0

    def load(self) -> int | None:
        return self.value

    def save(self, value: int) -> None:
        self.value = value
        self.saves += 1


class FileProbeIdStore:
    """High-water mark in a small text file, replaced atomically (write, fsync, rename, fsync dir).

    The store also holds an exclusive ``flock`` on ``<path>.lock`` for its lifetime: two probers
    sharing one state file would issue the same ids, and the primary key would then silently
    drop one of them's rows.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = try_lock(path.with_name(path.name + ".lock"))
        if fd is None:
            raise RuntimeError(f"{path} is locked: another prober for this location is running")
        self._lock_fd = fd

    def load(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        try:
            return int(text)
        except ValueError:
            # Guessing here could reuse ids; an operator must look (deleting the file is safe
            # when the clock is right, since ids then restart at the epoch second).
            raise ValueError(f"probe_id state file {self.path} is corrupt: {text[:40]!r}") from None

    def save(self, value: int) -> None:
        atomic_write(self.path, f"{value}\n".encode("ascii"))

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = -1


def try_lock(path: Path) -> int | None:
    """An exclusive ``flock`` on ``path`` (created if missing): its descriptor, which holds the
    lock until closed, or None when another process holds it. The kernel releases it when the
    holder dies, even by SIGKILL."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new content."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    # The rename itself is only durable once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ProbeIdAllocator:
    """Hands out probe_ids that never repeat across restarts (see the module docstring)."""

    def __init__(self, store: ProbeIdStore, lease: int = 60) -> None:
        if lease < 2:
            raise ValueError("lease must be >= 2")
        self._store = store
        self._lease = lease
        self._reserved: int | None = None
        self.last_issued: int | None = None

    def begin(self, floor_id: int) -> int:
        """Return the first id of this run (>= ``floor_id``, above anything issued before)."""
        previous = self._store.load()
        first = floor_id if previous is None else max(previous + 1, floor_id)
        self._reserve(first + self._lease - 1)
        return first

    def issue(self, probe_id: int) -> None:
        """Record ``probe_id`` as issued; persists first if it lies beyond the reservation."""
        if self._reserved is None:
            raise RuntimeError("begin() was not called")
        if self.last_issued is not None and probe_id <= self.last_issued:
            raise ValueError(f"probe_id {probe_id} is not above {self.last_issued}")
        if probe_id > self._reserved:
            # Only reached when checkpoint() was not called often enough (or after a long
            # gap of missed ticks): correctness first, even on the tick path.
            self._reserve(probe_id + self._lease - 1)
        self.last_issued = probe_id

    def checkpoint(self) -> None:
        """Extend the reservation when half of it is used; cheap no-op otherwise."""
        if self._reserved is None or self.last_issued is None:
            return
        if self._reserved - self.last_issued < self._lease // 2:
            self._reserve(self.last_issued + self._lease)

    def _reserve(self, value: int) -> None:
        self._store.save(value)
        self._reserved = value


class TickScheduler:
    """Absolute-deadline tick schedule; see the module docstring for the rules.

    The scheduler never sleeps: the loop asks :meth:`time_until_next`, waits however it likes
    (on its transport, typically) and then calls :meth:`poll`.
    """

    def __init__(self, clock: Clock, ids: ProbeIdAllocator, period: float = 1.0) -> None:
        if period <= 0:
            raise ValueError("period must be > 0")
        self._clock = clock
        self._ids = ids
        self.period = period
        self._anchor_mono = 0.0
        self._anchor_wall = 0.0
        self._base_id = 0
        self._next = 0  # index of the next tick to run or miss
        self._started = False

    def start(self) -> ScheduledTick:
        """Anchor the schedule on the next whole wall-clock second and return tick 0."""
        # Bracket the wall-clock read between two monotonic reads so a preemption between the
        # reads cannot skew the anchor by more than half of its duration.
        mono_before = self._clock.monotonic()
        wall = self._clock.time()
        mono = (mono_before + self._clock.monotonic()) / 2
        first_wall = math.floor(wall) + 1.0
        self._anchor_wall = first_wall
        self._anchor_mono = mono + (first_wall - wall)
        self._base_id = self._ids.begin(int(first_wall))
        self._next = 0
        self._started = True
        return self.scheduled(0)

    def scheduled(self, index: int) -> ScheduledTick:
        # Multiplying the index (rather than accumulating ``next += period``) gives the same
        # schedule without floating-point error building up over months of uptime.
        return ScheduledTick(
            probe_id=self._base_id + index,
            wall_ts=self._anchor_wall + index * self.period,
            deadline=self._anchor_mono + index * self.period,
        )

    @property
    def next_tick(self) -> ScheduledTick:
        self._require_started()
        return self.scheduled(self._next)

    def time_until_next(self) -> float:
        """Seconds until the next deadline (<= 0 when it is already due)."""
        return self.next_tick.deadline - self._clock.monotonic()

    def quiet_delay(self, duration: float, after: float) -> float:
        """Seconds another thread should wait before ``duration`` seconds of work that competes
        with the loop (for the interpreter lock, or the CPU), so that the work neither runs into
        the next tick nor starts less than ``after`` seconds past the previous one; 0 means
        "start now". Safe to call from any thread (it only reads the schedule).

        Before :meth:`start` the ticks are not anchored yet, but the first one will fall on a
        whole wall-clock second, so that is what the answer is based on. Work too long to fit
        between two ticks at all only keeps clear of the ``after`` window.
        """
        if self._started:
            until = self.time_until_next()
        else:
            wall = self._clock.time()
            until = (math.floor(wall) + 1.0) - wall
        since = self.period - until  # since the previous deadline (due ticks: negative until)
        if until <= duration and duration < self.period - after:
            return max(0.0, until) + after
        return max(0.0, after - since)

    def wall_offset_drift(self) -> float:
        """How far the wall clock has moved against the schedule since start (steps, not slew).

        Exposed as a metric: a large value means ``ts`` labels are off from the host's wall
        clock until the next restart re-anchors them.
        """
        self._require_started()
        return (self._clock.time() - self._clock.monotonic()) - (self._anchor_wall - self._anchor_mono)

    def poll(self) -> Tick | None:
        """Return the tick to run now, or None if the next deadline is still ahead."""
        self._require_started()
        now = self._clock.monotonic()
        if now < self.scheduled(self._next).deadline:
            return None
        # Newest due tick: the largest j with deadline(j) <= now. The division can be off by one
        # in floating point, so settle it against the exact deadline comparisons.
        due = max(self._next, int((now - self._anchor_mono) / self.period))
        while self.scheduled(due + 1).deadline <= now:
            due += 1
        while due > self._next and self.scheduled(due).deadline > now:
            due -= 1
        missed = None
        if due > self._next:
            first = self.scheduled(self._next)
            missed = MissedTicks(
                first_probe_id=first.probe_id,
                first_wall_ts=first.wall_ts,
                first_deadline=first.deadline,
                count=due - self._next,
                period=self.period,
            )
        tick = self.scheduled(due)
        self._ids.issue(tick.probe_id)
        self._next = due + 1
        return Tick(
            probe_id=tick.probe_id,
            wall_ts=tick.wall_ts,
            deadline=tick.deadline,
            lateness=now - tick.deadline,
            missed=missed,
        )

    def checkpoint(self) -> None:
        """Persist the probe_id reservation if needed; call after the tick's work has started."""
        self._ids.checkpoint()

    def _require_started(self) -> None:
        if not self._started:
            raise RuntimeError("start() was not called")
