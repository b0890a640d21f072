"""Agent self-update: the agent's own A/B slots and the trial state it shares with the launcher.

Layout under the agent's slot root (``[updates] agent_slots_root``, the launcher's ``--root``),
separate from the kiosk application's slots::

    slot-a/ slot-b/          agent releases; each holds an executable ``run`` (its entry point)
    slot-a.json slot-b.json  what a complete slot holds (package, version, release_counter)
    current -> slot-a        the agent the launcher starts (none: the OS package's agent)
    trial.json               the self-update under way or last finished (``Trial``)
    confirm.json             written by the agent on trial once it is up: ``{trial_id}``
    reported.json            written by an agent once it queued the trial's final status

The outbox, the config, the identity and the updater's state live outside this root: a
switch of slot changes only the code.

Who writes what: the running agent writes ``trial.json`` only to stage (``stage``: the
slot is complete, step ``staged``) and only while no trial is open; from then on only
the launcher (agent/launcher.py) moves it: ``trial`` (``current`` switched, new agent
started), then ``committed`` after the agent confirmed, or ``rolling_back`` ->
``rolled_back``. The agent writes ``confirm.json`` and ``reported.json``. Every write is
a temporary file, fsync, ``os.replace``. ``finish_report`` is what an agent reports for
a finished trial (``succeeded`` for committed, ``rolled_back`` otherwise), once.

Never: write the active slot, or touch the outbox or the updater's state.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from agent.install.bundle import SLOTS, read_active_slot, switch_current, write_json
from agent.install.errors import InstallError
from agent.install.handler import InstallRequest
from agent.install.safe_tar import ArchiveLimits, unpack_into
from protocol.update_status import UpdateBody, UpdateReason, UpdateState

__all__ = [
    "AGENT_HANDLER",
    "ENTRY_POINT",
    "TRIAL_STEPS",
    "AgentSlots",
    "AgentSlotsError",
    "Trial",
    "finish_report",
]

AGENT_HANDLER: Final = "agent"
"""The manifest ``install.handler`` of an agent release."""
ENTRY_POINT: Final = "run"
"""The executable at the top of an agent release that the launcher starts."""
TRIAL_STEPS: Final = ("staged", "trial", "rolling_back", "committed", "rolled_back")
FINAL_STEPS: Final = ("committed", "rolled_back")
_VERSION: Final = 1


class AgentSlotsError(InstallError):
    """The agent's slots or trial files are unreadable, or a release cannot be staged;
    ``path``, ``reason``."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"agent slots {path}: {reason}")


@dataclass(frozen=True)
class Trial:
    """One agent self-update: which slot to which, what release, which directive."""

    trial_id: str
    step: str
    from_slot: str | None
    to_slot: str
    package: str
    version: str
    release_counter: int
    rollout_id: str | None = None
    directive_seq: int = 0
    target: str | None = None
    detail: str = ""

    @property
    def final(self) -> bool:
        return self.step in FINAL_STEPS

    def at(self, step: str, detail: str | None = None) -> Trial:
        """This trial at ``step`` (``detail`` kept unless given)."""
        if step not in TRIAL_STEPS:
            raise ValueError(f"unknown trial step {step!r}")
        return replace(self, step=step, detail=self.detail if detail is None else detail)


def _trial_from(data: Any) -> Trial | None:
    if not isinstance(data, dict) or data.pop("schema_version", None) != _VERSION:
        return None
    try:
        trial = Trial(**data)
    except TypeError:
        return None
    valid = (
        trial.step in TRIAL_STEPS
        and trial.to_slot in SLOTS
        and trial.from_slot in (*SLOTS, None)
        and trial.from_slot != trial.to_slot
        and isinstance(trial.trial_id, str)
        and type(trial.release_counter) is int
        and type(trial.directive_seq) is int
    )
    return trial if valid else None


def finish_report(trial: Trial) -> UpdateBody:
    """The final ``kf.update`` status of a finished trial (committed or rolled back)."""
    if trial.step == "committed":
        state, reason = UpdateState.SUCCEEDED, None
        detail = f"agent {trial.version} confirmed and committed"
    else:
        state, reason = UpdateState.ROLLED_BACK, UpdateReason("health_check_failed")
        detail = f"agent {trial.version} rolled back: {trial.detail}"
    return UpdateBody(
        rollout_id=trial.rollout_id,
        directive_seq=trial.directive_seq,
        target=trial.target,
        state=state,
        reason=reason,
        detail=detail[:256],
    )


class AgentSlots:
    """The files under the agent's slot root (see the module docstring)."""

    def __init__(self, root: Path, limits: ArchiveLimits | None = None) -> None:
        self.root = root
        self._limits = limits or ArchiveLimits()

    @property
    def trial_file(self) -> Path:
        return self.root / "trial.json"

    def _read(self, name: str) -> Any:
        path = self.root / name
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise AgentSlotsError(path, str(exc)) from None

    def load(self) -> Trial | None:
        """The trial in ``trial.json`` (None if there is none). Raises AgentSlotsError."""
        data = self._read("trial.json")
        if data is None:
            return None
        trial = _trial_from(data)
        if trial is None:
            raise AgentSlotsError(self.trial_file, "not a trial state of version 1")
        return trial

    def save(self, trial: Trial) -> None:
        """Write ``trial.json`` atomically."""
        write_json(self.trial_file, {"schema_version": _VERSION, **asdict(trial)})

    def active_slot(self) -> str | None:
        """The slot ``current`` points at, None if none. Raises InstallStateError."""
        return read_active_slot(self.root)

    def switch(self, slot: str | None) -> None:
        """Point ``current`` at ``slot`` (remove it for None), atomically."""
        switch_current(self.root, slot)

    def entry_point(self, slot: str) -> Path:
        return self.root / slot / ENTRY_POINT

    def _marked(self, name: str, trial: Trial) -> bool:
        data = self._read(name)
        return isinstance(data, dict) and data.get("trial_id") == trial.trial_id

    def confirm(self, trial: Trial) -> None:
        """The agent on trial is up: write ``confirm.json`` for this trial."""
        write_json(self.root / "confirm.json", {"trial_id": trial.trial_id})

    def confirmed(self, trial: Trial) -> bool:
        return self._marked("confirm.json", trial)

    def mark_reported(self, trial: Trial) -> None:
        write_json(self.root / "reported.json", {"trial_id": trial.trial_id})

    def reported(self, trial: Trial) -> bool:
        return self._marked("reported.json", trial)

    def stage(
        self,
        request: InstallRequest,
        *,
        rollout_id: str | None,
        directive_seq: int,
        target: str | None,
    ) -> Trial:
        """Unpack ``request.artifact`` into the inactive slot and write the ``staged`` trial.

        Raises ArchiveRefusedError (nothing written), AgentSlotsError (a trial is open, no
        executable ``run``, unreadable files) or OSError; on either of the last two the
        inactive slot is wiped and ``trial.json`` is not changed.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        open_trial = self.load()
        if open_trial is not None and not open_trial.final:
            raise AgentSlotsError(self.trial_file, f"a trial is open (step {open_trial.step})")
        active = self.active_slot()
        to_slot = SLOTS[1] if active == SLOTS[0] else SLOTS[0]
        slot = self.root / to_slot
        (self.root / f"{to_slot}.json").unlink(missing_ok=True)
        shutil.rmtree(slot, ignore_errors=True)
        slot.mkdir()
        try:
            unpack_into(Path(request.artifact), slot, self._limits)
            entry = slot / ENTRY_POINT
            if not entry.is_file() or entry.is_symlink() or not os.access(entry, os.X_OK):
                raise AgentSlotsError(entry, f"the release has no executable {ENTRY_POINT!r}")
        except BaseException:
            shutil.rmtree(slot, ignore_errors=True)
            raise
        write_json(
            self.root / f"{to_slot}.json",
            {
                "package": request.package,
                "version": request.version,
                "release_counter": request.release_counter,
            },
        )
        trial = Trial(
            trial_id=uuid.uuid4().hex,
            step="staged",
            from_slot=active,
            to_slot=to_slot,
            package=request.package,
            version=request.version,
            release_counter=request.release_counter,
            rollout_id=rollout_id,
            directive_seq=directive_seq,
            target=target,
        )
        self.save(trial)
        return trial
