"""The rollout planner: a rollout's definition, its terminals' states and the clock in, actions out.

A pure reducer. It never touches a socket, a database, a lock, a logger or the
wall clock; the driver (a later session: the rollout API and an APScheduler job)
owns I/O, persistence and audit. One call::

    decision = step(rollout, events, now)
    # decision.rollout  the next state (persist it)
    # decision.actions  what to do and audit, in order (Notify -> sign and send a directive)
    # decision.wake_at  when to call step again with no events (None: only on an event)

Events (inputs): ``Selected`` (the target selector's current result; the planner
never queries, ids it has not seen are the late joiners), ``Approve``,
``Pause``, ``Resume``, ``Cancel``, ``OpenGate`` (a manual gate), ``Report`` (a
terminal's state from the ``update`` channel). Events are applied in order, then
the clock pass runs once (timeouts, retries, admissions, thresholds, gates), so
a driver batches a tick's reports into one call. A refused event (approval by
its creator, an illegal transition, a report for an unknown terminal) changes
nothing and yields a ``Refused`` action carrying the reason, for the audit log
and a counter; it never raises.

Actions (outputs): ``Started``, ``Notify`` (terminal, target, attempt),
``Withdraw`` (after a cancel or abort, to terminals not yet installing),
``MarkedTimedOut``, ``RetryScheduled``, ``PhaseAdvanced``, ``GateOpened``, ``Paused``,
``Resumed``, ``Aborted``, ``Canceled``, ``Completed``, ``Refused``.

Rollout lifecycle (``RolloutStatus``)::

    awaiting_approval --Approve(by another admin/operator)--> running
    running --Pause--> paused --Resume--> running
    running --phase below success threshold--> paused(below_success_threshold)
    running --failure ratio above abort ratio after >= min_decided--> aborted
    running --last phase passed--> completed
    awaiting_approval | running | paused --Cancel--> canceled
    aborted, canceled, completed: final; they never notify again.

Phases are cumulative: phase i covers the first ``Phase.size`` terminals in
selection order (a count, or a percentage of the terminals selected so far,
rounded up); the last phase must be 100 percent so late joiners are always
reached. A phase passes when every terminal admitted in it is final and the
share of successes among them is at least ``success_threshold``; the next phase
then opens after its gate (``Delay`` seconds or ``MANUAL``, an ``OpenGate`` event).
Resuming a rollout paused below the success threshold gives that phase's failed
terminals a fresh round of attempts; it never advances the phase.

Per-terminal states (``TerminalState``) and who moves them: the planner moves
``pending -> notified`` (Notify), ``notified.. -> timed_out`` (per-terminal
timeout from the notification), ``failed|rolled_back|timed_out -> pending`` (a
retry, after ``retry_backoff_s * 2**(attempt-1)`` capped at
``retry_backoff_max_s``, while attempts remain) and ``pending -> canceled``
(cancel or abort); the agent reports the rest, each checked against
``TRANSITIONS``. Final: ``succeeded``, ``already_installed`` (successes),
``rejected``, ``canceled`` and ``failed|rolled_back|timed_out`` once no attempt
remains or the rollout is stopped. ``rejected`` (the agent refused the directive
by its own checks) is never retried: the same target would be refused again.
After a cancel or abort, terminals already notified get a ``Withdraw`` when they
have not started installing and keep reporting until final (the server cannot
unsign a directive); nothing new is sent. A ``Report`` may carry the attempt
number of its directive: a late report from an earlier attempt is refused.
Resuming below the threshold starts a new round: ``max_attempts`` counts from
there, attempt numbers keep growing.

Invariants (``tests/unit/test_rollout_planner.py``, Hypothesis state machine):
never more terminals admitted (hence in flight) than the current phase allows;
never a ``PhaseAdvanced``/``Completed`` for a phase below its threshold; every
terminal ends in exactly one final state; no ``Notify`` after a cancel or abort.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final, Literal

from protocol.update_status import UpdateState
from server.access import Role

__all__ = [
    "FAILURES",
    "IN_FLIGHT",
    "MANUAL",
    "RETRYABLE",
    "SUCCESSES",
    "TRANSITIONS",
    "AbortThreshold",
    "Aborted",
    "Action",
    "Approve",
    "Cancel",
    "Canceled",
    "Completed",
    "Decision",
    "Delay",
    "Event",
    "Gate",
    "GateOpened",
    "MarkedTimedOut",
    "Notify",
    "OpenGate",
    "Pause",
    "PauseReason",
    "Paused",
    "Phase",
    "PhaseAdvanced",
    "Refused",
    "Report",
    "Resume",
    "Resumed",
    "RetryScheduled",
    "Rollout",
    "RolloutDefinition",
    "RolloutStatus",
    "Selected",
    "Started",
    "TerminalProgress",
    "TerminalState",
    "Withdraw",
    "new_rollout",
    "phase_quota",
    "step",
    "unseen_path",
]


# The per-terminal states are the wire's (``kf.update``): one list for agent, server and planner.
TerminalState = UpdateState


_S = TerminalState
_AGENT_FINAL: Final = frozenset({_S.SUCCEEDED, _S.FAILED, _S.ROLLED_BACK, _S.REJECTED})
_BEFORE_INSTALL: Final = frozenset({_S.NOTIFIED, _S.DOWNLOADING, _S.DOWNLOADED, _S.WAITING_WINDOW})

TRANSITIONS: Final[Mapping[TerminalState, frozenset[TerminalState]]] = {
    _S.PENDING: frozenset({_S.NOTIFIED, _S.CANCELED}),
    _S.NOTIFIED: frozenset(
        {_S.DOWNLOADING, _S.DOWNLOADED, _S.WAITING_WINDOW, _S.INSTALLING, _S.ALREADY_INSTALLED}
        | _AGENT_FINAL
        | {_S.TIMED_OUT, _S.CANCELED}
    ),
    _S.DOWNLOADING: frozenset({_S.DOWNLOADED, _S.FAILED, _S.REJECTED, _S.TIMED_OUT, _S.CANCELED}),
    _S.DOWNLOADED: frozenset(
        {_S.WAITING_WINDOW, _S.INSTALLING, _S.FAILED, _S.REJECTED, _S.TIMED_OUT, _S.CANCELED}
    ),
    _S.WAITING_WINDOW: frozenset({_S.INSTALLING, _S.FAILED, _S.TIMED_OUT, _S.CANCELED}),
    _S.INSTALLING: frozenset({_S.HEALTH_CHECK, _S.FAILED, _S.ROLLED_BACK, _S.TIMED_OUT}),
    _S.HEALTH_CHECK: frozenset({_S.SUCCEEDED, _S.ROLLED_BACK, _S.FAILED, _S.TIMED_OUT}),
    _S.SUCCEEDED: frozenset(),
    _S.ALREADY_INSTALLED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.CANCELED: frozenset(),
    _S.FAILED: frozenset({_S.PENDING}),
    _S.ROLLED_BACK: frozenset({_S.PENDING}),
    _S.TIMED_OUT: frozenset({_S.PENDING}),
}
"""Allowed per-terminal transitions; the only place the state machine is written down."""

SUCCESSES: Final = frozenset({_S.SUCCEEDED, _S.ALREADY_INSTALLED})
RETRYABLE: Final = frozenset(state for state, nxt in TRANSITIONS.items() if _S.PENDING in nxt)
FAILURES: Final = RETRYABLE | {_S.REJECTED}
IN_FLIGHT: Final = _BEFORE_INSTALL | {_S.INSTALLING, _S.HEALTH_CHECK}
_PLANNER_MOVES: Final = frozenset({_S.NOTIFIED, _S.TIMED_OUT, _S.PENDING})
_APPROVERS: Final = frozenset({Role.ADMIN, Role.OPERATOR})


class RolloutStatus(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"
    RUNNING = "running"
    PAUSED = "paused"
    ABORTED = "aborted"
    CANCELED = "canceled"
    COMPLETED = "completed"


_STOPPED: Final = frozenset(
    {RolloutStatus.ABORTED, RolloutStatus.CANCELED, RolloutStatus.COMPLETED}
)


class PauseReason(StrEnum):
    OPERATOR = "operator"
    BELOW_SUCCESS_THRESHOLD = "below_success_threshold"


# --- the definition -------------------------------------------------------------------------


@dataclass(frozen=True)
class Delay:
    """The next phase opens this many seconds after the previous one passed."""

    seconds: float = 0.0


MANUAL: Final = "manual"
"""The next phase opens on an ``OpenGate`` event (an operator's decision)."""

Gate = Delay | Literal["manual"]


@dataclass(frozen=True)
class Phase:
    """Cumulative size: ``count`` terminals, or ``percent`` of those selected (rounded up).

    ``gate`` says how this phase opens once the previous one passed; the first
    phase opens when the rollout starts, so its gate must stay ``Delay(0)``.
    """

    size: int
    unit: Literal["count", "percent"] = "percent"
    gate: Gate = field(default_factory=Delay)


@dataclass(frozen=True)
class AbortThreshold:
    """Abort when failures / decided terminals > ``failure_ratio``, once >= ``min_decided``."""

    failure_ratio: float
    min_decided: int


@dataclass(frozen=True)
class RolloutDefinition:
    """What an operator asked for. ``new_rollout`` raises ValueError for an invalid one."""

    rollout_id: str
    target: str  # the TUF target path every Notify carries
    created_by: str
    phases: tuple[Phase, ...]
    success_threshold: float  # share of a phase's terminals that must succeed, 0..1
    abort: AbortThreshold
    terminal_timeout_s: float  # from notification to a final report, per attempt
    max_attempts: int = 3
    retry_backoff_s: float = 60.0
    retry_backoff_max_s: float = 3600.0
    # Install even while the terminal's hall is open (the directive's flag); by default the
    # driver sets each directive's window to the hall's next closed window.
    install_while_open: bool = False


# --- the state ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TerminalProgress:
    """One terminal in one rollout. ``phase`` is None until admitted."""

    terminal_id: str
    state: TerminalState = TerminalState.PENDING
    phase: int | None = None
    attempts: int = 0  # notifications sent, ever (the Notify's attempt number)
    round_start: int = 0  # attempts before the current round; max_attempts counts from here
    notified_at: datetime | None = None
    retry_at: datetime | None = None


@dataclass(frozen=True)
class Rollout:
    definition: RolloutDefinition
    status: RolloutStatus = RolloutStatus.AWAITING_APPROVAL
    pause_reason: PauseReason | None = None
    phase: int = 0
    gate_open: bool = True  # False while the current phase waits for its gate
    gate_opens_at: datetime | None = None  # a Delay gate's time
    approved_by: str | None = None
    terminals: tuple[TerminalProgress, ...] = ()  # in selection order

    def is_final(self, terminal: TerminalProgress) -> bool:
        """True when nothing more will happen to ``terminal`` in this rollout."""
        if terminal.state in SUCCESSES or terminal.state in {_S.REJECTED, _S.CANCELED}:
            return True
        if terminal.state in RETRYABLE:
            stopped = self.status in _STOPPED
            used = terminal.attempts - terminal.round_start
            return stopped or used >= self.definition.max_attempts
        return False


# --- events and actions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Selected:
    terminal_ids: tuple[str, ...]


@dataclass(frozen=True)
class Approve:
    by: str
    role: Role


@dataclass(frozen=True)
class Pause:
    by: str


@dataclass(frozen=True)
class Resume:
    by: str


@dataclass(frozen=True)
class Cancel:
    by: str


@dataclass(frozen=True)
class OpenGate:
    by: str


@dataclass(frozen=True)
class Report:
    """A terminal's state. ``attempt`` (the Notify's, carried in the directive) guards against
    a late report from an earlier attempt; None accepts it for the current one."""

    terminal_id: str
    state: TerminalState
    attempt: int | None = None


Event = Selected | Approve | Pause | Resume | Cancel | OpenGate | Report


@dataclass(frozen=True)
class Started:
    approved_by: str


@dataclass(frozen=True)
class Notify:
    terminal_id: str
    target: str
    attempt: int


@dataclass(frozen=True)
class Withdraw:
    """Ask a notified terminal that has not started installing to drop the target (it may
    report ``canceled``); a directive already signed cannot be unsigned, so this is a request."""

    terminal_id: str
    target: str


@dataclass(frozen=True)
class MarkedTimedOut:
    terminal_id: str
    attempt: int


@dataclass(frozen=True)
class RetryScheduled:
    terminal_id: str
    attempt: int  # the attempt that will be sent
    at: datetime


@dataclass(frozen=True)
class PhaseAdvanced:
    phase: int  # the phase now open
    succeeded: int  # in the phase that passed
    total: int


@dataclass(frozen=True)
class GateOpened:
    phase: int
    by: str | None  # None: a Delay gate whose time came


@dataclass(frozen=True)
class Paused:
    reason: PauseReason
    by: str | None = None


@dataclass(frozen=True)
class Resumed:
    by: str


@dataclass(frozen=True)
class Aborted:
    failed: int
    decided: int


@dataclass(frozen=True)
class Canceled:
    by: str


@dataclass(frozen=True)
class Completed:
    succeeded: int
    total: int


@dataclass(frozen=True)
class Refused:
    event: Event
    reason: str


Action = (
    Started
    | Notify
    | Withdraw
    | MarkedTimedOut
    | RetryScheduled
    | PhaseAdvanced
    | GateOpened
    | Paused
    | Resumed
    | Aborted
    | Canceled
    | Completed
    | Refused
)


@dataclass(frozen=True)
class Decision:
    rollout: Rollout
    actions: tuple[Action, ...]
    wake_at: datetime | None


# --- the planner ----------------------------------------------------------------------------


def unseen_path(known: TerminalState, latest: TerminalState) -> tuple[TerminalState, ...] | None:
    """The agent-reported states from ``known`` (the planner's view) to ``latest``, in order.

    A driver that reads only each terminal's latest status misses the states reported
    between two ticks (``downloading`` seen, then ``installing``: ``downloaded`` passed
    unseen). This is the shortest chain of ``TRANSITIONS`` from ``known`` ending in
    ``latest`` whose intermediate states the agent reports (never a planner move), so
    the driver replays it as one ``Report`` per state; None when there is none (the one
    ``Report`` of ``latest`` is then refused as before). Derived from ``TRANSITIONS`` only.
    """
    paths: dict[TerminalState, tuple[TerminalState, ...]] = {known: ()}
    frontier = [known]
    while frontier:
        following = []
        for state in frontier:
            for nxt in sorted(TRANSITIONS[state]):
                if nxt in paths:
                    continue
                if nxt == latest:
                    return (*paths[state], nxt)
                if nxt not in _PLANNER_MOVES:
                    paths[nxt] = (*paths[state], nxt)
                    following.append(nxt)
        frontier = following
    return None


def new_rollout(definition: RolloutDefinition) -> Rollout:
    """A rollout awaiting approval. Raises ValueError for an invalid definition."""
    _validate(definition)
    return Rollout(definition=definition)


def phase_quota(definition: RolloutDefinition, phase: int, selected: int) -> int:
    """How many terminals phases 0..``phase`` may have admitted with ``selected`` terminals."""
    quota = 0
    for spec in definition.phases[: phase + 1]:
        size = spec.size if spec.unit == "count" else math.ceil(spec.size * selected / 100)
        quota = max(quota, min(size, selected))
    return quota


def step(rollout: Rollout, events: Iterable[Event], now: datetime) -> Decision:
    """Apply ``events`` in order, then the clock pass at ``now``. Never raises for bad input."""
    run = _Run(rollout)
    for event in events:
        reason = run.apply(event, now)
        if reason is not None:
            run.actions.append(Refused(event, reason))
    run.tick(now)
    result = run.freeze()
    return Decision(result, tuple(run.actions), _wake_at(result))


def _validate(definition: RolloutDefinition) -> None:
    phases = definition.phases
    if not phases:
        raise ValueError("a rollout needs at least one phase")
    if phases[-1] != replace(phases[-1], size=100, unit="percent"):
        raise ValueError("the last phase must be 100 percent, so later joiners are reached")
    if phases[0].gate != Delay():
        raise ValueError("the first phase opens when the rollout starts; it takes no gate")
    for spec in phases:
        if spec.size < 1 or (spec.unit == "percent" and spec.size > 100):
            raise ValueError(f"phase size out of range: {spec}")
        if isinstance(spec.gate, Delay) and spec.gate.seconds < 0:
            raise ValueError(f"negative gate delay: {spec}")
    if not 0.0 <= definition.success_threshold <= 1.0:
        raise ValueError("success_threshold must be within 0..1")
    if not 0.0 <= definition.abort.failure_ratio <= 1.0 or definition.abort.min_decided < 1:
        raise ValueError("abort threshold: failure_ratio within 0..1, min_decided >= 1")
    if definition.terminal_timeout_s <= 0 or definition.max_attempts < 1:
        raise ValueError("terminal_timeout_s must be > 0 and max_attempts >= 1")
    if definition.retry_backoff_s < 0 or definition.retry_backoff_max_s < 0:
        raise ValueError("retry backoff must not be negative")


def _wake_at(rollout: Rollout) -> datetime | None:
    """The earliest time the clock alone changes something: a timeout, a retry or a gate."""
    times: list[datetime] = []
    timeout = timedelta(seconds=rollout.definition.terminal_timeout_s)
    for terminal in rollout.terminals:
        if terminal.state in IN_FLIGHT and terminal.notified_at is not None:
            times.append(terminal.notified_at + timeout)
        elif rollout.status is RolloutStatus.RUNNING and terminal.retry_at is not None:
            times.append(terminal.retry_at)
    if rollout.status is RolloutStatus.RUNNING and rollout.gate_opens_at is not None:
        times.append(rollout.gate_opens_at)
    return min(times, default=None)


class _Run:
    """One ``step``: a mutable working copy, frozen again at the end."""

    def __init__(self, rollout: Rollout) -> None:
        self.rollout = rollout
        self.terminals: dict[str, TerminalProgress] = {t.terminal_id: t for t in rollout.terminals}
        self.actions: list[Action] = []

    @property
    def definition(self) -> RolloutDefinition:
        return self.rollout.definition

    def freeze(self) -> Rollout:
        return replace(self.rollout, terminals=tuple(self.terminals.values()))

    def _set(self, **changes: object) -> None:
        self.rollout = replace(self.rollout, **changes)  # type: ignore[arg-type]  # field names checked by replace

    def _final(self, terminal: TerminalProgress) -> bool:
        return self.rollout.is_final(terminal)

    # events --------------------------------------------------------------------------------

    def apply(self, event: Event, now: datetime) -> str | None:
        """Apply one event; the refusal reason, or None when accepted."""
        status = self.rollout.status
        match event:
            case Report():
                return self._report(event, now)
            case _ if status in _STOPPED:
                return f"rollout_{status.value}"
            case Selected(terminal_ids):
                for terminal_id in terminal_ids:
                    self.terminals.setdefault(terminal_id, TerminalProgress(terminal_id))
                return None
            case Approve(by, role):
                if status is not RolloutStatus.AWAITING_APPROVAL:
                    return "already_approved"
                if role not in _APPROVERS:
                    return "approver_role_not_allowed"
                if by == self.definition.created_by:
                    return "approver_is_creator"
                self._set(status=RolloutStatus.RUNNING, approved_by=by)
                self.actions.append(Started(by))
                return None
            case Cancel(by):
                self._set(status=RolloutStatus.CANCELED, pause_reason=None)
                self.actions.append(Canceled(by))
                self._stop_open_terminals()
                return None
            case Pause(by):
                if status is not RolloutStatus.RUNNING:
                    return f"not_running_{status.value}"
                self._set(status=RolloutStatus.PAUSED, pause_reason=PauseReason.OPERATOR)
                self.actions.append(Paused(PauseReason.OPERATOR, by))
                return None
            case Resume(by):
                if status is not RolloutStatus.PAUSED:
                    return f"not_paused_{status.value}"
                if self.rollout.pause_reason is PauseReason.BELOW_SUCCESS_THRESHOLD:
                    self._fresh_round_for_failures()
                self._set(status=RolloutStatus.RUNNING, pause_reason=None)
                self.actions.append(Resumed(by))
                return None
            case OpenGate(by):
                if status is not RolloutStatus.RUNNING or self.rollout.gate_open:
                    return "no_gate_waiting"
                if self.definition.phases[self.rollout.phase].gate != MANUAL:
                    return "gate_is_a_delay"
                self._set(gate_open=True)
                self.actions.append(GateOpened(self.rollout.phase, by))
                return None
        return "unknown_event"  # pragma: no cover  # the match above is exhaustive

    def _report(self, report: Report, now: datetime) -> str | None:
        terminal, state = self.terminals.get(report.terminal_id), report.state
        if terminal is None or terminal.phase is None:
            return "terminal_not_notified"
        if report.attempt is not None and report.attempt != terminal.attempts:
            return f"stale_attempt_{report.attempt}_current_{terminal.attempts}"
        if state in _PLANNER_MOVES:
            return f"state_set_by_planner_{state.value}"
        if state not in TRANSITIONS[terminal.state]:
            return f"transition_not_allowed_{terminal.state.value}_to_{state.value}"
        self._settle(replace(terminal, state=state), now)
        return None

    def _settle(self, terminal: TerminalProgress, now: datetime) -> None:
        """Store ``terminal``; a retryable failure with attempts left is scheduled again."""
        if terminal.state in RETRYABLE and not self._final(terminal):
            used = terminal.attempts - terminal.round_start
            delay = self.definition.retry_backoff_s * 2 ** (used - 1)
            at = now + timedelta(seconds=min(delay, self.definition.retry_backoff_max_s))
            terminal = replace(terminal, state=_S.PENDING, retry_at=at)
            self.actions.append(RetryScheduled(terminal.terminal_id, terminal.attempts + 1, at))
        self.terminals[terminal.terminal_id] = terminal

    def _stop_open_terminals(self) -> None:
        """On cancel or abort: pending terminals are canceled, those not yet installing withdrawn."""
        for terminal in list(self.terminals.values()):
            if terminal.state is _S.PENDING:
                self.terminals[terminal.terminal_id] = replace(
                    terminal, state=_S.CANCELED, retry_at=None
                )
            elif terminal.state in _BEFORE_INSTALL:
                self.actions.append(Withdraw(terminal.terminal_id, self.definition.target))

    def _fresh_round_for_failures(self) -> None:
        for terminal in list(self.terminals.values()):
            if terminal.phase == self.rollout.phase and terminal.state in RETRYABLE:
                self.terminals[terminal.terminal_id] = replace(
                    terminal, state=_S.PENDING, round_start=terminal.attempts, retry_at=None
                )

    # the clock -----------------------------------------------------------------------------

    def tick(self, now: datetime) -> None:
        self._time_out(now)
        if self.rollout.status is not RolloutStatus.RUNNING:
            return
        while self.rollout.status is RolloutStatus.RUNNING:
            if not self._open_gate(now):
                return
            self._notify_due(now)
            if self._abort_if_over_threshold():
                return
            if not self._pass_phase(now):
                return

    def _time_out(self, now: datetime) -> None:
        timeout = timedelta(seconds=self.definition.terminal_timeout_s)
        for terminal in list(self.terminals.values()):
            notified_at = terminal.notified_at
            if terminal.state in IN_FLIGHT and notified_at and now >= notified_at + timeout:
                self.actions.append(MarkedTimedOut(terminal.terminal_id, terminal.attempts))
                self._settle(replace(terminal, state=_S.TIMED_OUT), now)

    def _open_gate(self, now: datetime) -> bool:
        """True when the current phase is open (a Delay gate opens here once its time came)."""
        if self.rollout.gate_open:
            return True
        opens_at = self.rollout.gate_opens_at
        if opens_at is None or now < opens_at:
            return False
        self._set(gate_open=True, gate_opens_at=None)
        self.actions.append(GateOpened(self.rollout.phase, by=None))
        return True

    def _notify_due(self, now: datetime) -> None:
        """Retries whose time came, then new terminals up to the phase's quota."""
        for terminal in list(self.terminals.values()):
            due = terminal.retry_at is None or now >= terminal.retry_at
            if terminal.phase is not None and terminal.state is _S.PENDING and due:
                self._notify(terminal, terminal.phase, now)
        admitted = sum(1 for t in self.terminals.values() if t.phase is not None)
        quota = phase_quota(self.definition, self.rollout.phase, len(self.terminals))
        for terminal in list(self.terminals.values()):
            if admitted >= quota:
                break
            if terminal.phase is None and terminal.state is _S.PENDING:
                self._notify(terminal, self.rollout.phase, now)
                admitted += 1

    def _notify(self, terminal: TerminalProgress, phase: int, now: datetime) -> None:
        attempt = terminal.attempts + 1
        self.terminals[terminal.terminal_id] = replace(
            terminal,
            state=_S.NOTIFIED,
            phase=phase,
            attempts=attempt,
            notified_at=now,
            retry_at=None,
        )
        self.actions.append(Notify(terminal.terminal_id, self.definition.target, attempt))

    def _abort_if_over_threshold(self) -> bool:
        decided = [t for t in self.terminals.values() if t.phase is not None and self._final(t)]
        failed = _in(decided, FAILURES)
        abort = self.definition.abort
        if len(decided) < abort.min_decided or failed / len(decided) <= abort.failure_ratio:
            return False
        self._set(status=RolloutStatus.ABORTED)
        self.actions.append(Aborted(failed, len(decided)))
        self._stop_open_terminals()
        return True

    def _pass_phase(self, now: datetime) -> bool:
        """Advance (or complete) when the current phase passed; True when a new phase opened."""
        phase = self.rollout.phase
        admitted = [t for t in self.terminals.values() if t.phase is not None]
        mine = [t for t in admitted if t.phase == phase]
        if not admitted or not all(self._final(t) for t in mine):
            return False
        succeeded = _in(mine, SUCCESSES)
        if mine and succeeded / len(mine) < self.definition.success_threshold:
            self._set(status=RolloutStatus.PAUSED, pause_reason=PauseReason.BELOW_SUCCESS_THRESHOLD)
            self.actions.append(Paused(PauseReason.BELOW_SUCCESS_THRESHOLD))
            return False
        if phase + 1 == len(self.definition.phases):
            self._set(status=RolloutStatus.COMPLETED)
            self.actions.append(Completed(_in(admitted, SUCCESSES), len(admitted)))
            return False
        gate = self.definition.phases[phase + 1].gate
        opens_at = None if gate == MANUAL else now + timedelta(seconds=_delay(gate))
        self._set(phase=phase + 1, gate_open=False, gate_opens_at=opens_at)
        self.actions.append(PhaseAdvanced(phase + 1, succeeded, len(mine)))
        return True


def _in(terminals: Iterable[TerminalProgress], states: frozenset[TerminalState]) -> int:
    """How many of ``terminals`` are in one of ``states`` (a phase's or the rollout's tally)."""
    return sum(1 for t in terminals if t.state in states)


def _delay(gate: Gate) -> float:
    return gate.seconds if isinstance(gate, Delay) else 0.0
