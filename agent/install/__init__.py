"""Installing verified releases: the handler port, the ``bundle`` handler, A/B slots, rollback.

Modules: ``handler`` (the ``InstallHandler`` port, ``InstallRequest``,
``InstallOutcome``, the ``run_install`` driver), ``bundle`` (``BundleHandler``:
tar into the inactive slot, atomic ``current`` switch, restart, health check,
commit or rollback, ``recover()`` after a power cut), ``safe_tar`` (the archive
checks), ``commands`` (restart and health commands), ``errors``. Nothing here
verifies signatures: the updater hands a handler only an artifact TUF verified.
See docs/agent.md, "Installing: handlers, A/B slots, rollback".
"""

from agent.install.bundle import BundleConfig, BundleHandler
from agent.install.commands import HealthReport
from agent.install.errors import ArchiveRefusedError, InstallError, InstallStateError, RestartError
from agent.install.handler import (
    InstallHandler,
    InstallOutcome,
    InstallRequest,
    InstallResult,
    run_install,
)
from agent.install.safe_tar import ArchiveLimits

__all__ = [
    "ArchiveLimits",
    "ArchiveRefusedError",
    "BundleConfig",
    "BundleHandler",
    "HealthReport",
    "InstallError",
    "InstallHandler",
    "InstallOutcome",
    "InstallRequest",
    "InstallResult",
    "InstallStateError",
    "RestartError",
    "run_install",
]
