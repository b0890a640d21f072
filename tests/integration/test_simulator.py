"""The fleet simulator against the real broker, checked by a plain paho subscriber."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.simulator import (
    Simulation,
    SimulationOptions,
    SimulationTuning,
    run_simulation,
    terminal_profiles,
)
from kioskfleet.local_broker import LocalBroker
from protocol.codec import decode
from protocol.messages import (
    EventMessage,
    Message,
    PeripheralCondition,
    ReportMessage,
    StateMessage,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Recorder:
    """Subscribes to every terminal topic; validates each message with the codec on arrival."""

    def __init__(self, port: int) -> None:
        self.messages: list[Message] = []
        self.invalid: list[str] = []
        self.reports: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        ready = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *args: ready.set()
        self._client.on_connect = lambda c, *args: c.subscribe("kf/v1/terminals/#", qos=1)
        self._client.connect("127.0.0.1", port, keepalive=30)
        self._client.loop_start()
        assert ready.wait(5), "no SUBACK"

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        try:
            message = decode(msg.topic, bytes(msg.payload))
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on by the tests
            with self._lock:
                self.invalid.append(f"{msg.topic}: {exc}")
            return
        with self._lock:
            self.messages.append(message)
            if isinstance(message, ReportMessage):
                self.reports[message.terminal_id] += 1

    def decoded(self, prefix: str = "") -> list[Message]:
        """Messages from terminals whose id starts with ``prefix`` (the broker is shared)."""
        with self._lock:
            return [m for m in self.messages if m.terminal_id.startswith(prefix)]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def recorder(broker: LocalBroker) -> Iterator[Recorder]:
    rec = Recorder(broker.port)  # before the simulation: its socket stays a low number
    yield rec
    rec.close()


NO_SERVER = SimulationTuning(shutdown_timeout_s=5)


def prefix() -> str:
    return "S" + uuid.uuid4().hex[:6].upper()


def test_two_hundred_terminals_report_valid_envelopes_with_increasing_seq(
    broker: LocalBroker, recorder: Recorder
) -> None:
    opts = SimulationOptions(
        terminals=200,
        broker_url=broker.url,
        halls=4,
        regions=2,
        seed=3,
        report_interval_s=1.0,
        id_prefix=prefix(),
        commit_confirmation=False,  # only a recorder listens here: nothing confirms
    )
    sim = Simulation(opts, tuning=NO_SERVER)
    ids = sim.terminal_ids
    sim.start()
    try:
        assert sim.wait_connected(30), sim.counters()

        wait_until(lambda: all(recorder.reports[t] >= 3 for t in ids), 30, "3 reports each")
    finally:
        sim.stop()
    mine = opts.id_prefix + "-"
    wait_until(lambda: len(recorder.decoded(mine)) >= sim.counters().published, 10, "all delivered")

    messages = recorder.decoded(mine)
    assert recorder.invalid == []
    by_terminal: dict[str, list[Message]] = defaultdict(list)
    for m in messages:
        by_terminal[m.terminal_id].append(m)
    assert sorted(by_terminal) == ids

    for tid, stream in by_terminal.items():
        states = [m for m in stream if isinstance(m, StateMessage)]
        assert states[0].body.state.value == "online"
        assert states[0].body.reason == "connect"
        assert states[-1].body.reason == "shutdown"
        seqs = [m.seq for m in stream if not isinstance(m, StateMessage)]
        assert seqs == sorted(set(seqs)), f"{tid}: seq not strictly increasing"
        assert seqs[0] == 1  # the boot event
        assert len({m.boot_id for m in stream}) == 1

    first = next(m for m in by_terminal[ids[0]] if isinstance(m, ReportMessage))
    profile = terminal_profiles(opts)[0]
    assert (first.body.hall, first.body.region, first.body.model) == (
        profile.hall,
        profile.region,
        profile.model,
    )
    assert {p.name for p in first.body.peripherals} == {
        "receipt_printer",
        "id_card_reader",
        "qr_scanner",
    }
    counters = sim.counters()
    assert counters.connects == 200
    assert counters.connected == 0
    assert counters.published == counters.acked == len(messages)
    assert counters.dropped == 0


def test_forcing_one_terminal_out_of_paper_and_refilling_it_shows_up_as_two_events(
    broker: LocalBroker, recorder: Recorder
) -> None:
    opts = SimulationOptions(
        terminals=20,
        broker_url=broker.url,
        report_interval_s=30.0,
        id_prefix=prefix(),
        commit_confirmation=False,  # only a recorder listens here: nothing confirms
    )
    sim = Simulation(opts, tuning=NO_SERVER)
    target = sim.terminal_ids[6]
    sim.start()
    try:
        assert sim.wait_connected(15)

        def changes() -> list[EventMessage]:
            return [
                m
                for m in recorder.decoded()
                if isinstance(m, EventMessage)
                and m.body.type == "peripheral_changed"
                and m.body.peripheral.name == "receipt_printer"
            ]

        sim.force(target, "receipt_printer", PeripheralCondition.PAPER_OUT)
        wait_until(lambda: any(e.terminal_id == target for e in changes()), 5, "paper_out")
        sim.release(target, "receipt_printer")
        sim.refill(target)
        wait_until(lambda: len([e for e in changes() if e.terminal_id == target]) == 2, 5, "refill")
    finally:
        sim.stop()
    mine = [e.body for e in changes() if e.terminal_id == target]
    assert [(b.peripheral.condition, b.previous) for b in mine] == [  # type: ignore[union-attr]
        (PeripheralCondition.PAPER_OUT, PeripheralCondition.OK),
        (PeripheralCondition.OK, PeripheralCondition.PAPER_OUT),
    ]
    assert {e.terminal_id for e in changes()} <= {target}


def test_the_simulate_command_spreads_terminals_over_spawned_processes(
    broker: LocalBroker, recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    opts = SimulationOptions(
        terminals=20,
        broker_url=broker.url,
        report_interval_s=1.0,
        duration_s=15.0,  # from the command's start: a loaded machine spawns Python slowly
        processes=2,
        id_prefix=prefix(),
    )
    assert run_simulation(opts) == 0
    wanted = {p.terminal_id for p in terminal_profiles(opts)}

    def online() -> set[str]:
        return {
            m.terminal_id
            for m in recorder.decoded(opts.id_prefix + "-")
            if isinstance(m, StateMessage) and m.body.reason == "connect"
        }

    wait_until(lambda: online() >= wanted, 10, "every terminal's connect state recorded")
    assert online() == wanted
    assert "terminals=20" in capsys.readouterr().out


def test_impossible_options_are_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="processes"):
        Simulation(SimulationOptions(terminals=2, processes=3))
    assert run_simulation(SimulationOptions(id_prefix="bad prefix")) == 2


def test_the_simulate_command_stops_cleanly_on_sigint(
    broker: LocalBroker, recorder: Recorder
) -> None:
    opts = SimulationOptions(
        terminals=3, broker_url=broker.url, report_interval_s=30.0, id_prefix=prefix()
    )
    mine = opts.id_prefix + "-"

    def states(reason: str) -> set[str]:
        return {
            m.terminal_id
            for m in recorder.decoded(mine)
            if isinstance(m, StateMessage) and m.body.reason == reason
        }

    def interrupt_once_online() -> None:
        deadline = time.monotonic() + 15
        while len(states("connect")) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs in the main thread

    interrupter = threading.Thread(target=interrupt_once_online, daemon=True)
    interrupter.start()
    assert run_simulation(opts) == 0  # no duration: only the signal ends it
    interrupter.join(5)
    assert len(states("connect")) == 3
    wait_until(lambda: len(states("shutdown")) == 3, 5, "three clean shutdowns")
