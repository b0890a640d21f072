"""The real agent against a real mosquitto, observed by a plain paho subscriber."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config import AgentConfig
from agent.main import AgentRuntime
from agent.probes.simulated import Scenario, SimulatedProbeSpec
from kioskfleet.local_broker import LocalBroker
from protocol.codec import decode
from protocol.messages import (
    EventMessage,
    Message,
    PeripheralCondition,
    ReportMessage,
    StateMessage,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], object], timeout: float, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Subscriber:
    """A bare paho client recording (arrival time, topic, payload, retain) for one filter."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.received: list[tuple[float, str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_connect = lambda c, *args: c.subscribe(topic_filter, qos=1)
        self._client.connect("127.0.0.1", port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(5):
            raise AssertionError("subscriber never got its SUBACK")

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.received.append(
                (time.monotonic(), msg.topic, bytes(msg.payload), bool(msg.retain))
            )

    def messages(self) -> list[Message]:
        with self._lock:
            return [decode(topic, payload) for _, topic, payload, _ in self.received]

    def states(self) -> list[StateMessage]:
        return [m for m in self.messages() if isinstance(m, StateMessage)]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def subscribers() -> Iterator[list[Subscriber]]:
    made: list[Subscriber] = []
    yield made
    for sub in made:
        sub.close()


def new_id() -> str:
    return f"T-{uuid.uuid4().hex[:10]}"


def config_for(broker: LocalBroker, terminal_id: str, **overrides: object) -> AgentConfig:
    values: dict[str, object] = {
        "terminal_id": terminal_id,
        "hall": "hall-01",
        "region": "region-1",
        "model": "KF-200",
        "broker_url": broker.url,
        "report_interval_s": 0.5,
        "probe_interval_s": 0.1,
        "keepalive_s": 2,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "probes": [{"type": "simulated", "name": "receipt_printer", "scenario": "receipt_printer"}],
    }
    values.update(overrides)
    return AgentConfig.model_validate(values)


@pytest.fixture
def runtimes() -> Iterator[list[AgentRuntime]]:
    made: list[AgentRuntime] = []
    yield made
    for runtime in made:
        runtime.stop()


def start_agent(
    runtimes: list[AgentRuntime], config: AgentConfig, **kwargs: object
) -> AgentRuntime:
    runtime = AgentRuntime(config, **kwargs)  # type: ignore[arg-type]
    runtime.start()
    runtimes.append(runtime)
    wait_until(lambda: runtime.connection.connected, 10, "the agent's CONNACK")
    return runtime


def retained_state(
    broker: LocalBroker, terminal_id: str, subscribers: list[Subscriber]
) -> StateMessage:
    """What a newcomer gets for the terminal's state topic (the retained message)."""
    sub = Subscriber(broker.port, f"kf/v1/terminals/{terminal_id}/state")
    subscribers.append(sub)
    wait_until(lambda: sub.received, 5, "a retained state")
    _, _, _, retained = sub.received[0]
    assert retained, "the first state a newcomer gets must be the retained one"
    return sub.states()[0]


def test_the_agent_leaves_a_retained_online_state_on_connect(
    broker: LocalBroker, runtimes: list[AgentRuntime], subscribers: list[Subscriber]
) -> None:
    tid = new_id()
    start_agent(runtimes, config_for(broker, tid))
    state = retained_state(broker, tid, subscribers)
    assert (state.body.state.value, state.body.reason) == ("online", "connect")
    assert (state.body.hall, state.body.region, state.body.model) == (
        "hall-01",
        "region-1",
        "KF-200",
    )


def test_reports_arrive_every_interval_and_a_forced_fault_is_an_immediate_event(
    broker: LocalBroker, runtimes: list[AgentRuntime], subscribers: list[Subscriber]
) -> None:
    tid = new_id()
    sub = Subscriber(broker.port, f"kf/v1/terminals/{tid}/#")
    subscribers.append(sub)
    config = config_for(broker, tid)
    printer = SimulatedProbeSpec(name="receipt_printer", scenario=Scenario.RECEIPT_PRINTER).build()
    runtime = start_agent(runtimes, config, probes=[printer])

    def reports() -> list[ReportMessage]:
        return [m for m in sub.messages() if isinstance(m, ReportMessage)]

    wait_until(lambda: len(reports()) >= 4, 10, "four reports")
    assert reports()[0].body.peripherals[0].condition is PeripheralCondition.OK
    assert all(r.body.report_interval_s == 0.5 for r in reports())

    printer.force(PeripheralCondition.PAPER_OUT)
    runtime.loop.check_now(tid)

    def changes() -> list[EventMessage]:
        return [
            m
            for m in sub.messages()
            if isinstance(m, EventMessage) and m.body.type == "peripheral_changed"
        ]

    wait_until(changes, 5, "the paper_out event")
    (event,) = changes()
    assert event.body.peripheral.condition is PeripheralCondition.PAPER_OUT  # type: ignore[union-attr]
    assert event.body.previous is PeripheralCondition.OK  # type: ignore[union-attr]
    wait_until(
        lambda: reports()[-1].body.peripherals[0].condition is PeripheralCondition.PAPER_OUT,
        5,
        "a report showing paper_out",
    )
    printer.release()
    runtime.loop.check_now(tid)
    wait_until(lambda: len(changes()) == 2, 5, "the recovery event")
    seqs = [m.seq for m in sub.messages() if not isinstance(m, StateMessage)]
    assert seqs == sorted(set(seqs))
    assert seqs[0] == 1


def test_an_abruptly_dropped_connection_leaves_the_offline_will_then_the_agent_comes_back(
    broker: LocalBroker, runtimes: list[AgentRuntime], subscribers: list[Subscriber]
) -> None:
    tid = new_id()
    sub = Subscriber(broker.port, f"kf/v1/terminals/{tid}/state")
    subscribers.append(sub)
    runtime = start_agent(runtimes, config_for(broker, tid))
    wait_until(lambda: sub.states(), 5, "online")

    runtime.loop.call_soon(runtime.connection.abort)

    wait_until(lambda: len(sub.states()) >= 3, 10, "offline will, then online again")
    online, will, back = sub.states()[:3]
    assert (will.body.state.value, will.body.reason) == ("offline", "connection_lost")
    assert (back.body.state.value, back.body.reason) == ("online", "connect")
    assert back.boot_id == online.boot_id
    assert back.seq >= online.seq
    assert runtime.connection.stats.connects == 2
    assert runtime.connection.stats.session_present  # same client id, clean_start=False


def test_a_frozen_agent_is_declared_offline_within_one_and_a_half_keepalives(
    broker: LocalBroker, tmp_path: Path, subscribers: list[Subscriber]
) -> None:
    tid = new_id()
    sub = Subscriber(broker.port, f"kf/v1/terminals/{tid}/state")
    subscribers.append(sub)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'terminal_id = "{tid}"\nhall = "h"\nregion = "r"\nmodel = "m"\n'
        f'broker_url = "{broker.url}"\nkeepalive_s = 2\nreport_interval_s = 60\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "kioskfleet.cli", "agent", "--config", str(config)],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_AGENT_")},
    )
    try:
        wait_until(lambda: sub.states(), 15, "the agent process to come online")
        proc.send_signal(signal.SIGSTOP)  # alive, socket open, but silent
        frozen_at = time.monotonic()
        # MQTT says 1.5 x keepalive; mosquitto 2.0.11 measured here sends the will of a
        # frozen agent (persistent session, keepalive 2) 8.1-8.7 s after the freeze, and
        # 4.8-5.5 s for a clean-start client: its keepalive sweep is coarse. The margin
        # covers that, and the test still fails if no keepalive-driven will comes at all.
        margin = 7.0
        wait_until(lambda: len(sub.states()) >= 2, 2 * 1.5 + margin + 2, "the will")
        arrived = sub.received[-1][0]
        will = sub.states()[-1]
        assert (will.body.state.value, will.body.reason) == ("offline", "connection_lost")
        assert arrived - frozen_at <= 2 * 1.5 + margin
    finally:
        proc.kill()
        proc.send_signal(signal.SIGCONT)
        proc.wait(10)


def test_sigterm_stops_the_agent_process_with_a_shutdown_state(
    broker: LocalBroker, tmp_path: Path, subscribers: list[Subscriber]
) -> None:
    tid = new_id()
    sub = Subscriber(broker.port, f"kf/v1/terminals/{tid}/state")
    subscribers.append(sub)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'terminal_id = "{tid}"\nhall = "h"\nregion = "r"\nmodel = "m"\nbroker_url = "{broker.url}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "kioskfleet.cli", "agent", "--config", str(config)],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_AGENT_")},
    )
    try:
        wait_until(lambda: sub.states(), 15, "the agent process to come online")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_until(lambda: len(sub.states()) >= 2, 5, "the shutdown state")
    assert sub.states()[-1].body.reason == "shutdown"


def test_after_a_broker_restart_the_agent_resumes_its_session_and_is_online_again(
    runtimes: list[AgentRuntime], subscribers: list[Subscriber]
) -> None:
    # Started as root, mosquitto drops to its own user: its database directory must be
    # reachable by that user, which pytest's private tmp_path (mode 0700) is not.
    workdir = Path(tempfile.mkdtemp(prefix="kf-broker-"))
    workdir.chmod(0o777)
    broker = LocalBroker(workdir, extra_conf="persistence true\n").start()
    try:
        tid = new_id()
        runtime = start_agent(runtimes, config_for(broker, tid))
        first = retained_state(broker, tid, subscribers)
        broker.stop()
        wait_until(lambda: not runtime.connection.connected, 10, "the agent to notice")
        broker.start()
        wait_until(lambda: runtime.connection.connected, 10, "the reconnect")
        assert runtime.connection.stats.connects == 2
        assert runtime.connection.stats.session_present  # the broker kept the session
        state = retained_state(broker, tid, subscribers)
        assert (state.body.state.value, state.body.reason) == ("online", "connect")
        assert state.sent_at > first.sent_at
    finally:
        for runtime in runtimes:
            runtime.stop()
        runtimes.clear()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_clean_stop_leaves_offline_with_reason_shutdown_and_no_will(
    broker: LocalBroker, runtimes: list[AgentRuntime], subscribers: list[Subscriber]
) -> None:
    tid = new_id()
    sub = Subscriber(broker.port, f"kf/v1/terminals/{tid}/state")
    subscribers.append(sub)
    runtime = start_agent(runtimes, config_for(broker, tid))
    runtime.stop()
    runtimes.clear()
    assert runtime.connection.pending_acks() == 0
    wait_until(lambda: len(sub.states()) >= 2, 5, "the shutdown state")
    time.sleep(0.3)  # a will would follow the disconnect immediately
    reasons = [s.body.reason for s in sub.states()]
    assert reasons == ["connect", "shutdown"]
    assert retained_state(broker, tid, subscribers).body.reason == "shutdown"
