"""Analytics end to end: a simulated week (``agent.demand.planted_plan``, last week's
``sent_at``) published as ``kf.usage`` by raw terminals through a real mosquitto into the
real server, rolled up by its scheduled job, read back from the analytics API and the
metrics. The planted idle terminal, the overloaded hall, the recommended move and the
paper use per service are recovered; a hall in Asia/Shanghai shows its local Monday 09:00
at hour of the week 9; no field of any analytics answer or label of any analytics metric
could carry personal data. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from prometheus_client.parser import text_string_to_metric_families

from agent.demand import Transaction, planted_plan
from protocol.usage import SERVICE_CODE_PATTERN, FailureCause
from server.analytics import GroupBy
from server.analytics_metrics import ANALYTICS_METRIC_NAMES
from server.main import Server
from server.usage_metrics import USAGE_METRIC_NAMES
from tests.integration.conftest import ServerFactory, TerminalFactory, api, scrape
from tests.integration.simulated_week import (
    WEEK_SETTINGS,
    api_put,
    last_week,
    rolled_up,
    send_usage,
    simulate_week,
    week_range,
)
from tests.support.fleet_messages import PRINTER_OK
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def week(
    private_server: ServerFactory, private_terminals: TerminalFactory, database_url: str
) -> tuple[Server, list[Transaction], datetime]:
    server = private_server(database_url=database_url, **WEEK_SETTINGS)
    transactions, start = simulate_week(server, private_terminals)
    return server, transactions, start


def _flags(rng: dict[str, str]) -> list[str]:
    return [f"--{k}={v}" for k, v in rng.items()]


def test_a_simulated_week_recovers_the_planted_idle_terminal_overloaded_hall_and_paper_use(
    week: tuple[Server, list[Transaction], datetime],
) -> None:
    server, transactions, start = week
    wait_until(lambda: rolled_up(server, start) == len(transactions), 60, "the week rolled up")

    use = api(server, "/api/v1/analytics/utilisation", **week_range(start)).json()
    assert [i["terminal"]["terminal_id"] for i in use["idle_terminals"]] == ["T-0103"]
    assert [h["hall"] for h in use["overloaded_halls"]] == ["hall-03"]
    moves = [(m["source"], m["target"], m["terminals"]) for m in use["recommendations"]]
    assert moves == [("hall-01", "hall-03", 1)]
    (move,) = use["recommendations"]
    assert move["target_after"]["utilisation"] <= use["thresholds"]["target"]
    assert {h["hall"]: h["open_s"] for h in use["halls"]} == dict.fromkeys(
        ("hall-01", "hall-02", "hall-03"), 5 * 9 * 3600.0
    )

    # the command line answers the same from the database, with no server in between
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_") or "TEST" in k}
    env["KIOSKFLEET_DATABASE_URL"] = server.settings.database_url
    rng = week_range(start)
    cli = subprocess.run(
        [sys.executable, "-m", "kioskfleet.cli", "analytics", "utilisation", *_flags(rng)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == use

    by_service = {
        g["key"]: g
        for g in api(
            server, "/api/v1/analytics/transactions", by="service", **week_range(start)
        ).json()["groups"]
    }
    for code, spec in planted_plan().services.items():
        assert by_service[code]["pages"] == spec.pages * by_service[code]["completed"]
    sent = Counter((t.service, t.outcome) for t in transactions)
    for code, group in by_service.items():
        assert group["completed"] == sent[(code, "completed")]
        assert group["abandoned"] == sent[(code, "abandoned")]
        assert sum(group["failed"].values()) == sent[(code, "failed")]

    hours = api(server, "/api/v1/analytics/transactions", by="hour_of_week", **week_range(start))
    keys = [g["key"] for g in hours.json()["groups"]]
    assert keys
    assert all(k % 24 in range(8, 17) and k < 5 * 24 for k in keys)  # opening hours only

    def gauges() -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels["hall"]): s.value
            for family in text_string_to_metric_families(scrape(server))
            for s in family.samples
            if s.name.startswith("kioskfleet_hall_")
            and "hall" in s.labels
            and "service" not in s.labels
        }

    # The gauges cover the last 14 days here (the setting): more opening time than the
    # week, the same for every hall, so utilisations shrink by one factor and keep their
    # ratios, and the idle terminal stays far below its hall's median.
    wait_until(
        lambda: gauges().get(("kioskfleet_hall_idle_terminals", "hall-01")) == 1.0,
        20,
        "the idle-terminal gauge",
    )
    seen = gauges()
    assert seen[("kioskfleet_hall_idle_terminals", "hall-02")] == 0.0
    api_use = {h["hall"]: h["utilisation"] for h in use["halls"]}
    ratio = (
        seen[("kioskfleet_hall_utilisation_ratio", "hall-03")]
        / seen[("kioskfleet_hall_utilisation_ratio", "hall-01")]
    )
    assert abs(ratio - api_use["hall-03"] / api_use["hall-01"]) < 1e-9


def _hours_of_week(server: Server, start: datetime, **filters: str) -> dict[int, int]:
    response = api(
        server, "/api/v1/analytics/transactions", by="hour_of_week", **filters, **week_range(start)
    )
    assert response.status_code == 200, response.text
    return {g["key"]: g["transactions"] for g in response.json()["groups"]}


def test_a_shanghai_halls_local_monday_nine_is_hour_of_week_nine_through_the_api(
    private_server: ServerFactory, private_terminals: TerminalFactory, database_url: str
) -> None:
    server = private_server(database_url=database_url, **WEEK_SETTINGS)
    api_put(server, "/api/v1/services", {"services": [{"code": "tax.invoice.print", "needs": []}]})
    for hall, zone in (("hall-sh", "Asia/Shanghai"), ("hall-utc", "UTC")):
        weekly = {d: [{"start": "08:00", "end": "17:00"}] for d in ("mon", "tue")}
        api_put(server, f"/api/v1/halls/{hall}/opening-hours", {"timezone": zone, "weekly": weekly})
    shanghai = private_terminals("T-SH01", hall="hall-sh", region="region-cn")
    utc = private_terminals("T-UT01", hall="hall-utc", region="region-eu")
    nohours = private_terminals("T-NO01", hall="hall-nohours", region="region-eu")
    for raw in (shanghai, utc, nohours):
        raw.report([PRINTER_OK])
    wait_until(
        lambda: all(server.fleet.get(t) is not None for t in ("T-SH01", "T-UT01", "T-NO01")),
        10,
        "the terminals' halls",
    )
    monday = last_week(datetime.now(UTC))

    def at(hour: float) -> datetime:
        return monday + timedelta(hours=hour)

    # Planted: Shanghai's peak at its local Monday 09:00 (01:00 UTC), a little at its
    # Tuesday 11:00 (03:00 UTC); the UTC hall's at 09:00 UTC; the hall without hours in UTC.
    planted = [
        *(("T-SH01", at(1 + i / 10)) for i in range(6)),
        *(("T-SH01", at(24 + 3 + i / 10)) for i in range(2)),
        *(("T-UT01", at(9 + i / 10)) for i in range(4)),
        ("T-NO01", at(14.5)),
    ]
    raws = {"T-SH01": shanghai, "T-UT01": utc, "T-NO01": nohours}
    for tid, when in planted:
        send_usage(
            raws[tid], Transaction(tid, when, "tax.invoice.print", "completed", None, 300.0, 3)
        )
    wait_until(lambda: rolled_up(server, monday) == len(planted), 60, "the transactions rolled up")

    local = _hours_of_week(server, monday, hall="hall-sh")
    assert local == {9: 6, 24 + 11: 2}
    assert max(local, key=lambda k: local[k]) == 9  # Monday 09:00, not the UTC hour 1
    assert _hours_of_week(server, monday, hall="hall-utc") == {9: 4}
    assert _hours_of_week(server, monday, hall="hall-nohours") == {14: 1}  # UTC
    # several halls: each hall's rows in its own zone, so the two 09:00s add up
    assert _hours_of_week(server, monday) == {9: 10, 14: 1, 24 + 11: 2}


_FIELDS = (
    "range",
    "since",
    "until",
    "by",
    "groups",
    "key",
    "transactions",
    "completed",
    "abandoned",
    "failed",
    "completion_rate",
    "busy_s",
    "pages",
    "terminals",
    "halls",
    "idle_terminals",
    "overloaded_halls",
    "recommendations",
    "thresholds",
    "hall",
    "terminal_id",
    "open_s",
    "utilisation",
    "terminal",
    "hall_median",
    "source",
    "target",
    "source_before",
    "source_after",
    "target_before",
    "target_after",
    "idle_share_of_median",
    "min_terminals_for_idle",
    "overloaded",
    "min_open_s",
    "items",
    "service",
    "available_s",
    "availability",
    "unavailable_s",
    "estimated",
)
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_CODE = re.compile(SERVICE_CODE_PATTERN)
_ENUMS = {g.value for g in GroupBy} | {c.value for c in FailureCause}


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield (f"{path}.{k}", k)  # a key is a value too
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(value, str):
        yield (path, value)
    else:
        assert value is None or isinstance(value, int | float), (path, value)


def test_no_analytics_answer_or_metric_has_a_field_that_could_carry_personal_data(
    week: tuple[Server, list[Transaction], datetime],
) -> None:
    server, transactions, start = week
    wait_until(lambda: rolled_up(server, start) == len(transactions), 60, "the week rolled up")
    plan = planted_plan()
    halls = {h.hall for h in plan.halls}
    terminals = {tid for h in plan.halls for tid in h.terminals}
    fields = set(_FIELDS)
    routes = sorted(
        r.path
        for r in server.app.routes
        if isinstance(r, APIRoute) and r.path.startswith("/api/v1/analytics/")
    )
    assert routes == [
        "/api/v1/analytics/availability",
        "/api/v1/analytics/report",  # a PDF or HTML download, not JSON: test_hall_report.py
        "/api/v1/analytics/transactions",
        "/api/v1/analytics/turned-away",
        "/api/v1/analytics/utilisation",
    ]
    routes.remove("/api/v1/analytics/report")
    answers = [api(server, p, **week_range(start)) for p in routes]
    answers += [
        api(server, "/api/v1/analytics/transactions", by=by.value, **week_range(start))
        for by in GroupBy
    ]
    for response in answers:
        assert response.status_code == 200, response.text
        for path, text in _strings(response.json(), response.url.path):
            key = path.rsplit(".", 1)[-1]
            assert (
                text in fields
                or text in halls
                or text in terminals
                or text in _ENUMS
                or _CODE.match(text)
                or _TIME.match(text)
            ), (path, text)
            if text == key:  # a key: one of the fields, an enum or a catalogue code
                assert text in fields or text in _ENUMS or _CODE.match(text), path
    refused = api(server, "/api/v1/analytics/utilisation", citizen="x")
    assert refused.status_code == 422

    allowed_labels = {"region", "hall", "service", "outcome", "reason"}  # never a terminal
    seen = set()
    for family in text_string_to_metric_families(scrape(server)):
        if family.name not in {*ANALYTICS_METRIC_NAMES, *USAGE_METRIC_NAMES} and not any(
            family.name + "_total" == n for n in USAGE_METRIC_NAMES
        ):
            continue
        seen.add(family.name)
        for sample in family.samples:
            assert set(sample.labels) <= allowed_labels, (sample.name, sample.labels)
            assert not set(sample.labels.values()) & terminals, sample
            if "service" in sample.labels:
                assert sample.labels["service"] == "other" or _CODE.match(sample.labels["service"])
    assert set(ANALYTICS_METRIC_NAMES) <= seen
