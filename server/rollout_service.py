"""Rollouts run: operator events and the scheduled tick go through the planner, its actions
are executed and audited.

``RolloutService`` owns the I/O the pure planner (``server.rollout_planner``) leaves out:

- ``create``: checks the target is a verified release of the TUF repository, stores a new
  rollout awaiting approval.
- ``apply(rollout_id, event)``: one operator event (approve, pause, resume, cancel, open gate)
  stepped through the planner and stored; a refused event raises ``RolloutConflictError`` (the
  API answers 409) and changes nothing.
- ``tick()``: the APScheduler job. For each unsettled rollout (active, or stopped while
  notified terminals still report): ``Selected`` (active ones only) (the terminals of
  the fleet state matching its selector: region, hall, model), one ``Report`` per terminal
  whose latest ``update_status`` row for this rollout changed since the planner saw it
  (when that latest state is no legal step from the planner's, the terminal sent several
  since the last tick: its statuses of this attempt are handed over in order),
  then the actions: ``Notify`` -> a directive signed with the directive key, published
  QoS 1 (not retained) on the terminal's ``cmd`` topic, its seq from
  ``RolloutStore.next_directive_seqs`` (always grows; one transaction per step, the release
  and key pin checked once per step). Every action is audited with actor
  ``system`` (a ``Refused`` one as ``failed``).

One lock serialises API events and the tick (one server process owns the rollouts), so a
step never works on a stale state. A ``Notify`` that cannot be published (broker down) is
logged and audited ``failed``; the terminal then times out and the planner retries it.
Never decides anything itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from sqlalchemy.engine import Engine

from protocol.directives import (
    Directive,
    DirectiveKeyPinError,
    DirectiveTarget,
    key_id_of,
    pinned_key_from_custom,
    sign_directive,
)
from protocol.topics import Channel, topic
from server.audit import AuditEntry, AuditResult, AuditSink
from server.errors import ConfigError, ServerError, StorageError
from server.fleet_state import FleetState
from server.fleet_views import TerminalFilter
from server.message_source import MessageSource
from server.rollout_planner import (
    TRANSITIONS,
    Action,
    Event,
    Notify,
    Refused,
    Report,
    Rollout,
    RolloutDefinition,
    Selected,
    TerminalProgress,
    TerminalState,
    new_rollout,
    step,
)
from server.rollout_store import ACTIVE, RolloutStore, StoredRollout
from server.tuf_repository import ReleaseView
from server.update_status_store import rollout_terminals, timeline

__all__ = [
    "DIRECTIVE_KEY_PIN",
    "SELECTOR_KEYS",
    "DirectiveSigner",
    "RolloutConflictError",
    "RolloutNotFoundError",
    "RolloutService",
    "Selector",
    "load_directive_signer",
]

log = logging.getLogger(__name__)

SELECTOR_KEYS: Final = ("region", "hall", "model")
DIRECTIVE_KEY_PIN: Final = "_pins/directive-key.pub"  # kioskfleet.update_repo.DIRECTIVE_KEY_TARGET
Selector = Mapping[str, str]
_MAX_DIRECTIVE_LIFETIME: Final = timedelta(hours=24)  # protocol.directives.DirectiveLimits
_PAGE: Final = 1000
_HISTORY: Final = 50  # statuses of one terminal read back when a tick missed some


class RolloutNotFoundError(ServerError, LookupError):
    """No rollout has this id."""


class RolloutConflictError(ServerError):
    """The planner refused the event (``reason``), or the rollout cannot be created."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DirectiveSigner:
    """The directive key (setting ``updates_directive_key_file``) and a directive's lifetime."""

    key: Ed25519PrivateKey
    lifetime: timedelta = _MAX_DIRECTIVE_LIFETIME


def load_directive_signer(path: Path | None) -> DirectiveSigner | None:
    """The directive key from ``path`` (PEM, Ed25519), None without one.

    Raises ConfigError when the file is unreadable or not an Ed25519 private key."""
    if path is None:
        return None
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"updates_directive_key_file {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"updates_directive_key_file {path}: not an Ed25519 private key")
    return DirectiveSigner(key)


@dataclass(frozen=True, slots=True)
class _Batch:
    """One step's Notify preconditions (``RolloutService._prepare``); ``refusal`` "" when met."""

    release: ReleaseView | None
    seqs: dict[str, int]
    refusal: str


class RolloutService:
    """Rollouts on ``store``; terminals from ``fleet``; statuses from ``engine()``."""

    def __init__(
        self,
        store: RolloutStore,
        *,
        fleet: FleetState,
        engine: Callable[[], Engine],
        source: Callable[[], MessageSource],
        releases: Callable[[], list[ReleaseView]],
        pin: Callable[[], Mapping[str, Any] | None],
        signer: DirectiveSigner | None,
        audit: AuditSink,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._fleet = fleet
        self._engine = engine
        self._source = source
        self._releases = releases
        self._pin = pin
        self._signer = signer
        self._audit = audit
        self._clock = clock
        self._lock = threading.Lock()

    # --- operator events ------------------------------------------------------------------

    def create(self, definition: RolloutDefinition, selector: Selector) -> Rollout:
        """Store a new rollout awaiting approval.

        Raises ValueError (invalid definition or selector), RolloutConflictError (target not a
        verified release, id taken), StorageError."""
        unknown = set(selector) - set(SELECTOR_KEYS)
        if unknown:
            raise ValueError(f"unknown selector keys: {sorted(unknown)}")
        rollout = new_rollout(definition)  # raises ValueError
        if self._release(definition.target) is None:
            raise RolloutConflictError(f"{definition.target!r} is not a verified release")
        with self._lock:
            if self._store.get(definition.rollout_id) is not None:
                raise RolloutConflictError(f"rollout {definition.rollout_id!r} exists")
            self._store.insert(rollout, dict(selector), now=self._clock())
        return rollout

    def apply(self, rollout_id: str, event: Event) -> Rollout:
        """Step ``event`` through the planner and store the result; execute its actions.

        Raises RolloutNotFoundError, RolloutConflictError (refused: nothing changed), StorageError."""
        with self._lock:
            stored = self._store.get(rollout_id)
            if stored is None:
                raise RolloutNotFoundError(rollout_id)
            now = self._clock()
            decision = step(stored.rollout, [event], now)
            refused = [a for a in decision.actions if isinstance(a, Refused)]
            if refused:
                raise RolloutConflictError(refused[0].reason)
            self._store.save(decision.rollout, wake_at=decision.wake_at, now=now)
            self._execute(decision.rollout, decision.actions, now)
            return decision.rollout

    def get(self, rollout_id: str) -> Rollout:
        """Raises RolloutNotFoundError, StorageError."""
        stored = self._store.get(rollout_id)
        if stored is None:
            raise RolloutNotFoundError(rollout_id)
        return stored.rollout

    def rollouts(self) -> list[StoredRollout]:
        """Rollouts newest first. Raises StorageError."""
        return self._store.list()

    # --- the scheduled job ----------------------------------------------------------------

    def tick(self) -> int:
        """Step every active rollout once; returns how many were stepped. A database error
        is logged and the next tick tries again; never raises."""
        try:
            active = self._store.list(unsettled_only=True)
        except StorageError as exc:
            log.warning("rollout tick skipped: %s", exc)
            return 0
        done = 0
        for stored in active:
            try:
                self._tick_one(stored.rollout.definition.rollout_id)
            except StorageError as exc:
                log.warning("rollout %s not stepped: %s", stored.rollout.definition.rollout_id, exc)
            else:
                done += 1
        return done

    def _tick_one(self, rollout_id: str) -> None:
        with self._lock:
            stored = self._store.get(rollout_id)
            if stored is None:
                return
            now = self._clock()
            events: list[Event] = []
            if stored.rollout.status in ACTIVE:  # a stopped rollout takes no joiners
                events.append(Selected(self._select(stored.selector)))
            events += self._reports(stored.rollout)
            decision = step(stored.rollout, events, now)
            self._store.save(decision.rollout, wake_at=decision.wake_at, now=now)
            self._execute(decision.rollout, decision.actions, now)

    def _select(self, selector: Selector) -> tuple[str, ...]:
        flt = TerminalFilter(region=selector.get("region"), hall=selector.get("hall"))
        model = selector.get("model")
        ids: list[str] = []
        cursor: str | None = None
        while True:
            page = self._fleet.query(flt, limit=_PAGE, cursor=cursor)
            ids += [t.id for t in page.items if model is None or t.model == model]
            cursor = page.next_cursor
            if cursor is None:
                return tuple(ids)

    def _reports(self, rollout: Rollout) -> list[Report]:
        """A Report for each terminal whose latest status differs from the planner's view."""
        known = {t.terminal_id: t for t in rollout.terminals}
        reports: list[Report] = []
        after: str | None = None
        while True:
            page = rollout_terminals(self._engine(), rollout.definition.rollout_id, _PAGE, after)
            for record in page.terminals:
                try:
                    state = TerminalState(record.state)
                except ValueError:
                    continue  # a state the planner does not track
                progress = known.get(record.terminal_id)
                if progress is None or progress.state == state:
                    continue
                if progress.notified_at is None or record.received_at < progress.notified_at:
                    continue  # from an earlier attempt: the planner already saw it
                if state in TRANSITIONS[progress.state]:
                    reports.append(Report(record.terminal_id, state))
                else:  # several statuses since the last tick: hand the planner each in turn
                    reports += self._missed(rollout, progress)
            after = page.next_after
            if after is None:
                return reports

    def _missed(self, rollout: Rollout, progress: TerminalProgress) -> list[Report]:
        """The terminal's statuses of this attempt after the planner's state, oldest first, each
        a legal step from the one before: the agent reports every state change, but a tick
        sees only the latest (downloading, then succeeded, is not one transition)."""
        assert progress.notified_at is not None  # checked by the caller
        history = timeline(self._engine(), progress.terminal_id, _HISTORY)
        reports: list[Report] = []
        current = progress.state
        for record in reversed(history):
            if record.rollout_id != rollout.definition.rollout_id:
                continue
            if record.received_at < progress.notified_at:
                continue
            try:
                state = TerminalState(record.state)
            except ValueError:
                continue
            if state in TRANSITIONS[current]:
                reports.append(Report(progress.terminal_id, state))
                current = state
        return reports

    # --- actions --------------------------------------------------------------------------

    def _execute(self, rollout: Rollout, actions: Iterable[Action], now: datetime) -> None:
        rollout_id = rollout.definition.rollout_id
        actions = list(actions)
        batch = self._prepare(rollout, [a for a in actions if isinstance(a, Notify)])
        for action in actions:
            result, detail = AuditResult.OK, {"action": type(action).__name__}
            target = rollout_id
            if isinstance(action, Notify):
                target = action.terminal_id
                detail["rollout"] = rollout_id
                detail["attempt"] = str(action.attempt)
                sent, why = self._notify(rollout, action, now, batch)
                if not sent:
                    result, detail["error"] = AuditResult.FAILED, why
                    log.warning("directive to %s not sent: %s", action.terminal_id, why)
            elif isinstance(action, Refused):
                result, detail["reason"] = AuditResult.FAILED, action.reason[:200]
            self._audit.record(
                AuditEntry(
                    at=now,
                    actor="system",
                    action=f"rollout.{type(action).__name__.lower()}",
                    result=result,
                    target=target,
                    detail=detail,
                )
            )

    def _release(self, path: str) -> ReleaseView | None:
        for release in self._releases():
            if release.path == path and release.status == "verified":
                return release
        return None

    def _prepare(self, rollout: Rollout, notifies: list[Notify]) -> _Batch:
        """What every Notify of one step shares, checked once: the release, the key pin and
        the terminals' next seqs (one transaction). Measured in ``bench/rollout.py``: per
        directive these were a signature check of the vendor roles and a commit."""
        if not notifies:
            return _Batch(None, {}, "nothing to send")
        if self._signer is None:
            return _Batch(None, {}, "no directive key (updates_directive_key_file)")
        release = self._release(rollout.definition.target)
        if release is None:
            return _Batch(None, {}, "target no longer a verified release")
        mismatch = self._pin_mismatch(self._signer.key)
        if mismatch:
            return _Batch(None, {}, mismatch)
        try:
            seqs = self._store.next_directive_seqs(a.terminal_id for a in notifies)
        except StorageError as exc:
            return _Batch(None, {}, str(exc)[:200])
        return _Batch(release, seqs, "")

    def _notify(
        self, rollout: Rollout, action: Notify, now: datetime, batch: _Batch
    ) -> tuple[bool, str]:
        release, seq = batch.release, batch.seqs.get(action.terminal_id)
        if self._signer is None or release is None or seq is None:
            return False, batch.refusal or "no directive seq"
        lifetime = min(
            self._signer.lifetime,
            timedelta(seconds=rollout.definition.terminal_timeout_s),
        )
        try:
            directive = self._directive(rollout, action, release, seq, now, lifetime)
        except ValidationError as exc:  # a terminal id or target the wire cannot carry
            return False, f"directive invalid: {exc.error_count()} errors"
        payload = sign_directive(directive, self._signer.key)
        if not self._source().publish(topic(action.terminal_id, Channel.CMD), payload):
            return False, "broker not connected"
        return True, ""

    def _pin_mismatch(self, key: Ed25519PrivateKey) -> str:
        """Why terminals would refuse directives signed by ``key`` ("" when they would not):
        its public key must be the one the operator pinned (``_pins/directive-key.pub``)."""
        custom = self._pin()
        if custom is None:
            return "no directive key pinned in the top-level targets"
        try:
            pinned = pinned_key_from_custom(custom)
        except DirectiveKeyPinError as exc:
            return f"directive key pin unusable: {exc}"
        if pinned.key_id != key_id_of(key.public_key()):
            return "updates_directive_key_file is not the pinned directive key"
        return ""

    @staticmethod
    def _directive(
        rollout: Rollout,
        action: Notify,
        release: ReleaseView,
        seq: int,
        now: datetime,
        lifetime: timedelta,
    ) -> Directive:
        return Directive(
            terminal_id=action.terminal_id,
            rollout_id=rollout.definition.rollout_id,
            seq=seq,
            target=DirectiveTarget(path=release.path, length=release.length, sha256=release.sha256),
            issued_at=now,
            expires_at=now + lifetime,
            not_before=now,
            not_after=now + lifetime,
        )
