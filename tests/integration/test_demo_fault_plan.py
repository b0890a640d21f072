"""The demo's fault plan fires its alerts in a real Prometheus with the project's real
rules (real `for:`), scraping and evaluating at the demo's interval.

The chain is the demo's: simulated terminals with the planted faults and outage
(`kioskfleet.demo_faults`) -> mosquitto -> the server -> /metrics -> Prometheus. The
terminals' own incidents are switched off (a negligible fault rate): only the planted
faults can fire. The wait is bounded by the demo's promise plus the first scrape's
delay; the elapsed time is printed (`pytest -s`), not asserted.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.simulator import Simulation, SimulationOptions, SimulationTuning
from kioskfleet.demo_faults import FIRING_WITHIN_S, SCRAPE_INTERVAL_S, demo_fault_plan
from kioskfleet.local_broker import LocalBroker
from kioskfleet.local_prometheus import LocalPrometheus, prometheus_binary
from server.access import Role
from server.tokens import write_secret_file
from tests.integration.conftest import ServerFactory, token, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        prometheus_binary() is None,
        reason="the prometheus binary is not installed (apt-get install prometheus)",
    ),
]

TERMINALS = 6
FIRST_SCRAPE_S = 20.0  # Prometheus throttles its first discovery update (up to 5 s)


def test_the_demos_planted_faults_fire_their_alerts_under_the_real_rules(
    tmp_path: Path, private_broker: LocalBroker, private_server: ServerFactory
) -> None:
    server = private_server()
    plan = demo_fault_plan(TERMINALS)
    token_file = tmp_path / "prometheus.token"
    write_secret_file(token_file, token(server, Role.VIEWER, name="prometheus"))
    interval = f"{SCRAPE_INTERVAL_S:g}s"
    prom = LocalPrometheus(
        tmp_path / "prometheus",
        [server.base_url.removeprefix("http://")],
        token_file=token_file,
        scrape_interval=interval,
        evaluation_interval=interval,
    ).start()
    sim = Simulation(
        SimulationOptions(
            terminals=TERMINALS,
            broker_url=private_broker.url,
            report_interval_s=10.0,
            fault_rate=1e-6,
            id_prefix="DEMO",
            planted_faults=tuple(p.fault for p in plan if p.fault is not None),
            planted_outages=tuple(p.outage for p in plan if p.outage is not None),
        ),
        tuning=SimulationTuning(shutdown_timeout_s=5),
    )
    began = time.monotonic()
    sim.start()
    try:
        rules = prom.alerting_rules()
        for planned in plan:  # the real rules, not shortened ones
            assert rules[planned.alert]["duration"] >= 60

        def firing() -> set[tuple[str, str]]:
            return {
                (a["labels"]["alertname"], a["labels"].get("terminal", ""))
                for a in prom.alerts()
                if a["state"] == "firing"
            }

        wanted = {(p.alert, p.terminal_id) for p in plan}
        wait_until(
            lambda: wanted <= firing(),
            FIRING_WITHIN_S + FIRST_SCRAPE_S,
            f"{sorted(wanted)} firing",
            every=1.0,
        )
        print(f"the planted alerts fired {time.monotonic() - began:.0f} s after the start")
        fired = {alert for alert, terminal in firing() if terminal.startswith("DEMO-")}
        assert fired <= {p.alert for p in plan}  # nothing but the plan fired
    finally:
        sim.stop()
        sim.close()
        prom.stop()
