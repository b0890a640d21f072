"""``kioskfleet report --hall H --week 2026-W48 [--format html|pdf] [--out FILE]``: the
weekly hall report (``server.hall_report``) read straight from the database, with no
server running (settings from ``KIOSKFLEET_*``; the database is migrated first), the
terminals in their stored halls as for ``kioskfleet analytics``. Writes FILE (through a
temporary file and ``os.replace``) or stdout. Returns process exit codes: 0 done, 1
failed, 2 unusable settings or arguments.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from server.analytics_cli import database_sources
from server.cli_database import CliDatabase, run_on_database
from server.console.i18n import load_catalogs
from server.errors import ReportRefusedError
from server.hall_report_service import HallReports, ReportFormat

__all__ = ["run_report_command"]

log = logging.getLogger(__name__)


def _write(out: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent or Path("."))
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # a report is not a secret: the usual mode, not 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_report_command(
    hall: str,
    week: str,
    *,
    fmt: str = ReportFormat.PDF.value,
    out: Path | None = None,
    language: str = "en",
    env_file: Path | None = None,
) -> int:
    """Render the report and write it to ``out`` (stdout without)."""

    def command(db: CliDatabase) -> int:
        reports = HallReports(database_sources(db.storage), db.storage, load_catalogs())
        try:
            data = reports.render(hall, week, ReportFormat(fmt), language)
        except ReportRefusedError as exc:
            log.error("report: %s", exc)
            return 2
        if out is None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            _write(out, data)
        log.info("report %s %s: %d bytes", hall, week, len(data))
        return 0

    return run_on_database(env_file, command, failed="report failed")
