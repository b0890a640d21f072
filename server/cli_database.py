"""What the commands working straight on the database share (``kioskfleet token``, ``hall
hours``, ``terminal``): read the ``KIOSKFLEET_*`` settings, open (and migrate) their
database, hand the command the storage and the audit sink its changes go to, close.

``run_on_database`` returns the process exit code the commands agree on: the command's
own, 2 for unusable settings, 1 when the server's code raised (``ServerError``), with a
one-line reason through ``report``. ``cli_actor`` is how the audit log names the person.
Never prints a secret; never catches anything but ``ServerError``.
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from server.access_store import AccessStore, DatabaseAudit
from server.config import Settings
from server.errors import ConfigError, ServerError
from server.main import storage_for
from server.storage import Storage

__all__ = ["CliDatabase", "cli_actor", "run_on_database"]

log = logging.getLogger(__name__)


def cli_actor() -> str:
    """``cli:<os user>``: how the audit log names a person at the command line."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    return f"cli:{user}"


@dataclass(frozen=True, slots=True)
class CliDatabase:
    """An open database as a command gets it: the settings, the storage, the audit sink."""

    settings: Settings
    storage: Storage
    audit: DatabaseAudit


def run_on_database(
    env_file: Path | None,
    command: Callable[[CliDatabase], int],
    *,
    failed: str,
    report: Callable[[str], None] = log.error,
    needs: Callable[[Settings], str | None] = lambda _settings: None,
) -> int:
    """Run ``command`` on the database of the settings (``env_file`` and the environment);
    its exit code. 2 when the settings do not load or ``needs`` names what they lack, 1
    when a ``ServerError`` is raised (reported as ``failed: <error>``)."""
    try:
        settings = Settings.from_env(env_file)
    except ConfigError as exc:
        report(str(exc))
        return 2
    missing = needs(settings)
    if missing is not None:
        report(missing)
        return 2
    storage = storage_for(settings)
    try:
        storage.open()
        audit = DatabaseAudit(AccessStore(storage), CollectorRegistry())
        return command(CliDatabase(settings, storage, audit))
    except ServerError as exc:
        report(f"{failed}: {exc}")
        return 1
    finally:
        storage.close()
