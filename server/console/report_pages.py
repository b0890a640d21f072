"""The console's weekly hall report download (viewer and up):
``GET /console/halls/{hall}/report?week=2026-W48&format=pdf|html``, the hall page's link.
Without ``week``, the ISO week before today's (by the server's UTC date; the week itself
is the hall's, in its time zone: ``server.hall_report.parse_week``). The report is the API's
(``server.hall_report_api.report_download``), its headings in the console user's language;
it shares the API's render limit (429 with ``Retry-After`` beyond it, an error page).
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the handlers' annotations.
from datetime import datetime, timedelta
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from server.access import Role
from server.console.web import (
    CONSOLE_PREFIX,
    ConsoleUser,
    _console,
    _language,
    _unavailable,
    console_role,
)
from server.errors import ConsoleError, ReportRefusedError, ReportsBusyError, StorageError

__all__ = ["last_week", "report_router"]


def last_week(now: datetime) -> str:
    """The ISO week before ``now``'s, as ``YYYY-Www``."""
    year, week, _day = (now - timedelta(days=7)).isocalendar()
    return f"{year}-W{week:02d}"


def report_router() -> APIRouter:
    router = APIRouter()
    viewer = Annotated[ConsoleUser, Depends(console_role(Role.VIEWER))]

    @router.get(f"{CONSOLE_PREFIX}/halls/{{hall}}/report", name="console.hall_report")
    async def hall_report(
        request: Request,
        who: viewer,
        hall: Annotated[str, Path(max_length=64)],
        week: Annotated[str | None, Query(pattern=r"^\d{4}-W\d{2}$")] = None,
        format: Annotated[str, Query(pattern=r"^(pdf|html)$")] = "pdf",
    ) -> Response:
        from server.hall_report_api import report_download, retry_after  # WeasyPrint: if asked
        from server.hall_report_service import ReportFormat

        services = _console(request).services
        if services.reports is None:
            raise ConsoleError(404, "not_found", "this server renders no reports")
        reports = services.reports
        language = _language(request, who.user)
        chosen = week or last_week(services.clock())
        try:
            return await anyio.to_thread.run_sync(
                lambda: report_download(reports, hall, chosen, ReportFormat(format), language)
            )
        except ReportRefusedError as exc:
            raise ConsoleError(422, "invalid_request", str(exc)) from None
        except ReportsBusyError as exc:
            raise ConsoleError(429, "busy", str(exc), headers=retry_after(exc)) from None
        except StorageError as exc:
            raise _unavailable(exc) from None

    return router
