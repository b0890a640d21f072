"""The install handler port and the one generic driver that runs any handler.

A handler installs one verified artifact so that the terminal can always go back::

    prepare(request)   put the release into the inactive slot (nothing running changes)
    activate()         make it the active one and restart the service
    health_check()     does the release work? -> HealthReport
    commit()           keep it                      (after a good health check)
    rollback()         go back to the previous slot and restart it
    recover()          on agent start: finish or roll back an install a power cut
                       interrupted -> InstallOutcome | None (None: nothing was under way)
    active_version()   the version running now, or None

Each step persists what it did before returning (the bundle handler: a JSON state
file moved with ``os.replace``), so ``recover()`` in a new process knows where the
previous one stopped. ``run_install(handler, request)`` is the only place the order
lives: prepare -> activate -> health_check -> commit or rollback; it reports
``SUCCEEDED`` only after a good health check. It catches ``InstallError`` and
``OSError`` (a handler's own failures); anything else (a crash) propagates and is
``recover()``'s job.

How other engines plug in (not built yet):

- ``deb``: prepare = fetch the ``.deb`` into a cache and keep the installed one's
  ``.deb`` (``dpkg-repack`` or the apt cache) as the fallback; activate =
  ``dpkg -i`` + restart; rollback = ``dpkg -i`` of the kept one; state as here.
  There is no inactive slot, so a power cut inside dpkg is finished by
  ``dpkg --configure -a`` in recover().
- RAUC / SWUpdate (OS images): prepare = ``rauc install`` (writes the inactive
  slot and marks it for the next boot), activate = reboot; after the reboot
  recover() sees state "active" and runs the health check; commit =
  ``rauc status mark-good``, rollback = ``rauc status mark-bad`` + reboot, and the
  bootloader's boot counter covers a release that never comes up.

Pure apart from what the handler does; imports no I/O library.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Protocol

from agent.install.commands import HealthReport
from agent.install.errors import ArchiveRefusedError, InstallError

__all__ = ["InstallHandler", "InstallOutcome", "InstallRequest", "InstallResult", "run_install"]

_log = logging.getLogger(__name__)


class InstallResult(enum.StrEnum):
    """How an install ended; the names are the architecture's per-terminal update states."""

    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"  # the artifact itself was refused (archive checks)
    FAILED = "failed"  # could not prepare; nothing was switched


@dataclass(frozen=True)
class InstallRequest:
    """One verified artifact to install, and what its signed manifest says about it."""

    artifact: str  # path of the verified file on local disk
    package: str
    version: str
    release_counter: int
    health_argv: tuple[str, ...]
    health_within_s: float
    required_peripherals: tuple[str, ...] = ()
    parameters: dict[str, str | bool | int] = field(default_factory=dict)


@dataclass(frozen=True)
class InstallOutcome:
    """What the updater reports: result, the version running now, and why (a reason code)."""

    result: InstallResult
    active_version: str | None
    reason: str
    detail: str


class InstallHandler(Protocol):
    """The port every install engine implements (see the module docstring)."""

    name: str

    def prepare(self, request: InstallRequest) -> None:
        """Put the release in the inactive slot. Raises InstallError (nothing switched)."""

    def activate(self) -> None:
        """Switch to the prepared release and restart. Raises InstallError (roll back)."""

    def health_check(self) -> HealthReport:
        """Whether the active release works; never raises for an unhealthy release."""

    def commit(self) -> InstallOutcome:
        """Keep the active release."""

    def rollback(self, reason: str, detail: str) -> InstallOutcome:
        """Return to the previous release and restart it."""

    def recover(self) -> InstallOutcome | None:
        """Finish or roll back an interrupted install; None when none was under way."""

    def active_version(self) -> str | None:
        """The version running now, None before the first install."""


def run_install(handler: InstallHandler, request: InstallRequest) -> InstallOutcome:
    """Install ``request`` with ``handler``: commit after a good health check, else roll back."""
    try:
        handler.prepare(request)
    except ArchiveRefusedError as exc:
        _log.warning("install of %s %s rejected: %s", request.package, request.version, exc)
        return InstallOutcome(
            InstallResult.REJECTED, handler.active_version(), exc.reason, str(exc)
        )
    except (InstallError, OSError) as exc:
        _log.warning("install of %s %s failed: %s", request.package, request.version, exc)
        return InstallOutcome(
            InstallResult.FAILED, handler.active_version(), "prepare_failed", str(exc)
        )
    try:
        handler.activate()
    except (InstallError, OSError) as exc:
        _log.warning("activating %s %s failed: %s", request.package, request.version, exc)
        return handler.rollback("activate_failed", str(exc))
    report = handler.health_check()
    if not report.ok:
        _log.warning("%s %s is not healthy: %s", request.package, request.version, report.detail)
        return handler.rollback("health_check_failed", report.detail)
    return handler.commit()
