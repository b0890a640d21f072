"""Opening hours in /metrics and the terminal view, on a live server over real mosquitto.

Hours set over the API reach the fleet gauges at the next scrape (the cache is
invalidated on a change, no database query per scrape): a hall that never opens is
``kioskfleet_hall_open`` 0 with the seconds to its next opening, one open around the
clock is 1. A terminal shut down cleanly in the closed hall is ``closed`` (in
``kioskfleet_terminals`` and in the API's ``health``) and has no per-terminal series;
one lost (will) there is still offline; the same shutdown in the open hall is offline.
No offline terminal exports its last peripheral problems.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from server.access import Role
from server.main import Server
from tests.integration.conftest import (
    RawTerminal,
    ServerFactory,
    TerminalFactory,
    api,
    bearer,
    periph,
    token,
    unique,
    wait_until,
)
from tests.integration.test_metrics_endpoint import key, parse, scrape_text
from tests.support.fleet_messages import state

pytestmark = pytest.mark.integration

PAPER_OUT = periph("printer", "receipt_printer", "paper_out")


def _set_hours(server: Server, hall: str, hours: dict[str, Any]) -> None:
    operator = bearer(token(server, Role.OPERATOR))
    url = f"{server.base_url}/api/v1/halls/{quote(hall, safe='')}/opening-hours"
    response = httpx.put(url, json=hours, headers=operator, timeout=5)
    assert response.status_code == 200, response.text


def _shut_down(t: RawTerminal) -> None:
    """What the agent publishes on an orderly shutdown: retained ``offline``, reason shutdown."""
    message = state(
        t.id, False, reason="shutdown", seq=t.seq, boot=t.boot, sent_at=datetime.now(UTC)
    )
    t.publish(message, retain=True)


def test_a_clean_shutdown_in_a_closed_hall_is_closed_and_exports_nothing_per_terminal(
    private_server: ServerFactory, private_terminals: TerminalFactory
) -> None:
    # 2 of the 3 terminals of Open go offline: at the default share (half) the hall would be
    # unreachable and export no per-terminal offline series (docs/monitoring.md, "A mass
    # outage"); this test is about closed and offline terminals one by one.
    server = private_server(metrics_hall_unreachable_share=1.0)
    region = unique("R")
    opening = (datetime.now(UTC) + timedelta(days=3)).replace(hour=9, minute=0, second=0)
    opening = opening.replace(microsecond=0)
    _set_hours(  # closed every day but one, three days from now
        server,
        "Shut",
        {
            "timezone": "UTC",
            "holidays": [
                {"date": opening.date().isoformat(), "hours": [{"start": "09:00", "end": "10:00"}]}
            ],
        },
    )
    around_the_clock = [{"start": "00:00", "end": "24:00"}]
    _set_hours(
        server,
        "Open",
        {
            "timezone": "UTC",
            "weekly": {
                d: around_the_clock for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
            },
        },
    )
    ids: dict[str, str] = {}
    for hall in ("Shut", "Open"):
        shut = private_terminals(f"{region}-S-{hall}", hall=hall, region=region)
        shut.report([PAPER_OUT])
        _shut_down(shut)
        lost = private_terminals(f"{region}-L-{hall}", hall=hall, region=region, with_will=True)
        lost.report([PAPER_OUT])
        lost.vanish()
        online = private_terminals(f"{region}-P-{hall}", hall=hall, region=region)
        online.report([PAPER_OUT])
        ids |= {f"S-{hall}": shut.id, f"L-{hall}": lost.id, f"P-{hall}": online.id}

    def status(series: dict[Any, float], hall: str, name: str) -> float | None:
        return series.get(key("kioskfleet_terminals", region=region, hall=hall, status=name))

    def settled() -> tuple[dict[Any, float], float, float] | None:
        before = time.time()
        series = parse(scrape_text(server))
        after = time.time()
        counts = [
            (status(series, hall, "closed"), status(series, hall, "offline"))
            for hall in ("Shut", "Open")
        ]
        return (series, before, after) if counts == [(1, 1), (0, 2)] else None

    series, before, after = wait_until(settled, 10, "two offline in Open, one closed in Shut")

    in_shut, in_open = {"region": region, "hall": "Shut"}, {"region": region, "hall": "Open"}
    assert series[key("kioskfleet_hall_open", **in_shut)] == 0
    assert series[key("kioskfleet_hall_open", **in_open)] == 1
    assert series[key("kioskfleet_hall_opens_in_seconds", **in_open)] == 0
    opens_in = series[key("kioskfleet_hall_opens_in_seconds", **in_shut)]
    assert opening.timestamp() - after <= opens_in <= opening.timestamp() - before
    offline = {
        dict(labels)["terminal"] for name, labels in series if name == "kioskfleet_terminal_offline"
    }
    assert offline == {ids["S-Open"], ids["L-Open"], ids["L-Shut"]}
    problems = {
        dict(labels)["terminal"]
        for name, labels in series
        if name == "kioskfleet_terminal_peripheral_problem"
    }
    assert problems == {ids["P-Shut"], ids["P-Open"]}  # online ones only

    closed = api(server, f"/api/v1/terminals/{ids['S-Shut']}").json()
    assert (closed["health"], closed["offline_reason"]) == ("closed", "shutdown")
    assert api(server, f"/api/v1/terminals/{ids['S-Open']}").json()["health"] == "offline"
    assert api(server, f"/api/v1/terminals/{ids['L-Shut']}").json()["health"] == "offline"
    response = api(server, "/api/v1/terminals", hall="Shut")
    assert response.status_code == 200, response.text
    listed = response.json()["items"]
    assert {t["id"]: t["health"] for t in listed} == {
        ids["S-Shut"]: "closed",
        ids["L-Shut"]: "offline",
        ids["P-Shut"]: "faulty",
    }
    # the ?health= filter selects what the list shows: closed is not offline
    by_health = {}
    for h in ("closed", "offline"):
        response = api(server, "/api/v1/terminals", health=h)
        assert response.status_code == 200, response.text
        by_health[h] = {t["id"] for t in response.json()["items"]}
    assert by_health == {
        "closed": {ids["S-Shut"]},
        "offline": {ids["S-Open"], ids["L-Open"], ids["L-Shut"]},
    }
