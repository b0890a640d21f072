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
  the fleet state matching its selector, ``selects``), one ``Report`` per terminal
  whose latest ``update_status`` row for this rollout changed since the planner saw it,
  then the actions: ``Notify`` -> a directive signed with the directive key, published
  QoS 1 (not retained) on the terminal's ``cmd`` topic, its seq from
  ``RolloutStore.next_directive_seqs`` (always grows; one transaction per step, the
  release and key pin checked once per step), its attempt the planner's, its install
  window from the terminal's hall hours (``server.install_window``); ``Withdraw`` -> a
  signed ``kf.withdraw`` on the same topic, its seq from the same counter. Every action is
  audited with actor ``system`` (a ``Refused`` one as ``failed``).

A status that echoes its directive's attempt is reported with it (the planner refuses an
earlier attempt's); one without (an older agent) is reported only when received after the
current attempt's notification.

One lock serialises API events and the tick (one server process owns the rollouts), so a
step never works on a stale state. A ``Notify`` that cannot be published (broker down) is
logged and audited ``failed``; the terminal then times out and the planner retries it.
Every stored step is also noted on the ``RolloutBoard`` (``server.rollout_metrics``): the
rollout gauges at scrape time, without a database read; the first tick seeds it with the
rollouts a previous process left. Never decides anything itself.
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
    Withdrawal,
    key_id_of,
    pinned_key_from_custom,
    sign_directive,
    sign_withdrawal,
)
from protocol.topics import Channel, topic
from server.audit import AuditEntry, AuditResult, AuditSink
from server.errors import ConfigError, FencedOffError, ServerError, StorageError
from server.fleet_state import FleetState
from server.fleet_views import TerminalFilter, TerminalView
from server.install_window import InstallWindow, NoWindow, install_window
from server.message_source import MessageSource
from server.opening_hours import OpeningHours
from server.rollout_metrics import RolloutBoard, progressed
from server.rollout_planner import (
    Action,
    Decision,
    Event,
    Notify,
    Refused,
    Report,
    Rollout,
    RolloutDefinition,
    Selected,
    TerminalState,
    Withdraw,
    new_rollout,
    step,
    unseen_path,
)
from server.rollout_store import ACTIVE, RolloutStore, StoredRollout
from server.tuf_repository import ReleaseView
from server.update_status_store import rollout_terminals

__all__ = [
    "DIRECTIVE_KEY_PIN",
    "SELECTOR_KEYS",
    "DirectiveSigner",
    "RolloutConflictError",
    "RolloutNotFoundError",
    "RolloutService",
    "Selector",
    "load_directive_signer",
    "release_package",
    "selects",
]

log = logging.getLogger(__name__)

SELECTOR_KEYS: Final = ("region", "hall", "model", "tags", "current_version")
DIRECTIVE_KEY_PIN: Final = "_pins/directive-key.pub"  # kioskfleet.update_repo.DIRECTIVE_KEY_TARGET
Selector = Mapping[str, str | list[str]]
"""Every key given must match: ``region``, ``hall``, ``model`` and ``current_version`` a
string, ``tags`` a list (all of them present)."""
_MAX_DIRECTIVE_LIFETIME: Final = timedelta(hours=24)  # protocol.directives.DirectiveLimits
_PAGE: Final = 1000
_SEED_RECENT: Final = 50  # newest rollouts read at the first tick: the recently settled are
# among them (the gauges show at most 20 settled ones); each decodes its whole planner state


def selects(
    selector: Selector, terminal: TerminalView, tags: frozenset[str], package: str | None
) -> bool:
    """Whether ``selector`` selects ``terminal`` (its operator ``tags`` given apart, from the
    registry): each key given must match. ``current_version`` matches the version of
    ``package`` (the rollout's release's) the terminal reports now; with no package known,
    or a terminal that does not report it, it matches nothing. Pure."""
    for key in ("region", "hall", "model"):
        want = selector.get(key)
        if want is not None and getattr(terminal, key) != want:
            return False
    wanted_tags = selector.get("tags")
    if wanted_tags is not None and not set(wanted_tags) <= tags:
        return False
    version = selector.get("current_version")
    if version is None:
        return True
    return package is not None and terminal.software.get(package) == version


def release_package(release: ReleaseView | None) -> str | None:
    """The package a release installs (its manifest's ``package``); None without one."""
    if release is None or release.manifest is None:
        return None
    package = release.manifest.get("package")
    return package if isinstance(package, str) else None


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
        hours: Callable[[str], OpeningHours | None] = lambda _hall: None,
        board: RolloutBoard | None = None,
        tags: Callable[[str], frozenset[str]] = lambda _id: frozenset(),
    ) -> None:
        """``hours(hall)``: the hall's opening hours, None if none are set (may raise
        StorageError: that directive is then not sent, audited ``failed``). ``tags(id)``:
        a terminal's operator tags (``TerminalRegistry.tags``, from memory). ``board``
        receives every step for the rollout gauges (``server.rollout_metrics``); without one
        the service keeps its own, registered nowhere."""
        self._store = store
        self._fleet = fleet
        self._engine = engine
        self._source = source
        self._releases = releases
        self._pin = pin
        self._signer = signer
        self._audit = audit
        self._clock = clock
        self._hours = hours
        self._tags = tags
        self._lock = threading.Lock()
        self._board = board if board is not None else RolloutBoard()
        self._board_loaded = False

    @property
    def board(self) -> RolloutBoard:
        """Where the rollout gauges come from (register it on a registry)."""
        return self._board

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
            now = self._clock()
            self._store.insert(rollout, dict(selector), now=now)
            self._board.note(rollout, now=now, progressed=True)
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
            if not self._save(decision, [event], now, read_at=stored.updated_at):
                raise RolloutConflictError("the rollout changed meanwhile; try again")
            return decision.rollout

    def get(self, rollout_id: str) -> Rollout:
        """Raises RolloutNotFoundError, StorageError."""
        return self.stored(rollout_id).rollout

    def stored(self, rollout_id: str) -> StoredRollout:
        """The rollout with its selector and bookkeeping. Raises RolloutNotFoundError,
        StorageError."""
        stored = self._store.get(rollout_id)
        if stored is None:
            raise RolloutNotFoundError(rollout_id)
        return stored

    def rollouts(self) -> list[StoredRollout]:
        """Rollouts newest first. Raises StorageError."""
        return self._store.list()

    # --- the scheduled job ----------------------------------------------------------------

    def tick(self) -> int:
        """Step every active rollout once; returns how many were stepped. A database error
        is logged and the next tick tries again; never raises."""
        try:
            active = self._store.list(unsettled_only=True)
            if not self._board_loaded:  # the rollouts a previous process left, for the gauges
                recent = self._store.list(limit=_SEED_RECENT)
                self._board.load(
                    [(s.rollout, s.updated_at) for s in [*active, *recent]], now=self._clock()
                )
                self._board_loaded = True
        except StorageError as exc:
            log.warning("rollout tick skipped: %s", exc)
            return 0
        done = 0
        for stored in active:
            try:
                self._tick_one(stored.rollout.definition.rollout_id)
            except FencedOffError:  # another replica holds the job lease: it steps them now
                return done
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
                target = stored.rollout.definition.target
                events.append(Selected(self.matching(stored.selector, target)))
            events += self._reports(stored.rollout)
            decision = step(stored.rollout, events, now)
            if not self._save(decision, events, now, read_at=stored.updated_at):
                log.info("rollout %s changed meanwhile: stepped at the next tick", rollout_id)

    def _save(
        self, decision: Decision, events: list[Event], now: datetime, *, read_at: datetime
    ) -> bool:
        """Store the step, show it on the board, then execute its actions; nothing of it
        when the row moved since ``read_at`` (a step by another replica: the API's events
        run on the replica that receives them, the tick on the job lease's holder). In the
        tick the save is also fenced by the job lease (``server.lease_fence``, in the save's
        transaction): a holder whose lease was taken over meanwhile raises FencedOffError
        and executes nothing."""
        if not self._store.save(
            decision.rollout, wake_at=decision.wake_at, now=now, read_at=read_at
        ):
            return False
        self._board.note(decision.rollout, now=now, progressed=progressed(events, decision.actions))
        self._execute(decision.rollout, decision.actions, now)
        return True

    def matching(self, selector: Selector, target: str | None = None) -> tuple[str, ...]:
        """The terminals of the fleet state ``selector`` (``selects``) matches now, in the
        fleet's order, for a rollout of release ``target`` (its package is what
        ``current_version`` compares): what the next tick selects (the console's preview
        counts them). Reads no database (the releases are the repository's, in memory)."""
        region, hall = selector.get("region"), selector.get("hall")
        flt = TerminalFilter(
            region=region if isinstance(region, str) else None,
            hall=hall if isinstance(hall, str) else None,
        )
        package = None
        if "current_version" in selector and target is not None:
            package = release_package(self._release(target))
        ids: list[str] = []
        cursor: str | None = None
        while True:
            page = self._fleet.query(flt, limit=_PAGE, cursor=cursor)
            ids += [t.id for t in page.items if selects(selector, t, self._tags(t.id), package)]
            cursor = page.next_cursor
            if cursor is None:
                return tuple(ids)

    def _reports(self, rollout: Rollout) -> list[Report]:
        """Reports for each terminal whose latest status differs from the planner's view: the
        path to it through the states this tick did not see (``unseen_path``)."""
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
                if progress is None or progress.state == state or progress.notified_at is None:
                    continue
                if record.attempt is not None:
                    if record.attempt < progress.attempts:
                        continue  # an earlier attempt's: seen, or superseded by the retry
                elif record.received_at < progress.notified_at:
                    continue  # no attempt (an older agent): received before this attempt
                # states reported between two ticks are replayed in the table's order
                path = unseen_path(progress.state, state) or (state,)
                reports += [Report(record.terminal_id, s, record.attempt) for s in path]
            after = page.next_after
            if after is None:
                return reports

    # --- actions --------------------------------------------------------------------------

    def _execute(self, rollout: Rollout, actions: Iterable[Action], now: datetime) -> None:
        rollout_id = rollout.definition.rollout_id
        hours: dict[str, OpeningHours | None] = {}  # per hall, read once per step
        actions = list(actions)
        batch = self._prepare(rollout, [a for a in actions if isinstance(a, Notify)])
        for action in actions:
            result, detail = AuditResult.OK, {"action": type(action).__name__}
            target = rollout_id
            if isinstance(action, Notify):
                target = action.terminal_id
                detail["rollout"] = rollout_id
                detail["attempt"] = str(action.attempt)
                sent, why = self._notify(rollout, action, now, hours, batch)
                if not sent:
                    result, detail["error"] = AuditResult.FAILED, why
                    log.warning("directive to %s not sent: %s", action.terminal_id, why)
            elif isinstance(action, Withdraw):
                target, detail["rollout"] = action.terminal_id, rollout_id
                sent, why = self._withdraw(rollout, action, now)
                if not sent:
                    result, detail["error"] = AuditResult.FAILED, why
                    log.warning("withdrawal to %s not sent: %s", action.terminal_id, why)
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
        directive these were a signature check of the vendor roles and a commit. A seq taken
        for a directive that is then not sent (no window) is skipped: seqs only must grow."""
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
        self,
        rollout: Rollout,
        action: Notify,
        now: datetime,
        hours: dict[str, OpeningHours | None],
        batch: _Batch,
    ) -> tuple[bool, str]:
        release, seq = batch.release, batch.seqs.get(action.terminal_id)
        if self._signer is None or release is None or seq is None:
            return False, batch.refusal or "no directive seq"
        try:
            window = self._window(rollout, action.terminal_id, now, hours)
        except StorageError as exc:
            return False, str(exc)[:200]
        if isinstance(window, NoWindow):
            return False, window.reason[:200]
        try:
            directive = self._directive(rollout, action, release, seq, now, window)
        except ValidationError as exc:  # a terminal id or target the wire cannot carry
            return False, f"directive invalid: {exc.error_count()} errors"
        payload = sign_directive(directive, self._signer.key)
        if not self._source().publish(topic(action.terminal_id, Channel.CMD), payload):
            return False, "broker not connected"
        return True, ""

    def _lifetime(self, rollout: Rollout) -> timedelta:
        assert self._signer is not None  # callers checked
        timeout = timedelta(seconds=rollout.definition.terminal_timeout_s)
        return min(self._signer.lifetime, timeout)

    def _window(
        self,
        rollout: Rollout,
        terminal_id: str,
        now: datetime,
        hours: dict[str, OpeningHours | None],
    ) -> InstallWindow | NoWindow:
        """The install window for ``terminal_id``'s hall (its hours cached in ``hours``).
        Raises StorageError."""
        view = self._fleet.get(terminal_id)
        hall = None if view is None else view.hall
        if hall is not None and hall not in hours:
            hours[hall] = self._hours(hall)
        return install_window(
            None if hall is None else hours[hall],
            now,
            lifetime=self._lifetime(rollout),
            install_while_open=rollout.definition.install_while_open,
        )

    def _withdraw(self, rollout: Rollout, action: Withdraw, now: datetime) -> tuple[bool, str]:
        if self._signer is None:
            return False, "no directive key (updates_directive_key_file)"
        try:
            seq = self._store.next_directive_seq(action.terminal_id)
        except StorageError as exc:
            return False, str(exc)[:200]
        try:
            withdrawal = Withdrawal(
                terminal_id=action.terminal_id,
                rollout_id=rollout.definition.rollout_id,
                seq=seq,
                target=action.target,
                issued_at=now,
                expires_at=now + self._lifetime(rollout),
            )
        except ValidationError as exc:
            return False, f"withdrawal invalid: {exc.error_count()} errors"
        payload = sign_withdrawal(withdrawal, self._signer.key)
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
        window: InstallWindow,
    ) -> Directive:
        return Directive(
            terminal_id=action.terminal_id,
            rollout_id=rollout.definition.rollout_id,
            seq=seq,
            attempt=action.attempt,
            target=DirectiveTarget(path=release.path, length=release.length, sha256=release.sha256),
            issued_at=now,
            expires_at=window.expires_at,
            not_before=window.not_before,
            not_after=window.not_after,
            install_while_open=window.install_while_open,
        )
