"""Where the weekly hall report (``server.hall_report``) reads from and how it is asked
for: ``HallReports.render(hall, week, fmt, language)`` answers the HTML or PDF bytes. The
API route, the console download and ``kioskfleet report`` all go through it; the server's
renders pass its ``server.report_gate.RenderGate`` (at most 2 at once, the last kept).

The printers' transitions come from the ``transition`` table, joined to the terminals'
stored halls (a terminal's hall now, as for the analytics): those of printer kinds
(``protocol.taxonomy``, family printer) in the week, and each printer's last one before
the week (its state at the start). Raises StorageError from the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

import sqlalchemy as sa

from protocol.taxonomy import Family, kinds_of
from server.analytics_report import AnalyticsSources
from server.console.i18n import Catalog
from server.errors import ReportRefusedError
from server.hall_report import PaperTransition, hall_week, render_html
from server.report_gate import RenderGate
from server.storage import Storage, server_metadata

__all__ = ["MEDIA_TYPES", "HallReports", "ReportFormat", "printer_transitions"]

_PRINTER_KINDS: Final = sorted(k.value for k in kinds_of(Family.PRINTER))


class ReportFormat(StrEnum):
    HTML = "html"
    PDF = "pdf"


MEDIA_TYPES: Final = {
    ReportFormat.HTML: "text/html; charset=utf-8",
    ReportFormat.PDF: "application/pdf",
}


def printer_transitions(
    storage: Storage, hall: str, since: datetime, until: datetime
) -> list[PaperTransition]:
    """The hall's printers' transitions before ``until``: those from ``since`` on, and
    each printer's last one before ``since``. Raises StorageError."""
    meta = server_metadata()
    t, terminal = meta.tables["transition"], meta.tables["terminal"]
    in_hall = sa.select(terminal.c.id).where(terminal.c.hall == hall)
    printers = sa.and_(t.c.terminal_id.in_(in_hall), t.c.kind.in_(_PRINTER_KINDS))
    columns = (t.c.terminal_id, t.c.subject, t.c.to_state, t.c.occurred_at)
    week = sa.select(*columns).where(printers, t.c.occurred_at >= since, t.c.occurred_at < until)
    latest = (
        sa.select(t.c.terminal_id, t.c.subject, sa.func.max(t.c.occurred_at).label("at"))
        .where(printers, t.c.occurred_at < since)
        .group_by(t.c.terminal_id, t.c.subject)
        .subquery()
    )
    before = sa.select(*columns).join(
        latest,
        sa.and_(
            t.c.terminal_id == latest.c.terminal_id,
            t.c.subject == latest.c.subject,
            t.c.occurred_at == latest.c.at,
        ),
    )
    with storage.begin("read printer transitions") as conn:
        rows = [*conn.execute(before).all(), *conn.execute(week).all()]
    return [PaperTransition(tid, subject, state, at) for tid, subject, state, at in rows]


@dataclass(frozen=True, slots=True)
class HallReports:
    """Renders a hall's week from the analytics sources and the storage's transitions,
    through ``gate`` (the server's: bounded renders, the last one kept) if there is one."""

    sources: AnalyticsSources
    storage: Storage
    catalogs: Mapping[str, Catalog]
    gate: RenderGate | None = None  # None: unbounded (the one-shot ``kioskfleet report``)

    def render(self, hall: str, week: str, fmt: ReportFormat, language: str = "en") -> bytes:
        """The report's bytes. Raises ReportRefusedError for a bad week or an unknown
        language, ReportsBusyError when the gate is full, StorageError from the database."""
        if language not in self.catalogs:
            raise ReportRefusedError(f"no catalogue for language {language[:20]!r}")
        if self.gate is None:
            return self._render(hall, week, fmt, language)
        return self.gate.run(
            (hall, week, fmt, language), lambda: self._render(hall, week, fmt, language)
        )

    def _render(self, hall: str, week: str, fmt: ReportFormat, language: str) -> bytes:
        report = hall_week(
            self.sources,
            lambda h, since, until: printer_transitions(self.storage, h, since, until),
            hall,
            week,
        )
        html = render_html(report, self.catalogs[language], language)
        if fmt is ReportFormat.HTML:
            return html.encode("utf-8")
        from server.hall_report_pdf import render_pdf  # WeasyPrint only when a PDF is asked

        return render_pdf(html)
