"""``GET /api/v1/analytics/report?hall=&week=&format=html|pdf&language=`` (viewer and up):
the weekly hall report (``server.hall_report``, docs/analytics.md) as a download, PDF by
default. A week that is no ISO week is 422; one render more than the process allows at
once (``server.report_gate``) 429 with ``Retry-After``; a storage failure 503. Never
changes anything.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the handlers' annotations.
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from server.access import Role
from server.access_api import require
from server.errors import ApiError, ReportRefusedError, ReportsBusyError, StorageError
from server.hall_report_service import MEDIA_TYPES, HallReports, ReportFormat

__all__ = ["hall_report_router", "report_download", "retry_after"]


def retry_after(exc: ReportsBusyError) -> dict[str, str]:
    """The headers of a busy refusal: when to ask again."""
    return {"Retry-After": str(exc.retry_after_s)}


def report_download(
    reports: HallReports, hall: str, week: str, fmt: ReportFormat, language: str
) -> Response:
    """The report as an attachment. Raises ReportRefusedError, StorageError."""
    body = reports.render(hall, week, fmt, language)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"hall-report-{hall}-{week}.{fmt.value}")
    return Response(
        body,
        media_type=MEDIA_TYPES[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )


_Hall = Annotated[str, Query(min_length=1, max_length=64)]
_Week = Annotated[str, Query(pattern=r"^\d{4}-W\d{2}$", description="ISO week, 2026-W48")]


def hall_report_router(reports: HallReports) -> APIRouter:
    """The route above over ``reports``."""
    router = APIRouter(
        prefix="/api/v1/analytics",
        tags=["analytics"],
        dependencies=[Depends(require(Role.VIEWER))],
    )

    @router.get(
        "/report",
        response_class=Response,
        responses={200: {"content": {"application/pdf": {}, "text/html": {}}}},
        summary="A hall's weekly report with charts, as PDF or HTML",
    )
    def report(
        hall: _Hall,
        week: _Week,
        format: ReportFormat = ReportFormat.PDF,
        language: Annotated[str, Query(pattern=r"^(en|zh_CN)$")] = "en",
    ) -> Response:
        try:
            return report_download(reports, hall, week, format, language)
        except ReportRefusedError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        except ReportsBusyError as exc:
            raise ApiError(429, "busy", str(exc), retry_after(exc)) from None
        except StorageError as exc:
            raise ApiError(503, "database_unavailable", str(exc)) from None

    return router
