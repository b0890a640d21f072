"""The fleet state: every terminal's latest state in memory, behind one lock.

A thin facade over four pure modules, each with one concept:

- ``server.terminal_rules``: what one message does to one terminal's record
  (sequence and dedup, connectivity, peripherals, silence), bytes-in,
  decision-out;
- ``server.fleet_tallies``: the incremental counts by hall, software and
  problem, changed only by the rules' results;
- ``server.fleet_query``: filtered, cursor-paginated reads;
- ``server.fleet_views``: the frozen copies readers get (``TerminalView``...),
  with ``server.health`` rolling peripherals up into a terminal's health.

This module holds the records and the lock and nothing else: one writer (the
ingest thread, plus the offline sweep) and many readers (API threads, the
metrics collector, the database writer). Readers get frozen copies, never the
live records. It never touches a socket, a database, a clock (``summary`` times its
own hold of the lock with ``time.perf_counter``) or a logger.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from protocol.committed import SeqRange
from protocol.messages import Message
from server import fleet_query, stream_gaps, terminal_rules
from server.fleet_tallies import FleetTallies
from server.fleet_views import (
    FleetSummary,
    HallSummary,
    OfflineReason,
    Outcome,
    Page,
    SoftwareCount,
    TerminalFilter,
    TerminalView,
    Transition,
)
from server.terminal_rules import Placement, TerminalPolicy, TerminalRecord

__all__ = ["FleetState"]


class FleetState:
    """Every terminal's latest state. Thread-safe: one writer, many readers."""

    def __init__(
        self,
        *,
        offline_after_missed_reports: int = 3,
        default_report_interval_s: float = 60.0,
        max_seq_jump: int = 1_000_000,
        max_report_interval_s: float = 3600.0,
        gap_refill_window_s: float = 60.0,
        placements: Callable[[str], Placement | None] | None = None,
    ) -> None:
        """``placements`` (the terminal registry's ``placement``), when given, decides each
        terminal's hall, region and model instead of its messages. A sequence gap stays
        open (listed in confirmations, fillable) for ``gap_refill_window_s``.

        Raises ValueError unless ``offline_after_missed_reports`` >= 1, the interval > 0
        and ``max_seq_jump`` >= 1."""
        self._placements = placements
        self._policy = TerminalPolicy(
            offline_after_missed_reports,
            default_report_interval_s,
            max_seq_jump,
            max_report_interval_s,
            gap_refill_window_s,
        )
        self._lock = threading.Lock()
        self._terminals: dict[str, TerminalRecord] = {}
        self._sorted_ids: list[str] = []
        self._tallies = FleetTallies()

    # --- writing --------------------------------------------------------------------------

    def load(self, terminals: Iterable[TerminalView]) -> None:
        """Replace the fleet with ``terminals`` (the database's copy at startup)."""
        with self._lock:
            self._terminals.clear()
            self._tallies.clear()
            for v in terminals:
                t = TerminalRecord.from_view(v, self._policy)
                self._terminals[v.id] = t
                self._tallies.update(t)
            self._sorted_ids = sorted(self._terminals)

    def apply(self, message: Message, received_at: datetime, *, retained: bool = False) -> Outcome:
        """Apply one decoded message received at server time ``received_at``.

        ``retained`` is True when the broker delivered a stored retained message
        (on subscribe) rather than a live one. Never raises for any valid message.
        """
        with self._lock:
            t = self._terminals.get(message.terminal_id)
            created = t is None
            if t is None:
                t = self._terminals[message.terminal_id] = TerminalRecord(
                    message.terminal_id, received_at
                )
                bisect.insort(self._sorted_ids, t.id)
            placement = None if self._placements is None else self._placements(t.id)
            outcome = terminal_rules.apply(
                t, message, received_at, self._policy, retained=retained, placement=placement
            )
            if outcome.retally:
                self._tallies.update(t)
            elif created and not outcome.accepted:  # a refused first message leaves no trace
                del self._terminals[t.id]
                self._sorted_ids.remove(t.id)
            return outcome

    def reload(
        self,
        terminal_ids: Iterable[str],
        views: Iterable[TerminalView],
        gaps: Mapping[str, stream_gaps.Gaps],
    ) -> None:
        """Replace the named terminals' records with their stored ``views`` and open
        ``gaps`` (the database's committed state, for a replica taking them over:
        ``server.membership``); a named terminal without a view is forgotten (nothing of
        it was committed)."""
        stored = {v.id: v for v in views}
        with self._lock:
            for tid in terminal_ids:
                view = stored.get(tid)
                known = tid in self._terminals
                if view is None:
                    if known:
                        del self._terminals[tid]
                        del self._sorted_ids[bisect.bisect_left(self._sorted_ids, tid)]
                        self._tallies.remove(tid)
                    continue
                t = self._terminals[tid] = TerminalRecord.from_view(view, self._policy)
                t.gaps = gaps.get(tid, ())
                if not known:
                    bisect.insort(self._sorted_ids, tid)
                self._tallies.update(t)

    def kept_gaps(self, terminal_ids: Iterable[str]) -> dict[str, stream_gaps.Gaps]:
        """The gaps the named terminals that have any keep, as noted (expired ones too:
        whoever reads them back judges the window)."""
        with self._lock:
            return {
                tid: t.gaps
                for tid in terminal_ids
                if (t := self._terminals.get(tid)) is not None and t.gaps
            }

    def ids(self) -> list[str]:
        """Every known terminal id, sorted (a copy)."""
        with self._lock:
            return list(self._sorted_ids)

    def remove(self, terminal_id: str) -> TerminalView | None:
        """Take the terminal out of the fleet and every tally (decommissioned); its last view.

        None if it was not known. A later message from the same id starts a new record.
        """
        with self._lock:
            t = self._terminals.pop(terminal_id, None)
            if t is None:
                return None
            index = bisect.bisect_left(self._sorted_ids, terminal_id)
            del self._sorted_ids[index]
            self._tallies.remove(terminal_id)
            return t.view()

    def expire_silent(
        self, now: datetime, *, listening_since: datetime | None = None
    ) -> list[Transition]:
        """Take every online terminal that has been silent too long offline (reason timeout).

        ``listening_since``: when the server last (re)connected to the broker;
        silence before it is not held against a terminal.
        """
        out: list[Transition] = []
        with self._lock:
            for t in self._terminals.values():
                transition = terminal_rules.expire(t, now, self._policy, listening_since)
                if transition is not None:
                    out.append(transition)
                    self._tallies.update(t)
        return out

    def adopt_offline(self, offline: Iterable[tuple[str, datetime, OfflineReason]]) -> int:
        """Take offline, without transitions, the terminals another replica's sweep already
        recorded offline (``(id, since, reason)`` from the database) and that sent nothing
        here since; the new lease holder calls it before its first sweep. Returns how many."""
        changed = 0
        with self._lock:
            for terminal_id, since, reason in offline:
                t = self._terminals.get(terminal_id)
                if t is not None and terminal_rules.adopt_offline(t, since, reason):
                    self._tallies.update(t)
                    changed += 1
        return changed

    # --- reading --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._terminals)

    def get(self, terminal_id: str) -> TerminalView | None:
        with self._lock:
            t = self._terminals.get(terminal_id)
            return None if t is None else t.view()

    def snapshot(self, terminal_ids: Iterable[str]) -> list[TerminalView]:
        """Frozen copies of the named terminals (unknown ids are skipped)."""
        with self._lock:
            return [t.view() for tid in terminal_ids if (t := self._terminals.get(tid)) is not None]

    def open_gaps(
        self, terminal_ids: Iterable[str], now: datetime
    ) -> dict[str, tuple[SeqRange, ...]]:
        """The open sequence gaps at ``now`` of the named terminals that have any."""
        out: dict[str, tuple[SeqRange, ...]] = {}
        with self._lock:
            for tid in terminal_ids:
                t = self._terminals.get(tid)
                if t is not None and t.gaps and (ranges := t.open_gaps(now, self._policy)):
                    out[tid] = ranges
        return out

    def query(self, flt: TerminalFilter, *, limit: int, cursor: str | None = None) -> Page:
        """Terminals matching ``flt`` ordered by id, at most ``limit``, after ``cursor``.

        Raises InvalidCursorError for a cursor this server did not produce.
        """
        if cursor:
            fleet_query.decode_cursor(cursor)  # refuse a bad cursor before taking the lock
        with self._lock:
            return fleet_query.page(
                self._terminals, self._sorted_ids, flt, limit=limit, cursor=cursor
            )

    def halls(self) -> list[HallSummary]:
        """Per (region, hall) counts, maintained incrementally (cost follows the number of halls)."""
        with self._lock:
            return self._tallies.halls()

    def hall_regions(self) -> dict[str | None, str | None]:
        """Each hall's region, from the incremental tallies (cost follows halls, not
        terminals; a hall seen in two regions keeps one of them)."""
        with self._lock:
            return {hall: region for region, hall in self._tallies.hall_keys()}

    def software(self) -> list[SoftwareCount]:
        """Terminals per installed (package, version), maintained incrementally."""
        with self._lock:
            return self._tallies.software()

    def problem_terminals(self) -> list[TerminalView]:
        """Terminals that are offline or have a peripheral problem (cost follows problems)."""
        with self._lock:
            return [self._terminals[tid].view() for tid in self._tallies.problem_ids()]

    def summary(
        self, *, offline_per_hall: int = 1_000_000, faulted_per_hall: int = 1_000_000
    ) -> FleetSummary:
        """Halls, software and problem terminals read at one instant (for a metrics scrape).

        A hall's offline terminals are included only while there are at most
        ``offline_per_hall`` of them, its online ones with a peripheral problem only while
        there are at most ``faulted_per_hall`` (``FleetTallies.reading``); its counts always are.
        Under the lock it copies counts and references (cost follows the number of halls,
        versions and exported problems, not the fleet); sorting runs after. The time the
        lock was held is in ``lock_held_s`` (``time.perf_counter``, the one clock read here).
        """
        with self._lock:
            started = time.perf_counter()
            halls, problems = self._tallies.reading(offline_per_hall, faulted_per_hall)
            software = self._tallies.software()
            held = time.perf_counter() - started
        halls.sort(key=lambda s: (s.region or "", s.hall or ""))
        problems.sort(key=lambda p: p.id)
        return FleetSummary(
            halls=tuple(halls),
            software=tuple(software),
            problem_terminals=tuple(problems),
            lock_held_s=held,
        )
