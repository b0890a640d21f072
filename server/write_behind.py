"""The batched database writer, and the only place that acknowledges messages to the broker.

The ingest calls ``record`` for every accepted message (set inserts and list
appends under a short lock: cheap on the hot path) with the message's broker
delivery, and ``settle`` for a message it did not apply (rejected, duplicate,
stale). A flusher thread takes everything pending every ``interval_s`` (or
sooner, once ``max_pending_acks`` deliveries wait), copies the latest state of
the dirty terminals from the fleet state, writes it in one transaction, and
only after the commit acknowledges the deliveries, in receive order, and then
hands ``confirm`` one ``(terminal, boot_id, last_seq, missing)`` per terminal that
had a broker delivery in the batch (the server publishes them as ``kf.committed``
on each terminal's ``cmd``: the agent keeps a message until then; ``missing``:
the terminal's open sequence gaps, read with the snapshot, so a gap filled after
it is still listed, never the reverse). So every
acknowledged message's effects (dedup position, counters, transitions, event
rows) are durable, and a killed server loses nothing: what was not committed
was not acknowledged, and the broker redelivers it. The cost of a flush follows
the number of distinct terminals (one row each), not the number of messages.

A not-applied message is acknowledged with the first flush that starts after
it, never before: a duplicate may be a duplicate of a message whose effects are
still pending, and must not be acknowledged before those are committed.

The ingest (and the offline sweep) change the fleet state and call ``record``
while holding ``applying()``; a flush holds it while it takes what is pending
and copies the fleet state. So a flush never writes a terminal's state (its
``last_seq``) without the transitions, event and delivery of the message that
produced it: otherwise a crash between that commit and the next could leave a
message whose position is durable (its redelivery is a duplicate) but whose
event row was never written.

Failures:

- a transient database error (``StorageError``: connection lost, disk full,
  locked) keeps everything pending (the fleet state in memory is untouched),
  leaves the deliveries unacknowledged (the broker keeps the backlog and stops
  delivering once its in-flight window is full), sets ``failure`` (readiness
  reports it) and retries with exponential backoff up to ``retry_max_s``;
  ``recovered_at`` says when writes worked again (the offline sweep restarts its
  grace period there: the silence was the server's doing). A write that has not
  finished after ``stall_after_s`` counts as a failure while it lasts (a
  PostgreSQL server cut off by the network raises nothing for minutes, and the
  broker holds back what cannot be acknowledged meanwhile). Pending transitions
  are bounded (the oldest are dropped and counted past the bound).
- any other exception from the store (a driver or library error not translated)
  is treated as transient: nothing pending is lost or acknowledged.
- a permanent error (``StorageDataError``: a constraint or data error) is
  isolated by writing the batch in halves, down to one terminal; that
  terminal's rows are dropped, counted (``kioskfleet_db_rejected_rows_total``)
  and logged, its messages are acknowledged (retrying cannot help), the others
  are written.

With ``writes`` (``ingest_ownership = "partition"``: ``Ownership.writes``) a flush first
leaves out what it took of terminals this replica no longer writes (their owner changed
since they were recorded, or this replica believes itself out of the set after failed
heartbeats): acknowledged unwritten and unconfirmed, their agents re-send them to the
new owner (docs/scale-out.md, "One writer per terminal").

This module decides nothing about the fleet and never talks SQL itself (that is
``server.storage``) nor MQTT (``acknowledge`` is handed in).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from protocol.committed import SeqRange
from server import stream_gaps
from server.errors import StorageDataError, StorageError
from server.fleet_views import TerminalView, Transition
from server.inbound import Delivery
from server.lease_fence import Fence, current_fence
from server.metrics import ServerMetrics
from server.records import EventRecord, UpdateRecord, UsageRecord, WriteBatch

__all__ = ["BatchStore", "Confirmation", "OpenGaps", "WriteBehind", "no_confirm", "no_gaps"]

log = logging.getLogger(__name__)


class BatchStore(Protocol):
    """The one storage operation the writer needs (``Storage``, or a fake in tests)."""

    def write(self, batch: WriteBatch, *, now: datetime) -> None:
        """Write all of ``batch`` or nothing. Raises StorageError (StorageDataError)."""
        ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _no_ack(_deliveries: Sequence[Delivery]) -> None:
    """The default when nothing needs acknowledging (tests, tools)."""


Gaps = tuple[SeqRange, ...]
"""One terminal's open sequence gaps, ascending (``kf.committed``'s ``missing``)."""

Confirmation = tuple[str, str, int, Gaps]
"""(terminal id, boot_id, highest seq committed, open gaps below it): what ``kf.committed``
carries."""

OpenGaps = Callable[[Iterable[str], datetime], Mapping[str, Gaps]]
"""The open sequence gaps of the named terminals at a time (``FleetState.open_gaps``)."""

KeptGaps = Callable[[Iterable[str]], Mapping[str, stream_gaps.Gaps]]
"""The gaps the named terminals keep, with when each was noticed (``FleetState.kept_gaps``):
stored with their rows."""


def no_confirm(_confirmations: Sequence[Confirmation]) -> None:
    """The default when nothing is confirmed to terminals (tests, tools)."""


def no_gaps(_ids: Iterable[str], _now: datetime) -> Mapping[str, Gaps]:
    """The default when no gap is tracked (tests, tools)."""
    return {}


def no_kept_gaps(_ids: Iterable[str]) -> Mapping[str, stream_gaps.Gaps]:
    """The default when no gap is stored with the rows (tests, tools)."""
    return {}


@dataclass(slots=True)
class _Pending:
    """What one flush takes: dirty terminals, their peripherals, transitions, events, acks."""

    dirty: set[str] = field(default_factory=set)
    peripherals: set[str] = field(default_factory=set)
    transitions: list[Transition] = field(default_factory=list)
    fenced: list[tuple[Fence, Transition]] = field(default_factory=list)  # the offline sweep's
    events: list[EventRecord] = field(default_factory=list)
    updates: list[UpdateRecord] = field(default_factory=list)
    usage: list[UsageRecord] = field(default_factory=list)
    acks: list[tuple[str | None, Delivery]] = field(default_factory=list)  # (terminal, delivery)
    removed: set[str] = field(default_factory=set)
    confirm: set[str] = field(default_factory=set)  # terminals whose position to confirm
    full: set[str] = field(default_factory=set)  # dirty beyond their position: whole row

    def position_only(self) -> frozenset[str]:
        """Dirty terminals whose rows need only their position columns written."""
        return frozenset(self.dirty - self.full - self.peripherals)

    def has_writes(self) -> bool:
        return bool(
            self.dirty
            or self.transitions
            or self.fenced
            or self.events
            or self.updates
            or self.usage
            or self.removed
        )

    def terminal_ids(self) -> list[str]:
        ids = self.dirty | self.peripherals | self.removed
        ids.update(t.terminal_id for t in self.transitions)
        ids.update(t.terminal_id for _, t in self.fenced)
        ids.update(e.terminal_id for e in self.events)
        ids.update(u.terminal_id for u in self.updates)
        ids.update(u.terminal_id for u in self.usage)
        return sorted(ids)

    def only(self, ids: set[str]) -> _Pending:
        """The part of this batch that belongs to the terminals ``ids`` (acks included)."""
        return _Pending(
            dirty=self.dirty & ids,
            peripherals=self.peripherals & ids,
            transitions=[t for t in self.transitions if t.terminal_id in ids],
            fenced=[f for f in self.fenced if f[1].terminal_id in ids],
            events=[e for e in self.events if e.terminal_id in ids],
            updates=[u for u in self.updates if u.terminal_id in ids],
            usage=[u for u in self.usage if u.terminal_id in ids],
            acks=[a for a in self.acks if a[0] in ids],
            removed=self.removed & ids,
            confirm=self.confirm & ids,
            full=self.full & ids,
        )


class WriteBehind:
    """Implements the ingest's ``WriteSink``; flushes and acknowledges from its own thread."""

    def __init__(
        self,
        store: BatchStore,
        snapshot: Callable[[Iterable[str]], list[TerminalView]],
        metrics: ServerMetrics,
        *,
        acknowledge: Callable[[Sequence[Delivery]], object] = _no_ack,
        confirm: Callable[[Sequence[Confirmation]], object] = no_confirm,
        open_gaps: OpenGaps = no_gaps,
        kept_gaps: KeptGaps = no_kept_gaps,
        writes: Callable[[str], bool] | None = None,
        interval_s: float = 1.0,
        max_pending_acks: int = 400,
        max_pending_transitions: int = 200_000,
        retry_max_s: float = 10.0,
        stall_after_s: float = 5.0,
        clock: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._snapshot = snapshot
        self._metrics = metrics
        self._acknowledge = acknowledge
        self._confirm = confirm
        self._open_gaps = open_gaps
        self._kept_gaps = kept_gaps
        self._writes = writes
        self._interval = interval_s
        self._max_acks = max_pending_acks
        self._max_pending = max_pending_transitions
        self._retry_max = max(retry_max_s, interval_s)
        self._clock = clock
        self._stall_after = stall_after_s
        self._monotonic = monotonic
        self._writing_since: float | None = None  # monotonic start of the write in progress
        self._stalled = False  # a write in this flush outlasted stall_after_s
        self._lock = threading.Lock()  # guards self._pending
        self._flush_lock = threading.Lock()  # one flush at a time
        self._intake = threading.Lock()  # held while the fleet changes and is recorded
        self._pending = _Pending()
        self._failure: str | None = None
        self._recovered_at: datetime | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the ingest's side ----------------------------------------------------------------

    def applying(self) -> AbstractContextManager[object]:
        """Hold this while changing the fleet state and recording the change: a flush never
        copies the state in between (it would commit a position without its event)."""
        return self._intake

    def record(
        self,
        terminal_id: str,
        *,
        peripherals_changed: bool = False,
        transitions: Sequence[Transition] = (),
        event: EventRecord | None = None,
        update: UpdateRecord | None = None,
        usage: UsageRecord | None = None,
        delivery: Delivery | None = None,
        position_only: bool = False,
    ) -> None:
        """Queue ``terminal_id``'s latest state (and the rest) for the next flush; cheap.

        ``position_only``: only the row's ``POSITION_FIELDS`` changed; the flush then
        updates just those columns unless another message since the last one needs more.
        Called in a run of a once-per-fleet job (the offline sweep), its ``transitions``
        keep that run's fence: they are written only while it holds (``server.lease_fence``)."""
        fence = current_fence() if transitions else None
        with self._lock:
            p = self._pending
            p.dirty.add(terminal_id)
            if not position_only:
                p.full.add(terminal_id)
            if peripherals_changed:
                p.peripherals.add(terminal_id)
            if fence is not None:
                p.fenced.extend((fence, t) for t in transitions)
            elif transitions:
                p.transitions.extend(transitions)
            if event is not None:
                p.events.append(event)
            if update is not None:
                p.updates.append(update)
            if usage is not None:
                p.usage.append(usage)
            if delivery is not None:
                p.acks.append((terminal_id, delivery))
                p.confirm.add(terminal_id)
                if len(p.acks) >= self._max_acks:
                    self._wake.set()

    def remove(self, terminal_id: str) -> None:
        """Delete the terminal's row and peripherals with the next flush (its history stays).

        Call it after the terminal left the fleet state, holding ``applying()``: a
        state queued before is dropped, a message applied after creates a new row.
        """
        with self._lock:
            p = self._pending
            p.dirty.discard(terminal_id)
            p.full.discard(terminal_id)
            p.peripherals.discard(terminal_id)
            p.removed.add(terminal_id)
        self._wake.set()

    def settle(self, delivery: Delivery | None, *, terminal_id: str | None = None) -> None:
        """Acknowledge a message that changed nothing, after everything received before it.

        ``terminal_id`` (a duplicate: an agent re-sending what it has no confirmation for)
        also confirms that terminal's committed position after the next flush."""
        if delivery is None:
            return
        with self._lock:
            self._pending.acks.append((None, delivery))
            if terminal_id is not None:
                self._pending.confirm.add(terminal_id)
            if len(self._pending.acks) >= self._max_acks:
                self._wake.set()

    # --- state ----------------------------------------------------------------------------

    @property
    def failure(self) -> str | None:
        """The last flush error while its batch is still pending, or a write that has not
        finished for ``stall_after_s``; else None."""
        if self._failure is not None:
            return self._failure
        started = self._writing_since
        if started is not None:
            running = self._monotonic() - started
            if running > self._stall_after:
                return f"a database write has not finished for {running:.0f} s"
        return None

    @property
    def recovered_at(self) -> datetime | None:
        """When a flush last succeeded after a failure (None if writes never failed)."""
        return self._recovered_at

    def pending(self) -> tuple[int, int]:
        """(terminals with unwritten changes, queued transitions)."""
        with self._lock:
            p = self._pending
            return len(p.dirty), len(p.transitions) + len(p.fenced)

    def pending_acks(self) -> int:
        """Deliveries waiting for a commit before they are acknowledged."""
        with self._lock:
            return len(self._pending.acks)

    # --- flushing -------------------------------------------------------------------------

    def flush(self, *, lock_timeout_s: float = -1) -> bool:
        """Write what is pending, then acknowledge. True if nothing failed transiently.

        ``lock_timeout_s``: how long to wait for a flush already running (-1: forever);
        returns False if it did not finish in time.
        """
        if not self._flush_lock.acquire(timeout=lock_timeout_s):
            return False
        try:
            return self._flush()
        finally:
            self._flush_lock.release()

    def _flush(self) -> bool:
        with self._intake:  # every change in the copy below has its record in ``taken``
            with self._lock:
                taken, self._pending = self._pending, _Pending()
            if self._writes is not None:
                taken = self._still_owned(taken)
            wanted = set(taken.confirm)
            if taken.has_writes():
                wanted |= taken.dirty | taken.peripherals
            views = {v.id: v for v in self._snapshot(sorted(wanted))} if wanted else {}
            gaps = self._open_gaps(taken.confirm, self._clock()) if taken.confirm else {}
            whole = taken.full | taken.peripherals  # rows written whole: their gaps with them
            kept = self._kept_gaps(whole) if whole else {}
        if not taken.has_writes():
            self._ack(taken.acks)
            self._confirm_committed(taken.confirm, views, gaps)
            self._succeeded()
            return True
        try:
            self._write(taken, views, kept)
        except StorageDataError as exc:
            log.warning("database refused a batch (%s); isolating the bad rows", exc)
            return self._isolate(taken, views, gaps, kept)
        except StorageError as exc:
            self._failed(exc, taken)
            return False
        self._ack(taken.acks)
        self._confirm_committed(taken.confirm, views, gaps)
        self._succeeded()
        return True

    def _still_owned(self, taken: _Pending) -> _Pending:
        """``taken`` without what belongs to terminals this replica no longer writes (their
        owner changed since they were recorded, or a retry outlived this replica's
        membership): their deliveries are acknowledged unwritten and unconfirmed, like a
        non-owner's; the agents re-send them to the new owner. A removal (a decommission
        through this replica's API) is kept: no owner would do it instead."""
        writes = self._writes
        ids = taken.terminal_ids()
        lost = {
            tid
            for tid in ids
            if writes is not None and tid not in taken.removed and not writes(tid)
        }
        if not lost:
            return taken
        kept = taken.only(set(ids) - lost)
        kept.acks = [(None if tid in lost else tid, d) for tid, d in taken.acks]
        log.info(
            "dropped the pending writes of %d terminals this replica no longer owns", len(lost)
        )
        return kept

    def _write(
        self,
        part: _Pending,
        views: dict[str, TerminalView],
        kept: Mapping[str, stream_gaps.Gaps],
    ) -> None:
        batch = WriteBatch(
            terminals=[views[tid] for tid in sorted(part.dirty | part.peripherals) if tid in views],
            peripheral_ids=frozenset(part.peripherals),
            transitions=part.transitions,
            events=part.events,
            updates=part.updates,
            usage=part.usage,
            removed=frozenset(part.removed),
            position_only=part.position_only(),
            fenced_transitions=part.fenced,
            open_gaps=kept,
        )
        started = time.perf_counter()
        began = self._writing_since = self._monotonic()
        try:
            self._store.write(batch, now=self._clock())
        except StorageError:
            self._metrics.db_errors.inc()
            raise
        except Exception as exc:  # untranslated: keep everything, retry (never lose acks)
            self._metrics.db_errors.inc()
            log.exception("unexpected error writing a batch")
            raise StorageError("write batch", f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._metrics.db_flush_seconds.observe(time.perf_counter() - started)
            if self._monotonic() - began > self._stall_after:
                self._stalled = True  # it counted as a failure: its end is a recovery
            self._writing_since = None

    def _isolate(
        self,
        taken: _Pending,
        views: dict[str, TerminalView],
        gaps: Mapping[str, Gaps],
        kept: Mapping[str, stream_gaps.Gaps],
    ) -> bool:
        """Write ``taken`` in halves until the terminals whose rows are refused are found."""
        groups = [taken.terminal_ids()]
        done: set[str] = set()  # committed or dropped
        while groups:
            ids = groups.pop()
            part = taken.only(set(ids))
            try:
                self._write(part, views, kept)
            except StorageDataError as exc:
                if len(ids) > 1:
                    half = len(ids) // 2
                    groups.extend((ids[half:], ids[:half]))
                    continue
                rows = WriteBatch(
                    terminals=[views[i] for i in ids if i in views],
                    peripheral_ids=frozenset(part.peripherals),
                    transitions=part.transitions,
                    events=part.events,
                    updates=part.updates,
                    usage=part.usage,
                    fenced_transitions=part.fenced,
                ).row_count()
                self._metrics.db_rejected_rows.inc(rows)
                log.error(
                    "database refused the rows of terminal %s; dropped %d rows and"
                    " acknowledged its %d messages: %s",
                    ids[0],
                    rows,
                    len(part.acks),
                    exc,
                )
            except StorageError as exc:  # transient: keep what is not written yet
                left = set(taken.terminal_ids()) - done
                rest = taken.only(left)
                rest.acks = [a for a in taken.acks if a[0] is None or a[0] in left]
                self._ack([a for a in taken.acks if a[0] in done])
                self._confirm_committed(taken.confirm & done, views, gaps)
                rest.confirm = taken.confirm - done
                self._failed(exc, rest)
                return False
            done.update(ids)
        self._ack(taken.acks)
        self._confirm_committed(taken.confirm, views, gaps)
        self._succeeded()
        return True

    def _ack(self, acks: Sequence[tuple[str | None, Delivery]]) -> None:
        if acks:
            self._acknowledge([delivery for _, delivery in acks])

    def _confirm_committed(
        self, ids: set[str], views: dict[str, TerminalView], gaps: Mapping[str, Gaps]
    ) -> None:
        """After a commit: each terminal's committed (boot_id, last_seq) and open gaps below
        it, one per terminal."""
        confirmations = [
            (tid, v.boot_id, v.last_seq, gaps.get(tid, ()))
            for tid in sorted(ids)
            if (v := views.get(tid)) is not None
            and v.boot_id is not None
            and v.last_seq is not None
        ]
        if confirmations:
            try:
                self._confirm(confirmations)
            except Exception:  # a confirmation not sent is re-sent with the next one
                log.exception("could not publish commit confirmations")

    def _succeeded(self) -> None:
        if self._failure is not None or self._stalled:
            log.info("database writes succeed again")
            self._recovered_at = self._clock()
        self._failure = None
        self._stalled = False

    def _failed(self, exc: StorageError, taken: _Pending) -> None:
        self._stalled = False
        if self._failure is None:
            log.error("database flush failed, will retry: %s", exc)
        self._failure = str(exc)
        with self._lock:  # put back in front: older first
            p = self._pending
            p.dirty |= taken.dirty
            p.full |= taken.full
            p.peripherals |= taken.peripherals
            p.removed |= taken.removed
            p.confirm |= taken.confirm
            p.transitions[:0] = taken.transitions
            p.fenced[:0] = taken.fenced
            p.events[:0] = taken.events
            p.updates[:0] = taken.updates
            p.usage[:0] = taken.usage
            p.acks[:0] = taken.acks
            excess = 0  # each list bounded: the ingest's transitions, the sweep's
            for queued in (p.transitions, p.fenced):
                over = len(queued) - self._max_pending
                if over > 0:
                    del queued[:over]
                    excess += over
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
        failures = 0
        while not self._stop.is_set():
            if failures:  # back off; a full ack window does not shorten the wait
                delay = min(self._interval * 2 ** min(failures, 20), self._retry_max)
                if self._stop.wait(delay):
                    break
            else:
                self._wake.wait(self._interval)
                if self._stop.is_set():
                    break
            self._wake.clear()
            try:
                failures = 0 if self.flush() else failures + 1
            except Exception:  # a bug here must not stop all future writes
                failures += 1
                self._metrics.db_errors.inc()
                log.exception("unexpected error in the database writer")

    def stop(self, timeout_s: float = 15.0) -> bool:
        """Stop the thread, write and acknowledge what is pending (waiting at most about
        ``timeout_s`` for a flush in progress). True if nothing was left unwritten."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("the database writer did not stop within %.0f s", timeout_s)
            self._thread = None
        ok = self.flush(lock_timeout_s=timeout_s)
        if not ok:
            terminals, transitions = self.pending()
            log.error(
                "stopping with %d terminals, %d transitions and %d acknowledgements"
                " not written: %s",
                terminals,
                transitions,
                self.pending_acks(),
                self._failure or "a flush still running",
            )
        return ok
