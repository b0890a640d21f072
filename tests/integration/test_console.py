"""The operations console in real headless Chromium (Debian's ``chromium``, driven by
Playwright's Python client with ``executable_path``; no browser download) against a real
server on SQLite fed by terminals publishing over a real mosquitto: login, the planted
fault on the hall and terminal pages, the audit entry of the login, roles, CSRF, session
expiry, the login rate limit, zh_CN, and no request to any other host."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, BrowserContext, Page
from starlette.routing import Route

from server.access import Role, allows
from server.access_api import declared_role
from server.access_store import AuditFilter
from server.console.web import CONSOLE_OPEN_PATHS, CONSOLE_PREFIX, SESSION_COOKIE
from server.console_auth import UserRecord, hash_password
from server.main import Server
from server.opening_hours import Interval, OpeningHours, Weekday
from server.opening_hours_store import OpeningHoursStore
from server.rollout_api import ROLLOUT_EVENTS
from tests.integration.conftest import ServerFactory, TerminalFactory, metric, periph, wait_until
from tests.support.waiting import HTTP_TIMEOUT_S

pytestmark = [pytest.mark.integration, pytest.mark.browser]

PASSWORD = "correct horse battery staple"  # noqa: S105 - a test user's password
HALL = "Hall Console"


def add_user(server: Server, username: str, role: Role) -> None:
    server.console_store.create_user(
        UserRecord(
            username=username,
            role=role,
            password_hash=hash_password(PASSWORD),
            created_at=datetime.now(UTC),
            created_by="test",
        )
    )


def log_in(
    page: Page, server: Server, username: str, password: str = PASSWORD, *, here: bool = False
) -> None:
    """Log in through the login form (the one on the current page when ``here``)."""
    if not here:
        page.goto(server.base_url + CONSOLE_PREFIX + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    with page.expect_navigation():  # the form's POST answered (a slow hash on a loaded machine)
        page.click("#login")


def planted_fleet(server: Server, terminals: TerminalFactory) -> tuple[str, str]:
    """Two terminals of HALL over the broker: one fine, one with its printer out of paper."""
    fine, broken = terminals(hall=HALL, region="East"), terminals(hall=HALL, region="East")
    fine.report([periph("printer", "receipt_printer"), periph("idcard", "id_card_reader")])
    broken.report([periph("printer", "receipt_printer", "paper_out", fault_code="E-PAPER"),
                   periph("idcard", "id_card_reader")])  # fmt: skip
    wait_until(lambda: server.fleet.get(broken.id) is not None, 10, "the reports to arrive")
    wait_until(lambda: server.fleet.get(fine.id) is not None, 10, "the reports to arrive")
    return fine.id, broken.id


def test_an_admin_logs_in_sees_the_planted_paper_out_opens_the_terminal_and_reads_the_audit_entry(
    start_server: ServerFactory, terminals: TerminalFactory, context: BrowserContext
) -> None:
    server = start_server()
    add_user(server, "alice", Role.ADMIN)
    fine, broken = planted_fleet(server, terminals)
    page = context.new_page()
    log_in(page, server, "alice")
    assert urlsplit(page.url).path == CONSOLE_PREFIX
    (cookie,) = [c for c in context.cookies() if c["name"] == SESSION_COOKIE]
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"], cookie["path"]) == (
        True, True, "Strict", CONSOLE_PREFIX
    )  # fmt: skip
    row = page.locator("tr", has=page.locator(f"a:text-is('{HALL}')"))
    assert "receipt printer: paper out \u00d7 1" in row.inner_text()

    page.click(f"a:text-is('{HALL}')")
    tile = page.locator(f"[data-terminal='{broken}']")
    assert "paper out" in tile.inner_text()
    assert "faulty" in (tile.get_attribute("class") or "").split()
    assert "ok" in (page.locator(f"[data-terminal='{fine}']").get_attribute("class") or "").split()

    tile.click()
    assert page.locator("h1").inner_text() == f"Terminal {broken}"
    printer = page.locator("#peripherals tr", has=page.locator("td:text-is('printer')"))
    assert "paper out" in printer.inner_text()
    assert "E-PAPER" in printer.inner_text()
    assert page.locator("#terminal-health").inner_text() == "faulty"
    assert "Delivery counters" in page.content()  # admin sees them
    assert "paper out (E-PAPER)" in page.locator("#timeline").inner_text()

    page.goto(server.base_url + CONSOLE_PREFIX + "/audit?action=console.login")
    entry = page.locator("tbody tr").first
    cells = entry.locator("td").all_inner_texts()
    assert cells[1:5] == ["user:alice", "console.login", "alice", "ok"]
    assert cells[5] == "127.0.0.1"


def test_a_viewer_sees_no_action_buttons_nor_counters_and_gets_403_from_admin_pages(
    start_server: ServerFactory, terminals: TerminalFactory, context: BrowserContext
) -> None:
    server = start_server()
    add_user(server, "vera", Role.VIEWER)
    _fine, broken = planted_fleet(server, terminals)
    page = context.new_page()
    log_in(page, server, "vera")
    page.goto(server.base_url + CONSOLE_PREFIX + "/problems")
    assert page.locator("td", has_text=broken).count() == 1
    assert page.locator("th:text-is('Actions')").count() == 0
    assert page.locator("nav a:text-is('Audit log')").count() == 0
    page.goto(server.base_url + CONSOLE_PREFIX + f"/terminals/{broken}")
    assert "Delivery counters" not in page.content()
    always = [Interval(start="00:00", end="24:00")]
    hours = OpeningHours(timezone="Asia/Shanghai", weekly=dict.fromkeys(Weekday, always))
    OpeningHoursStore(server.storage).put(HALL, hours, actor="test", now=datetime.now(UTC))
    page.goto(server.base_url + CONSOLE_PREFIX + f"/halls/{HALL}")
    assert "Open now \u00b7 Asia/Shanghai" in page.content()
    assert "mon: 00:00\u201324:00" in page.locator("ul.hours").inner_text()
    answer = page.goto(server.base_url + CONSOLE_PREFIX + "/audit")
    assert answer is not None
    assert answer.status == 403
    assert "Your role may not do this." in page.content()


def test_every_console_route_declares_a_role_and_refuses_no_session_and_weak_roles(
    start_server: ServerFactory,
) -> None:
    # A new console route without console_role(...) fails here, as API routes do in
    # tests/integration/test_api_access.py.
    server = start_server()
    sessions = {}
    for role in (Role.VIEWER, Role.OPERATOR, Role.ADMIN):
        add_user(server, role.value, role)
        sessions[role] = _httpx_login(server, role.value)
    checked: set[str] = set()
    for route in server.app.routes:
        if not isinstance(route, Route) or not route.path.startswith(CONSOLE_PREFIX):
            continue
        if route.path in CONSOLE_OPEN_PATHS:
            continue
        required = declared_role(route)
        assert required is not None, f"{route.path} declares no role (use console_role)"
        path = re.sub(r"\{[^}]+\}", "nope", route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            anonymous = httpx.request(method, server.base_url + path, timeout=HTTP_TIMEOUT_S)
            if method == "GET":
                assert anonymous.status_code == 303, (method, path)
                assert anonymous.headers["location"].startswith(CONSOLE_PREFIX + "/login?next=")
            else:
                assert anonymous.status_code == 401, (method, path)
            for granted, client in sessions.items():
                answer = client.request(method, path)
                if not allows(granted, required):
                    assert answer.status_code == 403, (method, path, granted)
                    assert "Your role may not do this." in answer.text
                elif method == "POST":  # let through to the CSRF check, which this fails
                    assert answer.status_code == 403, (method, path, granted)
                    assert "The form expired." in answer.text
                else:
                    assert answer.status_code not in (401, 403), (method, path, granted)
            checked.add(f"{method} {route.path}")
    rollouts = CONSOLE_PREFIX + "/rollouts"
    assert {
        f"GET {CONSOLE_PREFIX}/releases", f"GET {rollouts}", f"GET {rollouts}/new",
        f"POST {rollouts}/preview", f"POST {rollouts}", f"GET {rollouts}/{{rollout_id}}",
        *(f"POST {rollouts}/{{rollout_id}}/{verb}" for verb in ROLLOUT_EVENTS),
    } <= checked  # fmt: skip
    assert len(checked) >= 36  # + the operator actions (action_routes), the admin pages,
    # the service catalogue (GET, POST) and the analytics page


def _httpx_login(server: Server, username: str) -> httpx.Client:
    client = httpx.Client(base_url=server.base_url, timeout=HTTP_TIMEOUT_S)
    form = client.get(CONSOLE_PREFIX + "/login")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text)
    assert token is not None
    # httpx keeps Secure cookies only over https: hand them over by hand for plain http.
    client.cookies.set("kf_login", form.cookies["kf_login"])
    answer = client.post(
        CONSOLE_PREFIX + "/login",
        data={"username": username, "password": PASSWORD, "login_token": token.group(1)},
    )
    assert answer.status_code == 303, answer.text
    client.cookies.set(SESSION_COOKIE, answer.cookies[SESSION_COOKIE])
    return client


def test_a_post_without_the_sessions_csrf_token_is_refused_and_audited(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    server = start_server()
    add_user(server, "olga", Role.OPERATOR)
    page = context.new_page()
    log_in(page, server, "olga")
    url = server.base_url + CONSOLE_PREFIX + "/logout"
    assert context.request.post(url, form={}).status == 403
    assert context.request.post(url, form={"csrf_token": "forged"}).status == 403
    page.reload()  # still logged in: the forged logouts did nothing
    assert urlsplit(page.url).path == CONSOLE_PREFIX
    page.click("#logout")  # the real form carries the token
    assert urlsplit(page.url).path == CONSOLE_PREFIX + "/login"
    page.goto(server.base_url + CONSOLE_PREFIX)
    assert urlsplit(page.url).path == CONSOLE_PREFIX + "/login"
    denied = [
        e
        for e in server.access_store.audit(AuditFilter(action="console.logout"), limit=10).items
        if e.result.value == "denied"
    ]
    assert len(denied) == 2
    assert {e.detail["reason"] for e in denied} == {"csrf"}
    assert {e.actor for e in denied} == {"user:olga"}


@pytest.mark.parametrize("column", ["last_seen_at", "created_at"])
def test_an_idle_or_too_old_session_sends_the_browser_back_to_the_login_page(
    start_server: ServerFactory, context: BrowserContext, column: str
) -> None:
    server = start_server(console_session_idle_s=600, console_session_absolute_s=3600)
    add_user(server, "ida", Role.VIEWER)
    page = context.new_page()
    log_in(page, server, "ida")
    page.goto(server.base_url + CONSOLE_PREFIX + "/problems")
    assert urlsplit(page.url).path == CONSOLE_PREFIX + "/problems"
    # The session's clock moved on: its last use (or its login) is now further back than
    # the idle (absolute) limit.
    past = datetime.now(UTC) - timedelta(seconds=3601)
    table = sa.table("console_session", sa.column(column), sa.column("username"))
    with server.storage.begin("age the session") as conn:
        conn.execute(sa.update(table).where(table.c.username == "ida").values({column: past}))
    page.reload()
    assert urlsplit(page.url).path == CONSOLE_PREFIX + "/login"
    assert urlsplit(page.url).query == "next=/console/problems"
    log_in(page, server, "ida", here=True)  # and logging in again lands where the user was
    assert urlsplit(page.url).path == CONSOLE_PREFIX + "/problems"
    pruned = server.console_store.prune_sessions(
        idle=timedelta(seconds=600), absolute=timedelta(seconds=3600), now=datetime.now(UTC)
    )
    assert pruned == 1  # the aged one; the new one stays


def test_login_attempts_beyond_the_budget_are_refused_even_with_the_right_password(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    server = start_server(console_login_burst=3, console_login_rate_per_s=0.001)
    add_user(server, "rita", Role.VIEWER)
    page = context.new_page()
    for _ in range(3):
        log_in(page, server, "rita", "wrong password, twelve+")
        assert "Wrong username or password." in page.content()
    log_in(page, server, "rita")
    assert urlsplit(page.url).path == CONSOLE_PREFIX + "/login"
    assert "Too many login attempts" in page.content()
    assert metric(server, "kioskfleet_console_logins_total", result="refused") == 3
    assert metric(server, "kioskfleet_console_logins_total", result="rate_limited") == 1
    assert metric(server, "kioskfleet_console_logins_total", result="ok") == 0
    reasons = [e.detail.get("reason") for e in server.access_store.audit(
        AuditFilter(action="console.login"), limit=10).items]  # fmt: skip
    assert reasons == ["rate_limited_source", *["bad_credentials"] * 3]


def test_a_chinese_browser_gets_the_console_in_zh_cn_and_a_user_can_switch_to_english(
    start_server: ServerFactory, terminals: TerminalFactory, browser: Browser
) -> None:
    server = start_server()
    add_user(server, "li", Role.OPERATOR)
    _fine, broken = planted_fleet(server, terminals)
    context = browser.new_context(locale="zh-CN")
    try:
        page = context.new_page()
        page.goto(server.base_url + CONSOLE_PREFIX + "/login")
        assert page.locator("h1").inner_text() == "登录"
        log_in(page, server, "li")
        assert page.locator("h1").inner_text() == "设备总览"
        assert "凭条打印机: 缺纸 \u00d7 1" in page.content()
        page.goto(server.base_url + CONSOLE_PREFIX + f"/terminals/{broken}")
        timeline = page.locator("#timeline").inner_text()
        assert "缺纸 (E-PAPER)" in timeline  # the peripheral's condition, translated
        assert "连接" in timeline  # connectivity, its state and why it changed
        assert "在线 [上报]" in timeline
        page.goto(server.base_url + CONSOLE_PREFIX)
        page.select_option("select[name=language]", "en")
        page.click("text=切换语言")
        assert page.locator("h1").inner_text() == "Fleet"
        user = server.console_store.user("li")
        assert user is not None
        assert user.language == "en"
    finally:
        context.close()


def test_no_console_page_requests_anything_from_another_host(
    start_server: ServerFactory, terminals: TerminalFactory, context: BrowserContext
) -> None:
    server = start_server()
    add_user(server, "admin", Role.ADMIN)
    _fine, broken = planted_fleet(server, terminals)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    log_in(page, server, "admin")
    for path in ("", f"/halls/{HALL}", f"/terminals/{broken}", "/problems", "/audit", "/nope"):
        answer = page.goto(server.base_url + CONSOLE_PREFIX + path)
        assert answer is not None
        if path != "/nope":  # an unknown path is the app's JSON 404
            assert answer.headers["content-security-policy"].startswith("default-src 'none';")
        page.wait_for_load_state("networkidle")
    origin = urlsplit(server.base_url).netloc
    assert requested
    assert any(u.endswith("/console/static/console.css") for u in requested)
    assert [u for u in requested if urlsplit(u).netloc != origin] == []
