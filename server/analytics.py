"""Service-demand analytics (issue 14): the figures docs/analytics.md explains, computed
from hourly rollups.

- ``UsageEvent`` → ``rollup`` → ``HourlyUsage``: raw transactions summed per hall,
  terminal, service and UTC hour, with counts by outcome and failure cause
  (``OUTCOME_COLUMNS``), busy seconds and pages. Summing is associative, so rolling up a
  stream in batches and adding the results (what the scheduled job does, ``merge``) gives
  the same rows as one pass (a Hypothesis property proves it).
- ``figures(rows, by, zones)``: transactions, completion rate, outcomes and causes, busy
  time and pages by ``hall``, ``terminal``, ``service`` or ``hour_of_week`` (0 = Monday
  00:00 in the hall's own zone, ``zones``: hall → zone, UTC for a hall not in it).
- ``hour_of_week(at, zone)``: the hall-local hour of the week of a UTC hour. The rule
  (docs/analytics.md, "Hour of the week"): a UTC hour counts in the local hour it starts
  in. Whole-hour zones map UTC hours one to one; a half-hour zone (Asia/Kolkata, +05:30)
  puts UTC 03:00-04:00 at local 08 (it starts at 08:30); a DST day has 23 or 25 UTC
  hours, so the local hour skipped in spring gets none and the repeated one in autumn
  gets two.
- ``utilisation``: busy seconds over opening seconds, per terminal and per hall.
- ``idle_terminals``: terminals far below their hall's median utilisation.
- ``overloaded_halls`` and ``recommend``: "move N terminals from hall A to hall B", with the
  figures each move rests on.
- ``turned_away``: citizens turned away while a service was unavailable during opening
  hours, estimated from the demand at that hall-local hour of the week (method in
  docs/analytics.md).

Every key is a hall or terminal id, a catalogue code, an enum or an hour: nothing here can
hold personal data. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from typing import Final

from protocol.usage import FailureCause, Outcome

__all__ = [
    "FAILED_COLUMNS",
    "OUTCOME_COLUMNS",
    "Figures",
    "GroupBy",
    "HourlyUsage",
    "Move",
    "TerminalUse",
    "Thresholds",
    "TurnedAway",
    "UsageEvent",
    "Zones",
    "figures",
    "hour_of_week",
    "hour_start",
    "idle_terminals",
    "merge",
    "overloaded_halls",
    "recommend",
    "rollup",
    "turned_away",
    "utilisation",
]

FAILED_COLUMNS: Final = tuple(f"failed_{c.value}" for c in FailureCause)
OUTCOME_COLUMNS: Final = (Outcome.COMPLETED.value, Outcome.ABANDONED.value, *FAILED_COLUMNS)
"""One count per outcome, failures split by cause: the rollup table's count columns."""
HOURS_PER_WEEK: Final = 7 * 24


class GroupBy(StrEnum):
    HALL = "hall"
    TERMINAL = "terminal"
    SERVICE = "service"
    HOUR_OF_WEEK = "hour_of_week"


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One raw transaction as the rollup reads it (a ``usage_event`` row and its hall)."""

    hall: str
    terminal_id: str
    service: str
    outcome: str
    cause: str | None
    duration_s: float
    pages: int
    occurred_at: datetime


def _column(outcome: str, cause: str | None) -> str:
    return f"failed_{cause}" if outcome == Outcome.FAILED.value else outcome


@dataclass(frozen=True, slots=True)
class HourlyUsage:
    """One rollup row: a terminal's transactions of one service in one UTC hour."""

    hall: str
    terminal_id: str
    service: str
    hour_start: datetime
    counts: Mapping[str, int]  # OUTCOME_COLUMNS → count (absent: 0)
    busy_s: float
    pages: int

    @property
    def key(self) -> tuple[str, str, str, datetime]:
        return (self.hall, self.terminal_id, self.service, self.hour_start)

    @property
    def transactions(self) -> int:
        return sum(self.counts.values())


def hour_start(at: datetime) -> datetime:
    """The start of ``at``'s UTC hour. Raises ValueError for a naive ``at``."""
    if at.tzinfo is None:
        raise ValueError("a naive datetime has no hour")
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hour_of_week(at: datetime, zone: tzinfo = UTC) -> int:
    """0 (Monday 00:00-01:00 in ``zone``) to 167 (Sunday 23:00-24:00): the local hour of
    the week in which ``at``'s UTC hour starts (see the module docstring for half-hour
    zones and DST). Raises ValueError for a naive ``at``."""
    local = hour_start(at).astimezone(zone)
    return local.weekday() * 24 + local.hour


Zones = Mapping[str, tzinfo]
"""Hall → its time zone (from its opening hours); a hall not in it is in UTC."""


def _add(a: HourlyUsage, b: HourlyUsage) -> HourlyUsage:
    counts = {c: a.counts.get(c, 0) + b.counts.get(c, 0) for c in OUTCOME_COLUMNS}
    return HourlyUsage(
        a.hall,
        a.terminal_id,
        a.service,
        a.hour_start,
        {c: n for c, n in counts.items() if n},
        a.busy_s + b.busy_s,
        a.pages + b.pages,
    )


def rollup(events: Iterable[UsageEvent]) -> dict[tuple[str, str, str, datetime], HourlyUsage]:
    """Sum ``events`` per (hall, terminal, service, UTC hour)."""
    out: dict[tuple[str, str, str, datetime], HourlyUsage] = {}
    for e in events:
        row = HourlyUsage(
            e.hall,
            e.terminal_id,
            e.service,
            hour_start(e.occurred_at),
            {_column(e.outcome, e.cause): 1},
            e.duration_s,
            e.pages,
        )
        out[row.key] = _add(out[row.key], row) if row.key in out else row
    return out


def merge(
    into: Mapping[tuple[str, str, str, datetime], HourlyUsage], more: Iterable[HourlyUsage]
) -> dict[tuple[str, str, str, datetime], HourlyUsage]:
    """``into`` with ``more`` added row by row (what an upsert of a later batch does)."""
    out = dict(into)
    for row in more:
        out[row.key] = _add(out[row.key], row) if row.key in out else row
    return out


@dataclass(frozen=True, slots=True)
class Figures:
    """What happened in one group: counts, completion rate, busy time and pages."""

    key: str | int
    transactions: int
    completed: int
    abandoned: int
    failed: Mapping[str, int]  # cause → count, every cause present
    busy_s: float
    pages: int

    @property
    def completion_rate(self) -> float | None:
        """Completed over all transactions; None without transactions."""
        return self.completed / self.transactions if self.transactions else None


def _key(row: HourlyUsage, by: GroupBy, zones: Zones) -> str | int:
    if by is GroupBy.HALL:
        return row.hall
    if by is GroupBy.TERMINAL:
        return row.terminal_id
    if by is GroupBy.SERVICE:
        return row.service
    return hour_of_week(row.hour_start, zones.get(row.hall, UTC))


def figures(rows: Iterable[HourlyUsage], by: GroupBy, zones: Zones | None = None) -> list[Figures]:
    """The figures of each group of ``rows``, sorted by key. By ``hour_of_week`` each
    hall's rows are placed in the hours of its own zone (``zones``; UTC without one), so
    several halls' 09:00 local add up in one cell whatever their zones."""
    zones = zones or {}
    counts: dict[str | int, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
    busy: defaultdict[str | int, float] = defaultdict(float)
    pages: defaultdict[str | int, int] = defaultdict(int)
    for row in rows:
        k = _key(row, by, zones)
        for column, n in row.counts.items():
            counts[k][column] += n
        busy[k] += row.busy_s
        pages[k] += row.pages
    return [
        Figures(
            key=k,
            transactions=sum(c.values()),
            completed=c[Outcome.COMPLETED.value],
            abandoned=c[Outcome.ABANDONED.value],
            failed={cause.value: c[f"failed_{cause.value}"] for cause in FailureCause},
            busy_s=busy[k],
            pages=pages[k],
        )
        for k, c in sorted(counts.items(), key=lambda kv: (str(type(kv[0])), kv[0]))
    ]


@dataclass(frozen=True, slots=True)
class TerminalUse:
    """A terminal's (or a hall's) busy time over its opening time."""

    hall: str
    terminal_id: str | None  # None: the hall as a whole
    terminals: int
    busy_s: float
    open_s: float

    @property
    def utilisation(self) -> float | None:
        """Busy over open time (all the hall's terminals' open time for a hall); None when
        it never opened."""
        total = self.open_s * self.terminals
        return self.busy_s / total if total > 0 else None


def utilisation(
    rows: Iterable[HourlyUsage],
    terminals: Mapping[str, str],
    open_s: Mapping[str, float],
) -> tuple[list[TerminalUse], list[TerminalUse]]:
    """(per terminal, per hall) utilisation. ``terminals``: terminal id → hall, every
    terminal of the fleet (one without transactions is 0 busy, which is what makes it
    idle); a terminal seen only in ``rows`` counts in the hall it had there. ``open_s``:
    hall → its opening seconds in the range."""
    hall_of = dict(terminals)
    busy: defaultdict[str, float] = defaultdict(float)
    for row in rows:
        hall_of.setdefault(row.terminal_id, row.hall)
        busy[row.terminal_id] += row.busy_s
    per_terminal = [
        TerminalUse(hall, tid, 1, busy[tid], open_s.get(hall, 0.0))
        for tid, hall in sorted(hall_of.items(), key=lambda kv: (kv[1], kv[0]))
    ]
    halls: defaultdict[str, list[TerminalUse]] = defaultdict(list)
    for use in per_terminal:
        halls[use.hall].append(use)
    per_hall = [
        TerminalUse(hall, None, len(uses), sum(u.busy_s for u in uses), open_s.get(hall, 0.0))
        for hall, uses in sorted(halls.items())
    ]
    return per_terminal, per_hall


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a terminal is idle, a hall overloaded, and what a move aims at (docs/analytics.md)."""

    idle_share_of_median: float = 0.25  # idle: below this share of its hall's median
    min_terminals_for_idle: int = 3  # a median of fewer terminals says little
    overloaded: float = 0.75  # a hall busier than this is overloaded
    target: float = 0.65  # a move aims at this utilisation in both halls
    min_open_s: float = 3600.0  # a hall open less than this in the range is not judged


def idle_terminals(
    per_terminal: Sequence[TerminalUse], thresholds: Thresholds = Thresholds()
) -> list[tuple[TerminalUse, float]]:
    """(terminal, its hall's median utilisation) for each terminal whose utilisation is
    below ``idle_share_of_median`` of that median, in halls with at least
    ``min_terminals_for_idle`` terminals, open at least ``min_open_s``."""
    halls: defaultdict[str, list[TerminalUse]] = defaultdict(list)
    for use in per_terminal:
        if use.utilisation is not None and use.open_s >= thresholds.min_open_s:
            halls[use.hall].append(use)
    out = []
    for _hall, uses in sorted(halls.items()):
        if len(uses) < thresholds.min_terminals_for_idle:
            continue
        median = statistics.median(u.utilisation or 0.0 for u in uses)
        for u in uses:
            if median > 0 and (u.utilisation or 0.0) < thresholds.idle_share_of_median * median:
                out.append((u, median))
    return out


def overloaded_halls(
    per_hall: Sequence[TerminalUse], thresholds: Thresholds = Thresholds()
) -> list[TerminalUse]:
    """Halls whose utilisation is above ``overloaded``, busiest first."""
    hot = [
        h
        for h in per_hall
        if h.open_s >= thresholds.min_open_s and (h.utilisation or 0.0) > thresholds.overloaded
    ]
    return sorted(hot, key=lambda h: -(h.utilisation or 0.0))


@dataclass(frozen=True, slots=True)
class Move:
    """Move ``terminals`` terminals from ``source`` to ``target``, and the figures behind it:
    each hall's busy and open seconds, terminals and utilisation before and after."""

    source: str
    target: str
    terminals: int
    source_before: TerminalUse
    target_before: TerminalUse

    @property
    def source_after(self) -> TerminalUse:
        b = self.source_before
        return TerminalUse(b.hall, None, b.terminals - self.terminals, b.busy_s, b.open_s)

    @property
    def target_after(self) -> TerminalUse:
        b = self.target_before
        return TerminalUse(b.hall, None, b.terminals + self.terminals, b.busy_s, b.open_s)


def _needed(hall: TerminalUse, target: float) -> int:
    """Terminals the hall needs to be at or below ``target`` utilisation (at least one)."""
    return max(1, math.ceil(hall.busy_s / (target * hall.open_s)))


def recommend(per_hall: Sequence[TerminalUse], thresholds: Thresholds = Thresholds()) -> list[Move]:
    """Moves from the halls with terminals to spare to the overloaded halls.

    An overloaded hall needs ``ceil(busy / (target x open))`` terminals; a hall can spare
    what it has beyond what it needs at ``target`` (never its last). Overloaded halls are
    served busiest first, each from the least used donors first. Demand is assumed to stay
    in its hall (a citizen does not travel to another), so the moved terminal's busy time
    does not move with it."""
    hot = overloaded_halls(per_hall, thresholds)
    hot_halls = {h.hall for h in hot}
    spare = {
        h.hall: h.terminals - _needed(h, thresholds.target)
        for h in per_hall
        if h.hall not in hot_halls and h.open_s >= thresholds.min_open_s
    }
    donors = sorted(
        (h for h in per_hall if spare.get(h.hall, 0) > 0), key=lambda h: h.utilisation or 0.0
    )
    moves = []
    for hall in hot:
        missing = _needed(hall, thresholds.target) - hall.terminals
        for donor in donors:
            if missing <= 0:
                break
            n = min(missing, spare[donor.hall])
            if n <= 0:
                continue
            spare[donor.hall] -= n
            missing -= n
            moves.append(Move(donor.hall, hall.hall, n, donor, hall))
    return moves


@dataclass(frozen=True, slots=True)
class TurnedAway:
    """Citizens turned away from one service in one hall: those the terminals turned away
    (failed transactions, by cause) and an estimate of those who found it unavailable."""

    hall: str
    service: str
    failed: Mapping[str, int]
    unavailable_s: float
    estimated: float  # transactions the unavailable time would have served


def turned_away(
    rows: Iterable[HourlyUsage],
    available: Mapping[tuple[str, str, datetime], tuple[float, float]],
    zones: Zones | None = None,
) -> list[TurnedAway]:
    """Per (hall, service): failed transactions by cause, and the estimate
    ``sum over hours h of rate(hall, service, hour_of_week(h)) x unavailable_s(h) / 3600``,
    the hour of the week in the hall's zone (``zones``; UTC without one), so the demand of
    09:00 local stays 09:00 local across a DST change.

    ``available``: (hall, service, UTC hour start) → (seconds open, seconds open and the
    service offerable by at least one terminal of the hall). ``rate`` is the transactions
    per available open hour at that hour of the week, from the hours the service was
    available; where that hour of the week never was, the hall's and service's rate over
    all its available hours."""
    served: defaultdict[tuple[str, str, datetime], int] = defaultdict(int)
    failed: defaultdict[tuple[str, str], defaultdict[str, int]] = defaultdict(
        lambda: defaultdict(int)
    )
    for row in rows:
        served[(row.hall, row.service, row.hour_start)] += row.transactions
        for cause in FailureCause:
            failed[(row.hall, row.service)][cause.value] += row.counts.get(
                f"failed_{cause.value}", 0
            )
    # (hall, service) → hour of week → [transactions, available open hours]
    demand: defaultdict[tuple[str, str], defaultdict[int, list[float]]] = defaultdict(
        lambda: defaultdict(lambda: [0.0, 0.0])
    )
    lost: defaultdict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    zones = zones or {}
    for (hall, service, start), (open_s, up_s) in available.items():
        how = hour_of_week(start, zones.get(hall, UTC))
        if up_s > 0:
            slot = demand[(hall, service)][how]
            slot[0] += served.get((hall, service, start), 0)
            slot[1] += up_s / 3600
        if open_s > up_s:
            lost[(hall, service)].append((how, open_s - up_s))
    out = []
    for key in sorted(set(failed) | set(lost)):
        by_hour: Mapping[int, list[float]] = demand.get(key, {})
        total_t = sum(s[0] for s in by_hour.values())
        total_h = sum(s[1] for s in by_hour.values())
        overall = total_t / total_h if total_h else 0.0
        estimate = 0.0
        for how, down_s in lost.get(key, []):
            seen = by_hour.get(how)
            rate = seen[0] / seen[1] if seen and seen[1] else overall
            estimate += rate * down_s / 3600
        out.append(
            TurnedAway(
                key[0],
                key[1],
                {c.value: failed[key][c.value] for c in FailureCause},
                sum(s for _h, s in lost.get(key, [])),
                estimate,
            )
        )
    return out
