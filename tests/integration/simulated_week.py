"""A simulated week through the real broker into a real server (``agent.demand``'s planted
plan, last week's ``sent_at``): the catalogue and opening hours set over the API, raw
terminals placed in their halls, every transaction published as ``kf.usage``. Used by
``test_analytics_e2e.py`` and ``test_console_analytics.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from agent.demand import DemandPlan, Transaction, generate, planted_plan
from protocol.usage import FailureCause, Outcome, UsageBody, UsageMessage
from server.main import Server
from tests.integration.conftest import RawTerminal, TerminalFactory, admin_token, api, bearer
from tests.support.fleet_messages import PRINTER_OK
from tests.support.waiting import wait_until

__all__ = [
    "SEED",
    "WEEK_SETTINGS",
    "api_put",
    "last_week",
    "rolled_up",
    "send_usage",
    "simulate_week",
    "week_range",
]

SEED = 14
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")
WEEK_SETTINGS: dict[str, Any] = {
    "usage_rollup_interval_s": 1.0,
    "analytics_metrics_refresh_s": 1.0,
    "analytics_metrics_window_days": 14.0,  # last week, whole
    "services_metrics_refresh_s": 1.0,
    "ingest_rate_per_terminal_s": 10_000.0,
    "ingest_burst_per_terminal": 100_000,
}
"""Server settings for a week sent in one go and rolled up within seconds."""


def last_week(now: datetime) -> datetime:
    """Monday 00:00 UTC of the week before ``now``'s."""
    monday = (now - timedelta(days=now.weekday() + 7)).astimezone(UTC)
    return monday.replace(hour=0, minute=0, second=0, microsecond=0)


def api_put(server: Server, path: str, body: dict[str, Any]) -> None:
    """PUT ``body`` to ``path`` with the admin token; asserts it was taken (200)."""
    response = httpx.put(
        server.base_url + path, json=body, headers=bearer(admin_token(server)), timeout=5
    )
    assert response.status_code == 200, response.text


def _configure(server: Server, plan: DemandPlan) -> None:
    needs = {True: ["printer"], False: []}
    catalogue = [{"code": s.code, "needs": needs[s.needs_printer]} for s in plan.services.values()]
    api_put(server, "/api/v1/services", {"services": catalogue})
    hours = {"timezone": "UTC", "weekly": {d: [{"start": "08:00", "end": "17:00"}] for d in WEEKDAYS}}  # fmt: skip
    for hall in plan.halls:
        api_put(server, f"/api/v1/halls/{hall.hall}/opening-hours", hours)


def send_usage(terminal: RawTerminal, t: Transaction) -> None:
    """Publish ``t`` as the ``kf.usage`` the agent would send (``sent_at`` = ``t.at``)."""
    body = UsageBody(
        service=t.service,
        outcome=Outcome(t.outcome),
        cause=None if t.cause is None else FailureCause(t.cause),
        duration_s=t.duration_s,
        pages=t.pages,
    )
    message = UsageMessage.model_validate(
        {
            "schema": "kf.usage",
            "version": 1,
            "terminal_id": terminal.id,
            "boot_id": terminal.boot,
            "seq": terminal.next_seq(),
            "sent_at": t.at,
            "body": body,
        }
    )
    terminal.publish(message)


def simulate_week(server: Server, terminals: TerminalFactory) -> tuple[list[Transaction], datetime]:
    """Send last week's planted demand to ``server`` (started with ``WEEK_SETTINGS``);
    answers the transactions sent and the Monday 00:00 UTC the week starts."""
    plan = planted_plan()
    _configure(server, plan)
    start = last_week(datetime.now(UTC))
    transactions = generate(plan, start, SEED)
    raw = {}
    for hall in plan.halls:
        for tid in hall.terminals:
            raw[tid] = terminals(tid, hall=hall.hall, region=hall.region)
            raw[tid].report([PRINTER_OK])
    wait_until(lambda: server.fleet.get("T-0302") is not None, 10, "the terminals' halls")
    for t in transactions:
        send_usage(raw[t.terminal_id], t)
    return transactions, start


def week_range(start: datetime) -> dict[str, str]:
    """``since`` and ``until`` of the week from ``start``, as query parameters."""
    return {"since": start.isoformat(), "until": (start + timedelta(days=7)).isoformat()}


def rolled_up(server: Server, start: datetime) -> int:
    """Transactions of the week the analytics API counts so far."""
    response = api(server, "/api/v1/analytics/transactions", by="terminal", **week_range(start))
    assert response.status_code == 200, response.text
    return sum(g["transactions"] for g in response.json()["groups"])
