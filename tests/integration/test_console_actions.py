"""The console's operator actions and admin pages in real headless Chromium against a real
server fed by terminals publishing over a real mosquitto: acknowledge the planted problem
and read its audit entry; put a terminal in maintenance from its page and see its alert
leave a real Prometheus scraping the server (and come back when it ends); a hall's
maintenance; decommission after the confirmation; tokens created (secret shown once) and
revoked, users created, disabled, enabled and given a new password; a viewer sees no
action and gets 403 from every action route, an operator from every admin one; a forged
CSRF token and an ended session change nothing."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, BrowserContext, Page
from starlette.routing import Route

from kioskfleet.local_prometheus import LocalPrometheus
from server.access import Role, allows
from server.access_api import declared_role
from server.access_store import AuditFilter
from server.audit import AuditEntry, AuditResult
from server.console.web import CONSOLE_PREFIX
from server.main import Server
from tests.integration.conftest import (
    ServerFactory,
    TerminalFactory,
    bearer,
    periph,
    unique,
    wait_until,
)
from tests.integration.test_console import HALL, PASSWORD, add_user, log_in, planted_fleet

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ALERT_TIMEOUT = 40.0  # a bound for polling (first scrape, 1 s scrapes and rules, 2 s for:)


def _audit(server: Server, action: str, n: int = 1) -> list[AuditEntry]:
    """The newest ``action`` entries once there are ``n`` (the middleware records an entry
    after the answer is sent)."""

    def found() -> list[AuditEntry] | None:
        items = list(server.access_store.audit(AuditFilter(action=action), limit=n + 5).items)
        return items if len(items) >= n else None

    entries: list[AuditEntry] = wait_until(found, 10, f"the audit entry of {action}")
    return entries


def _page(server: Server, page: Page, path: str) -> None:
    answer = page.goto(server.base_url + CONSOLE_PREFIX + path)
    assert answer is not None
    assert answer.status == 200, (path, answer.status)


def _until(hours: float) -> str:
    """A ``datetime-local`` value ``hours`` from now, in UTC (what the form reads)."""
    return (datetime.now(UTC) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M")


def test_an_admin_acknowledges_the_planted_problem_with_a_note_and_an_assignee_and_reads_the_audit(
    start_server: ServerFactory, terminals: TerminalFactory, context: BrowserContext
) -> None:
    server = start_server()
    add_user(server, "alice", Role.ADMIN)
    _fine, broken = planted_fleet(server, terminals)
    page = context.new_page()
    log_in(page, server, "alice")
    _page(server, page, "/problems")
    row = page.locator(f"tr[data-problem='{broken}/printer']")
    assert "paper out" in row.inner_text()
    row.locator("input[name=note]").fill("new roll on its way")
    row.locator("input[name=assignee]").fill("bob")
    row.locator("button:text-is('Acknowledge')").click()

    assert urlsplit(page.url).path == CONSOLE_PREFIX + "/problems"
    acked = page.locator(f"tr[data-problem='{broken}/printer'] .ack").inner_text()
    assert acked.startswith("Acknowledged by user:alice")
    assert "Note: new roll on its way" in acked
    assert "Assigned to: bob" in acked
    _page(server, page, f"/terminals/{broken}")  # the terminal's page shows it too
    printer = page.locator("#peripherals tr", has=page.locator("td:text-is('printer')"))
    assert "Note: new roll on its way" in printer.inner_text()
    (stored,) = server.maintenance_store.acks(broken)
    assert (stored.peripheral, stored.acked_by, stored.assignee) == ("printer", "user:alice", "bob")

    (entry,) = _audit(server, "problem.ack")
    assert (entry.actor, entry.target, entry.result) == (
        "user:alice", f"{broken}/printer", AuditResult.OK
    )  # fmt: skip
    assert entry.detail["assignee"] == "bob"
    assert entry.detail["condition"] == "paper_out"
    _page(server, page, "/audit?action=problem.ack")
    cells = page.locator("tbody tr").first.locator("td").all_inner_texts()
    assert cells[1:5] == ["user:alice", "problem.ack", f"{broken}/printer", "ok"]


def _alerting_terminals(prom: LocalPrometheus) -> set[str]:
    """Terminals that Prometheus has a firing alert for."""
    return {
        a["labels"]["terminal"]
        for a in prom.alerts()
        if a["state"] == "firing" and "terminal" in a["labels"]
    }


def test_a_terminal_put_in_maintenance_from_the_console_leaves_prometheus_alerts_until_it_ends(
    private_server: ServerFactory,
    private_terminals: TerminalFactory,
    prometheus_for: Callable[[Server], LocalPrometheus],
    context: BrowserContext,
) -> None:
    server = private_server()
    prom = prometheus_for(server)
    hall = unique("Hall")
    kept = private_terminals(unique("MAINT"), hall=hall)
    kept.report([periph("printer", "receipt_printer", "paper_out")])
    other = private_terminals(unique("OTHER"), hall=hall)
    other.report([periph("printer", "receipt_printer", "paper_out")])
    both = {kept.id, other.id}
    wait_until(lambda: _alerting_terminals(prom) == both, ALERT_TIMEOUT, "both alerts firing")
    add_user(server, "olga", Role.OPERATOR)
    page = context.new_page()
    log_in(page, server, "olga")
    _page(server, page, f"/terminals/{kept.id}")
    assert page.locator("#maintenance-state").inner_text() == "Not in maintenance."
    assert page.locator("#decommission").count() == 0  # admin only
    page.fill("#maintenance input[name=reason]", "printer swap")
    page.fill("#maintenance input[name=until]", _until(1))
    page.click("#maintenance-start")

    assert urlsplit(page.url).path == CONSOLE_PREFIX + f"/terminals/{kept.id}"
    state = page.locator("#maintenance-state").inner_text()
    assert state.startswith("In maintenance until")
    assert "Reason: printer swap" in state
    assert "Started by: user:olga" in state
    wait_until(
        lambda: _alerting_terminals(prom) == {other.id},
        ALERT_TIMEOUT,
        "the terminal in maintenance to leave Prometheus's alerts",
    )
    _page(server, page, "/problems")  # the problems list says so
    row = page.locator(f"tr[data-problem='{kept.id}/printer']")
    assert "in maintenance" in row.inner_text()
    (entry,) = _audit(server, "terminal.maintenance.start")
    assert (entry.actor, entry.target, entry.detail["reason"]) == (
        "user:olga", kept.id, "printer swap"
    )  # fmt: skip

    _page(server, page, f"/terminals/{kept.id}")
    page.click("#maintenance-end")
    assert page.locator("#maintenance-state").inner_text() == "Not in maintenance."
    wait_until(lambda: _alerting_terminals(prom) == both, ALERT_TIMEOUT, "its alert to return")
    (ended,) = _audit(server, "terminal.maintenance.end")
    assert (ended.actor, ended.target, ended.result) == ("user:olga", kept.id, AuditResult.OK)


def test_a_hall_put_in_maintenance_from_its_page_marks_every_terminal_and_refuses_a_past_end(
    start_server: ServerFactory, terminals: TerminalFactory, context: BrowserContext
) -> None:
    server = start_server()
    add_user(server, "olga", Role.OPERATOR)
    fine, broken = planted_fleet(server, terminals)
    page = context.new_page()
    log_in(page, server, "olga")
    _page(server, page, f"/halls/{HALL}")
    page.fill("#maintenance input[name=reason]", "repainting")
    page.fill("#maintenance input[name=until]", _until(-1))
    page.click("#maintenance-start")
    assert "The end of the maintenance is in the past." in page.content()
    assert server.maintenance_store.windows() == []

    _page(server, page, f"/halls/{HALL}")
    page.fill("#maintenance input[name=reason]", "repainting")
    page.fill("#maintenance input[name=until]", _until(2))
    page.click("#maintenance-start")
    assert "Reason: repainting" in page.locator("#maintenance-state").inner_text()
    for terminal in (fine, broken):
        assert "in maintenance" in page.locator(f"[data-terminal='{terminal}']").inner_text()
    _page(server, page, f"/terminals/{broken}")
    inherited = page.locator("#maintenance-state").inner_text()
    assert inherited.startswith("In maintenance with its hall until")
    assert page.locator("#maintenance-end").count() == 0  # it is the hall's window
    _page(server, page, f"/halls/{HALL}")
    page.click("#maintenance-end")
    assert page.locator("#maintenance-state").inner_text() == "Not in maintenance."
    actions = [(e.action, e.target, e.result) for e in _audit(server, "hall.maintenance.start", 2)]
    assert actions == [("hall.maintenance.start", HALL, AuditResult.OK),
                       ("hall.maintenance.start", HALL, AuditResult.FAILED)]  # fmt: skip


def test_an_admin_decommissions_a_terminal_after_typing_its_id(
    start_server: ServerFactory, terminals: TerminalFactory, context: BrowserContext
) -> None:
    server = start_server()
    add_user(server, "alice", Role.ADMIN)
    fine, broken = planted_fleet(server, terminals)
    page = context.new_page()
    log_in(page, server, "alice")
    _page(server, page, f"/terminals/{broken}")
    page.click("#decommission")
    assert page.locator("h1").inner_text() == f"Decommission terminal {broken}"
    page.fill("input[name=confirm]", fine)  # the wrong id: nothing happens
    page.click("#decommission-confirm")
    assert "The terminal's id was not typed" in page.content()
    assert server.fleet.get(broken) is not None

    _page(server, page, f"/terminals/{broken}/decommission")
    page.fill("input[name=confirm]", broken)
    page.click("#decommission-confirm")
    assert page.locator("#terminal-health").inner_text() == "decommissioned"
    assert server.fleet.get(broken) is None
    assert server.fleet.get(fine) is not None
    _page(server, page, f"/halls/{HALL}")
    assert page.locator(f"[data-terminal='{broken}']").count() == 0
    entries = _audit(server, "terminal.decommission", 2)
    assert [(e.actor, e.target, e.result) for e in entries] == [
        ("user:alice", broken, AuditResult.OK),
        ("user:alice", broken, AuditResult.FAILED),
    ]


def test_an_admin_creates_a_token_sees_its_secret_once_and_revokes_it(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    server = start_server()
    add_user(server, "alice", Role.ADMIN)
    page = context.new_page()
    log_in(page, server, "alice")
    _page(server, page, "/tokens")
    form = page.locator("#token-create")
    form.locator("input[name=name]").fill("dashboards")
    form.locator("select[name=role]").select_option("viewer")
    form.locator("input[name=expires]").fill("30d")
    form.locator("button").click()
    secret = page.locator("#token-secret").inner_text()
    assert secret.startswith("kf_")
    fleet_url = server.base_url + "/api/v1/terminals"
    assert httpx.get(fleet_url, headers=bearer(secret), timeout=5).status_code == 200
    _page(server, page, "/tokens")
    assert secret not in page.content()  # shown once
    row = page.locator("tr[data-token='dashboards']")
    assert row.locator(".status").inner_text() == "active"

    row.locator("button:text-is('Revoke')").click()
    assert page.locator("tr[data-token='dashboards'] .status").inner_text() == "revoked"
    assert httpx.get(fleet_url, headers=bearer(secret), timeout=5).status_code == 401
    (created,) = _audit(server, "token.create")
    assert (created.actor, created.target, created.detail["role"]) == (
        "user:alice", "dashboards", "viewer"
    )  # fmt: skip
    assert secret not in str(created.detail)
    (revoked,) = _audit(server, "token.revoke")
    assert (revoked.actor, revoked.target, revoked.result) == (
        "user:alice", "dashboards", AuditResult.OK
    )  # fmt: skip


def test_an_admin_creates_disables_enables_a_user_and_resets_its_password(
    start_server: ServerFactory, browser: Browser, context: BrowserContext
) -> None:
    server = start_server()
    add_user(server, "alice", Role.ADMIN)
    page = context.new_page()
    log_in(page, server, "alice")
    _page(server, page, "/users")
    form = page.locator("#user-create")
    form.locator("input[name=username]").fill("nora")
    form.locator("select[name=role]").select_option("operator")
    form.locator("input[name=password]").fill(PASSWORD)
    form.locator("button").click()
    assert page.locator("tr[data-user='nora'] .status").inner_text() == "active"
    user = server.console_store.user("nora")
    assert user is not None
    assert (user.role, user.created_by) == (Role.OPERATOR, "user:alice")

    nora = browser.new_context(locale="en-US")
    try:
        theirs = nora.new_page()
        log_in(theirs, server, "nora")
        assert urlsplit(theirs.url).path == CONSOLE_PREFIX  # logged in
        page.locator("tr[data-user='nora'] button:text-is('Disable')").click()
        assert page.locator("tr[data-user='nora'] .status").inner_text() == "disabled"
        theirs.reload()  # the session ended with the disabling
        assert urlsplit(theirs.url).path == CONSOLE_PREFIX + "/login"
        log_in(theirs, server, "nora")
        assert "Wrong username or password." in theirs.content()

        page.locator("tr[data-user='nora'] button:text-is('Enable')").click()
        new_password = "another horse battery staple"  # noqa: S105 - a test user's password
        page.locator("tr[data-user='nora'] input[name=password]").fill(new_password)
        page.locator("tr[data-user='nora'] button:text-is('Reset password')").click()
        log_in(theirs, server, "nora")  # the old password
        assert "Wrong username or password." in theirs.content()
        log_in(theirs, server, "nora", new_password)
        assert urlsplit(theirs.url).path == CONSOLE_PREFIX
    finally:
        nora.close()
    for action in ("user.create", "user.disable", "user.enable", "user.passwd"):
        (entry,) = _audit(server, action)
        assert (entry.actor, entry.target, entry.result) == ("user:alice", "nora", AuditResult.OK)
        assert PASSWORD not in str(entry.detail)
    page.locator("#user-create input[name=username]").fill("short")
    page.locator("#user-create input[name=password]").evaluate(
        "e => e.removeAttribute('minlength')"
    )
    page.locator("#user-create input[name=password]").fill("too short")
    page.locator("#user-create button").click()
    assert "A password needs 12 characters or more." in page.content()
    assert server.console_store.user("short") is None


def _csrf(page: Page) -> str:
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    return token


def _action_routes(server: Server) -> list[tuple[str, Role]]:
    """Every console POST route beyond viewer's (the actions), with its role."""
    found: list[tuple[str, Role]] = []
    for route in server.app.routes:
        if isinstance(route, Route) and route.path.startswith(CONSOLE_PREFIX + "/"):
            role = declared_role(route)
            if "POST" in (route.methods or set()) and role is not None and role is not Role.VIEWER:
                found.append((route.path, role))
    return found


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_a_viewer_sees_no_action_and_every_action_route_beyond_a_role_answers_403(
    start_server: ServerFactory, terminals: TerminalFactory, context: BrowserContext, role: Role
) -> None:
    server = start_server()
    add_user(server, "vera", role)
    _fine, broken = planted_fleet(server, terminals)
    page = context.new_page()
    log_in(page, server, "vera")
    for path in ("/problems", f"/terminals/{broken}", f"/halls/{HALL}"):
        _page(server, page, path)
        shown = page.locator("form.action").count()
        assert (shown == 0) is (role is Role.VIEWER), path
        assert page.locator("#decommission").count() == 0
    for path in ("/tokens", "/users", f"/terminals/{broken}/decommission"):
        answer = page.goto(server.base_url + CONSOLE_PREFIX + path)
        assert answer is not None
        assert answer.status == 403
    assert page.locator("nav a:text-is('Tokens')").count() == 0

    _page(server, page, "/problems")
    token = _csrf(page)
    routes = _action_routes(server)
    assert len(routes) >= 12
    refused = 0
    for path, required in routes:
        if allows(role, required):
            continue
        url = server.base_url + re.sub(r"\{[^}]+\}", broken, path)
        form: dict[str, str | float | bool] = {"csrf_token": token, "note": "x", "reason": "x", "until": _until(1),
                "confirm": broken, "name": "x", "role": "viewer", "username": "xx",
                "password": PASSWORD}  # fmt: skip
        refusal = context.request.post(url, form=form)
        assert refusal.status == 403, (path, refusal.status)
        assert "Your role may not do this." in refusal.text()
        refused += 1
    assert refused >= (12 if role is Role.VIEWER else 7)
    assert server.maintenance_store.windows() == []
    assert server.maintenance_store.acks() == []
    assert server.fleet.get(broken) is not None
    denied = server.access_store.audit(AuditFilter(result=AuditResult.DENIED), limit=50).items
    assert len(denied) >= refused
    assert {e.actor for e in denied} == {"user:vera"}


def test_a_forged_csrf_token_or_an_ended_session_changes_nothing(
    start_server: ServerFactory, terminals: TerminalFactory, context: BrowserContext
) -> None:
    server = start_server()
    add_user(server, "olga", Role.OPERATOR)
    _fine, broken = planted_fleet(server, terminals)
    page = context.new_page()
    log_in(page, server, "olga")
    url = server.base_url + CONSOLE_PREFIX + f"/terminals/{broken}/maintenance"
    form = {"reason": "forged", "until": _until(1)}
    answer = context.request.post(url, form={**form, "csrf_token": "forged"})
    assert answer.status == 403
    assert "The form expired." in answer.text()
    _page(server, page, f"/terminals/{broken}")
    token = _csrf(page)
    table = sa.table("console_session", sa.column("last_seen_at"), sa.column("username"))
    with server.storage.begin("age the session") as conn:  # idle past the limit
        past = datetime.now(UTC) - timedelta(days=2)
        conn.execute(sa.update(table).where(table.c.username == "olga").values(last_seen_at=past))
    answer = context.request.post(url, form={**form, "csrf_token": token})
    assert answer.status == 401
    assert server.maintenance_store.windows() == []
    entries = _audit(server, "terminal.maintenance.start", 2)
    assert [(e.result, e.detail.get("reason")) for e in entries] == [
        (AuditResult.DENIED, "session idle"),
        (AuditResult.DENIED, "csrf"),
    ]
