"""Paper forecasts end to end: a terminal prints pages (``kf.usage`` through a real
mosquitto) and its printer goes ``paper_low``; the server's scheduled forecast shows in
``GET /api/v1/terminals/{id}/paper`` with an ETA that matches the planted rate and the
model's roll setting, and in ``kioskfleet_terminal_paper_eta_seconds``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from protocol.topics import Channel
from server.main import Server
from tests.integration.conftest import (
    RawTerminal,
    ServerFactory,
    TerminalFactory,
    api,
    periph,
    scrape,
    wait_until,
)

pytestmark = pytest.mark.integration

PAGES_PER_HOUR = 12
HOURS = 10
ROLL = 400  # the roll of the report's model, KX-200: a reserve of 10 % is 40 pages


def _usage(terminal: RawTerminal, sent_at: datetime, pages: int) -> None:
    raw = {
        "schema": "kf.usage",
        "version": 1,
        "terminal_id": terminal.id,
        "boot_id": terminal.boot,
        "seq": terminal.next_seq(),
        "sent_at": sent_at.isoformat(),
        "body": {
            "service": "tax.invoice.print",
            "outcome": "completed",
            "duration_s": 40.0,
            "pages": pages,
        },
    }
    terminal.publish_raw(terminal.topic(Channel.USAGE), json.dumps(raw).encode())


def _forecast(server: Server, tid: str) -> dict[str, Any] | None:
    response = api(server, f"/api/v1/terminals/{tid}/paper")
    assert response.status_code == 200, response.text
    forecast: dict[str, Any] | None = response.json()["forecast"]
    return forecast


def test_pages_printed_and_paper_low_give_an_eta_at_the_planted_rate(
    start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server(paper_forecast_interval_s=0.2, paper_roll_pages_by_model={"KX-200": ROLL})
    terminal = terminals()
    terminal.report([periph("receipt0", "receipt_printer")])
    wait_until(lambda: server.fleet.get(terminal.id) is not None, 10, "the terminal")
    start = datetime.now(UTC) - timedelta(hours=HOURS)
    for h in range(HOURS):  # one transaction an hour, 12 pages each, over the last 10 hours
        _usage(terminal, start + timedelta(hours=h), PAGES_PER_HOUR)
    terminal.report([periph("receipt0", "receipt_printer", "paper_low")])

    wait_until(
        lambda: (f := _forecast(server, terminal.id)) is not None and f["basis"] == "reserve",
        15,
        "a forecast from paper_low",
    )
    got = _forecast(server, terminal.id)
    assert got is not None
    assert api(server, f"/api/v1/terminals/{terminal.id}/paper").json()["printer"] == "receipt0"
    assert got["remaining_pages"] == ROLL // 10
    assert got["profile"] == "flat"  # less than a day of history
    assert got["pages_per_hour"] == pytest.approx(PAGES_PER_HOUR, rel=0.02)
    planted_eta_s = ROLL // 10 / PAGES_PER_HOUR * 3600  # 40 pages at 12 an hour: 3 h 20 min
    assert got["eta_s"] == pytest.approx(planted_eta_s, rel=0.02)
    assert got["eta_low_s"] < got["eta_s"] < got["eta_high_s"]
    assert datetime.fromisoformat(got["runs_out_at"]) > datetime.now(UTC)

    exposition = scrape(server)
    (line,) = [
        row
        for row in exposition.splitlines()
        if row.startswith("kioskfleet_terminal_paper_eta_seconds{") and terminal.id in row
    ]
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(planted_eta_s, rel=0.05)
    assert (
        f'kioskfleet_hall_closes_in_seconds{{hall="{terminal.hall}",region="{terminal.region}"}} 86400.0'
        in exposition
    )

    assert api(server, "/api/v1/terminals/T-nobody/paper").status_code == 404
