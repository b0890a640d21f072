"""``kioskfleet service set --file catalogue.json`` and ``service list``: the service
catalogue straight on the database.

Works from the ``KIOSKFLEET_*`` settings like ``kioskfleet hall hours`` (the database is
migrated first), with no server running; a running server reads the catalogue at its
start (changes through ``PUT /api/v1/services`` apply at once). ``set`` validates the
file as ``server.service_catalogue.Catalogue`` (bounded: ``hours_cli.MAX_FILE_BYTES``),
replaces the catalogue whole and is audited with actor ``cli:<os user>``, action
``service.catalogue.set``, refusals too. ``list`` prints it as JSON on stdout. Returns
process exit codes: 0 done, 1 refused or failed, 2 unusable settings.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from server.access_store import AccessStore, DatabaseAudit
from server.audit import AuditEntry, AuditResult
from server.cli_database import cli_actor
from server.config import Settings
from server.errors import ConfigError, ServerError
from server.hours_cli import read_model_file
from server.main import storage_for
from server.service_catalogue import Catalogue
from server.service_store import ServiceStore

__all__ = ["run_service_command"]

log = logging.getLogger(__name__)


def _set(store: ServiceStore, audit: DatabaseAudit, path: Path) -> int:
    actor = cli_actor()

    def entry(result: AuditResult, detail: dict[str, str]) -> AuditEntry:
        return AuditEntry(
            at=datetime.now(UTC),
            actor=actor,
            action="service.catalogue.set",
            result=result,
            target="services",
            detail=detail,
        )

    try:
        catalogue = read_model_file(path, Catalogue)
    except (OSError, ValueError) as exc:
        log.error("service catalogue refused: %s", exc)
        audit.record(entry(AuditResult.FAILED, {"why": "invalid_catalogue"}))
        return 1
    store.put(catalogue, actor=actor, now=datetime.now(UTC))
    audit.record(entry(AuditResult.OK, {"services": str(len(catalogue.services))}))
    sys.stderr.write(f"set the service catalogue: {len(catalogue.services)} services\n")
    return 0


def run_service_command(
    command: str, file: Path | None = None, env_file: Path | None = None
) -> int:
    """Run ``set`` (needs ``file``) or ``list``."""
    try:
        settings = Settings.from_env(env_file)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    storage = storage_for(settings)
    try:
        storage.open()
        store = ServiceStore(storage)
        if command == "list":
            sys.stdout.write(store.load().model_dump_json(indent=2) + "\n")
            return 0
        if file is None:
            log.error("service set needs --file")
            return 2
        return _set(store, DatabaseAudit(AccessStore(storage), CollectorRegistry()), file)
    except ServerError as exc:
        log.error("service %s failed: %s", command, exc)
        return 1
    finally:
        storage.close()
