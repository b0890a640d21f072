"""The fleet state: the server's in-memory model of every terminal, and every rule about it.

Pure core: decoded ``protocol.messages`` models and a ``now`` go in, an
``Outcome`` (what changed, which transitions happened) comes out. It never
touches a socket, a database, a clock or a logger; the ingest, the offline
sweep and the API call it. One writer (the ingest thread, plus the offline
sweep) and many readers (API threads) share it behind one lock; readers get
frozen copies (``TerminalView``), never the live records.

Rules (docs/server.md explains why):

Sequence (reports and events)
    ``boot_id`` names a sequence stream that survives agent restarts; its stream
    messages are numbered from 1. A message with the terminal's current
    ``boot_id`` and ``seq`` <= the highest accepted is a DUPLICATE; ``seq`` >
    highest + 1 counts the skipped numbers as a gap. The first stream message of
    a new ``boot_id`` (or of a ``boot_id`` a state message introduced, whose
    position is unknown) counts ``seq - 1`` as a gap: numbers 1..seq-1 of that
    stream never arrived. A message from the stream just replaced
    (``prev_boot_id``) is STALE: a late straggler that must not roll the state
    back.

Delivery accounting (per terminal, cumulative, persisted with the state)
    ``reports_received`` and ``events_received`` count accepted stream
    messages; ``seq_gaps`` counts the numbers never received; ``dropped_reports``
    is the latest value the terminal's reports gave for its current ``boot_id``
    (reports its outbox dropped on purpose; 0 again on a new ``boot_id``). Per
    hall, the sums of ``seq_gaps`` and ``dropped_reports`` are tallied so that
    ops can tell deliberate drops from losses.

State channel (``state`` is retained; its ``seq`` is not a stream position)
    A message identical to the last state message applied (boot_id, seq,
    sent_at, state) is a DUPLICATE: the broker re-delivers the retained one on
    every (re)subscribe, and a persistent session can hold a live copy too.
    ``offline`` (will or shutdown) takes the terminal offline at once.
    ``online`` delivered live takes it online. A *retained* ``online`` whose
    ``sent_at`` is not newer than the newest message already accepted from the
    terminal is STALE (we know more than it does; an offline decided since then
    stands).

Connectivity from reports and events
    An accepted report/event brings an offline terminal online, unless the
    offline came from the terminal's state channel (will/shutdown) at a server
    time later than the message's ``sent_at`` (a queued message from before the
    disconnection). An offline by timeout is overridden by any accepted message.

Silence
    ``expire_silent`` takes a terminal offline when
    ``now - max(last_seen, listening_since) > offline_after_missed_reports x
    report_interval_s``; ``listening_since`` (when the broker connection was last
    established) gives every terminal a full grace period after the server or its
    broker link was away.

Peripherals
    A report is the full list: new peripherals are added, changed ones updated,
    missing ones removed (transition to ``removed``). An event changes one
    peripheral. A transition is recorded when the condition or fault code
    changes, and when a peripheral is first seen in a problem condition.

Health (what operators and alerts see)
    ``offline`` when not online; ``faulty`` when online with at least one
    peripheral in a BLOCKING condition (printer ``paper_out``, ``jam``,
    ``cover_open``, ``cutter_error``, ``offline``; reader ``fault``,
    ``disconnected``): the terminal cannot serve some citizens; ``warning`` when
    online with only non-blocking problems (``paper_low``, ``unknown``); else
    ``ok``. ``Status`` (the API's ``ok | degraded | offline``) is derived from it:
    ``degraded`` is ``warning`` or ``faulty``. ``is_blocking`` is the only place
    that says which conditions block.

Tallies
    Per (region, hall): terminals by online/health, peripherals by (kind,
    condition) with ``ok`` included, problems by (kind, condition); fleet-wide:
    terminals per (package, version) of installed software (the agent itself
    counts as package ``kioskfleet-agent``); and the set of terminals with a
    problem (offline or a peripheral not ``ok``). All are maintained as messages
    arrive, by subtracting a terminal's previous contribution and adding its new
    one, so readers (``halls``, ``software``, ``summary``) cost what the number
    of halls, versions and problems costs, never a scan over the fleet.

Persistence hints
    ``Outcome.peripherals_changed`` says the terminal's peripheral rows must be
    rewritten (every accepted message changes the terminal's row: its dedup
    position and counters must be durable before the message is acknowledged).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final, TypeVar

from protocol.messages import (
    BootEvent,
    EventMessage,
    Message,
    PeripheralCondition,
    PeripheralKind,
    PeripheralStatus,
    ReportMessage,
    StateMessage,
    TerminalState,
)

__all__ = [
    "AGENT_PACKAGE",
    "BLOCKING_CONDITIONS",
    "CONNECTIVITY",
    "REMOVED",
    "FleetState",
    "FleetSummary",
    "HallSummary",
    "Health",
    "InvalidCursorError",
    "OfflineReason",
    "Outcome",
    "Page",
    "PeripheralCount",
    "PeripheralView",
    "ProblemCount",
    "ProblemTerminal",
    "SoftwareCount",
    "Status",
    "TerminalFilter",
    "TerminalView",
    "Transition",
    "Verdict",
    "is_blocking",
    "terminal_health",
]

CONNECTIVITY: Final = "connectivity"
"""``subject`` and ``kind`` of a transition between online and offline."""
REMOVED: Final = "removed"
"""``to_state`` of a peripheral that disappeared from the terminal's reports."""


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # already applied (same boot, seq not newer; retained re-delivery)
    STALE = "stale"  # superseded (previous boot; retained online older than what we know)


class OfflineReason(StrEnum):
    WILL = "will"  # the broker published the terminal's will (connection lost)
    SHUTDOWN = "shutdown"  # the agent said it is shutting down
    TIMEOUT = "timeout"  # the server heard nothing for too long


AGENT_PACKAGE: Final = "kioskfleet-agent"
"""Package name under which the agent's own version counts as installed software."""


class Status(StrEnum):
    """The API's status: ``Health`` with ``warning`` and ``faulty`` folded into ``degraded``."""

    OK = "ok"
    DEGRADED = "degraded"  # online, at least one peripheral not ok
    OFFLINE = "offline"


class Health(StrEnum):
    """A terminal's health as operators, dashboards and alerts see it (see the module doc)."""

    OK = "ok"  # online, every peripheral ok
    WARNING = "warning"  # online, only non-blocking problems (paper low, state unknown)
    FAULTY = "faulty"  # online, at least one blocking problem
    OFFLINE = "offline"


BLOCKING_CONDITIONS: Final = frozenset(
    {
        PeripheralCondition.PAPER_OUT,
        PeripheralCondition.JAM,
        PeripheralCondition.COVER_OPEN,
        PeripheralCondition.CUTTER_ERROR,
        PeripheralCondition.OFFLINE,
        PeripheralCondition.FAULT,
        PeripheralCondition.DISCONNECTED,
    }
)
"""Conditions that keep a peripheral from serving citizens (the protocol ties each to its kinds)."""


def is_blocking(condition: PeripheralCondition) -> bool:
    """True when ``condition`` keeps the peripheral from working (``paper_low``/``unknown`` do not)."""
    return condition in BLOCKING_CONDITIONS


def terminal_health(online: bool, conditions: Iterable[PeripheralCondition]) -> Health:
    """The health of a terminal that is ``online`` (or not) with peripherals in ``conditions``."""
    if not online:
        return Health.OFFLINE
    health = Health.OK
    for condition in conditions:
        if condition in BLOCKING_CONDITIONS:
            return Health.FAULTY
        if condition is not PeripheralCondition.OK:
            health = Health.WARNING
    return health


_OK: Final = PeripheralCondition.OK

_STATUS_OF_HEALTH: Final = {
    Health.OK: Status.OK,
    Health.WARNING: Status.DEGRADED,
    Health.FAULTY: Status.DEGRADED,
    Health.OFFLINE: Status.OFFLINE,
}


class InvalidCursorError(ValueError):
    """A pagination cursor that this server did not hand out."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of a terminal's connectivity or of one peripheral's condition."""

    terminal_id: str
    subject: str  # CONNECTIVITY or the peripheral name
    kind: str  # CONNECTIVITY or the peripheral kind
    from_state: str | None  # None: first sighting
    to_state: str
    occurred_at: datetime  # device time where the device said when; else server time
    recorded_at: datetime  # server time
    fault_code: str | None = None
    reason: str | None = None  # connectivity only: will, shutdown, timeout, report, event, connect


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``FleetState.apply`` did with one message."""

    verdict: Verdict
    missing: int = 0  # sequence numbers of this stream never received before this message
    transitions: tuple[Transition, ...] = ()
    peripherals_changed: bool = False  # the peripheral set must be rewritten

    @property
    def accepted(self) -> bool:
        return self.verdict is Verdict.ACCEPTED


_DUPLICATE: Final = Outcome(Verdict.DUPLICATE)
_STALE: Final = Outcome(Verdict.STALE)


@dataclass(frozen=True, slots=True)
class PeripheralView:
    name: str
    kind: PeripheralKind
    condition: PeripheralCondition
    since: datetime
    fault_code: str | None = None
    detail: str | None = None

    @property
    def is_problem(self) -> bool:
        return self.condition is not PeripheralCondition.OK


@dataclass(frozen=True, slots=True)
class TerminalView:
    """A frozen copy of one terminal's latest state (what the API shows and the DB stores)."""

    id: str
    online: bool
    state_since: datetime  # when ``online`` last changed
    last_seen: datetime  # server time of the last message that showed the terminal alive
    first_seen: datetime
    hall: str | None = None
    region: str | None = None
    model: str | None = None
    offline_reason: OfflineReason | None = None
    last_sent_at: datetime | None = None  # device time of the newest accepted message
    boot_id: str | None = None
    last_seq: int | None = None
    report_interval_s: float | None = None
    agent_version: str | None = None
    software: Mapping[str, str] = field(default_factory=dict)
    peripherals: tuple[PeripheralView, ...] = ()
    prev_boot_id: str | None = None  # the stream replaced by ``boot_id`` (its stragglers are stale)
    reports_received: int = 0  # accepted reports, all streams
    events_received: int = 0  # accepted events, all streams
    seq_gaps: int = 0  # sequence numbers never received, all streams
    dropped_reports: int = 0  # reports the outbox dropped on purpose, current boot_id

    @property
    def health(self) -> Health:
        return terminal_health(self.online, (p.condition for p in self.peripherals))

    @property
    def status(self) -> Status:
        return _STATUS_OF_HEALTH[self.health]

    @property
    def has_problem(self) -> bool:
        """Offline or a peripheral not ok: the terminals that get per-terminal metric series."""
        return not self.online or any(p.is_problem for p in self.peripherals)


@dataclass(frozen=True, slots=True)
class TerminalFilter:
    """Every field set must match; ``peripheral_kind`` and ``condition`` match one peripheral."""

    region: str | None = None
    hall: str | None = None
    online: bool | None = None
    peripheral_kind: PeripheralKind | None = None
    condition: PeripheralCondition | None = None


@dataclass(frozen=True, slots=True)
class Page:
    items: tuple[TerminalView, ...]
    total: int  # matches of the filter over the whole fleet
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ProblemCount:
    kind: PeripheralKind
    condition: PeripheralCondition
    count: int


@dataclass(frozen=True, slots=True)
class PeripheralCount:
    """Peripherals of one kind in one condition (``ok`` included)."""

    kind: PeripheralKind
    condition: PeripheralCondition
    count: int


@dataclass(frozen=True, slots=True)
class HallSummary:
    region: str | None
    hall: str | None
    total: int
    online: int
    offline: int
    degraded: int  # online with a peripheral problem (warning + faulty)
    with_peripheral_problems: int  # online or not
    peripheral_problems: tuple[ProblemCount, ...]
    warning: int = 0  # online, only non-blocking problems
    faulty: int = 0  # online, at least one blocking problem
    peripherals: tuple[PeripheralCount, ...] = ()  # every peripheral, ok included
    seq_gaps: int = 0  # sum of the hall's terminals' seq_gaps
    dropped_reports: int = 0  # sum of the hall's terminals' dropped_reports

    @property
    def ok(self) -> int:
        return self.online - self.degraded

    def by_health(self) -> dict[Health, int]:
        """Terminals of the hall by health; every ``Health`` is a key."""
        return {
            Health.OK: self.ok,
            Health.WARNING: self.warning,
            Health.FAULTY: self.faulty,
            Health.OFFLINE: self.offline,
        }


@dataclass(frozen=True, slots=True)
class SoftwareCount:
    """Terminals (online or not) that have ``version`` of ``package`` installed."""

    package: str
    version: str
    count: int


@dataclass(frozen=True, slots=True)
class ProblemTerminal:
    """What metrics need of a terminal that is offline or has a peripheral not ``ok``."""

    id: str
    hall: str | None
    region: str | None
    online: bool
    state_since: datetime  # when ``online`` last changed
    problems: tuple[PeripheralView, ...]  # its peripherals that are not ok, by name


@dataclass(frozen=True, slots=True)
class FleetSummary:
    """One consistent reading of every tally (what a metrics scrape needs), taken under one lock."""

    halls: tuple[HallSummary, ...]
    software: tuple[SoftwareCount, ...]
    problem_terminals: tuple[ProblemTerminal, ...]  # by id


# --- internal mutable records ---------------------------------------------------------------

_HallKey = tuple[str | None, str | None]  # (region, hall)
_ProblemKey = tuple[PeripheralKind, PeripheralCondition]
_SoftwareKey = tuple[str, str]  # (package, version)


_K = TypeVar("_K")


def _bump(counts: dict[_K, int], keys: Iterable[_K], sign: int) -> None:
    """Add ``sign`` to ``counts[key]`` for every key; a count reaching 0 is removed."""
    for key in keys:
        n = counts.get(key, 0) + sign
        if n:
            counts[key] = n
        else:
            del counts[key]


@dataclass(frozen=True, slots=True)
class _Contribution:
    """What one terminal adds to the tallies (its hall's and the fleet's software counts)."""

    key: _HallKey
    online: bool
    health: Health
    peripherals: tuple[_ProblemKey, ...]  # every peripheral's (kind, condition), sorted
    problems: tuple[_ProblemKey, ...]  # those not ok
    software: tuple[_SoftwareKey, ...]


class _HallTally:
    __slots__ = (
        "degraded",
        "dropped_reports",
        "faulty",
        "online",
        "peripherals",
        "problems",
        "seq_gaps",
        "total",
        "warning",
        "with_problems",
    )

    def __init__(self) -> None:
        self.total = 0
        self.online = 0
        self.degraded = 0
        self.warning = 0
        self.faulty = 0
        self.with_problems = 0
        self.problems: dict[_ProblemKey, int] = {}
        self.peripherals: dict[_ProblemKey, int] = {}
        self.seq_gaps = 0
        self.dropped_reports = 0

    def add(self, c: _Contribution, sign: int) -> None:
        self.total += sign
        if c.online:
            self.online += sign
        if c.problems:
            self.with_problems += sign
            if c.online:
                self.degraded += sign
        if c.health is Health.WARNING:
            self.warning += sign
        elif c.health is Health.FAULTY:
            self.faulty += sign
        _bump(self.problems, c.problems, sign)
        _bump(self.peripherals, c.peripherals, sign)

    def summary(self, key: _HallKey) -> HallSummary:
        return HallSummary(
            region=key[0],
            hall=key[1],
            total=self.total,
            online=self.online,
            offline=self.total - self.online,
            degraded=self.degraded,
            with_peripheral_problems=self.with_problems,
            peripheral_problems=tuple(
                ProblemCount(kind, condition, n)
                for (kind, condition), n in sorted(self.problems.items())
            ),
            warning=self.warning,
            faulty=self.faulty,
            peripherals=tuple(
                PeripheralCount(kind, condition, n)
                for (kind, condition), n in sorted(self.peripherals.items())
            ),
            seq_gaps=self.seq_gaps,
            dropped_reports=self.dropped_reports,
        )


class _Terminal:
    __slots__ = (
        "agent_version",
        "boot_id",
        "contribution",
        "deadline",
        "dropped_reports",
        "events_received",
        "first_seen",
        "hall",
        "last_seen",
        "last_sent_at",
        "last_seq",
        "last_state_key",
        "model",
        "offline_reason",
        "online",
        "peripherals",
        "prev_boot_id",
        "region",
        "report_interval_s",
        "reported",
        "reports_received",
        "seq_gaps",
        "software",
        "state_since",
        "tid",
    )

    def __init__(self, tid: str, now: datetime) -> None:
        self.tid = tid
        self.hall: str | None = None
        self.region: str | None = None
        self.model: str | None = None
        self.online = False
        self.state_since = now
        self.offline_reason: OfflineReason | None = None
        self.last_seen = now
        self.first_seen = now
        self.last_sent_at: datetime | None = None
        self.boot_id: str | None = None
        self.prev_boot_id: str | None = None
        self.last_seq: int | None = None
        self.last_state_key: tuple[str, int, datetime, TerminalState] | None = None
        self.report_interval_s: float | None = None
        self.agent_version: str | None = None
        self.software: dict[str, str] = {}
        self.peripherals: dict[str, PeripheralView] = {}
        # The last report's peripheral list as plain tuples, while nothing else changed them:
        # an identical heartbeat then skips the per-peripheral diff.
        self.reported: tuple[tuple[object, ...], ...] | None = None
        self.deadline = now  # when silence makes this terminal offline
        self.contribution: _Contribution | None = None
        self.reports_received = 0
        self.events_received = 0
        self.seq_gaps = 0
        self.dropped_reports = 0

    def view(self) -> TerminalView:
        return TerminalView(
            id=self.tid,
            online=self.online,
            state_since=self.state_since,
            last_seen=self.last_seen,
            first_seen=self.first_seen,
            hall=self.hall,
            region=self.region,
            model=self.model,
            offline_reason=self.offline_reason,
            last_sent_at=self.last_sent_at,
            boot_id=self.boot_id,
            last_seq=self.last_seq,
            report_interval_s=self.report_interval_s,
            agent_version=self.agent_version,
            software=dict(self.software),
            peripherals=tuple(self.peripherals[name] for name in sorted(self.peripherals)),
            prev_boot_id=self.prev_boot_id,
            reports_received=self.reports_received,
            events_received=self.events_received,
            seq_gaps=self.seq_gaps,
            dropped_reports=self.dropped_reports,
        )

    def contribution_now(self) -> _Contribution:
        peripherals = tuple(sorted((p.kind, p.condition) for p in self.peripherals.values()))
        problems = tuple(pc for pc in peripherals if pc[1] is not PeripheralCondition.OK)
        software = dict(self.software)
        if self.agent_version is not None:
            software.setdefault(AGENT_PACKAGE, self.agent_version)
        return _Contribution(
            key=(self.region, self.hall),
            online=self.online,
            health=terminal_health(self.online, (c for _, c in problems)),
            peripherals=peripherals,
            problems=problems,
            software=tuple(sorted(software.items())),
        )


def _encode_cursor(terminal_id: str) -> str:
    return base64.urlsafe_b64encode(terminal_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
        terminal_id = decoded.decode("utf-8")
    except (ValueError, binascii.Error, UnicodeError):
        raise InvalidCursorError("cursor is not one this server handed out") from None
    if not terminal_id or _encode_cursor(terminal_id) != cursor:
        raise InvalidCursorError("cursor is not one this server handed out")
    return terminal_id


class FleetState:
    """Every terminal's latest state. Thread-safe: one writer, many readers."""

    def __init__(
        self,
        *,
        offline_after_missed_reports: int = 3,
        default_report_interval_s: float = 60.0,
    ) -> None:
        if offline_after_missed_reports < 1 or default_report_interval_s <= 0:
            raise ValueError("offline_after_missed_reports >= 1 and a positive interval")
        self._missed = offline_after_missed_reports
        self._default_interval = default_report_interval_s
        self._lock = threading.Lock()
        self._terminals: dict[str, _Terminal] = {}
        self._sorted_ids: list[str] = []
        self._halls: dict[_HallKey, _HallTally] = {}
        self._software: dict[_SoftwareKey, int] = {}
        self._problem_ids: set[str] = set()

    # --- writing --------------------------------------------------------------------------

    def load(self, terminals: Iterable[TerminalView]) -> None:
        """Replace the fleet with ``terminals`` (the database's copy at startup)."""
        with self._lock:
            self._terminals.clear()
            self._halls.clear()
            self._software.clear()
            self._problem_ids.clear()
            for v in terminals:
                t = _Terminal(v.id, v.first_seen)
                t.hall, t.region, t.model = v.hall, v.region, v.model
                t.online, t.state_since, t.offline_reason = (
                    v.online,
                    v.state_since,
                    v.offline_reason,
                )
                t.last_seen, t.last_sent_at = v.last_seen, v.last_sent_at
                t.boot_id, t.last_seq, t.prev_boot_id = v.boot_id, v.last_seq, v.prev_boot_id
                t.reports_received, t.events_received = v.reports_received, v.events_received
                t.seq_gaps, t.dropped_reports = v.seq_gaps, v.dropped_reports
                t.report_interval_s, t.agent_version = v.report_interval_s, v.agent_version
                t.software = dict(v.software)
                t.peripherals = {p.name: p for p in v.peripherals}
                self._set_deadline(t)
                self._terminals[v.id] = t
                self._retally(t)
            self._sorted_ids = sorted(self._terminals)

    def apply(self, message: Message, received_at: datetime, *, retained: bool = False) -> Outcome:
        """Apply one decoded message received at server time ``received_at``.

        ``retained`` is True when the broker delivered a stored retained message
        (on subscribe) rather than a live one. Never raises for any valid message.
        """
        with self._lock:
            t = self._terminals.get(message.terminal_id)
            if t is None:
                t = self._create(message.terminal_id, received_at)
            if isinstance(message, StateMessage):
                return self._apply_state(t, message, received_at, retained)
            return self._apply_stream(t, message, received_at)

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
                if not t.online or t.deadline >= now:
                    continue
                if listening_since is not None and self._silence_since(t, listening_since) >= now:
                    continue
                out.append(self._go_offline(t, OfflineReason.TIMEOUT, now, now))
                self._retally(t)
        return out

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

    def query(self, flt: TerminalFilter, *, limit: int, cursor: str | None = None) -> Page:
        """Terminals matching ``flt`` ordered by id, at most ``limit``, after ``cursor``.

        Raises InvalidCursorError for a cursor this server did not produce.
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        after = _decode_cursor(cursor) if cursor else None
        total = 0
        items: list[TerminalView] = []
        more = False
        with self._lock:
            for tid in self._matching_ids(flt):
                total += 1
                if after is not None and tid <= after:
                    continue
                if len(items) < limit:
                    items.append(self._terminals[tid].view())
                else:
                    more = True
        next_cursor = _encode_cursor(items[-1].id) if more and items else None
        return Page(items=tuple(items), total=total, next_cursor=next_cursor)

    def halls(self) -> list[HallSummary]:
        """Per (region, hall) counts, maintained incrementally (cost follows the number of halls)."""
        with self._lock:
            return self._hall_summaries()

    def software(self) -> list[SoftwareCount]:
        """Terminals per installed (package, version), maintained incrementally."""
        with self._lock:
            return self._software_counts()

    def problem_terminals(self) -> list[TerminalView]:
        """Terminals that are offline or have a peripheral problem (cost follows problems)."""
        with self._lock:
            return self._problem_views()

    def summary(self) -> FleetSummary:
        """Halls, software and problem terminals read at one instant (for a metrics scrape).

        Its cost follows the number of halls, versions and problem terminals, not the fleet.
        """
        with self._lock:
            terminals = self._terminals
            problems = []
            for tid in sorted(self._problem_ids):
                t = terminals[tid]
                bad = [p for p in t.peripherals.values() if p.condition is not _OK]
                if len(bad) > 1:
                    bad.sort(key=lambda p: p.name)
                problems.append(
                    ProblemTerminal(tid, t.hall, t.region, t.online, t.state_since, tuple(bad))
                )
            return FleetSummary(
                halls=tuple(self._hall_summaries()),
                software=tuple(self._software_counts()),
                problem_terminals=tuple(problems),
            )

    # --- internals (all called with the lock held) ----------------------------------------

    def _hall_summaries(self) -> list[HallSummary]:
        out = [h.summary(key) for key, h in self._halls.items()]
        out.sort(key=lambda s: (s.region or "", s.hall or ""))
        return out

    def _software_counts(self) -> list[SoftwareCount]:
        return [SoftwareCount(p, v, n) for (p, v), n in sorted(self._software.items())]

    def _problem_views(self) -> list[TerminalView]:
        return [self._terminals[tid].view() for tid in sorted(self._problem_ids)]

    def _matching_ids(self, flt: TerminalFilter) -> Iterator[str]:
        terminals = self._terminals
        for tid in self._sorted_ids:
            t = terminals[tid]
            if flt.region is not None and t.region != flt.region:
                continue
            if flt.hall is not None and t.hall != flt.hall:
                continue
            if flt.online is not None and t.online is not flt.online:
                continue
            if (flt.peripheral_kind is not None or flt.condition is not None) and not any(
                (flt.peripheral_kind is None or p.kind is flt.peripheral_kind)
                and (flt.condition is None or p.condition is flt.condition)
                for p in t.peripherals.values()
            ):
                continue
            yield tid

    def _create(self, tid: str, now: datetime) -> _Terminal:
        t = _Terminal(tid, now)
        self._terminals[tid] = t
        bisect.insort(self._sorted_ids, tid)
        return t

    def _silence_since(self, t: _Terminal, listening_since: datetime) -> datetime:
        interval = t.report_interval_s or self._default_interval
        return listening_since + timedelta(seconds=self._missed * interval)

    def _set_deadline(self, t: _Terminal) -> None:
        interval = t.report_interval_s or self._default_interval
        t.deadline = t.last_seen + timedelta(seconds=self._missed * interval)

    def _retally(self, t: _Terminal) -> None:
        new = t.contribution_now()
        old = t.contribution
        if old == new:
            return
        if old is not None:
            hall = self._halls[old.key]
            hall.add(old, -1)
            hall.seq_gaps -= t.seq_gaps
            hall.dropped_reports -= t.dropped_reports
            if hall.total == 0:
                del self._halls[old.key]
            _bump(self._software, old.software, -1)
        hall = self._halls.setdefault(new.key, _HallTally())
        hall.add(new, +1)
        hall.seq_gaps += t.seq_gaps
        hall.dropped_reports += t.dropped_reports
        _bump(self._software, new.software, +1)
        t.contribution = new
        if new.online and not new.problems:
            self._problem_ids.discard(t.tid)
        else:
            self._problem_ids.add(t.tid)

    def _go_online(
        self, t: _Terminal, occurred_at: datetime, received_at: datetime, reason: str
    ) -> Transition | None:
        if t.online:
            return None
        return self._switch(t, True, None, reason, occurred_at, received_at)

    def _go_offline(
        self, t: _Terminal, reason: OfflineReason, occurred_at: datetime, received_at: datetime
    ) -> Transition:
        return self._switch(t, False, reason, reason.value, occurred_at, received_at)

    @staticmethod
    def _switch(
        t: _Terminal,
        online: bool,
        offline_reason: OfflineReason | None,
        reason: str,
        occurred_at: datetime,
        received_at: datetime,
    ) -> Transition:
        """Set ``t``'s connectivity and return the transition (from None on first sighting)."""
        was_known = t.contribution is not None
        t.online = online
        t.state_since = received_at
        t.offline_reason = offline_reason
        to_state, from_state = (
            (TerminalState.ONLINE, TerminalState.OFFLINE)
            if online
            else (TerminalState.OFFLINE, TerminalState.ONLINE)
        )
        return Transition(
            terminal_id=t.tid,
            subject=CONNECTIVITY,
            kind=CONNECTIVITY,
            from_state=from_state.value if was_known else None,
            to_state=to_state.value,
            occurred_at=occurred_at,
            recorded_at=received_at,
            reason=reason,
        )

    def _apply_state(
        self, t: _Terminal, m: StateMessage, received_at: datetime, retained: bool
    ) -> Outcome:
        if m.boot_id != t.boot_id and m.boot_id == t.prev_boot_id:
            return _STALE
        body = m.body
        key = (m.boot_id, m.seq, m.sent_at, body.state)
        if key == t.last_state_key:
            return _DUPLICATE
        new_terminal = t.contribution is None
        if (
            retained
            and body.state is TerminalState.ONLINE
            and not new_terminal
            and t.last_sent_at is not None
            and m.sent_at <= t.last_sent_at
        ):
            t.last_state_key = key
            return _STALE
        t.last_state_key = key
        if m.boot_id != t.boot_id:  # a new stream: its position and drops are not known yet
            t.prev_boot_id, t.boot_id, t.last_seq = t.boot_id, m.boot_id, None
            if t.dropped_reports and t.contribution is not None:
                self._halls[t.contribution.key].dropped_reports -= t.dropped_reports
            t.dropped_reports = 0
        if body.hall is not None:
            t.hall = body.hall
        if body.region is not None:
            t.region = body.region
        if body.model is not None:
            t.model = body.model
        if t.last_sent_at is None or m.sent_at > t.last_sent_at:
            t.last_sent_at = m.sent_at
        transition: Transition | None
        if body.state is TerminalState.ONLINE:
            if not retained or new_terminal:
                t.last_seen = received_at
                self._set_deadline(t)
            transition = self._go_online(t, m.sent_at, received_at, "connect")
        elif t.online or new_terminal:
            if body.reason == "shutdown":
                transition = self._go_offline(t, OfflineReason.SHUTDOWN, m.sent_at, received_at)
            else:  # the will: built at connect time, so its sent_at says nothing about when
                transition = self._go_offline(t, OfflineReason.WILL, received_at, received_at)
        else:
            transition = None
        self._retally(t)
        return Outcome(Verdict.ACCEPTED, transitions=() if transition is None else (transition,))

    def _apply_stream(
        self, t: _Terminal, m: ReportMessage | EventMessage, received_at: datetime
    ) -> Outcome:
        # Sequence: duplicates, stragglers from the previous stream, gaps.
        new_boot = m.boot_id != t.boot_id
        if not new_boot:
            if t.last_seq is not None and m.seq <= t.last_seq:
                return _DUPLICATE
        elif m.boot_id == t.prev_boot_id:
            return _STALE
        else:
            t.prev_boot_id, t.boot_id, t.last_seq = t.boot_id, m.boot_id, None
        # A stream is numbered from 1: with no known position, 1..seq-1 never arrived.
        missing = max(m.seq - (t.last_seq or 0) - 1, 0)
        t.last_seq = m.seq
        old_dropped = t.dropped_reports
        if new_boot:
            t.dropped_reports = 0
        if isinstance(m, ReportMessage):
            t.reports_received += 1
            t.dropped_reports = m.body.dropped_reports
        else:
            t.events_received += 1
        t.seq_gaps += missing
        if t.contribution is not None:  # else the first _retally below adds them
            hall = self._halls[t.contribution.key]
            hall.seq_gaps += missing
            hall.dropped_reports += t.dropped_reports - old_dropped

        sent_at = m.sent_at
        t.last_seen = received_at
        if t.last_sent_at is None or sent_at > t.last_sent_at:
            t.last_sent_at = sent_at
        transitions: list[Transition] = []
        reason = "report" if isinstance(m, ReportMessage) else "event"
        if not t.online and (
            t.contribution is None
            or t.offline_reason is OfflineReason.TIMEOUT
            or sent_at > t.state_since
        ):
            online = self._go_online(t, sent_at, received_at, reason)
            if online is not None:
                transitions.append(online)

        changed = False
        identity_changed = new_boot
        if isinstance(m, ReportMessage):
            body = m.body
            if (
                t.hall != body.hall
                or t.region != body.region
                or t.model != body.model
                or t.agent_version != body.agent_version
                or t.report_interval_s != body.report_interval_s
                or t.software != body.software
            ):
                identity_changed = True
                t.hall, t.region, t.model = body.hall, body.region, body.model
                t.agent_version = body.agent_version
                t.report_interval_s = body.report_interval_s
                t.software = dict(body.software)
            changed = self._apply_peripherals(
                t, body.peripherals, sent_at, received_at, transitions
            )
        elif isinstance(m.body, BootEvent):
            identity_changed = identity_changed or t.agent_version != m.body.agent_version
            t.agent_version = m.body.agent_version
        else:
            t.reported = None  # the peripherals no longer mirror the last report
            changed = self._apply_peripheral(
                t, m.body.peripheral, sent_at, received_at, transitions
            )
        self._set_deadline(t)
        if changed or transitions or identity_changed or t.contribution is None:
            self._retally(t)
        return Outcome(
            Verdict.ACCEPTED,
            missing=missing,
            transitions=tuple(transitions),
            peripherals_changed=changed,
        )

    def _apply_peripherals(
        self,
        t: _Terminal,
        reported: list[PeripheralStatus],
        sent_at: datetime,
        received_at: datetime,
        transitions: list[Transition],
    ) -> bool:
        signature = tuple([(p.name, p.kind, p.condition, p.fault_code, p.detail) for p in reported])
        if signature == t.reported:
            return False
        t.reported = signature
        changed = False
        for p in reported:
            changed = self._apply_peripheral(t, p, sent_at, received_at, transitions) or changed
        old = t.peripherals
        if len(old) > len(reported):  # names are unique, so some were not reported
            changed = True
            names = {p.name for p in reported}
            for name in [n for n in old if n not in names]:
                gone = old.pop(name)
                transitions.append(
                    Transition(
                        terminal_id=t.tid,
                        subject=name,
                        kind=gone.kind.value,
                        from_state=gone.condition.value,
                        to_state=REMOVED,
                        occurred_at=sent_at,
                        recorded_at=received_at,
                    )
                )
        return changed

    def _apply_peripheral(
        self,
        t: _Terminal,
        p: PeripheralStatus,
        sent_at: datetime,
        received_at: datetime,
        transitions: list[Transition],
    ) -> bool:
        old = t.peripherals.get(p.name)
        if old is not None and (
            old.condition is p.condition
            and old.fault_code == p.fault_code
            and old.detail == p.detail
            and old.kind is p.kind
        ):
            return False
        condition_changed = old is None or (
            old.condition is not p.condition or old.fault_code != p.fault_code
        )
        since = sent_at if condition_changed or old is None else old.since
        t.peripherals[p.name] = PeripheralView(
            name=p.name,
            kind=p.kind,
            condition=p.condition,
            since=since,
            fault_code=p.fault_code,
            detail=p.detail,
        )
        if condition_changed and (old is not None or p.condition is not PeripheralCondition.OK):
            transitions.append(
                Transition(
                    terminal_id=t.tid,
                    subject=p.name,
                    kind=p.kind.value,
                    from_state=None if old is None else old.condition.value,
                    to_state=p.condition.value,
                    occurred_at=sent_at,
                    recorded_at=received_at,
                    fault_code=p.fault_code,
                )
            )
        return True
