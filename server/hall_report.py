"""The weekly hall report (issue 14, docs/analytics.md "Weekly hall report"): one hall's
ISO week as a self-contained HTML page with charts, which ``server.hall_report_pdf``
turns into a PDF.

- ``parse_week("2026-W48", zone)``: the ISO week of the hall's zone (its opening hours';
  UTC without) as the UTC hours that start in it, from the hour starting at or after
  local Monday 00:00 to the one starting at or after the next local Monday 00:00: the
  rollups' rows are UTC hours, and an hour counts in the local hour (so the local week)
  it starts in (``server.analytics.hour_of_week``). Whole-hour zones give exactly local
  Monday 00:00 to Monday 00:00 (167 or 169 hours across a DST change); Asia/Kolkata's
  week runs from Monday 00:30 local.
- ``paper_incidents``: from the hall's printer transitions, the changes to ``paper_low`` or
  ``paper_out`` in the week, the terminals they happened on and the time spent out of paper
  (a printer already out at the week's start counts from the start; one still out at its
  end, to the end).
- ``hall_week(sources, transitions, hall, week)``: the figures the report shows, read from
  ``AnalyticsSources`` (the recommendation is computed over every hall, since a move needs
  a donor, and the moves into or out of this hall are kept).
- ``render_html(report, catalog)``: the page. Charts are matplotlib PNGs (a ``Figure``
  saved by Agg, never pyplot: no display, no global figure state, so two requests
  may render at once), embedded as ``data:`` URIs; the style is inline: the page names no URL outside itself, so it renders
  offline and the PDF renderer has nothing to fetch. Headings go through ``catalog``
  (the console's gettext catalogues).

Every name on the page is a hall or terminal id, a catalogue code or a number: nothing
here can hold personal data. No I/O but the sources' reads.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Final, Protocol

from jinja2 import Environment, PackageLoader, select_autoescape

from protocol.messages import PeripheralCondition
from server.analytics import Figures, GroupBy, Move, TerminalUse
from server.analytics_report import AnalyticsSources, Range
from server.errors import ReportRefusedError
from server.opening_hours import Weekday

if TYPE_CHECKING:  # matplotlib loads when a chart is drawn, not when the server starts
    from matplotlib.figure import Figure

__all__ = [
    "PAPER_STATES",
    "HallWeek",
    "PaperIncidents",
    "PaperTransition",
    "hall_week",
    "paper_incidents",
    "parse_week",
    "render_html",
    "week_monday",
]

PAPER_STATES: Final = frozenset(
    {PeripheralCondition.PAPER_LOW.value, PeripheralCondition.PAPER_OUT.value}
)
_WEEK: Final = re.compile(r"^(\d{4})-W(\d{2})$")
_DPI: Final = 110
_FONTS: Final = ("DejaVu Sans", "WenQuanYi Micro Hei")  # Latin, then CJK (day names)


class Translations(Protocol):
    def gettext(self, message: str) -> str: ...


def week_monday(text: str) -> date:
    """The Monday of the ISO week ``YYYY-Www``. Raises ReportRefusedError for anything else."""
    match = _WEEK.match(text)
    try:
        if match is None or not 2000 <= int(match[1]) <= 2100:
            raise ValueError("no match")
        return date.fromisocalendar(int(match[1]), int(match[2]), 1)
    except ValueError:
        raise ReportRefusedError(f"{text[:20]!r} is not an ISO week like 2026-W48") from None


def _hour_from(local_midnight: date, zone: tzinfo) -> datetime:
    """The first UTC hour starting at or after ``local_midnight`` 00:00 in ``zone``."""
    at = datetime.combine(local_midnight, datetime.min.time(), tzinfo=zone).astimezone(UTC)
    start = at.replace(minute=0, second=0, microsecond=0)
    return start if start == at else start + timedelta(hours=1)


def parse_week(text: str, zone: tzinfo = UTC) -> Range:
    """The ISO week ``YYYY-Www`` of ``zone`` as UTC hours (module docstring). Raises
    ReportRefusedError for anything else."""
    monday = week_monday(text)
    return Range(_hour_from(monday, zone), _hour_from(monday + timedelta(days=7), zone))


@dataclass(frozen=True, slots=True)
class PaperTransition:
    """One change of a printer's condition (a ``transition`` row of a printer)."""

    terminal_id: str
    subject: str  # the printer's name on its terminal
    to_state: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class PaperIncidents:
    count: int  # changes to paper_low or paper_out in the week
    terminals: tuple[str, ...]  # where they happened, sorted
    out_s: float  # seconds printers were out of paper in the week, summed


def paper_incidents(transitions: Iterable[PaperTransition], r: Range) -> PaperIncidents:
    """``transitions``: the printers' changes up to ``r.until``, with at least the last one
    before ``r.since`` of each printer (its state at the start)."""
    by_printer: dict[tuple[str, str], list[PaperTransition]] = {}
    for t in transitions:
        by_printer.setdefault((t.terminal_id, t.subject), []).append(t)
    count = 0
    terminals: set[str] = set()
    out_s = 0.0
    for changes in by_printer.values():
        changes.sort(key=lambda t: t.occurred_at)
        out_since: datetime | None = None
        for t in changes:
            at = min(max(t.occurred_at, r.since), r.until)
            if r.since <= t.occurred_at < r.until and t.to_state in PAPER_STATES:
                count += 1
                terminals.add(t.terminal_id)
            if out_since is not None:
                out_s += (at - out_since).total_seconds()
                out_since = None
            if t.to_state == PeripheralCondition.PAPER_OUT.value:
                out_since = at
        if out_since is not None:
            out_s += (r.until - out_since).total_seconds()
    return PaperIncidents(count, tuple(sorted(terminals)), out_s)


@dataclass(frozen=True, slots=True)
class HallWeek:
    """What the report shows for one hall and week."""

    hall: str
    week: str
    timezone: str  # the hall's (its opening hours'), "UTC" without
    range: Range
    summary: Figures | None  # None: no transaction
    use: TerminalUse | None  # None: no terminal
    availability: Sequence[tuple[str, float, float]]  # (service, open s, available s)
    by_hour: Mapping[int, int]  # hall-local hour of the week (0 = Monday 00:00) → transactions
    paper: PaperIncidents
    moves: Sequence[Move]  # recommended moves into or out of the hall
    idle: Sequence[tuple[TerminalUse, float]]  # (idle terminal of the hall, hall median)

    @property
    def availability_share(self) -> float | None:
        """Available over open seconds, all services; None when never open."""
        open_s = sum(o for _s, o, _a in self.availability)
        return sum(a for _s, _o, a in self.availability) / open_s if open_s else None


def hall_week(
    sources: AnalyticsSources,
    transitions: Callable[[str, datetime, datetime], list[PaperTransition]],
    hall: str,
    week: str,
) -> HallWeek:
    """The report's figures. ``transitions(hall, since, until)``: as ``paper_incidents``
    wants them. The week and its hours are the hall's zone's (its opening hours'; UTC
    without). Raises ReportRefusedError for a bad week, StorageError from the sources."""
    hours = sources.hours().get(hall)
    r = parse_week(week, UTC if hours is None else hours.zone)
    (summary,) = sources.transactions(r, GroupBy.HALL, hall=hall) or (None,)
    use = sources.utilisation(r)
    return HallWeek(
        hall=hall,
        week=week,
        timezone="UTC" if hours is None else hours.timezone,
        range=r,
        summary=summary,
        use=next((h for h in use.halls if h.hall == hall), None),
        availability=[(s, o, a) for _h, s, o, a in sources.availability_shares(r, hall=hall)],
        by_hour={
            int(f.key): f.transactions
            for f in sources.transactions(r, GroupBy.HOUR_OF_WEEK, hall=hall)
        },
        paper=paper_incidents(transitions(hall, r.since, r.until), r),
        moves=[m for m in use.moves if hall in (m.source, m.target)],
        idle=[(u, m) for u, m in use.idle if u.hall == hall],
    )


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")  # Agg, for PNG, without pyplot
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _heat_map(by_hour: Mapping[int, int], days: Sequence[str]) -> str:
    from matplotlib.figure import Figure

    grid = [[by_hour.get(d * 24 + h, 0) for h in range(24)] for d in range(7)]
    fig = Figure(figsize=(7.5, 2.6), dpi=_DPI, layout="tight")
    ax = fig.subplots()
    image = ax.imshow(grid, aspect="auto", cmap="YlOrRd", vmin=0)
    ax.set_yticks(range(7), labels=list(days), fontfamily=list(_FONTS))
    ax.set_xticks(range(0, 24, 2), labels=[f"{h:02d}" for h in range(0, 24, 2)])
    fig.colorbar(image, ax=ax, pad=0.01)
    return _png(fig)


def _bars(labels: Sequence[str], values: Sequence[float], *, limit: float | None) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 0.45 * max(len(labels), 2) + 0.8), dpi=_DPI, layout="tight")
    ax = fig.subplots()
    ax.barh(list(labels), list(values), color="#3b6ea5")
    ax.invert_yaxis()
    if limit is not None:
        ax.set_xlim(0, limit)
    return _png(fig)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


_ENV: Final = Environment(
    loader=PackageLoader("server.console", "templates"),
    autoescape=select_autoescape(["html"]),
)


def _charts(
    report: HallWeek, days: Sequence[str], failed: Mapping[str, int]
) -> dict[str, str | None]:
    shares = [100 * a / o if o else 0.0 for _s, o, a in report.availability]
    return {
        "heat_map": _heat_map(report.by_hour, days),
        "availability": _bars([s for s, _o, _a in report.availability], shares, limit=100)
        if report.availability
        else None,
        "failures": _bars(list(failed), list(failed.values()), limit=None)
        if any(failed.values())
        else None,
    }


def render_html(report: HallWeek, catalog: Translations, language: str = "en") -> str:
    """The report as one HTML page naming no outside URL."""
    _ = catalog.gettext
    failed = report.summary.failed if report.summary is not None else {}
    charts = _charts(report, [_(d.value) for d in Weekday], failed)
    return _ENV.get_template("hall_report.html").render(
        _=_,
        language=language,
        r=report,
        charts=charts,
        failed=failed,
        percent=_percent,
        hours=_hours,
        first_day=week_monday(report.week),
        last_day=week_monday(report.week) + timedelta(days=6),
    )
