"""Every simulated kind of peripheral, end to end: scenario probe → agent → mosquitto → server.

For each peripheral the simulator's richest terminal model carries, a real
simulated terminal is forced into each of its family's blocking conditions;
the server's ``/metrics`` (read over HTTP, as Prometheus does) must show the
problem with the kind's family label, count the terminal ``faulty``, and drop
the series again once the device recovers. A kind added to the taxonomy and
to a simulated model is covered here without a new test; its alert is covered
by the promtool cases (``tests/unit/test_alert_rules.py``).
"""

from __future__ import annotations

from functools import partial

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.probes.simulated import MODELS, ScenarioPrinter
from agent.simulator import Simulation, SimulationOptions, SimulationTuning
from kioskfleet.local_broker import LocalBroker
from protocol.taxonomy import PeripheralKind, family_of
from server.main import Server
from tests.integration.conftest import ServerFactory, api, unique, wait_until

pytestmark = pytest.mark.integration

MODEL = max(MODELS, key=lambda m: len(MODELS[m]))
"""The simulated model with the most peripherals (every simulated kind is on it)."""


def _problems(server: Server, terminal: str) -> set[tuple[str, str, str, str]]:
    """(peripheral, family, kind, condition) of the terminal's problem series on /metrics."""
    text = api(server, "/metrics").text
    return {
        (s.labels["peripheral"], s.labels["family"], s.labels["kind"], s.labels["condition"])
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "kioskfleet_terminal_peripheral_problem" and s.labels["terminal"] == terminal
    }


def _shows(server: Server, terminal: str, problem: tuple[str, str, str, str]) -> bool:
    return problem in _problems(server, terminal)


def _recovered(server: Server, terminal: str, peripheral: str) -> bool:
    return not any(p[0] == peripheral for p in _problems(server, terminal))


def test_every_simulated_peripheral_shows_its_family_on_metrics_for_each_blocking_condition(
    broker: LocalBroker, start_server: ServerFactory
) -> None:
    server = start_server()
    options = SimulationOptions(
        terminals=2,
        broker_url=broker.url,
        report_interval_s=30.0,
        fault_rate=1e-6,  # nothing happens but what the test forces
        id_prefix=unique("FAM"),
    )
    simulation = Simulation(options, tuning=SimulationTuning(shutdown_timeout_s=5))
    (target,) = [p.terminal_id for p in simulation.profiles if p.model == MODEL][:1]
    simulation.start()
    try:
        assert simulation.wait_connected(15)
        wait_until(lambda: server.fleet.get(target) is not None, 10, "the first report")
        checked = 0
        for scenario in MODELS[MODEL]:
            name = scenario.value
            kind = simulation.probe(target, name).kind
            family = family_of(kind)
            for condition in sorted(family.blocking):
                want = (name, family.family.value, kind.value, condition.value)
                simulation.force(target, name, condition)
                wait_until(partial(_shows, server, target, want), 10, f"{want} on /metrics")
                view = server.fleet.get(target)
                assert view is not None
                assert view.health.value == "faulty", want
                simulation.release(target, name)
                if isinstance(simulation.probe(target, name), ScenarioPrinter):
                    simulation.refill(target, name)
                wait_until(partial(_recovered, server, target, name), 10, f"{name} recovered")
                checked += 1
        assert checked >= len(MODELS[MODEL])
        kinds = {simulation.probe(target, s.value).kind for s in MODELS[MODEL]}
        assert PeripheralKind.CASH_ACCEPTOR in kinds
    finally:
        simulation.stop()
