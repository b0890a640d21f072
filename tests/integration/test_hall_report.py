"""The weekly hall report end to end: a seeded week (``agent.demand.planted_plan``, week
2026-W48) written to a real database as the server writes it (terminals, printer
transitions, raw transactions), rolled up by ``UsageRollupStore``, then rendered to HTML
and PDF by ``kioskfleet report`` and by the library. The PDF has its two pages and every
section heading (pdftotext), page 1 is not blank (pdftoppm to PNG), the HTML names no URL
outside itself, and the figures are the planted ones. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageStat

from agent.demand import generate, planted_plan
from protocol.messages import PeripheralCondition, PeripheralKind
from server.access import Role
from server.analytics_cli import database_sources
from server.console.i18n import load_catalogs
from server.console.web import CONSOLE_PREFIX
from server.errors import ReportRefusedError
from server.fleet_views import PeripheralView, TerminalView, Transition
from server.hall_report import parse_week
from server.hall_report_pdf import render_pdf
from server.hall_report_service import HallReports, ReportFormat
from server.opening_hours import OpeningHours
from server.opening_hours_store import OpeningHoursStore
from server.records import UsageRecord, WriteBatch
from server.storage import Storage
from server.usage_rollup_store import UsageRollupStore
from tests.integration.conftest import ServerFactory, bearer, token
from tests.integration.test_console import _httpx_login, add_user

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WEEK = "2026-W48"
SEED = 14
START = parse_week(WEEK).since
HEADINGS = (
    "Summary",
    "Demand by hour of the week",
    "Recommendation",
    "Availability per service during opening hours",
    "Failures by cause",
    "Paper incidents",
)
DOWN_S = 2 * 3600.0  # hall-03's printed service is unavailable two open hours


def _at(day: int, hour: float) -> datetime:
    return START + timedelta(days=day, hours=hour)


def _terminal(tid: str, hall: str, region: str) -> TerminalView:
    return TerminalView(
        id=tid,
        online=True,
        state_since=_at(0, 0),
        last_seen=_at(4, 17),
        first_seen=_at(0, 0),
        hall=hall,
        region=region,
        peripherals=(
            PeripheralView(
                "printer", PeripheralKind.RECEIPT_PRINTER, PeripheralCondition.OK, _at(0, 0)
            ),
        ),
    )


def _paper(tid: str, from_state: str, to_state: str, at: datetime) -> Transition:
    return Transition(tid, "printer", "receipt_printer", from_state, to_state, at, at)


PAPER = (
    _paper("T-0302", "ok", "paper_out", START - timedelta(hours=4)),  # out when the week starts
    _paper("T-0302", "paper_out", "ok", _at(0, 9)),  # 9 h out in the week
    _paper("T-0301", "ok", "paper_low", _at(1, 10)),
    _paper("T-0301", "paper_low", "paper_out", _at(1, 11)),
    _paper("T-0301", "paper_out", "ok", _at(1, 12.5)),  # 1.5 h out
    _paper("T-0201", "ok", "paper_low", START + timedelta(days=7, hours=1)),  # next week
)


def _seed(storage: Storage) -> None:
    plan = planted_plan()
    halls = {tid: h for h in plan.halls for tid in h.terminals}
    transactions = generate(plan, START, SEED)
    usage = [
        UsageRecord(
            terminal_id=t.terminal_id,
            boot_id="boot-1",
            seq=i,
            service=t.service,
            outcome=t.outcome,
            cause=t.cause,
            duration_s=t.duration_s,
            pages=t.pages,
            occurred_at=t.at,
            received_at=t.at,
        )
        for i, t in enumerate(transactions)
    ]
    views = [_terminal(tid, h.hall, h.region) for tid, h in sorted(halls.items())]
    storage.write(
        WriteBatch(
            terminals=views,
            peripheral_ids=frozenset(halls),
            transitions=PAPER,
            usage=usage,
        ),
        now=_at(6, 0),
    )
    weekly = {d: [{"start": "08:00", "end": "17:00"}] for d in ("mon", "tue", "wed", "thu", "fri")}
    hours = OpeningHours.model_validate({"timezone": "UTC", "weekly": weekly})
    store = OpeningHoursStore(storage)
    for h in plan.halls:
        store.put(h.hall, hours, actor="test", now=_at(0, 0))
    rollups = UsageRollupStore(storage)
    rollups.roll_up(lambda tid: halls[tid].hall if tid in halls else None)
    printed = next(code for code, s in plan.services.items() if s.needs_printer)
    for day in range(5):
        for hour in range(8, 17):
            down = day == 1 and hour in (11, 12)
            rollups.add_availability(
                _at(day, hour),
                {
                    (h.hall, code): (
                        3600.0,
                        0.0 if down and code == printed and h.hall == "hall-03" else 3600.0,
                    )
                    for h in plan.halls
                    for code in h.mix
                },
            )


@pytest.fixture
def seeded(database_url: str) -> Iterator[tuple[str, HallReports]]:
    storage = Storage(database_url)
    storage.open()
    try:
        _seed(storage)
        yield database_url, HallReports(database_sources(storage), storage, load_catalogs())
    finally:
        storage.close()


def _pdf_text(pdf: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout


def _pages(pdf: Path) -> int:
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True)
    match = re.search(r"^Pages:\s+(\d+)$", info.stdout, re.MULTILINE)
    assert match is not None, info.stdout
    return int(match[1])


def _page_one_spread(pdf: Path, tmp_path: Path) -> float:
    """The standard deviation of page 1's grey levels (0 for a blank page)."""
    prefix = tmp_path / "page"
    subprocess.run(
        ["pdftoppm", "-r", "50", "-f", "1", "-l", "1", "-png", str(pdf), str(prefix)], check=True
    )
    (png,) = tmp_path.glob("page*.png")
    with Image.open(png) as image:
        return float(ImageStat.Stat(image.convert("L")).stddev[0])


def _cli(database_url: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_") or "TEST" in k}
    env["KIOSKFLEET_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "kioskfleet.cli", "report", "--hall", "hall-03", "--week", WEEK,
         "--out", str(out), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_seeded_week_renders_to_a_two_page_pdf_with_every_section_and_the_planted_figures(
    seeded: tuple[str, HallReports], tmp_path: Path
) -> None:
    database_url, reports = seeded
    html = reports.render("hall-03", WEEK, ReportFormat.HTML).decode()
    # no URL outside the page: the charts are data: URIs, the style inline
    assert re.findall(r"(?:src|href)=\"(?!data:)[^\"]*\"", html) == []
    assert not re.search(r"https?://|url\(", html)
    assert html.count('src="data:image/png;base64,') == 3  # heat map, availability, failures
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    assert "hall-01 → hall-03 1 hall-01: 10.7 %, hall-03: 85.9 %" in text  # the move, before
    assert "Paper low or out 2" in text
    assert "T-0301" in text
    assert "Time out of paper 10.5 h" in text  # 1.5 h on T-0301, 9 h on T-0302 from Monday
    assert "43.0 h" in text  # the printed service's 45 open hours less the 2 down

    out = tmp_path / "report.pdf"
    cli = _cli(database_url, out)
    assert cli.returncode == 0, cli.stderr
    assert out.read_bytes().startswith(b"%PDF-")
    assert _pages(out) == 2
    pdf_text = " ".join(_pdf_text(out).split())
    for heading in ("Weekly hall report: hall-03", *HEADINGS):
        assert heading in pdf_text, heading
    assert _page_one_spread(out, tmp_path) > 10.0

    # the library renders the same report as the command line wrote
    library = tmp_path / "library.pdf"
    library.write_bytes(reports.render("hall-03", WEEK, ReportFormat.PDF))
    assert " ".join(_pdf_text(library).split()) == pdf_text

    html_out = tmp_path / "report.html"
    assert _cli(database_url, html_out, "--format", "html").returncode == 0
    assert html_out.read_text() == html


def test_the_report_headings_follow_the_language_and_a_bad_week_is_refused(
    seeded: tuple[str, HallReports], tmp_path: Path
) -> None:
    database_url, reports = seeded
    out = tmp_path / "zh.pdf"
    out.write_bytes(reports.render("hall-03", WEEK, ReportFormat.PDF, "zh_CN"))
    text = _pdf_text(out)
    assert "大厅周报" in text
    assert "缺纸事件" in text
    with pytest.raises(ReportRefusedError):
        reports.render("hall-03", "2026-W54", ReportFormat.HTML)
    refused = _cli(database_url, tmp_path / "x.pdf", "--week", "last")
    assert refused.returncode == 2
    assert not (tmp_path / "x.pdf").exists()


def test_the_pdf_renderer_fetches_nothing_but_data_uris(tmp_path: Path) -> None:
    local = tmp_path / "secret.png"
    local.write_bytes(b"not an image")
    for url in ("http://127.0.0.1:9/x.png", local.as_uri()):
        with pytest.raises(ReportRefusedError):
            render_pdf(f'<html><body><img src="{url}"></body></html>')
    assert render_pdf("<html><body><p>ok</p></body></html>").startswith(b"%PDF-")


def test_the_api_and_the_console_hand_out_the_report_to_a_viewer_only(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path}/db/report.db"
    storage = Storage(database_url)
    storage.open()
    try:
        _seed(storage)
    finally:
        storage.close()
    server = start_server(database_url=database_url)
    path = server.base_url + "/api/v1/analytics/report"
    params = {"hall": "hall-03", "week": WEEK, "format": "pdf"}
    assert httpx.get(path, params=params, timeout=30).status_code == 401
    vendor = bearer(token(server, Role.VENDOR))
    assert httpx.get(path, params=params, headers=vendor, timeout=30).status_code == 403
    viewer = bearer(token(server, Role.VIEWER))
    pdf = httpx.get(path, params=params, headers=viewer, timeout=60)
    assert pdf.status_code == 200, pdf.text
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    saved = tmp_path / "api.pdf"
    saved.write_bytes(pdf.content)
    assert _pages(saved) == 2
    html = httpx.get(path, params={**params, "format": "html"}, headers=viewer, timeout=60)
    assert html.headers["content-type"].startswith("text/html")
    assert "Paper incidents" in html.text
    bad = httpx.get(path, params={**params, "week": "2026-W60"}, headers=viewer, timeout=30)
    assert bad.status_code == 422

    hall_page = CONSOLE_PREFIX + "/halls/hall-03"
    anonymous = httpx.get(server.base_url + hall_page + "/report", timeout=30)
    assert anonymous.status_code == 303  # to the login page
    add_user(server, "vera", Role.VIEWER)
    console = _httpx_login(server, "vera")
    try:
        link = f'href="{hall_page}/report"'
        assert link in console.get(hall_page).text
        download = console.get(hall_page + "/report", params={"week": WEEK}, timeout=60)
        assert download.status_code == 200, download.text
        assert download.headers["content-type"] == "application/pdf"
        assert "attachment" in download.headers["content-disposition"]
    finally:
        console.close()
