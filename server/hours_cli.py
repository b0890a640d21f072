"""``kioskfleet hall hours set HALL --file hours.json`` and ``hall hours show HALL``: a hall's
opening hours straight on the database.

Works from the ``KIOSKFLEET_*`` settings like ``kioskfleet token`` (the database is
migrated first), with no server running. ``set`` validates the file as
``server.opening_hours.OpeningHours`` (bounded: at most ``MAX_FILE_BYTES``) and is
audited with actor ``cli:<os user>``, action ``hall.hours.set``, refusals too. ``show``
prints the stored hours as JSON on stdout. Returns process exit codes: 0 done, 1
refused or failed, 2 unusable settings.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypeVar

from pydantic import BaseModel, ValidationError

from server.access_store import DatabaseAudit
from server.audit import AuditEntry, AuditResult
from server.cli_database import CliDatabase, cli_actor, run_on_database
from server.errors import TooManyHallsError
from server.opening_hours import OpeningHours
from server.opening_hours_store import OpeningHoursStore

__all__ = ["MAX_FILE_BYTES", "read_model_file", "run_hours_command"]

log = logging.getLogger(__name__)

MAX_FILE_BYTES: Final = 256 * 1024
_M = TypeVar("_M", bound=BaseModel)


def read_model_file(path: Path, model: type[_M]) -> _M:
    """The ``model`` in JSON file ``path`` (at most ``MAX_FILE_BYTES``). Raises OSError,
    ValueError with the reason (too big, not JSON, invalid)."""
    with path.open("rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"{path}: {reasons}") from None


def _set(store: OpeningHoursStore, audit: DatabaseAudit, hall: str, path: Path) -> int:
    actor = cli_actor()

    def entry(result: AuditResult, detail: dict[str, str]) -> AuditEntry:
        return AuditEntry(
            at=datetime.now(UTC),
            actor=actor,
            action="hall.hours.set",
            result=result,
            target=hall,
            detail=detail,
        )

    if not 1 <= len(hall) <= 64:
        log.error("a hall name has 1 to 64 characters")
        audit.record(entry(AuditResult.FAILED, {"why": "bad_hall"}))
        return 1
    try:
        hours = read_model_file(path, OpeningHours)
    except (OSError, ValueError) as exc:
        log.error("opening hours refused: %s", exc)
        audit.record(entry(AuditResult.FAILED, {"why": "invalid_hours"}))
        return 1
    try:
        store.put(hall, hours, actor=actor, now=datetime.now(UTC))
    except TooManyHallsError as exc:
        log.error("opening hours refused: %s", exc)
        audit.record(entry(AuditResult.FAILED, {"why": "too_many_halls"}))
        return 1
    audit.record(entry(AuditResult.OK, {"timezone": hours.timezone}))
    sys.stderr.write(f"set the opening hours of {hall!r}\n")
    return 0


def _show(store: OpeningHoursStore, hall: str) -> int:
    found = store.get(hall)
    if found is None:
        log.error("hall %r has no opening hours", hall)
        return 1
    document = {
        "hall": found.hall,
        "hours": found.hours.model_dump(mode="json"),
        "updated_at": found.updated_at.isoformat(),
        "updated_by": found.updated_by,
    }
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    return 0


def run_hours_command(
    command: str, hall: str, file: Path | None = None, env_file: Path | None = None
) -> int:
    """Run ``set`` (needs ``file``) or ``show`` for ``hall``."""

    def run(db: CliDatabase) -> int:
        store = OpeningHoursStore(db.storage, max_halls=db.settings.opening_hours_max_halls)
        if command == "show":
            return _show(store, hall)
        if file is None:
            log.error("hall hours set needs --file")
            return 2
        return _set(store, db.audit, hall, file)

    return run_on_database(env_file, run, failed=f"hall hours {command} failed")
