"""The analytics' pure core (server.analytics) and the demand it is tested on
(agent.demand): the planted idle terminal, the overloaded hall and the paper use are
recovered from a simulated week; rolling up in batches equals one pass."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.demand import generate, planted_plan
from server.analytics import (
    GroupBy,
    HourlyUsage,
    TerminalUse,
    UsageEvent,
    figures,
    hour_of_week,
    idle_terminals,
    merge,
    overloaded_halls,
    recommend,
    rollup,
    turned_away,
    utilisation,
)
from server.opening_hours import OpeningHours, open_seconds

WEEK = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday
HOURS = OpeningHours.model_validate(
    {
        "timezone": "UTC",
        "weekly": {
            d: [{"start": "08:00", "end": "17:00"}] for d in ("mon", "tue", "wed", "thu", "fri")
        },
    }
)


def _events(seed: int = 7) -> list[UsageEvent]:
    plan = planted_plan()
    return [
        UsageEvent(
            plan.hall_of(t.terminal_id).hall,
            t.terminal_id,
            t.service,
            t.outcome,
            t.cause,
            t.duration_s,
            t.pages,
            t.at,
        )
        for t in generate(plan, WEEK, seed)
    ]


def _uses(seed: int = 7) -> tuple[list[TerminalUse], list[TerminalUse]]:
    plan = planted_plan()
    terminals = {tid: h.hall for h in plan.halls for tid in h.terminals}
    open_s = {h.hall: open_seconds(HOURS, WEEK, WEEK + timedelta(days=7)) for h in plan.halls}
    return utilisation(rollup(_events(seed)).values(), terminals, open_s)


def test_open_seconds_counts_the_weekly_hours_of_a_week() -> None:
    assert open_seconds(HOURS, WEEK, WEEK + timedelta(days=7)) == 5 * 9 * 3600
    assert (
        open_seconds(HOURS, WEEK + timedelta(hours=16, minutes=30), WEEK + timedelta(days=1))
        == 1800
    )


def test_the_same_seed_draws_the_same_week_and_another_seed_another() -> None:
    plan = planted_plan()
    assert generate(plan, WEEK, 3) == generate(plan, WEEK, 3)
    assert generate(plan, WEEK, 3) != generate(plan, WEEK, 4)


def test_demand_follows_opening_hours_the_lunch_dip_and_the_monday_peak() -> None:
    events = _events()
    by_how = {f.key: f.transactions for f in figures(rollup(events).values(), GroupBy.HOUR_OF_WEEK)}
    assert all(isinstance(k, int) and k % 24 in range(8, 17) and k < 5 * 24 for k in by_how)
    # the dip and the peak, in the halls that are not saturated (a queue hides both)
    # and over several weeks: a single week of a calm hall is a few dozen transactions
    weeks = [e for seed in range(1, 9) for e in _events(seed)]
    calm = [r for r in rollup(weeks).values() if r.hall != "hall-03"]
    by_how = {f.key: f.transactions for f in figures(calm, GroupBy.HOUR_OF_WEEK)}
    lunch = sum(by_how.get(d * 24 + 12, 0) for d in range(5))
    other = sum(by_how.get(d * 24 + h, 0) for d in range(5) for h in range(8, 17) if h != 12)
    assert lunch < 0.75 * other / 8  # the lunch dip: below the mean of the other hours
    monday = sum(by_how.get(h, 0) for h in range(24))
    others = [sum(by_how.get(d * 24 + h, 0) for h in range(24)) for d in range(1, 5)]
    assert monday > max(others)  # Monday peak


@settings(deadline=None, max_examples=40)
@given(st.integers(min_value=0, max_value=10_000))
def test_the_planted_idle_terminal_and_overloaded_hall_are_found_for_any_seed(seed: int) -> None:
    per_terminal, per_hall = _uses(seed)
    assert [u.terminal_id for u, _median in idle_terminals(per_terminal)] == ["T-0103"]
    assert [h.hall for h in overloaded_halls(per_hall)] == ["hall-03"]
    moves = recommend(per_hall)
    calmest = min((h for h in per_hall if h.hall != "hall-03"), key=lambda h: h.utilisation or 0)
    assert [(m.source, m.target, m.terminals) for m in moves] == [(calmest.hall, "hall-03", 1)]
    after = moves[0].target_after.utilisation
    assert after is not None
    assert after <= 0.65  # the default target


def test_pages_per_completed_print_are_recovered() -> None:
    services = {f.key: f for f in figures(rollup(_events()).values(), GroupBy.SERVICE)}
    assert services["tax.invoice.print"].pages == 3 * services["tax.invoice.print"].completed
    assert services["market.licence.print"].pages == 2 * services["market.licence.print"].completed
    assert services["info.opening_hours"].pages == 0


def test_completion_rate_is_completed_over_all() -> None:
    (hall,) = [f for f in figures(rollup(_events()).values(), GroupBy.HALL) if f.key == "hall-02"]
    assert hall.completion_rate == hall.completed / hall.transactions
    assert hall.transactions == hall.completed + hall.abandoned + sum(hall.failed.values())
    assert figures([], GroupBy.HALL) == []


def test_hour_of_week_starts_on_monday_midnight_utc() -> None:
    assert hour_of_week(WEEK) == 0
    assert hour_of_week(WEEK + timedelta(days=6, hours=23, minutes=59)) == 167


_EVENT = st.builds(
    UsageEvent,
    hall=st.sampled_from(["h1", "h2"]),
    terminal_id=st.sampled_from(["T1", "T2", "T3"]),
    service=st.sampled_from(["a.b", "c.d"]),
    outcome=st.sampled_from(["completed", "abandoned"]),
    cause=st.none(),
    duration_s=st.integers(0, 3600).map(float),
    pages=st.integers(0, 5),
    occurred_at=st.integers(0, 3 * 24 * 3600).map(lambda s: WEEK + timedelta(seconds=s)),
)


@given(st.lists(_EVENT, max_size=60), st.lists(st.integers(0, 60), max_size=5))
def test_rolling_up_in_batches_equals_one_pass(events: list[UsageEvent], cuts: list[int]) -> None:
    bounds = sorted({0, len(events), *(min(c, len(events)) for c in cuts)})
    merged: dict[tuple[str, str, str, datetime], HourlyUsage] = {}
    for a, b in itertools.pairwise(bounds):
        merged = merge(merged, rollup(events[a:b]).values())
    assert merged == rollup(events)


def test_turned_away_is_the_hours_demand_rate_times_the_unavailable_time() -> None:
    start = WEEK + timedelta(hours=9)
    rows = [
        HourlyUsage("h", "T1", "tax.invoice.print", start, {"completed": 10}, 3000.0, 30),
        HourlyUsage(
            "h",
            "T1",
            "tax.invoice.print",
            start + timedelta(days=7),
            {"completed": 2, "failed_printer": 1},
            900.0,
            6,
        ),
    ]
    available = {
        ("h", "tax.invoice.print", start): (3600.0, 3600.0),  # a whole available hour: 10/h
        ("h", "tax.invoice.print", start + timedelta(days=7)): (3600.0, 1800.0),  # half down
    }
    (found,) = turned_away(rows, available)
    # rate at Monday 09:00 = (10 + 3) transactions / 1.5 available hours; 0.5 h down
    assert found.unavailable_s == 1800.0
    assert abs(found.estimated - 13 / 1.5 * 0.5) < 1e-9
    assert found.failed["printer"] == 1


def test_the_simulator_plants_an_idle_terminal_and_an_overloaded_hall_in_its_own_fleet() -> None:
    from agent.demand import demand_plan
    from agent.simulator import SimulationOptions, terminal_profiles

    profiles = terminal_profiles(SimulationOptions(terminals=9, halls=3))
    plan = demand_plan([(p.terminal_id, p.hall, p.region) for p in profiles])
    assert plan.overloaded == "hall-03"
    assert [sorted(h.idle) for h in plan.halls] == [["SIM-00007"], [], []]
    assert len({tuple(sorted(h.mix)) for h in plan.halls}) == 3  # a service mix per hall
