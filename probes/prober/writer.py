"""Batching writer between the prober loop and the database.

Threading design
----------------
The loop only calls :meth:`BatchWriter.submit`, which appends to an in-memory list under a lock
and returns: no I/O ever happens on the tick thread. A writer thread flushes about once a second
(:meth:`BatchWriter.flush_once`):

1. if the sink is in back-off (or a previous call is still stuck), the batch goes straight to
   the spool (append + fsync);
2. otherwise spooled rows are replayed first, oldest first, in chunks, each chunk committed in
   the spool only after the sink returned; replay gets a time budget per flush so a long
   backlog cannot keep new rows in memory for long;
3. then the new batch is written; if the sink fails, the batch is spooled and the sink is
   retried after a capped exponential back-off.

While a backlog is being replayed and the sink keeps taking it, the next flush follows at once
instead of a flush interval later: replay runs at the database's pace, not at a budget's
fraction of it, and every budget (~0.5 s) the flush still picks up the loop's new rows and
appends them behind the backlog. A writer that starts with rows in its spool (left by a
previous process) replays them right away.

Rows are encoded once, when a flush takes them (``encode``: the prober's COPY text): the same
bytes go to the sink or to the spool, and a replay hands spooled bytes to the sink unchanged.
Replaying still takes the interpreter lock (reading the spool, driving the COPY), and the
loop's thread needs it to start a tick and to drive its transfers: a replay running through a
tick made it start tens of milliseconds late. So the writer yields to the loop:
before each chunk it asks ``pacer`` (the loop's ``quiet_delay``) how long to wait so that the
chunk, as long as the previous ones took, ends before the next tick and starts after the
tick's first moments. The loop's cadence stays what it is without a backlog, and replay keeps
most of each second.

New rows never overtake spooled ones: while anything is still pending in the spool the new batch
is appended behind it, so the sink sees rows in submission order.

Each sink call runs on its own short-lived daemon thread and is waited for at most
``sink_timeout``. A call that hangs (PostgreSQL blackholed, lock wait...) is abandoned: its rows
are spooled and replayed later, and no new call is made until the stuck one returns. If the
stuck call did commit after all, those rows reach the sink twice. That is the at-least-once
case; sinks must therefore be idempotent (``INSERT ... ON CONFLICT (location, probe_id, source)
DO NOTHING``). Without timeouts every row is delivered exactly once, in order.

Durability: a row is *acknowledged* once the sink returned or the spool fsync'd it. Rows
submitted in the last ~``flush_interval`` (+ ``sink_timeout`` while a call is in progress) live
only in memory; on SIGTERM :meth:`close` flushes them with a deadline and spools the rest.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from probes.prober.spool import Encoder, Row, Spool

log = logging.getLogger(__name__)

Sink = Callable[[bytes], None]
"""Writes encoded rows upstream (one transaction); raises when the database is unavailable."""


class RejectedRowsError(Exception):
    """Raised by a sink when the rows themselves are unacceptable (not an outage).

    Retrying would fail forever and block everything behind them, so the writer moves such
    rows to the spool's quarantine file instead.
    """


class _Outcome(Enum):
    OK = "ok"
    REJECTED = "rejected"
    FAILED = "failed"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"  # not attempted: back-off, or a previous call is stuck


class _Replay(Enum):
    DONE = "done"  # nothing left to replay (or nothing readable)
    OUT_OF_BUDGET = "out of budget"  # the sink is taking rows and more are waiting
    FAILED = "failed"  # the sink did not take a chunk: back to spooling


@dataclass
class WriterStats:
    """Counters for metrics; plain attributes, read from any thread."""

    rows_submitted: int = 0
    rows_written: int = 0  # new rows the sink took directly
    rows_replayed: int = 0  # spooled rows the sink took later
    rows_spooled: int = 0
    rows_rejected: int = 0
    rows_dropped: int = 0  # only when the in-memory buffer overflowed (spool unusable)
    flushes: int = 0
    sink_failures: int = 0
    sink_timeouts: int = 0
    spool_errors: int = 0
    last_flush_at: float | None = None  # writer clock (monotonic)
    last_success_at: float | None = None
    backoff_s: float = 0.0


class _SinkCall:
    def __init__(self, sink: Sink, data: bytes) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._sink = sink
        self._data = data

    def run(self) -> None:
        try:
            self._sink(self._data)
        except BaseException as exc:  # handed to the writer thread, which decides
            self.error = exc
        finally:
            self.done.set()


class BatchWriter:
    """Batches rows to ``sink``, spooling whatever it cannot take (see the module docstring)."""

    def __init__(
        self,
        sink: Sink,
        spool: Spool,
        *,
        encode: Encoder,
        flush_interval: float = 1.0,
        replay_chunk: int = 1000,
        replay_budget: float = 0.5,
        sink_timeout: float = 5.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        backoff_jitter: float = 0.2,
        max_pending_rows: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        pacer: Callable[[float], float] | None = None,
    ) -> None:
        """``pacer(seconds)`` says how long to wait before a replayed chunk expected to take
        ``seconds`` (see the module docstring); None replays without waiting. ``encode`` turns
        rows into the bytes the sink and the spool take, one line per row."""
        self._sink = sink
        self._encode = encode
        self.spool = spool
        self.flush_interval = flush_interval
        self.replay_chunk = replay_chunk
        self.replay_budget = replay_budget
        self.sink_timeout = sink_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff_jitter = backoff_jitter
        self.max_pending_rows = max_pending_rows
        self._clock = clock
        self.pacer = pacer
        self._chunk_seconds = 0.1  # how long a replayed chunk takes (moving average, real time)
        # Jitter spreads the reconnects of all locations after a central outage.
        self._rng = rng or random.Random()  # noqa: S311 - not security relevant
        self.stats = WriterStats()
        self._lock = threading.Lock()
        self._pending: list[Row] = []
        self._retry_at = 0.0
        self._backoff = 0.0
        self._stuck: _SinkCall | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._closed = False
        self._close_deadline = 0.0
        self._thread: threading.Thread | None = None

    # -- loop side -----------------------------------------------------------------------

    def submit(self, rows: Sequence[Row]) -> None:
        """Queue rows for the next flush. Never blocks on I/O (safe on the tick thread)."""
        if not rows:
            return
        if self._closed:
            # Late rows after close() (e.g. a drain that outlived the deadline) must not vanish.
            self._spool_rows(list(rows))
            return
        with self._lock:
            self._pending.extend(rows)
            self.stats.rows_submitted += len(rows)
            overflow = len(self._pending) - self.max_pending_rows
            if overflow > 0:
                # The writer thread cannot even spool (disk gone?). Bound memory, loudly.
                del self._pending[:overflow]
                self.stats.rows_dropped += overflow
        if overflow > 0:
            log.error("writer: in-memory buffer full, dropped %d oldest rows", overflow)

    @property
    def spool_depth(self) -> int:
        return self.spool.depth

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prober-writer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Final flush within ``timeout`` seconds; whatever the sink did not take is spooled."""
        self._close_deadline = self._clock() + timeout
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            # A little slack beyond the deadline for the final spool fsync.
            self._thread.join(timeout + 1.0)
            if self._thread.is_alive():
                log.error("writer: final flush did not finish in %.1fs", timeout)
        else:
            self._final_flush()
        self._closed = True

    def _run(self) -> None:
        backlog = self.spool.depth > 0  # left by a previous process: replay it right away
        while not self._stopping:
            if backlog:
                time.sleep(0)  # yield the interpreter to the loop's thread, then carry on
            else:
                self._wake.wait(self.flush_interval)
            if self._stopping:
                break
            try:
                backlog = self.flush_once()
            except Exception:
                # A bug here must not kill the thread and silently stop all writes.
                log.exception("writer: flush failed")
                backlog = False
        self._final_flush()

    def _final_flush(self) -> None:
        try:
            self.flush_once(final=True)
        except Exception:
            log.exception("writer: final flush failed")

    # -- flushing ------------------------------------------------------------------------

    def flush_once(self, *, final: bool = False) -> bool:
        """One flush cycle (the writer thread calls this; tests call it directly).

        Returns True when the replay ran out of budget with the sink healthy and rows still in
        the spool: the next flush should follow at once. With ``final`` the spool backlog is
        not replayed (that can wait for the next start) and the sink gets only what is left of
        the close deadline.
        """
        with self._lock:
            batch, self._pending = self._pending, []
        now = self._clock()
        self.stats.flushes += 1
        self.stats.last_flush_at = now
        timeout = self.sink_timeout
        if final:
            timeout = min(timeout, self._close_deadline - now)
            if timeout <= 0:
                self._spool_rows(batch)
                return False
        if now < self._retry_at:
            self._spool_rows(batch)
            return False
        replay = _Replay.DONE if final else self._replay(now + self.replay_budget, timeout)
        if replay is _Replay.FAILED:
            self._spool_rows(batch)
            return False
        if self.spool.depth > 0:
            self._spool_rows(batch)  # keep order: the backlog goes first
            return replay is _Replay.OUT_OF_BUDGET
        if batch:
            data = self._encode(batch)
            outcome = self._deliver(data, len(batch), timeout)
            if outcome is _Outcome.OK:
                self.stats.rows_written += len(batch)
            elif outcome is not _Outcome.REJECTED:
                self._spool_rows(batch, data)
        return False

    def _replay(self, budget_end: float, timeout: float) -> _Replay:
        """Replay spooled chunks until the spool is empty, the budget is spent or the sink fails."""
        while self.spool.depth > 0:
            if self._clock() >= budget_end:
                return _Replay.OUT_OF_BUDGET
            if self.pacer is not None and not self._stopping:
                # A quarter of headroom: a chunk can take longer than the average of the last ones.
                delay = self.pacer(self._chunk_seconds * 1.25)
                if delay > 0:
                    self._wake.wait(delay)  # close() cuts it short
                    continue
            started = time.monotonic()
            chunk = self.spool.read_batch(self.replay_chunk)
            if chunk is None:
                break
            outcome = self._deliver(chunk.data, chunk.rows, timeout)
            if outcome not in (_Outcome.OK, _Outcome.REJECTED):
                return _Replay.FAILED
            self.spool.commit(chunk)
            if outcome is _Outcome.OK:
                self.stats.rows_replayed += chunk.rows
            self._chunk_seconds = 0.7 * self._chunk_seconds + 0.3 * (time.monotonic() - started)
        return _Replay.DONE

    def _deliver(self, data: bytes, rows: int, timeout: float) -> _Outcome:
        if self._stuck is not None:
            if not self._stuck.done.is_set():
                return _Outcome.UNAVAILABLE
            self._stuck = None
        call = _SinkCall(self._sink, data)
        threading.Thread(target=call.run, name="prober-sink", daemon=True).start()
        if not call.done.wait(timeout):
            self._stuck = call
            self.stats.sink_timeouts += 1
            self._failed(f"sink call exceeded {timeout:.1f}s")
            return _Outcome.TIMEOUT
        if call.error is None:
            self._backoff = 0.0
            self._retry_at = 0.0
            self.stats.backoff_s = 0.0
            self.stats.last_success_at = self._clock()
            return _Outcome.OK
        if isinstance(call.error, RejectedRowsError):
            log.error("writer: sink rejected %d rows, quarantined: %s", rows, call.error)
            self.spool.quarantine(data, rows)
            self.stats.rows_rejected += rows
            return _Outcome.REJECTED
        self._failed(repr(call.error))
        return _Outcome.FAILED

    def _failed(self, why: str) -> None:
        self.stats.sink_failures += 1
        self._backoff = min(self.backoff_max, self._backoff * 2 if self._backoff else self.backoff_initial)
        jitter = 1.0 + self._rng.uniform(-self.backoff_jitter, self.backoff_jitter)
        self._retry_at = self._clock() + self._backoff * jitter
        self.stats.backoff_s = self._backoff
        log.warning("writer: sink unavailable (%s), retrying in %.1fs", why, self._backoff)

    def _spool_rows(self, rows: list[Row], data: bytes | None = None) -> None:
        """Spool ``rows``; ``data`` is their encoding when the flush made it already."""
        if not rows:
            return
        try:
            self.spool.append(self._encode(rows) if data is None else data, len(rows))
        except OSError:
            # Disk full or gone: keep the rows in memory (in order, ahead of newer ones) and
            # try again next flush; submit() bounds the memory this can take.
            log.exception("writer: spool append failed, keeping %d rows in memory", len(rows))
            self.stats.spool_errors += 1
            with self._lock:
                self._pending[:0] = rows
            return
        self.stats.rows_spooled += len(rows)
