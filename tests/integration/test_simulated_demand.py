"""``kioskfleet simulate --demand`` end to end: the real command, a real mosquitto and the
real server. The simulated terminals' clock is moved with ``--start-at`` (the agents'
``OffsetClock``), so a few seconds of real time play a chosen moment of the seeded
demand (``agent.demand``): inside opening hours the very transactions the plan draws for
those seconds arrive, rolled up by terminal, service and hall; outside them none are sent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.demand import DemandPlan, Transaction, demand_plan, generate
from agent.simulator import SimulationOptions, terminal_profiles
from kioskfleet.local_broker import LocalBroker
from server.main import Server
from tests.integration.conftest import ServerFactory, api, unique
from tests.integration.simulated_week import WEEK_SETTINGS, last_week
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TERMINALS = 24  # enough demand for a few transactions of three halls within seconds
SEED = 5
LEAD_S = 4.0  # simulated seconds before the first transaction: the agents start meanwhile
WINDOW_S = 6.0  # the transactions asserted on fall within this
TAIL_S = 4.0  # after the last, before the run ends: they are delivered meanwhile
DURATION_S = LEAD_S + WINDOW_S + TAIL_S


def _plan(opts: SimulationOptions) -> DemandPlan:
    return demand_plan([(p.terminal_id, p.hall, p.region) for p in terminal_profiles(opts)])


def _quiet_cluster(transactions: Sequence[Transaction], plan: DemandPlan) -> list[Transaction]:
    """The transactions within ``WINDOW_S`` of one another, with none in the ``LEAD_S``
    before or up to the run's end after, of the most halls (then the most of them)."""
    best: list[Transaction] = []
    key = (0, 0)
    for i in range(1, len(transactions) - 1):
        start = transactions[i].at - timedelta(seconds=LEAD_S)
        end = start + timedelta(seconds=DURATION_S)
        if transactions[i - 1].at >= start:
            continue
        j = i
        while j + 1 < len(transactions) and transactions[j + 1].at <= end:
            j += 1
        cluster = list(transactions[i : j + 1])
        if j + 1 == len(transactions) or cluster[-1].at - cluster[0].at > timedelta(
            seconds=WINDOW_S
        ):
            continue
        found = (len({plan.hall_of(t.terminal_id).hall for t in cluster}), len(cluster))
        if found > key:
            best, key = cluster, found
    return best


def _simulate(broker: LocalBroker, prefix: str, outbox: Path, start_at: datetime) -> str:
    """Run ``kioskfleet simulate --demand`` for ``DURATION_S`` with the clock at
    ``start_at``; returns its output."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kioskfleet.cli",
            "simulate",
            "--demand",
            f"--start-at={start_at.isoformat()}",
            f"--duration={DURATION_S}",
            f"--terminals={TERMINALS}",
            "--halls=3",
            f"--seed={SEED}",
            f"--id-prefix={prefix}",
            f"--broker={broker.url}",
            "--report-interval=2",
            f"--outbox={outbox}",
        ],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"terminals={TERMINALS}" in done.stdout, done.stdout
    return done.stdout


def _groups(server: Server, by: str, since: datetime, until: datetime) -> Counter[Any]:
    response = api(
        server,
        "/api/v1/analytics/transactions",
        by=by,
        since=since.isoformat(),
        until=until.isoformat(),
    )
    assert response.status_code == 200, response.text
    return Counter({g["key"]: g["transactions"] for g in response.json()["groups"]})


def test_simulate_demand_sends_the_plans_transactions_only_inside_opening_hours(
    private_server: ServerFactory, private_broker: LocalBroker, tmp_path: Path
) -> None:
    server = private_server(**WEEK_SETTINGS)
    prefix = unique("DEM").upper().replace("-", "")[:10]
    opts = SimulationOptions(terminals=TERMINALS, halls=3, seed=SEED, id_prefix=prefix)
    plan = _plan(opts)
    week = last_week(datetime.now(UTC))
    drawn = generate(plan, week, SEED + week.toordinal())  # what the simulator draws
    outbox = tmp_path / "outbox.sqlite"  # shared: anything left unsent would go out later
    ids = [p.terminal_id for p in terminal_profiles(opts)]

    # Saturday noon: the plan's halls are closed, so nothing is due and nothing is sent.
    closed = week + timedelta(days=5, hours=12)
    assert plan.factor(closed) == 0.0
    assert not [t for t in drawn if closed <= t.at <= closed + timedelta(seconds=DURATION_S)]
    _simulate(private_broker, prefix, outbox, closed)
    wait_until(lambda: all(server.fleet.get(t) is not None for t in ids), 20, "every terminal")

    # Inside opening hours: exactly the transactions the plan draws for those seconds.
    expected = _quiet_cluster(drawn, plan)
    assert len({plan.hall_of(t.terminal_id).hall for t in expected}) == 3, expected
    start_at = expected[0].at - timedelta(seconds=LEAD_S)
    assert plan.factor(start_at) > 0
    _simulate(private_broker, prefix, outbox, start_at)

    since, until = start_at - timedelta(hours=1), start_at + timedelta(hours=1)
    wait_until(
        lambda: sum(_groups(server, "terminal", since, until).values()) >= len(expected),
        30,
        "the simulated transactions rolled up",
    )
    assert _groups(server, "terminal", since, until) == Counter(t.terminal_id for t in expected)
    assert _groups(server, "service", since, until) == Counter(t.service for t in expected)
    assert _groups(server, "hall", since, until) == Counter(
        plan.hall_of(t.terminal_id).hall for t in expected
    )
    # nothing at all from the closed hours, in any range: every transaction is one of these
    everything = _groups(server, "hall", week - timedelta(days=1), week + timedelta(days=8))
    assert sum(everything.values()) == len(expected)
