"""`make demo`'s clients leave nothing of their own on a broker, and its planted faults
are what the server sees: a real mosquitto, the real simulator and the real server.

The demo runs its terminals with `--session-expiry 0` and its server with
`KIOSKFLEET_MQTT_SESSION_EXPIRY_S=0` (no persistent session survives them) and, after
Ctrl-C, sweeps the retained messages under its own terminal prefix
(`kioskfleet.broker_sweep`); a foreign terminal's retained state is left alone.
"""

from __future__ import annotations

import pytest

from agent.planted_faults import PlantedFault, PlantedOutage
from agent.simulator import Simulation, SimulationOptions, SimulationTuning
from kioskfleet.broker_sweep import BrokerLogin, retained_topics, session_present, sweep_retained
from kioskfleet.local_broker import LocalBroker
from protocol.messages import PeripheralCondition, TerminalState
from tests.integration.conftest import ServerFactory, TerminalFactory
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

PREFIX = "SWEEP"


def test_the_demos_clients_leave_no_session_and_its_sweep_leaves_no_retained_message(
    private_broker: LocalBroker,
    private_server: ServerFactory,
    private_terminals: TerminalFactory,
) -> None:
    login = BrokerLogin(private_broker.url)
    foreign = private_terminals("OTHER-1")  # someone else's terminal on the shared broker
    foreign.online()
    server = private_server(mqtt_session_expiry_s=0, mqtt_client_id="kioskfleet-server-sweep")
    ids = [f"{PREFIX}-{i:05d}" for i in (1, 2, 3)]
    sim = Simulation(
        SimulationOptions(
            terminals=3,
            broker_url=private_broker.url,
            report_interval_s=5.0,
            fault_rate=1e-6,
            id_prefix=PREFIX,
            session_expiry_s=0,
            planted_faults=(
                PlantedFault(ids[0], "receipt_printer", PeripheralCondition.PAPER_OUT),
            ),
            planted_outages=(PlantedOutage(ids[2], 0.0),),
        ),
        tuning=SimulationTuning(keepalive_s=5, reconnect_min_s=0.1, shutdown_timeout_s=5),
    )
    sim.start()
    try:
        # the planted fault reaches the server; the cut terminal's will makes it offline
        def paper_out() -> bool:
            view = server.fleet.get(ids[0])
            return view is not None and any(
                p.condition is PeripheralCondition.PAPER_OUT for p in view.peripherals
            )

        wait_until(paper_out, 30, "the planted paper-out at the server")
        wait_until(
            lambda: (
                (t := server.fleet.get(ids[2])) is not None and t.state is TerminalState.OFFLINE
            ),
            30,
            "the planted outage at the server",
        )
    finally:
        sim.stop()
        sim.close()
    server.stop()

    assert {f"kf/v1/terminals/{tid}/state" for tid in ids} <= set(retained_topics(login, PREFIX))
    cleared = sweep_retained(login, f"{PREFIX}-")
    assert {f"kf/v1/terminals/{tid}/state" for tid in ids} <= set(cleared)
    assert retained_topics(login, f"{PREFIX}-") == []
    assert retained_topics(login, "OTHER-") == ["kf/v1/terminals/OTHER-1/state"]
    for client_id in [*ids, "kioskfleet-server-sweep"]:
        assert session_present(login, client_id) is False, client_id


def test_a_sweep_without_a_prefix_is_refused(private_broker: LocalBroker) -> None:
    with pytest.raises(ValueError, match="prefix"):
        sweep_retained(BrokerLogin(private_broker.url), "")
