"""The weekly hall report as PDF: WeasyPrint over ``server.hall_report.render_html``'s page.

WeasyPrint never fetches: its URL fetcher allows ``data:`` URIs only (the charts) and
fails the whole rendering on any other URL (``server.errors.ReportRefusedError``), so a report renders
the same offline and cannot be made to reach the network or read a local file. Fonts are
the system's (fontconfig: DejaVu, and WenQuanYi Micro Hei for CJK, scripts/system-deps.sh).
"""

from __future__ import annotations

from weasyprint import HTML, URLFetcher
from weasyprint.urls import FatalURLFetchingError

from server.errors import ReportRefusedError

__all__ = ["offline_fetcher", "render_pdf"]


def offline_fetcher() -> URLFetcher:
    """A fetcher answering ``data:`` URIs and stopping the rendering on any other."""
    return URLFetcher(allowed_protocols={"data"}, fail_on_errors=True, allow_redirects=False)


def render_pdf(html: str) -> bytes:
    """The PDF of ``html``. Raises ReportRefusedError for a page naming an outside URL."""
    try:
        pdf = HTML(string=html, url_fetcher=offline_fetcher()).write_pdf()
    except FatalURLFetchingError as exc:
        raise ReportRefusedError(str(exc)) from None
    assert pdf is not None  # without a target, write_pdf answers the bytes
    return bytes(pdf)
