"""The batched database writer: collects what the ingest changed, writes it once per interval.

The ingest calls ``record`` for every accepted message (a set insert and a list
extend under a short lock: cheap on the hot path). A flusher thread takes the
batch every ``interval_s``, copies the latest state of the dirty terminals from
the fleet state, and writes everything in one transaction. So ``last_seen`` of
a terminal reporting every second costs one row write per flush, not one per
report. A change that only moves ``last_seen``/``seq`` (a heartbeat) is written
at the latest every ``heartbeat_interval_s`` (and on ``stop``): the database's
copy of them is only read at startup, where the offline sweep's grace period
makes a stale ``last_seen`` harmless. Transitions and every other change go out
with the next flush.

A failed flush is logged and counted, the batch goes back into the pending set
(bounded: the oldest transitions are dropped and counted past the bound) and
is retried on the next tick; ``failure`` stays set (readiness reports it)
until a flush succeeds. This module decides nothing about the fleet and never
talks SQL itself (that is ``server.storage``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from server.errors import StorageError
from server.fleet_state import TerminalView, Transition
from server.metrics import ServerMetrics
from server.storage import WriteBatch

__all__ = ["BatchStore", "WriteBehind"]

log = logging.getLogger(__name__)


class BatchStore(Protocol):
    """The one storage operation the writer needs (``Storage``, or a fake in tests)."""

    def write(self, batch: WriteBatch, *, now: datetime) -> None:
        """Write all of ``batch`` or nothing. Raises StorageError."""
        ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class WriteBehind:
    """Implements the ingest's ``WriteSink``; flushes from its own thread."""

    def __init__(
        self,
        store: BatchStore,
        snapshot: Callable[[Iterable[str]], list[TerminalView]],
        metrics: ServerMetrics,
        *,
        interval_s: float = 1.0,
        heartbeat_interval_s: float = 60.0,
        max_pending_transitions: int = 200_000,
        clock: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._snapshot = snapshot
        self._metrics = metrics
        self._interval = interval_s
        self._max_pending = max_pending_transitions
        self._clock = clock
        self._monotonic = monotonic
        self._heartbeat_interval = heartbeat_interval_s
        self._next_heartbeat_flush = monotonic() + heartbeat_interval_s
        self._lock = threading.Lock()  # guards the pending collections
        self._flush_lock = threading.Lock()  # one flush at a time
        self._dirty: set[str] = set()
        self._heartbeats: set[str] = set()  # only last_seen/seq changed: may wait
        self._dirty_peripherals: set[str] = set()
        self._transitions: list[Transition] = []
        self._failure: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the ingest's side ----------------------------------------------------------------

    def record(
        self,
        terminal_id: str,
        *,
        peripherals_changed: bool = False,
        transitions: Sequence[Transition] = (),
        heartbeat_only: bool = False,
    ) -> None:
        with self._lock:
            if heartbeat_only:
                self._heartbeats.add(terminal_id)
            else:
                self._dirty.add(terminal_id)
            if peripherals_changed:
                self._dirty_peripherals.add(terminal_id)
            if transitions:
                self._transitions.extend(transitions)

    # --- state ----------------------------------------------------------------------------

    @property
    def failure(self) -> str | None:
        """The last flush error while a batch is still pending after it, else None."""
        return self._failure

    def pending(self) -> tuple[int, int]:
        """(terminals with unwritten changes, queued transitions)."""
        with self._lock:
            return len(self._dirty | self._heartbeats), len(self._transitions)

    # --- flushing -------------------------------------------------------------------------

    def flush(self, *, everything: bool = False) -> bool:
        """Write what is due (``everything``: heartbeats too). True if the write succeeded."""
        with self._flush_lock:
            now = self._monotonic()
            with self._lock:
                dirty, self._dirty = self._dirty, set()
                if everything or now >= self._next_heartbeat_flush:
                    dirty |= self._heartbeats
                    self._heartbeats = set()
                    self._next_heartbeat_flush = now + self._heartbeat_interval
                elif dirty and self._heartbeats:
                    self._heartbeats -= dirty  # written now anyway
                dirty_peripherals, self._dirty_peripherals = self._dirty_peripherals, set()
                transitions, self._transitions = self._transitions, []
            if not (dirty or transitions):
                self._failure = None
                return True
            # A peripheral rewrite needs that terminal's snapshot in the same batch.
            views = self._snapshot(sorted(dirty | dirty_peripherals))
            batch = WriteBatch(
                terminals=views,
                peripheral_ids=frozenset(dirty_peripherals),
                transitions=transitions,
            )
            started = time.perf_counter()
            try:
                self._store.write(batch, now=self._clock())
            except StorageError as exc:
                self._metrics.db_errors.inc()
                self._requeue(dirty, dirty_peripherals, transitions)
                if self._failure is None:
                    log.error("database flush failed, will retry: %s", exc)
                self._failure = str(exc)
                return False
            finally:
                self._metrics.db_flush_seconds.observe(time.perf_counter() - started)
            if self._failure is not None:
                log.info("database flush succeeded again")
            self._failure = None
            return True

    def _requeue(
        self, dirty: set[str], dirty_peripherals: set[str], transitions: list[Transition]
    ) -> None:
        with self._lock:
            self._dirty |= dirty
            self._dirty_peripherals |= dirty_peripherals
            self._transitions[:0] = transitions  # older first
            excess = len(self._transitions) - self._max_pending
            if excess > 0:
                del self._transitions[:excess]
        if excess > 0:
            self._metrics.db_dropped_transitions.inc(excess)
            log.error("database unavailable: dropped the %d oldest pending transitions", excess)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kf-db-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception:  # a bug here must not stop all future writes
                self._metrics.db_errors.inc()
                log.exception("unexpected error in the database writer")

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the thread and write what is pending. True if nothing was left unwritten."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        ok = self.flush(everything=True)
        if not ok:
            terminals, transitions = self.pending()
            log.error(
                "stopping with %d terminals and %d transitions not written: %s",
                terminals,
                transitions,
                self._failure,
            )
        return ok
