"""The console's analytics and service pages in real headless Chromium against a real
server fed over a real mosquitto: a simulated week (``simulated_week``) shows the planted
idle terminal, the overloaded hall and the recommended move on the analytics page, equal
to the analytics API's answer; the hall page shows a terminal out of paper still offering
the identity services and why it cannot print; a viewer sees the catalogue but no edit
form and is refused its POST; an operator's edit through the form is what the API then
answers, and audited as the API's PUT."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page

from server.access import Role
from server.access_store import AuditFilter
from server.console.web import CONSOLE_PREFIX
from tests.integration.conftest import ServerFactory, TerminalFactory, api
from tests.integration.simulated_week import (
    WEEK_SETTINGS,
    api_put,
    rolled_up,
    simulate_week,
    week_range,
)
from tests.integration.test_console import HALL, add_user, log_in, planted_fleet
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.browser]

PRINT = "tax.invoice.print"
IDENTITY = ("police.residence_permit.renew", "civil.id_card.check")
INFO = "info.opening_hours"
CATALOGUE: dict[str, Any] = {
    "services": [
        {"code": PRINT, "needs": ["printer"]},
        *({"code": code, "needs": ["identity_reader"]} for code in IDENTITY),
        {"code": INFO, "needs": []},
    ]
}


def _pct(share: float) -> str:
    return f"{share * 100:.1f} %"


def _cells(page: Page, selector: str, attribute: str) -> list[str]:
    return [
        page.locator(selector).nth(i).get_attribute(attribute) or ""
        for i in range(page.locator(selector).count())
    ]


def test_the_analytics_page_shows_the_planted_idle_terminal_overloaded_hall_and_the_apis_move(
    private_server: ServerFactory, private_terminals: TerminalFactory, context: BrowserContext
) -> None:
    server = private_server(**WEEK_SETTINGS)
    transactions, start = simulate_week(server, private_terminals)
    wait_until(lambda: rolled_up(server, start) == len(transactions), 60, "the week rolled up")
    rng = week_range(start)
    use = api(server, "/api/v1/analytics/utilisation", **rng).json()
    by_hall = api(server, "/api/v1/analytics/transactions", by="hall", **rng).json()
    add_user(server, "vera", Role.VIEWER)
    page = context.new_page()
    log_in(page, server, "vera")
    page.click("nav a:text-is('Analytics')")
    assert page.locator("h1").inner_text() == "Analytics"  # the default range: last 7 days
    page.goto(f"{server.base_url}{CONSOLE_PREFIX}/analytics?{urlencode(rng)}")
    week_end = start + timedelta(days=7)
    assert f"{start:%Y-%m-%d %H:%M} \u2013 {week_end:%Y-%m-%d %H:%M}" in page.inner_text("#range")

    idle = _cells(page, "#idle-terminals tr[data-terminal]", "data-terminal")
    assert idle == [i["terminal"]["terminal_id"] for i in use["idle_terminals"]] == ["T-0103"]
    hot = _cells(page, "#overloaded-halls tr[data-hall]", "data-hall")
    assert hot == [h["hall"] for h in use["overloaded_halls"]] == ["hall-03"]
    moves = list(
        zip(
            _cells(page, "#moves tr[data-move]", "data-move"),
            _cells(page, "#moves tr[data-move]", "data-terminals"),
            strict=True,
        )
    )
    api_moves = [(f"{m['source']}>{m['target']}", str(m["terminals"])) for m in use["recommendations"]]  # fmt: skip
    assert moves == api_moves == [("hall-01>hall-03", "1")]
    (move,) = use["recommendations"]
    text = page.inner_text("#moves")
    assert "Move 1 terminal(s) from hall-01 to hall-03" in text
    for figure in ("source_before", "source_after", "target_before", "target_after"):
        assert _pct(move[figure]["utilisation"]) in text, figure

    for group in by_hall["groups"]:
        row = page.locator(f"#halls tr[data-hall='{group['key']}']")
        assert row.locator("td.transactions").inner_text() == str(group["transactions"])
        assert row.locator("td.completion").inner_text() == _pct(group["completion_rate"])
    for hall in use["halls"]:
        row = page.locator(f"#halls tr[data-hall='{hall['hall']}']")
        assert row.locator("td.utilisation").inner_text() == _pct(hall["utilisation"])
    assert "overloaded" in (page.get_attribute("#halls tr[data-hall='hall-03']", "class") or "")

    heat = page.locator("#heat-map td")
    counts = [int(heat.nth(i).get_attribute("title") or "0") for i in range(heat.count())]
    assert len(counts) == 7 * 24
    assert sum(counts) == len(transactions)
    busiest = max(range(len(counts)), key=counts.__getitem__)
    assert heat.nth(busiest).get_attribute("class") == "heat-5"


def test_the_hall_page_shows_a_terminal_out_of_paper_still_offering_the_identity_services(
    start_server: ServerFactory, terminals: TerminalFactory, context: BrowserContext
) -> None:
    server = start_server()
    api_put(server, "/api/v1/services", CATALOGUE)
    add_user(server, "vera", Role.VIEWER)
    fine, broken = planted_fleet(server, terminals)
    page = context.new_page()
    log_in(page, server, "vera")
    page.goto(f"{server.base_url}{CONSOLE_PREFIX}/halls/{HALL}")
    row = page.locator(f"#terminal-services tr[data-offers='{broken}']")
    offered = _cells(page, f"#terminal-services tr[data-offers='{broken}'] td.offered span", "data-service")  # fmt: skip
    assert offered == [*IDENTITY, INFO]
    assert row.locator("td.missing").inner_text() == f"{PRINT} (missing: printer)"
    fine_row = page.locator(f"#terminal-services tr[data-offers='{fine}']")
    assert fine_row.locator("td.missing").inner_text() == "-"
    lines = page.locator("#hall-services ul.offers").inner_text()
    assert f"1 of 2 terminals offer {PRINT}" in lines
    for code in (*IDENTITY, INFO):
        assert f"2 of 2 terminals offer {code}" in lines


def _csrf(page: Page) -> str:
    token = page.get_attribute("form[action$='/logout'] input[name=csrf_token]", "value")
    assert token
    return token


def test_a_viewer_reads_the_catalogue_but_may_not_edit_it_and_an_operators_edit_is_the_apis(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    server = start_server()
    api_put(server, "/api/v1/services", CATALOGUE)
    add_user(server, "vera", Role.VIEWER)
    add_user(server, "olga", Role.OPERATOR)
    page = context.new_page()
    log_in(page, server, "vera")
    page.click("nav a:text-is('Services')")
    rows = _cells(page, "#catalogue tr[data-service]", "data-service")
    assert rows == [PRINT, *IDENTITY, INFO]
    needs = page.locator(f"#catalogue tr[data-service='{PRINT}'] td").nth(1)
    assert needs.inner_text() == "printer"
    assert page.locator("#catalogue-form").count() == 0
    refused = page.request.post(
        f"{server.base_url}{CONSOLE_PREFIX}/services",
        form={"csrf_token": _csrf(page), "catalogue": "tax.invoice.print: a4_printer"},
    )
    assert refused.status == 403
    assert "Your role may not do this." in refused.text()
    assert api(server, "/api/v1/services").json() == CATALOGUE

    page.click("#logout")
    log_in(page, server, "olga")
    page.goto(f"{server.base_url}{CONSOLE_PREFIX}/services")
    page.fill("#catalogue-form textarea", f"{PRINT}: a4_printer\nbad code: printer")
    page.click("#catalogue-form button[type=submit]")
    assert "The catalogue is not valid: nothing was changed." in page.inner_text("#catalogue-error")
    assert api(server, "/api/v1/services").json() == CATALOGUE

    page.fill("#catalogue-form textarea", f"{PRINT}: a4_printer, identity_reader\n{INFO}\n")
    page.click("#catalogue-form button[type=submit]")
    wanted = {"services": [{"code": PRINT, "needs": ["a4_printer", "identity_reader"]},
                           {"code": INFO, "needs": []}]}  # fmt: skip
    assert api(server, "/api/v1/services").json() == wanted
    assert _cells(page, "#catalogue tr[data-service]", "data-service") == [PRINT, INFO]
    anonymous = httpx.post(
        f"{server.base_url}{CONSOLE_PREFIX}/services", data={"catalogue": ""}, timeout=5
    )
    assert anonymous.status_code == 401
    entries = server.access_store.audit(AuditFilter(action="service.catalogue.set"), limit=10)
    seen = [(e.actor, e.result.value, e.detail.get("status")) for e in entries.items]
    assert seen[:4] == [
        ("anonymous", "denied", "401"),
        ("user:olga", "ok", "303"),
        ("user:olga", "failed", "422"),
        ("user:vera", "denied", "403"),
    ]  # newest first; below them the API's PUT with the admin token
    assert seen[4][1:] == ("ok", "200")
