"""Simulated citizen demand (issue 14): a week of transactions from a seed, with what the
analytics must find planted in it.

``DemandPlan`` says the halls, their terminals and service mix, the opening hours (UTC),
the lunch dip and the Monday peak, the planted idle terminals and the overloaded hall, and
each service's mean duration and pages per completed transaction (so paper use is known).
``generate(plan, week_start, seed)`` draws the transactions: per terminal and open hour a
Poisson number of arrivals at ``rate x lunch x monday`` (x ``idle_share`` for a planted
idle terminal), served one after another (a terminal serves one citizen at a time; a citizen
who would wait longer than ``max_wait``, or finish after closing, leaves without a
transaction). Each transaction's time is when it ended (the agent's ``sent_at``). The same
seed gives the same transactions. ``planted_plan()`` is the plan the simulator and the
tests share: hall-03 overloaded, terminal T-0103 in hall-01 idle.

Pure: no I/O, no clock; the simulator (``agent.simulator``) sends what this draws.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = [
    "DemandPlan",
    "HallPlan",
    "ServicePlan",
    "Transaction",
    "demand_plan",
    "generate",
    "monday_of",
    "planted_plan",
]


@dataclass(frozen=True, slots=True)
class ServicePlan:
    code: str
    mean_duration_s: float
    pages: int  # per completed transaction
    needs_printer: bool = False


@dataclass(frozen=True, slots=True)
class HallPlan:
    hall: str
    region: str
    terminals: tuple[str, ...]
    rate_per_hour: float  # arrivals per terminal and open hour, before the dip and the peak
    mix: Mapping[str, float]  # service code → weight
    idle: frozenset[str] = frozenset()  # planted idle terminals


@dataclass(frozen=True, slots=True)
class DemandPlan:
    halls: tuple[HallPlan, ...]
    services: Mapping[str, ServicePlan]
    open_days: frozenset[int] = frozenset(range(5))  # Monday = 0
    open_from: int = 8  # UTC hour
    open_until: int = 17
    lunch_hours: frozenset[int] = frozenset({12})
    lunch_factor: float = 0.4
    monday_factor: float = 1.5
    idle_share: float = 0.05
    abandon_share: float = 0.05
    printer_failure_share: float = 0.03  # of transactions needing the printer
    max_wait: timedelta = timedelta(minutes=20)  # a citizen who would wait longer leaves
    overloaded: str | None = None  # the planted overloaded hall (what tests expect)

    def factor(self, at: datetime) -> float:
        """Demand multiplier at ``at``: 0 when closed, the lunch dip, the Monday peak."""
        if at.weekday() not in self.open_days or not self.open_from <= at.hour < self.open_until:
            return 0.0
        f = self.lunch_factor if at.hour in self.lunch_hours else 1.0
        return f * (self.monday_factor if at.weekday() == 0 else 1.0)

    def hall_of(self, terminal_id: str) -> HallPlan:
        """Raises KeyError for a terminal of no hall."""
        for hall in self.halls:
            if terminal_id in hall.terminals:
                return hall
        raise KeyError(terminal_id)


@dataclass(frozen=True, slots=True)
class Transaction:
    terminal_id: str
    at: datetime  # when it ended (the agent's sent_at)
    service: str
    outcome: str
    cause: str | None
    duration_s: float
    pages: int


_HOUR: Final = timedelta(hours=1)
SERVICES: Final = {
    s.code: s
    for s in (
        ServicePlan("tax.invoice.print", 540.0, 3, needs_printer=True),
        ServicePlan("police.residence_permit.renew", 660.0, 0),
        ServicePlan("market.licence.print", 600.0, 2, needs_printer=True),
        ServicePlan("info.opening_hours", 480.0, 0),
    )
}


_MIXES: Final = (
    {"tax.invoice.print": 3.0, "police.residence_permit.renew": 1.0},
    {"police.residence_permit.renew": 2.0, "info.opening_hours": 1.0},
    {"tax.invoice.print": 1.0, "market.licence.print": 2.0},
)
NORMAL_RATE: Final = 1.0  # arrivals per terminal and open hour: about 15% busy
OVERLOADED_RATE: Final = 8.0  # more than a terminal serves: about 85-90% busy, a queue


def demand_plan(placements: Sequence[tuple[str, str, str]]) -> DemandPlan:
    """The plan for terminals ``(terminal id, hall, region)``: halls in name order take
    the service mixes in turn; the last hall (of two or more) is overloaded; the last
    terminal of the first hall is idle when that hall has three or more."""
    by_hall: dict[str, list[str]] = {}
    regions: dict[str, str] = {}
    for tid, hall, region in placements:
        by_hall.setdefault(hall, []).append(tid)
        regions[hall] = region
    names = sorted(by_hall)
    overloaded = names[-1] if len(names) > 1 else None
    halls = []
    for i, name in enumerate(names):
        terminals = tuple(by_hall[name])
        idle = frozenset(terminals[-1:]) if i == 0 and len(terminals) >= 3 else frozenset()
        rate = OVERLOADED_RATE if name == overloaded else NORMAL_RATE
        halls.append(HallPlan(name, regions[name], terminals, rate, _MIXES[i % 3], idle))
    return DemandPlan(halls=tuple(halls), services=SERVICES, overloaded=overloaded)


def planted_plan() -> DemandPlan:
    """Three halls: hall-01 (three terminals, T-0103 idle), hall-02 (three, normal), hall-03
    (two, overloaded: about 85-90% busy). Each hall has its own service mix."""
    return demand_plan(
        [
            *((f"T-010{i}", "hall-01", "region-1") for i in (1, 2, 3)),
            *((f"T-020{i}", "hall-02", "region-1") for i in (1, 2, 3)),
            *((f"T-030{i}", "hall-03", "region-2") for i in (1, 2)),
        ]
    )


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method (lam is small here: arrivals per hour)."""
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _terminal_hour(
    plan: DemandPlan,
    hall: HallPlan,
    tid: str,
    start: datetime,
    free_at: datetime,
    rng: random.Random,
) -> tuple[list[Transaction], datetime]:
    """The terminal's transactions arriving in the hour from ``start``, and when it is free
    again (it was free from ``free_at``)."""
    lam = hall.rate_per_hour * plan.factor(start)
    if tid in hall.idle:
        lam *= plan.idle_share
    arrivals = sorted(rng.uniform(0, 3600) for _ in range(_poisson(rng, lam)))
    codes, weights = zip(*sorted(hall.mix.items()), strict=True)
    closing = plan.factor(start + _HOUR) == 0
    out = []
    for offset in arrivals:
        arrival = start + timedelta(seconds=offset)
        service = plan.services[rng.choices(codes, weights)[0]]
        duration = round(service.mean_duration_s * rng.uniform(0.8, 1.2), 3)
        begin = max(arrival, free_at)
        if begin - arrival > plan.max_wait:
            continue  # the queue was too long: this citizen left without a transaction
        if closing and begin + timedelta(seconds=duration) > start + _HOUR:
            continue  # it would end after closing: the hall sends this citizen away
        free_at = begin + timedelta(seconds=duration)
        draw = rng.random()
        outcome, cause, pages = "completed", None, service.pages
        if service.needs_printer and draw < plan.printer_failure_share:
            outcome, cause, pages = "failed", "printer", 0
        elif draw > 1 - plan.abandon_share:
            outcome, pages = "abandoned", 0
        out.append(Transaction(tid, free_at, service.code, outcome, cause, duration, pages))
    return out, free_at


def monday_of(at: datetime) -> datetime:
    """00:00 UTC of the Monday of ``at``'s week."""
    day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def generate(plan: DemandPlan, week_start: datetime, seed: int) -> list[Transaction]:
    """The week's transactions from ``week_start`` (a Monday 00:00 UTC), by time then
    terminal. Raises ValueError if ``week_start`` is not one."""
    week_start = week_start.astimezone(UTC)
    if week_start.weekday() != 0 or week_start != week_start.replace(
        hour=0, minute=0, second=0, microsecond=0
    ):
        raise ValueError("week_start must be a Monday 00:00 UTC")
    rng = random.Random(seed)  # noqa: S311  # a reproducible simulation, not a secret
    out: list[Transaction] = []
    free_at = {tid: week_start for hall in plan.halls for tid in hall.terminals}
    for hour in range(7 * 24):
        start = week_start + timedelta(hours=hour)
        for hall in plan.halls:
            for tid in hall.terminals:
                done, free_at[tid] = _terminal_hour(plan, hall, tid, start, free_at[tid], rng)
                out.extend(done)
    return sorted(out, key=lambda t: (t.at, t.terminal_id))
