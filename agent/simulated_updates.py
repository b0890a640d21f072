"""Simulated terminals that take updates through the real agent update path.

With ``SimulationOptions.updates_server_url`` (``kioskfleet simulate --updates-server``)
every simulated terminal gets the production ``agent.update_service.UpdateService``:
the real python-tuf ``Updater`` against the server's repository (a new one per
directive), real directive verification against the key the operator pinned, and
the real ``bundle`` handler unpacking the vendor's tar archive into the terminal's
own slots (``<work_dir>/<id>/slots``: ``slot-a``, ``slot-b``, the ``current``
symlink switched atomically). The restart command is a real process (``true`` by
default); the health check is the release's own command, run for real.

The simulated kiosk application is the real ``KioskInterface`` on one Unix socket
per terminal (in a short temporary directory: AF_UNIX paths are limited to 108
bytes), with no citizen session: nothing holds an install off.

Planted failures: ``planted_failure(index, fraction)`` picks, for terminal index
``i`` (1-based, the ``N`` of ``PREFIX-0000N``), a failure exactly when
``floor(i * f)`` grows at ``i``, so any first ``k`` terminals hold exactly
``floor(k * f)`` failures (0.3 over 20 terminals: indices 4, 7, 10, 14, 17, 20).
A planted terminal's health check fails without running the release's command
("the simulated kiosk application did not come up"), and the real bundle handler
rolls back. Design choice: a deterministic spread, not dice per id, so a rollout's
phases (which take terminals in id order) fail in exact, testable numbers.
Rejected: a failing restart command (that is ``activate_failed``, not the health
check the rollout's threshold is about) and hash-chosen ids (exact only on average).

Cost per terminal: one listening socket and two threads (the updater's worker and
the kiosk socket's acceptor), so ``SimulationOptions.check`` caps updating terminals
per process at ``MAX_UPDATING_TERMINALS``.

Never: verify, download or install anything itself (the Updater and the handler do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.config import UpdatesConfig
from agent.install import BundleHandler, HealthReport, InstallOutcome, InstallRequest

__all__ = [
    "MAX_UPDATING_TERMINALS",
    "PLANTED_DETAIL",
    "PlantedHealthFailure",
    "TerminalPaths",
    "planted_failure",
    "terminal_paths",
    "terminal_updates_config",
    "wrapper_for",
]

MAX_UPDATING_TERMINALS: Final = 1000
PLANTED_DETAIL: Final = "planted failure: the simulated kiosk application did not come up"


def planted_failure(index: int, fraction: float) -> bool:
    """Whether terminal ``index`` (1-based) fails its health check (see the module docstring)."""
    if fraction <= 0:
        return False
    return math.floor(index * fraction) > math.floor((index - 1) * fraction)


class PlantedHealthFailure:
    """An ``InstallHandler`` around the bundle handler whose health check always fails."""

    def __init__(self, inner: BundleHandler) -> None:
        self._inner = inner
        self.name = inner.name

    def prepare(self, request: InstallRequest) -> None:
        self._inner.prepare(request)

    def activate(self) -> None:
        self._inner.activate()

    def health_check(self) -> HealthReport:
        return HealthReport(False, PLANTED_DETAIL)

    def commit(self) -> InstallOutcome:
        return self._inner.commit()

    def rollback(self, reason: str, detail: str) -> InstallOutcome:
        return self._inner.rollback(reason, detail)

    def recover(self) -> InstallOutcome | None:
        return self._inner.recover()

    def active_version(self) -> str | None:
        return self._inner.active_version()


def wrapper_for(index: int, fraction: float) -> type[PlantedHealthFailure] | None:
    """The handler wrapper terminal ``index`` installs with (None: the bundle handler as is)."""
    return PlantedHealthFailure if planted_failure(index, fraction) else None


@dataclass(frozen=True)
class TerminalPaths:
    """Where one simulated terminal keeps its updater's files, slots and kiosk socket."""

    work_dir: Path
    slots: Path
    kiosk_socket: Path


def terminal_paths(work_dir: Path, socket_dir: Path, terminal_id: str) -> TerminalPaths:
    home = work_dir / terminal_id
    return TerminalPaths(home / "updates", home / "slots", socket_dir / f"{terminal_id}.sock")


def terminal_updates_config(
    server_url: str,
    trusted_root: Path,
    paths: TerminalPaths,
    *,
    poll_s: float = 1.0,
    health_interval_s: float = 0.2,
) -> UpdatesConfig:
    """The ``[updates]`` of one simulated terminal: restart ``true``, its own directories."""
    return UpdatesConfig(
        enabled=True,
        server_url=server_url,
        allow_http=server_url.startswith("http://"),
        trusted_root=trusted_root,
        work_dir=paths.work_dir,
        slots_root=paths.slots,
        restart_command=["true"],
        restart_timeout_s=30.0,
        health_interval_s=health_interval_s,
        poll_s=poll_s,
        kiosk_socket=paths.kiosk_socket,
    )
