"""The updater wired into the running agent: recovery, the kiosk socket, one worker thread.

``UpdateService.from_config(config, send=..., clock=...)`` builds, from ``[updates]``:
the ``BundleHandler`` on ``slots_root``, the ``InstallGate`` and its ``KioskInterface``
(Unix socket for the kiosk application's sessions), and ``agent.updater.Updater`` with
the terminal's trusted root. ``start()`` first runs ``BundleHandler.recover()`` (an
install a power cut interrupted is finished or rolled back, and that outcome reported;
then ``Updater.reconcile()`` records the counter of a release the recovery committed),
then binds the kiosk socket and starts the single worker thread. ``submit(payload)``
(called by the MQTT connection for each message on the terminal's ``cmd`` topic, in the
loop's thread) only queues the bytes; the worker runs ``Updater.handle`` on them one at
a time, so a long wait for the install window never blocks the MQTT session. Each
status goes to ``send(UpdateBody)``; the runtime hands it to the loop thread, where the
agent wraps it in a ``kf.update`` envelope on the durable outbox stream (it survives a
restart and reaches the server like the reports). ``software()`` is what the reports
carry: ``{package: version}`` of the active slot, so every (re)connect's first report
re-states what is installed.

With ``agent_slots_root`` set, ``start()`` also handles the agent's own trial
(agent/self_update.py, agent/launcher.py): a finished trial is reported once
(``succeeded`` and its counter recorded, or ``rolled_back``); an agent on trial confirms
from a thread once ``is_up()`` (its MQTT session) and reports ``succeeded`` when the
launcher has committed it.

Design choice: one worker, a bounded queue (``max_queued_directives``); a directive
beyond it is dropped with a warning and counted (``stats.dropped``); the server's
rollout retries it. Rejected: a thread per directive (two installs would race for
the slots; the gate allows one install, but the downloads and the state file would
still interleave) and running the updater in the loop thread (a download or a
health check would stall keepalives).

Never: verify or install anything itself (that is the Updater's job), or let an
exception from one directive end the worker.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from pydantic import TypeAdapter, ValidationError

from agent.clock import Clock
from agent.config import AgentConfig, UpdatesConfig
from agent.errors import AgentError
from agent.install import BundleConfig, BundleHandler
from agent.install.errors import InstallStateError
from agent.install.handler import InstallHandler
from agent.install_gate import InstallGate
from agent.kiosk_interface import KioskInterface, KioskInterfaceConfig, KioskSocketError
from agent.self_update import AgentSlots, AgentSlotsError, Trial, finish_report
from agent.updater import Updater, UpdaterConfig, UpdaterStateError, outcome_ending
from protocol.codec import cmd_schema
from protocol.messages import Name, Version
from protocol.update_status import UpdateBody
from protocol.usage import UsageBody

__all__ = ["UpdateService", "UpdateServiceError", "UpdateServiceStats", "recovery_report"]

_log = logging.getLogger(__name__)

_STOP: Final = b""  # the worker's stop sentinel (an empty cmd payload is never queued)
_SOFTWARE: Final = TypeAdapter(dict[Name, Version])

Send = Callable[[UpdateBody], None]


def recovery_report(handler: BundleHandler) -> UpdateBody | None:
    """Finish or roll back an install a crash interrupted; the status that reports it (None:
    nothing was under way, or the slots cannot be read, which is logged)."""
    try:
        outcome = handler.recover()
    except InstallStateError as exc:
        _log.error("cannot recover the slots: %s", exc)
        return None
    if outcome is None:
        return None
    ending = outcome_ending(outcome)
    _log.warning("recovered an interrupted install: %s (%s)", ending.state, ending.detail)
    return UpdateBody(
        directive_seq=0, state=ending.state, reason=ending.reason, detail=ending.detail
    )


class UpdateServiceError(AgentError):
    """The updater cannot be set up (the trusted root is unreadable); ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"updates: {reason}")


@dataclass
class UpdateServiceStats:
    received: int = 0
    dropped: int = 0
    handled: int = 0
    crashed: int = 0


def _closed_hall(_now: datetime) -> bool:
    # The agent does not know its hall's opening hours: the server puts the hall's closed
    # window into the directive (server/install_window.py); that window and the kiosk's
    # sessions (the gate) decide alone.
    return False


class UpdateService:
    """The updater's runtime: see the module docstring."""

    def __init__(
        self,
        updater: Updater,
        handler: BundleHandler,
        kiosk: KioskInterface,
        send: Send,
        *,
        max_queued: int,
        stopping: threading.Event | None = None,
        agent_slots: AgentSlots | None = None,
        is_up: Callable[[], bool] = lambda: True,
    ) -> None:
        """``stopping`` is set by ``stop``: no directive starts after it. ``agent_slots``:
        the agent's own slots; an agent on trial confirms once ``is_up()`` (connected)."""
        self._agent_slots = agent_slots
        self._is_up = is_up
        self._updater = updater
        self._handler = handler
        self._kiosk = kiosk
        self._send = send
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=max_queued + 1)  # +1: the stop
        self._max_queued = max_queued
        self._stopping = stopping or threading.Event()
        self._thread = threading.Thread(target=self._work, name="kioskfleet-updater", daemon=True)
        self.stats = UpdateServiceStats()

    @classmethod
    def from_config(
        cls,
        config: AgentConfig,
        *,
        send: Send,
        clock: Clock,
        restart_agent: Callable[[], None] | None = None,
        is_up: Callable[[], bool] = lambda: True,
        wrap_handler: Callable[[BundleHandler], InstallHandler] | None = None,
        on_transaction: Callable[[UsageBody], bool] | None = None,
    ) -> UpdateService:
        """Build from ``config.updates``. Raises UpdateServiceError (unreadable trusted root).

        ``restart_agent`` stops this agent after it staged a release of itself (the launcher
        then starts the new one); ``is_up`` says when an agent on trial may confirm.
        ``wrap_handler`` (the fleet simulator's planted failures, agent/simulated_updates.py)
        wraps the bundle handler the updater installs with; recovery and ``software()``
        still read the bundle handler itself. ``on_transaction`` gets the kiosk socket's
        citizen transactions (``kf.usage``; None: they are answered ``not_recording``)."""
        spec: UpdatesConfig = config.updates
        try:
            trusted_root = spec.trusted_root.read_bytes()
        except OSError as exc:
            raise UpdateServiceError(f"trusted root {spec.trusted_root}: {exc}") from None
        handler = BundleHandler(
            BundleConfig(
                root=spec.slots_root,
                restart_argv=tuple(spec.restart_command),
                restart_timeout_s=spec.restart_timeout_s,
                health_interval_s=spec.health_interval_s,
            )
        )
        gate = InstallGate(clock)
        kiosk = KioskInterface(
            gate,
            KioskInterfaceConfig(path=spec.kiosk_socket, group=spec.kiosk_socket_group),
            on_transaction,
        )
        stopping = threading.Event()
        agent_slots = AgentSlots(spec.agent_slots_root) if spec.agent_slots_root else None
        updater = Updater(
            UpdaterConfig(
                terminal_id=config.terminal_id,
                terminal_model=config.model,
                agent_version=config.agent_version,
                metadata_base_url=spec.metadata_url,
                target_base_url=spec.targets_url,
                trusted_root=trusted_root,
                work_dir=spec.work_dir,
                state_file=spec.work_dir / "updater-state.json",
                poll_s=spec.poll_s,
            ),
            handlers={"bundle": wrap_handler(handler) if wrap_handler else handler},
            gate=gate,
            hall_open=_closed_hall,
            report=send,
            clock=clock,
            agent_slots=agent_slots,
            restart_agent=restart_agent,
        )
        return cls(
            updater,
            handler,
            kiosk,
            send,
            max_queued=spec.max_queued_directives,
            stopping=stopping,
            agent_slots=agent_slots,
            is_up=is_up,
        )

    def kiosk_counters(self) -> dict[str, int]:
        """The kiosk socket's counters (``KioskInterface.counters``)."""
        return self._kiosk.counters()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Recover an interrupted install (and report it), open the kiosk socket, start the
        worker. If the socket cannot be bound, updates stay off (logged): without it the
        kiosk could not hold off an install during a citizen's session."""
        recovered = recovery_report(self._handler)
        if recovered is not None:
            self._send(recovered)
        try:
            self._updater.reconcile()
        except (AgentError, OSError) as exc:  # handle() fails closed on the same file
            _log.error("cannot reconcile the updater state: %s", exc)
        self._agent_trial_at_start()
        try:
            self._kiosk.start()
        except KioskSocketError as exc:  # fail closed: no install without the kiosk's say
            _log.error("%s; updates are off until the agent restarts", exc)
            self._stopping.set()
            return
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker and close the kiosk socket. A directive still running (a wait for
        its window) is left to the daemon thread after ``timeout``; its seq is stored, and
        the rollout's retry sends a new directive after the restart."""
        self._stopping.set()
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                _log.warning("the updater is still busy with a directive; leaving it")
        self._kiosk.close()

    # -- what the connection and the agent call ----------------------------------------

    def submit(self, payload: bytes) -> None:
        """Queue one ``cmd`` message for the worker; drop it (counted, logged) when full.

        A payload claiming ``kf.withdraw`` is not queued behind the directive in hand: it
        goes to ``Updater.post_withdrawal``, which verifies it before it counts."""
        self.stats.received += 1
        if not payload or self._stopping.is_set():
            self.stats.dropped += 1
            return
        if cmd_schema(payload) == "kf.withdraw":
            self._updater.post_withdrawal(payload)
            return
        if self._queue.qsize() >= self._max_queued:
            self.stats.dropped += 1
            _log.warning("updater busy: %d directive(s) queued, one dropped", self._max_queued)
            return
        self._queue.put_nowait(payload)

    def software(self) -> dict[str, str]:
        """``{package: version}`` of the active slot (empty if none or unreadable)."""
        try:
            slot = self._handler.active_slot()
            release = self._handler.slot_release(slot) if slot else None
            if not release:
                return {}
            return _SOFTWARE.validate_python({release["package"]: release["version"]})
        except (InstallStateError, OSError, KeyError, TypeError, ValidationError) as exc:
            _log.warning("installed software unknown: %s", exc)
            return {}

    # -- the agent's own trial (agent/self_update.py, agent/launcher.py) ----------------

    def _agent_trial_at_start(self) -> None:
        """Report a finished trial once; on trial, confirm from a thread once up."""
        slots = self._agent_slots
        if slots is None:
            return
        try:
            trial = slots.load()
        except AgentSlotsError as exc:
            _log.error("cannot read the agent's trial: %s", exc)
            return
        if trial is not None and trial.final:
            self._report_trial(slots, trial)
        elif trial is not None and trial.step == "trial":
            threading.Thread(
                target=self._confirm_trial,
                args=(slots, trial),
                name="kioskfleet-agent-trial",
                daemon=True,
            ).start()

    def _report_trial(self, slots: AgentSlots, trial: Trial) -> None:
        try:
            if slots.reported(trial):
                return
            if trial.step == "committed":
                self._updater.record_installed(trial.package, trial.release_counter)
            self._send(finish_report(trial))
            slots.mark_reported(trial)
        except (AgentSlotsError, UpdaterStateError, OSError) as exc:
            _log.error("cannot report the agent's trial %s: %s", trial.trial_id, exc)

    def _confirm_trial(self, slots: AgentSlots, trial: Trial) -> None:
        """Bounded by the launcher: it stops this agent when the trial's time is up."""
        while not self._is_up():
            if self._stopping.wait(0.1):
                return
        try:
            slots.confirm(trial)
            _log.info("agent trial %s: up, confirmed", trial.trial_id)
            while not self._stopping.wait(0.1):
                now = slots.load()
                if now is None or now.trial_id != trial.trial_id:
                    return
                if now.final:
                    self._report_trial(slots, now)
                    return
        except (AgentSlotsError, OSError) as exc:
            _log.error("agent trial %s: %s", trial.trial_id, exc)

    # -- the worker --------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            payload = self._queue.get()
            if payload == _STOP or self._stopping.is_set():
                return
            try:
                self._updater.handle(payload)
                self.stats.handled += 1
            except Exception:  # noqa: BLE001 -- a handler crash: logged, the next directive still runs
                self.stats.crashed += 1
                _log.exception("the updater crashed on a directive")
