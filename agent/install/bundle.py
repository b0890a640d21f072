"""The built-in ``bundle`` install handler: a tar archive into A/B slots with rollback.

Layout under ``BundleConfig.root`` (created by the first install)::

    slot-a/  slot-b/        the two slots; the service runs what ``current`` points at
    slot-a.json slot-b.json what each slot holds (package, version, release_counter),
                            written only after the slot is completely unpacked
    current -> slot-a       the active slot: a relative symlink switched atomically
                            (new link at ``.current.tmp``, then ``os.replace``)
    install.json            the install under way: its ``step`` and both slots

Steps, each written to ``install.json`` (temp file, fsync, ``os.replace``) before
the action it names, and what ``recover()`` does when a power cut stops there:

    preparing    wipe + unpack the inactive slot  -> aborted (current untouched)
    prepared     slot complete                     -> aborted (current untouched)
    activating   switch ``current``, restart       -> roll back (switch back, restart)
    active       health check running              -> roll back
    healthy      health check passed                -> committed
    rolling_back switch back, restart               -> roll back again (idempotent)
    committed / rolled_back / aborted               final; recover() returns None

Design choice: an install interrupted after the switch is rolled back, never
re-checked. The previous slot is known good; a release that crashes the kiosk
while its health check runs would otherwise be re-tried on every boot. The
updater may try again later (the rollout's retries). Rejected: re-running the
health check in recover() (the loop above); marking slots in a bootloader
(that is RAUC's job, see agent/install/handler.py).

Rules it keeps: the active slot is never written; a slot's ``.json`` exists only
for a complete slot; the archive is checked before one byte is written
(agent/install/safe_tar.py). On the first install there is no previous slot: a
rollback then removes ``current`` (the terminal had no application before).
Interface: ``BundleHandler(config, *, peripherals_answer=None, on_step=None)``
implements ``InstallHandler``; ``on_step(step)`` is called after each state write
(tests raise from it to cut the power there).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent.install.commands import HealthReport, PeripheralCheck, run_restart, wait_healthy
from agent.install.errors import InstallStateError, RestartError
from agent.install.handler import InstallOutcome, InstallRequest, InstallResult
from agent.install.safe_tar import ArchiveLimits, unpack_into

__all__ = [
    "SLOTS",
    "STEPS",
    "BundleConfig",
    "BundleHandler",
    "read_active_slot",
    "switch_current",
    "write_json",
]

_log = logging.getLogger(__name__)

SLOTS: Final = ("slot-a", "slot-b")
STEPS: Final = (
    "preparing",
    "prepared",
    "activating",
    "active",
    "healthy",
    "rolling_back",
    "committed",
    "rolled_back",
    "aborted",
)
_FINAL: Final = ("committed", "rolled_back", "aborted")
_STATE_VERSION: Final = 1


@dataclass(frozen=True)
class BundleConfig:
    """Where the slots live, how the service restarts, and the caps on an archive."""

    root: Path
    restart_argv: tuple[str, ...]
    restart_timeout_s: float = 60.0
    health_interval_s: float = 1.0
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to a temporary file, fsync, ``os.replace`` onto ``path``, fsync."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_active_slot(root: Path) -> str | None:
    """The slot ``root/current`` points at, None if there is no link. Raises InstallStateError."""
    current = root / "current"
    try:
        target = os.readlink(current)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InstallStateError(str(current), f"not a symlink: {exc}") from None
    if target not in SLOTS:
        raise InstallStateError(str(current), f"points at {target!r}")
    return target


def switch_current(root: Path, slot: str | None) -> None:
    """Point ``root/current`` at ``slot`` atomically (remove the link for None), fsync ``root``."""
    current = root / "current"
    if slot is None:
        current.unlink(missing_ok=True)
    else:
        tmp = root / ".current.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(slot, tmp)
        os.replace(tmp, current)
    fsync_dir(root)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BundleHandler:
    """``InstallHandler`` for tar bundles in A/B slots (see the module docstring)."""

    name = "bundle"

    def __init__(
        self,
        config: BundleConfig,
        *,
        peripherals_answer: PeripheralCheck | None = None,
        on_step: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        self._root = config.root
        self._peripherals_answer = peripherals_answer
        self._on_step = on_step
        self._request: InstallRequest | None = None

    # -- layout ------------------------------------------------------------

    @property
    def _state_file(self) -> Path:
        return self._root / "install.json"

    def active_slot(self) -> str | None:
        """The slot ``current`` points at, None before the first install."""
        return read_active_slot(self._root)

    def slot_release(self, slot: str) -> dict[str, Any] | None:
        """What a complete slot holds (package, version, release_counter), None if incomplete."""
        try:
            data = json.loads((self._root / f"{slot}.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InstallStateError(f"{slot}.json", str(exc)) from None
        if not isinstance(data, dict) or not isinstance(data.get("version"), str):
            raise InstallStateError(f"{slot}.json", "holds no version")
        return data

    def active_version(self) -> str | None:
        slot = self.active_slot()
        release = self.slot_release(slot) if slot else None
        return str(release["version"]) if release else None

    def _state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self._state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InstallStateError(str(self._state_file), str(exc)) from None
        if not isinstance(data, dict) or data.get("step") not in STEPS:
            raise InstallStateError(str(self._state_file), "no known step")
        # recover() wipes to_slot: a state file naming another directory is refused
        if data.get("to_slot") not in SLOTS or data.get("from_slot") not in (*SLOTS, None):
            raise InstallStateError(str(self._state_file), "names no slot of this layout")
        if data["to_slot"] == data["from_slot"]:
            raise InstallStateError(str(self._state_file), "installs into the active slot")
        return data

    def _step(self, step: str, **fields: Any) -> dict[str, Any]:
        state = {} if step == "preparing" else (self._state() or {})
        state.update(fields, step=step, schema_version=_STATE_VERSION)
        write_json(self._state_file, state)
        _log.info("install step %s (%s -> %s)", step, state.get("from_slot"), state.get("to_slot"))
        if self._on_step is not None:
            self._on_step(step)
        return state

    def _switch(self, slot: str | None) -> None:
        switch_current(self._root, slot)

    # -- the steps ---------------------------------------------------------

    def prepare(self, request: InstallRequest) -> None:
        """Unpack into the inactive slot. Raises ArchiveRefusedError or OSError (slot wiped)."""
        self._root.mkdir(parents=True, exist_ok=True)
        state = self._state()
        if state is not None and state["step"] not in _FINAL:
            raise InstallStateError(str(self._state_file), "an install is under way: recover()")
        active = self.active_slot()
        target = SLOTS[1] if active == SLOTS[0] else SLOTS[0]
        self._request = request
        (self._root / f"{target}.json").unlink(missing_ok=True)
        self._step(
            "preparing",
            package=request.package,
            version=request.version,
            release_counter=request.release_counter,
            from_slot=active,
            to_slot=target,
            from_version=self.active_version(),
            health_argv=list(request.health_argv),
            health_within_s=request.health_within_s,
            required_peripherals=list(request.required_peripherals),
            reason="",
            detail="",
        )
        slot = self._root / target
        try:
            shutil.rmtree(slot, ignore_errors=True)
            slot.mkdir()
            count = unpack_into(Path(request.artifact), slot, self._config.limits)
        except BaseException as exc:
            if isinstance(exc, Exception):
                shutil.rmtree(slot, ignore_errors=True)
                self._step(
                    "aborted", reason=getattr(exc, "reason", "prepare_failed"), detail=str(exc)
                )
            raise
        write_json(
            self._root / f"{target}.json",
            {
                "package": request.package,
                "version": request.version,
                "release_counter": request.release_counter,
            },
        )
        self._step("prepared", members=count)

    def activate(self) -> None:
        """Switch ``current`` to the prepared slot and restart. Raises RestartError."""
        state = self._require("prepared")
        self._step("activating")
        self._switch(state["to_slot"])
        run_restart(self._config.restart_argv, self._config.restart_timeout_s)
        self._step("active")

    def health_check(self) -> HealthReport:
        """Run the release's health command (and the peripheral hook); record a pass."""
        state = self._require("active")
        report = wait_healthy(
            state["health_argv"],
            float(state["health_within_s"]),
            interval_s=self._config.health_interval_s,
            required_peripherals=state["required_peripherals"],
            peripherals_answer=self._peripherals_answer,
        )
        if report.ok:
            self._step("healthy", detail=report.detail)
        return report

    def commit(self) -> InstallOutcome:
        """Keep the checked release."""
        state = self._require("healthy")
        self._step("committed", reason="healthy")
        return InstallOutcome(InstallResult.SUCCEEDED, state["version"], "healthy", state["detail"])

    def rollback(self, reason: str, detail: str) -> InstallOutcome:
        """Point ``current`` back at the previous slot and restart it (idempotent)."""
        state = self._state()
        if state is None:
            raise InstallStateError(str(self._state_file), "nothing to roll back")
        self._step("rolling_back", reason=reason, detail=detail)
        self._switch(state["from_slot"])
        try:
            run_restart(self._config.restart_argv, self._config.restart_timeout_s)
        except RestartError as exc:
            # The previous slot is active either way; the restart failure is reported.
            _log.error("restart after rollback failed: %s", exc)
            detail = f"{detail}; restart after rollback failed: {exc.reason}"
        self._step("rolled_back", detail=detail)
        return InstallOutcome(InstallResult.ROLLED_BACK, state["from_version"], reason, detail)

    def recover(self) -> InstallOutcome | None:
        """Finish (healthy -> committed) or undo an install a crash interrupted."""
        state = self._state()
        if state is None or state["step"] in _FINAL:
            return None
        step = state["step"]
        _log.warning("recovering an install interrupted at step %s", step)
        if step in ("preparing", "prepared"):
            shutil.rmtree(self._root / state["to_slot"], ignore_errors=True)
            (self._root / f"{state['to_slot']}.json").unlink(missing_ok=True)
            detail = f"interrupted at {step}; the active slot was never changed"
            self._step("aborted", reason="interrupted", detail=detail)
            return InstallOutcome(
                InstallResult.FAILED, self.active_version(), "interrupted", detail
            )
        if step == "healthy":
            return self.commit()
        reason = state["reason"] if step == "rolling_back" else "interrupted"
        detail = state["detail"] if step == "rolling_back" else f"interrupted at {step}"
        return self.rollback(reason, detail)

    def _require(self, step: str) -> dict[str, Any]:
        state = self._state()
        if state is None or state["step"] != step:
            found = state["step"] if state else None
            raise InstallStateError(str(self._state_file), f"expected step {step}, found {found}")
        return state
