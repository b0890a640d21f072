"""The console's releases and rollouts pages in real headless Chromium against a real server
(its TUF repository, a vendor-published kiosk-app 1.1.0, the rollout driver) and 20 real
simulated agents over a real mosquitto that take the update (``test_rollout_e2e``'s
fixtures): operator alice creates a rollout in the browser after previewing how many
terminals its selector matches, cannot approve it herself, operator bob approves it, the
page refreshes itself through the phases until every terminal succeeded; the audit page
shows both; a viewer sees no button and gets 403 from every route behind them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from server.access import Role
from server.console.i18n import load_catalogs
from server.console.rollout_pages import REFUSAL_TEXTS
from server.console.web import AUTO_REFRESH_QUERY, CONSOLE_PREFIX
from server.main import Server
from server.rollout_api import ROLLOUT_EVENTS
from tests.integration import test_rollout_e2e
from tests.integration.test_console import add_user, log_in

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# the rollout suite's fixtures (the browser's are in conftest.py)
world = test_rollout_e2e.world
server = test_rollout_e2e.server
running = test_rollout_e2e.running

ROLLOUT = "R-CONSOLE"
TARGET = "acme/kiosk-app-1-true.tar.gz"
TERMINALS = test_rollout_e2e.TERMINALS


def _csrf(page: Page) -> str:
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    return token


def _page_as(context: BrowserContext, server: Server, username: str) -> Page:
    """A new page logged in as ``username``; the context's other pages are closed first.
    They share its cookies: a rollout page still refreshing itself (every 3 s while the
    rollout moves) lands on the login form once the cookies are cleared, and that form's
    new login token replaced the one of the login under way (a 403, seen once in CI)."""
    for other in context.pages:
        other.close()
    context.clear_cookies()
    page = context.new_page()
    log_in(page, server, username)
    assert urlsplit(page.url).path == CONSOLE_PREFIX
    return page


def test_an_operator_creates_a_previewed_rollout_another_approves_and_the_page_follows_it_to_the_end(
    server: Server, running: Any, context: BrowserContext
) -> None:
    running(0.0)
    for name, role in (("alice", Role.OPERATOR), ("bob", Role.OPERATOR), ("ada", Role.ADMIN)):
        add_user(server, name, role)

    alice = _page_as(context, server, "alice")
    alice.goto(server.base_url + CONSOLE_PREFIX + "/releases")
    release = alice.locator(f"#releases tr[data-target='{TARGET}']")
    cells = release.locator("td").all_inner_texts()
    assert cells[:5] == ["acme", "kiosk-app", "1.1.0", TARGET, "verified"]
    assert "(role acme)" in cells[5]
    assert alice.locator("#keys td:text-is('acme')").count() == 1

    alice.click("nav a:text-is('Rollouts')")
    alice.click("#new-rollout")
    alice.fill("input[name=rollout_id]", ROLLOUT)
    alice.select_option("select[name=target]", TARGET)
    alice.fill("input[name=hall]", "hall-02")  # the simulation has one hall, hall-01
    alice.click("#preview")
    assert alice.locator("#preview-count").inner_text() == "0"
    alice.fill("input[name=hall]", "hall-01")
    alice.fill("input[name=tags]", "pilot")  # no terminal carries it (no registry here)
    alice.click("#preview")
    assert alice.locator("#preview-count").inner_text() == "0"
    alice.fill("input[name=tags]", "")
    alice.click("#preview")
    assert alice.locator("#preview-count").inner_text() == str(TERMINALS)
    assert alice.locator("input[name=rollout_id]").input_value() == ROLLOUT  # kept
    alice.fill("input[name=phases]", "5, 100%")
    alice.fill("input[name=success_threshold]", "1")
    alice.fill("input[name=terminal_timeout_s]", "600")
    alice.fill("input[name=max_attempts]", "1")
    alice.click("#create")
    assert urlsplit(alice.url).path == f"{CONSOLE_PREFIX}/rollouts/{ROLLOUT}"
    assert alice.locator("#rollout-status").inner_text() == "awaiting approval"
    assert alice.locator("#approve").count() == 0
    assert "another operator must approve it" in alice.locator("#approve-hint").inner_text()
    url = f"{server.base_url}{CONSOLE_PREFIX}/rollouts/{ROLLOUT}"
    own = context.request.post(url + "/approve", form={"csrf_token": _csrf(alice)})
    assert own.status == 409  # the planner refuses the creator's approval, in a sentence
    assert "A rollout&#39;s creator cannot approve it: another operator must." in own.text()
    own_zh = context.request.post(
        url + "/approve", form={"csrf_token": _csrf(alice)}, headers={"Accept-Language": "zh-CN"}
    )
    assert own_zh.status == 409
    zh = load_catalogs()["zh_CN"].gettext(REFUSAL_TEXTS["approver_is_creator"])
    assert zh != REFUSAL_TEXTS["approver_is_creator"]
    assert zh in own_zh.text()

    bob = _page_as(context, server, "bob")
    bob.goto(url)
    bob.click("#approve")
    assert bob.locator("#approved-by").inner_text() == "user:bob"
    assert bob.locator("meta[http-equiv=refresh]").count() == 1
    # the refresh says it is one, so it does not keep bob's session from ending when idle
    refresh = bob.locator("meta[http-equiv=refresh]").get_attribute("content")
    assert refresh == f"3; url=?{AUTO_REFRESH_QUERY}"
    # the page reloads itself while the rollout moves: phase 1 (5 terminals), then the rest
    expect(bob.locator("#rollout-status")).to_have_text("completed", timeout=180_000)
    assert bob.locator("#counts").inner_text() == f"succeeded \u00d7 {TERMINALS}"
    phases = bob.locator("#phases tbody tr")
    assert phases.nth(0).locator("td").nth(4).inner_text() == "succeeded \u00d7 5"
    assert phases.nth(1).locator("td").nth(4).inner_text() == f"succeeded \u00d7 {TERMINALS - 5}"
    assert bob.locator("#terminals tbody tr").count() == TERMINALS
    assert bob.locator("meta[http-equiv=refresh]").count() == 0
    assert bob.locator("#actions button").count() == 0  # nothing left to do
    bob.click("#terminals a:text-is('RO-00001')")
    assert bob.locator("h1").inner_text() == "Terminal RO-00001"
    assert "succeeded" in bob.locator("#timeline").inner_text()

    ada = _page_as(context, server, "ada")
    rows = []
    for action in ("rollout.create", "rollout.approve"):
        ada.goto(f"{server.base_url}{CONSOLE_PREFIX}/audit?action={action}")
        rows += [r.locator("td").all_inner_texts()[1:5] for r in ada.locator("tbody tr").all()]
    assert rows == [
        ["user:alice", "rollout.create", ROLLOUT, "ok"],
        ["user:bob", "rollout.approve", ROLLOUT, "ok"],  # newest first
        ["user:alice", "rollout.approve", ROLLOUT, "failed"],  # in Chinese
        ["user:alice", "rollout.approve", ROLLOUT, "failed"],
    ]


def test_a_viewer_reads_the_rollout_pages_without_buttons_and_gets_403_behind_them(
    server: Server, context: BrowserContext
) -> None:
    add_user(server, "olga", Role.OPERATOR)
    add_user(server, "vera", Role.VIEWER)
    olga = _page_as(context, server, "olga")
    olga.goto(server.base_url + CONSOLE_PREFIX + "/rollouts/new")
    olga.fill("input[name=rollout_id]", ROLLOUT)
    olga.fill("input[name=phases]", "5@manual, 100%")
    olga.click("#create")  # the planner's own check, shown on the form kept as typed
    assert "the first phase opens when the rollout starts" in olga.locator("#problem").inner_text()
    assert olga.locator("input[name=rollout_id]").input_value() == ROLLOUT
    olga.fill("input[name=phases]", "5, 100%@manual")
    olga.click("#create")
    assert olga.locator("#problem").count() == 0, olga.locator("#problem").inner_text()
    assert olga.locator("#rollout-status").inner_text() == "awaiting approval"

    vera = _page_as(context, server, "vera")
    vera.goto(server.base_url + CONSOLE_PREFIX + "/rollouts")
    assert vera.locator(f"#rollouts a:text-is('{ROLLOUT}')").count() == 1
    assert vera.locator("#new-rollout").count() == 0
    vera.click(f"#rollouts a:text-is('{ROLLOUT}')")
    assert vera.locator("#rollout-status").inner_text() == "awaiting approval"
    assert vera.locator("#actions").count() == 0
    assert vera.locator("button").all_inner_texts() == ["Change language", "Log out"]
    token = _csrf(vera)
    base = f"{server.base_url}{CONSOLE_PREFIX}/rollouts"
    for path in ["", "/preview", *(f"/{ROLLOUT}/{verb}" for verb in ROLLOUT_EVENTS)]:
        answer = context.request.post(base + path, form={"csrf_token": token})
        assert answer.status == 403, path
        assert "Your role may not do this." in answer.text()
    form = vera.goto(base + "/new")
    assert form is not None
    assert form.status == 403
    assert server.rollouts.get(ROLLOUT).status.value == "awaiting_approval"  # untouched
