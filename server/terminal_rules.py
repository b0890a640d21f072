"""The per-terminal rules: what one decoded message does to one terminal's record.

Pure: a ``TerminalRecord``, a decoded ``protocol.messages`` model and the
server time it was received go in; the record is updated and an ``Outcome``
(verdict, transitions, what must be persisted) comes out. No lock (the caller,
``server.fleet_state.FleetState``, holds one), no socket, database, clock or
logger; the same message on the same record always gives the same outcome.
Read it like python-tuf's ``trusted_metadata_set.py``.

Rules (docs/server.md explains why):

Sequence (reports and events)
    A ``seq`` more than ``max_seq_jump`` past the highest accepted (past 0 for a
    new stream) is REFUSED (reason ``seq_jump``) and changes nothing.
    ``boot_id`` names a sequence stream that survives agent restarts; its stream
    messages are numbered from 1. A message with the terminal's current
    ``boot_id`` and ``seq`` <= the highest accepted is a DUPLICATE; ``seq`` >
    highest + 1 counts the skipped numbers as a gap. The first stream message of
    a new ``boot_id`` (or of a ``boot_id`` a state message introduced, whose
    position is unknown) counts ``seq - 1`` as a gap: numbers 1..seq-1 of that
    stream never arrived. A message from the stream just replaced
    (``prev_boot_id``) is STALE: a late straggler that must not roll the state
    back.

Gap fills (``server.stream_gaps``)
    Every gap counted is also noted as an open range for ``gap_refill_window_s``
    (current ``boot_id`` only; at most 16 ranges). A message at or below the
    highest accepted whose ``seq`` lies in an open range is a GAP FILL, not a
    duplicate: accepted (``Outcome.filled``), counted in ``reports_received`` or
    ``events_received``, one gap fewer in ``seq_gaps``, and the range shrinks.
    It is history only: it is older than what the record already shows, so it
    changes no peripheral, connectivity, ``last_seen``, ``last_sent_at``,
    ``dropped_reports`` or transition. An update status that a later one of the
    stream already followed is ``Outcome.superseded`` (its row would become the
    terminal's "latest" update state).

Delivery accounting (per terminal, cumulative, persisted with the state)
    ``reports_received`` and ``events_received`` count accepted stream
    messages; ``seq_gaps`` counts the numbers never received; ``dropped_reports``
    is the latest value the terminal's reports gave for its current ``boot_id``
    (reports its outbox dropped on purpose; 0 again on a new ``boot_id``).

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
    ``expire`` takes a terminal offline when ``now - max(last_seen,
    listening_since) > offline_after_missed_reports x report_interval_s``;
    ``listening_since`` (when the broker connection was last established) gives
    every terminal a full grace period after the server or its broker link was
    away.

Peripherals
    A report is the full list: new peripherals are added, changed ones updated,
    missing ones removed (transition to ``removed``). An event changes one
    peripheral. A transition is recorded when the condition or fault code
    changes, and when a peripheral is first seen in a problem condition.

Transition causes
    Every transition a message causes carries ``transition_cause(message)``: the
    message's identity, the same on every replica that applies it (a stream
    message is its ``boot_id`` and ``seq``; a state message is, as for its
    duplicate check, its ``boot_id``, ``seq`` and ``sent_at``, its state being
    the transition's ``to_state``). One message changes each subject at most
    once, so (cause, subject, to_state) names one transition: the storage keeps
    it once however many replicas write it. The offline sweep's have none.

Outcome hints
    ``position_only``: of the stored fields only ``POSITION_FIELDS`` changed (the
    common heartbeat), so the writer updates just those columns.
    ``peripherals_changed``: the terminal's peripheral rows must be rewritten
    (every accepted message changes the terminal's row: its dedup position and
    counters must be durable before the message is acknowledged).
    ``retally``: something the fleet tallies count (connectivity, hall,
    peripherals, software, gaps, drops) may have changed; the caller then
    hands the record to ``server.fleet_tallies``. An identical heartbeat does
    not set it, so the common case costs no tally work.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Final

from protocol.committed import SeqRange
from protocol.messages import (
    BootEvent,
    EventMessage,
    Message,
    PeripheralCondition,
    PeripheralStatus,
    ReportMessage,
    StateMessage,
    TerminalState,
    UpdateMessage,
    UsageMessage,
)
from server import stream_gaps
from server.fleet_views import (
    CONNECTIVITY,
    REMOVED,
    OfflineReason,
    Outcome,
    PeripheralView,
    TerminalView,
    Transition,
    Verdict,
)

__all__ = [
    "VIEW_FIELDS",
    "Placement",
    "TerminalPolicy",
    "TerminalRecord",
    "adopt_offline",
    "apply",
    "expire",
    "transition_cause",
]

_DUPLICATE: Final = Outcome(Verdict.DUPLICATE)
_STALE: Final = Outcome(Verdict.STALE)
_SEQ_JUMP: Final = Outcome(Verdict.REFUSED, reason="seq_jump")
_OK: Final = PeripheralCondition.OK

VIEW_FIELDS: Final = tuple(f.name for f in fields(TerminalView))
"""A terminal's fields, declared once by ``TerminalView``; the record has each of them."""
_VIEW_VALUES: Final = operator.attrgetter(*VIEW_FIELDS)  # in C: a view per flushed terminal


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a terminal stands, from the server's terminal registry. When the registry is
    on, it replaces the hall, region and model the terminal's messages claim."""

    hall: str
    region: str
    model: str


@dataclass(frozen=True, slots=True)
class TerminalPolicy:
    """The rules' settings.

    Silence makes a terminal offline after ``missed`` report intervals without a
    message (the terminal's own interval, or ``default_interval_s`` before it said
    one, capped at ``max_interval_s``). A stream message whose ``seq`` is more than ``max_seq_jump`` past the
    highest accepted (or past 0 for a new stream) is refused: no real agent skips a
    million numbers, and one forged high ``seq`` would otherwise make every later
    real message a duplicate.
    """

    missed: int = 3
    default_interval_s: float = 60.0
    max_seq_jump: int = 1_000_000
    max_interval_s: float = 3600.0
    gap_refill_window_s: float = 60.0  # how long a gap stays open (listed, fillable)

    def __post_init__(self) -> None:
        if self.missed < 1 or self.default_interval_s <= 0:
            raise ValueError("offline_after_missed_reports >= 1 and a positive interval")
        if self.max_seq_jump < 1:
            raise ValueError("max_seq_jump must be >= 1")
        if self.max_interval_s < self.default_interval_s:
            raise ValueError("max_report_interval_s must be >= default_report_interval_s")
        if self.gap_refill_window_s < 0:
            raise ValueError("gap_refill_window_s must not be negative")

    @property
    def gap_window(self) -> timedelta:
        """How long a noticed gap stays open."""
        return timedelta(seconds=self.gap_refill_window_s)

    def grace(self, interval_s: float | None) -> timedelta:
        """How long a silence may last: ``missed`` intervals, the terminal's own capped at
        ``max_interval_s`` (a terminal that claims a day cannot hide a failure for three)."""
        interval = min(interval_s or self.default_interval_s, self.max_interval_s)
        return timedelta(seconds=self.missed * interval)


class TerminalRecord:
    """One terminal's live state: ``TerminalView``'s fields, mutable, plus the rules' own.

    Only this module changes a record; everyone else reads ``view()`` copies.
    """

    __slots__ = (
        *VIEW_FIELDS,
        "deadline",
        "gaps",
        "known",
        "last_state_key",
        "reported",
        "update_seq",
    )

    def __init__(self, tid: str, now: datetime) -> None:
        self.id = tid
        self.online = False
        self.state_since = now
        self.last_seen = now
        self.first_seen = now
        self.hall: str | None = None
        self.region: str | None = None
        self.model: str | None = None
        self.offline_reason: OfflineReason | None = None
        self.last_sent_at: datetime | None = None
        self.boot_id: str | None = None
        self.last_seq: int | None = None
        self.report_interval_s: float | None = None
        self.agent_version: str | None = None
        self.software: dict[str, str] = {}
        self.peripherals: dict[str, PeripheralView] = {}
        self.prev_boot_id: str | None = None
        self.reports_received = 0
        self.events_received = 0
        self.seq_gaps = 0
        self.dropped_reports = 0
        # The rules' own: when silence makes it offline; whether any message was accepted
        # (or it was loaded); the last state message applied; the last report's peripheral
        # list as plain tuples while nothing else changed them (an identical heartbeat then
        # skips the per-peripheral diff); the current stream's open gaps (in memory only)
        # and the highest seq of an update status accepted from it in this process.
        self.deadline = now
        self.known = False
        self.last_state_key: tuple[str, int, datetime, TerminalState] | None = None
        self.reported: tuple[tuple[object, ...], ...] | None = None
        self.gaps: stream_gaps.Gaps = ()
        self.update_seq = 0

    @classmethod
    def from_view(cls, v: TerminalView, policy: TerminalPolicy) -> TerminalRecord:
        """The record a stored view describes (the database's copy at startup)."""
        t = cls(v.id, v.first_seen)
        for name in VIEW_FIELDS:
            setattr(t, name, getattr(v, name))
        t.software = dict(v.software)
        t.peripherals = {p.name: p for p in v.peripherals}
        t.known = True
        _set_deadline(t, policy)
        return t

    def view(self) -> TerminalView:
        """A frozen copy (peripherals by name)."""
        values = dict(zip(VIEW_FIELDS, _VIEW_VALUES(self), strict=True))
        values["software"] = dict(self.software)
        values["peripherals"] = tuple(self.peripherals[n] for n in sorted(self.peripherals))
        return TerminalView(**values)

    def open_gaps(self, now: datetime, policy: TerminalPolicy) -> tuple[SeqRange, ...]:
        """The current stream's open gaps at ``now`` (what its ``kf.committed`` lists)."""
        return stream_gaps.open_ranges(self.gaps, now, policy.gap_window)

    def problems(self) -> tuple[PeripheralView, ...]:
        """Its peripherals that are not ok, by name."""
        bad = [p for p in self.peripherals.values() if p.condition is not _OK]
        if len(bad) > 1:
            bad.sort(key=lambda p: p.name)
        return tuple(bad)


def apply(
    t: TerminalRecord,
    message: Message,
    received_at: datetime,
    policy: TerminalPolicy,
    *,
    retained: bool = False,
    placement: Placement | None = None,
) -> Outcome:
    """Apply one decoded message for ``t`` received at server time ``received_at``.

    ``retained`` is True when the broker delivered a stored retained message (on
    subscribe) rather than a live one. ``placement``, when given (the registry's),
    is the terminal's hall, region and model whatever the message says. Never
    raises for any valid message.
    """
    if isinstance(message, StateMessage):
        outcome = _apply_state(t, message, received_at, retained, policy, placement)
    else:
        outcome = _apply_stream(t, message, received_at, policy, placement)
    if not outcome.transitions:
        return outcome
    cause = transition_cause(message)
    return replace(outcome, transitions=tuple(replace(x, cause=cause) for x in outcome.transitions))


def transition_cause(message: Message) -> str:
    """The identity of the message behind a transition (``Transition.cause``): a stream
    message's ``boot_id:seq``; a state message's ``boot_id:seq:state:sent_at`` (its
    ``seq`` is the last stream seq, so it needs its own marker and its ``sent_at``, as in
    its duplicate check). At most 120 characters (the column holds 128)."""
    if isinstance(message, StateMessage):
        sent_at = message.sent_at.astimezone(UTC).isoformat()
        return f"{message.boot_id}:{message.seq}:state:{sent_at}"
    return f"{message.boot_id}:{message.seq}"


def expire(
    t: TerminalRecord, now: datetime, policy: TerminalPolicy, listening_since: datetime | None
) -> Transition | None:
    """Take ``t`` offline (reason timeout) if it is online and has been silent too long.

    ``listening_since``: when the server last (re)connected to the broker;
    silence before it is not held against the terminal.
    """
    if not t.online or t.deadline >= now:
        return None
    if listening_since is not None and listening_since + policy.grace(t.report_interval_s) >= now:
        return None
    return _switch(t, False, OfflineReason.TIMEOUT, OfflineReason.TIMEOUT.value, now, now)


def adopt_offline(t: TerminalRecord, since: datetime, reason: OfflineReason) -> bool:
    """Take ``t`` offline as another replica already recorded (the database says offline
    since ``since``), without a transition of its own: only if ``t`` is online here and
    has sent nothing since. Returns whether it changed."""
    if not t.online or t.last_seen > since:
        return False
    t.online = False
    t.state_since = since
    t.offline_reason = reason
    return True


# --- internals ------------------------------------------------------------------------------


def _set_deadline(t: TerminalRecord, policy: TerminalPolicy) -> None:
    t.deadline = t.last_seen + policy.grace(t.report_interval_s)


def _switch(
    t: TerminalRecord,
    online: bool,
    offline_reason: OfflineReason | None,
    reason: str,
    occurred_at: datetime,
    received_at: datetime,
) -> Transition:
    """Set ``t``'s connectivity and return the transition (from None on first sighting)."""
    t.online = online
    t.state_since = received_at
    t.offline_reason = offline_reason
    to_state, from_state = (
        (TerminalState.ONLINE, TerminalState.OFFLINE)
        if online
        else (TerminalState.OFFLINE, TerminalState.ONLINE)
    )
    return Transition(
        terminal_id=t.id,
        subject=CONNECTIVITY,
        kind=CONNECTIVITY,
        from_state=from_state.value if t.known else None,
        to_state=to_state.value,
        occurred_at=occurred_at,
        recorded_at=received_at,
        reason=reason,
    )


def _go_online(
    t: TerminalRecord, occurred_at: datetime, received_at: datetime, reason: str
) -> Transition | None:
    if t.online:
        return None
    return _switch(t, True, None, reason, occurred_at, received_at)


def _go_offline(
    t: TerminalRecord, reason: OfflineReason, occurred_at: datetime, received_at: datetime
) -> Transition:
    return _switch(t, False, reason, reason.value, occurred_at, received_at)


def _new_stream(t: TerminalRecord, boot_id: str) -> None:
    t.prev_boot_id, t.boot_id, t.last_seq = t.boot_id, boot_id, None
    t.dropped_reports = 0
    t.gaps = ()
    t.update_seq = 0


def _apply_state(
    t: TerminalRecord,
    m: StateMessage,
    received_at: datetime,
    retained: bool,
    policy: TerminalPolicy,
    placement: Placement | None,
) -> Outcome:
    if m.boot_id != t.boot_id and m.boot_id == t.prev_boot_id:
        return _STALE
    body = m.body
    key = (m.boot_id, m.seq, m.sent_at, body.state)
    if key == t.last_state_key:
        return _DUPLICATE
    new_terminal = not t.known
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
        _new_stream(t, m.boot_id)
    if placement is not None:
        t.hall, t.region, t.model = placement.hall, placement.region, placement.model
    else:
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
            _set_deadline(t, policy)
        transition = _go_online(t, m.sent_at, received_at, "connect")
    elif t.online or new_terminal:
        if body.reason == "shutdown":
            transition = _go_offline(t, OfflineReason.SHUTDOWN, m.sent_at, received_at)
        else:  # the will: built at connect time, so its sent_at says nothing about when
            transition = _go_offline(t, OfflineReason.WILL, received_at, received_at)
    else:
        transition = None
    t.known = True
    return Outcome(
        Verdict.ACCEPTED,
        transitions=() if transition is None else (transition,),
        retally=True,
    )


def _apply_stream(
    t: TerminalRecord,
    m: ReportMessage | EventMessage | UpdateMessage | UsageMessage,
    received_at: datetime,
    policy: TerminalPolicy,
    placement: Placement | None,
) -> Outcome:
    # Sequence: duplicates, stragglers from the previous stream, gaps.
    new_boot = m.boot_id != t.boot_id
    if not new_boot:
        if t.last_seq is not None and m.seq <= t.last_seq:
            return _fill_gap(t, m, received_at, policy)
    elif m.boot_id == t.prev_boot_id:
        return _STALE
    if m.seq - ((t.last_seq or 0) if not new_boot else 0) > policy.max_seq_jump:
        return _SEQ_JUMP
    old_dropped = t.dropped_reports
    if new_boot:
        _new_stream(t, m.boot_id)
    # A stream is numbered from 1: with no known position, 1..seq-1 never arrived.
    missing = max(m.seq - (t.last_seq or 0) - 1, 0)
    t.last_seq = m.seq
    if isinstance(m, ReportMessage):
        t.reports_received += 1
        t.dropped_reports = m.body.dropped_reports
    else:
        t.events_received += 1
    t.seq_gaps += missing
    if missing:
        t.gaps = stream_gaps.note(
            t.gaps, m.seq - missing, m.seq - 1, received_at, policy.gap_window
        )
    if isinstance(m, UpdateMessage):
        t.update_seq = m.seq

    sent_at = m.sent_at
    t.last_seen = received_at
    if t.last_sent_at is None or sent_at > t.last_sent_at:
        t.last_sent_at = sent_at
    transitions: list[Transition] = []
    reason = "report" if isinstance(m, ReportMessage) else "event"
    if not t.online and (
        not t.known or t.offline_reason is OfflineReason.TIMEOUT or sent_at > t.state_since
    ):
        online = _go_online(t, sent_at, received_at, reason)
        if online is not None:
            transitions.append(online)

    changed = False
    identity_changed = new_boot
    if isinstance(m, ReportMessage):
        body = m.body
        where = placement or Placement(body.hall, body.region, body.model)
        if (
            t.hall != where.hall
            or t.region != where.region
            or t.model != where.model
            or t.agent_version != body.agent_version
            or t.report_interval_s != body.report_interval_s
            or t.software != body.software
        ):
            identity_changed = True
            t.hall, t.region, t.model = where.hall, where.region, where.model
            t.agent_version = body.agent_version
            t.report_interval_s = body.report_interval_s
            t.software = dict(body.software)
        changed = _apply_peripherals(t, body.peripherals, sent_at, received_at, transitions)
    elif isinstance(m, UpdateMessage | UsageMessage):
        pass  # in the stream (dedup, liveness); stored in update_status / usage_event
    elif isinstance(m.body, BootEvent):
        identity_changed = identity_changed or t.agent_version != m.body.agent_version
        t.agent_version = m.body.agent_version
    else:
        t.reported = None  # the peripherals no longer mirror the last report
        changed = _apply_peripheral(t, m.body.peripheral, sent_at, received_at, transitions)
    _set_deadline(t, policy)
    retally = (
        changed
        or bool(transitions)
        or identity_changed
        or not t.known
        or missing > 0
        or t.dropped_reports != old_dropped
    )
    t.known = True
    return Outcome(
        Verdict.ACCEPTED,
        missing=missing,
        transitions=tuple(transitions),
        peripherals_changed=changed,
        retally=retally,
        # Nothing retallied is nothing but the position: no new stream, gap, transition,
        # identity, peripheral or drop-count change, on a terminal already known.
        position_only=not retally,
    )


def _fill_gap(
    t: TerminalRecord,
    m: ReportMessage | EventMessage | UpdateMessage | UsageMessage,
    received_at: datetime,
    policy: TerminalPolicy,
) -> Outcome:
    """A message at or below the position: a gap fill if an open gap holds its seq, else a
    duplicate. A fill only counts (history): the record's live state is newer than it."""
    gaps = stream_gaps.fill(t.gaps, m.seq, received_at, policy.gap_window)
    if gaps is None:
        return _DUPLICATE
    t.gaps = gaps
    t.seq_gaps -= 1
    if isinstance(m, ReportMessage):
        t.reports_received += 1
    else:
        t.events_received += 1
    superseded = False
    if isinstance(m, UpdateMessage):
        superseded = m.seq < t.update_seq
        t.update_seq = max(t.update_seq, m.seq)
    return Outcome(Verdict.ACCEPTED, filled=True, superseded=superseded, retally=True)


def _apply_peripherals(
    t: TerminalRecord,
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
        changed = _apply_peripheral(t, p, sent_at, received_at, transitions) or changed
    old = t.peripherals
    if len(old) > len(reported):  # names are unique, so some were not reported
        changed = True
        names = {p.name for p in reported}
        for name in [n for n in old if n not in names]:
            gone = old.pop(name)
            transitions.append(
                Transition(
                    terminal_id=t.id,
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
    t: TerminalRecord,
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
    if condition_changed and (old is not None or p.condition is not _OK):
        transitions.append(
            Transition(
                terminal_id=t.id,
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
