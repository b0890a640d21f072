"""The real agent against a real mosquitto, observed by a plain paho subscriber."""

from __future__ import annotations

import os
import selectors
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

from agent.agent import Agent, RecordingOutbound
from agent.clock import SystemClock
from agent.config import AgentConfig
from agent.event_loop import EventLoop
from agent.main import AgentRuntime
from agent.mqtt_connection import (
    ConnectionSettings,
    ConnectionState,
    ConnectRefusedError,
    MqttConnection,
)
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
from tests.integration.conftest import wait_until
from tests.unit.test_agent_probe_reader import GatedProbe

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


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


def new_watched_id(broker: LocalBroker, subscribers: list[Subscriber]) -> tuple[str, Subscriber]:
    """A fresh terminal id and a subscriber already watching its retained state topic."""
    tid = new_id()
    sub = Subscriber(broker.port, f"kf/v1/terminals/{tid}/state")
    subscribers.append(sub)
    return tid, sub


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
        "outbox": {
            "path": str(Path(tempfile.mkdtemp(prefix="kf-outbox-")) / "outbox.sqlite"),
            "synchronous": "normal",
            "drain_jitter_s": 0.2,
        },
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


def start_agent_process(
    tmp_path: Path, broker: LocalBroker, terminal_id: str, extra_toml: str = ""
) -> subprocess.Popen[bytes]:
    """``kioskfleet agent --config`` in a child process, with no KIOSKFLEET_AGENT_* leaking in."""
    config = tmp_path / "agent.toml"
    config.write_text(
        f'terminal_id = "{terminal_id}"\nhall = "h"\nregion = "r"\nmodel = "m"\n'
        f'broker_url = "{broker.url}"\n{extra_toml}\n'
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\ndrain_jitter_s = 0.2\n'
    )
    return subprocess.Popen(
        [sys.executable, "-m", "kioskfleet.cli", "agent", "--config", str(config)],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_AGENT_")},
    )


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
    tid, sub = new_watched_id(broker, subscribers)
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
    tid, sub = new_watched_id(broker, subscribers)
    proc = start_agent_process(tmp_path, broker, tid, "keepalive_s = 2\nreport_interval_s = 60\n")
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
    tid, sub = new_watched_id(broker, subscribers)
    proc = start_agent_process(tmp_path, broker, tid)
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


@pytest.mark.parametrize("protocol", ["5", "3.1.1"], ids=["mqtt5", "mqtt311"])
def test_after_a_broker_restart_the_agent_resumes_its_session_and_is_online_again(
    runtimes: list[AgentRuntime], subscribers: list[Subscriber], protocol: str
) -> None:
    # Started as root, mosquitto drops to its own user: its database directory must be
    # reachable by that user, which pytest's private tmp_path (mode 0700) is not.
    workdir = Path(tempfile.mkdtemp(prefix="kf-broker-"))
    workdir.chmod(0o777)
    broker = LocalBroker(workdir, extra_conf="persistence true\n").start()
    try:
        tid = new_id()
        runtime = start_agent(runtimes, config_for(broker, tid, mqtt_protocol=protocol))
        assert runtime.connection.settings.protocol == protocol
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
    tid, sub = new_watched_id(broker, subscribers)
    runtime = start_agent(runtimes, config_for(broker, tid))
    runtime.stop()
    runtimes.clear()
    assert runtime.connection.pending_acks() == 0
    wait_until(lambda: len(sub.states()) >= 2, 5, "the shutdown state")
    time.sleep(0.3)  # a will would follow the disconnect immediately
    reasons = [s.body.reason for s in sub.states()]
    assert reasons == ["connect", "shutdown"]
    assert retained_state(broker, tid, subscribers).body.reason == "shutdown"


# --- the loop and the connection under trouble ------------------------------------------


class SelectorWatcher:
    """Registers a bare connection's socket in a selector, as the event loop does."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()

    def socket_opened(self, fd: int) -> None:
        self.selector.register(fd, selectors.EVENT_READ)

    def socket_closed(self, fd: int) -> None:
        self.selector.unregister(fd)


def bare_connection(
    broker: LocalBroker, terminal_id: str, **settings: object
) -> tuple[MqttConnection, SelectorWatcher]:
    """A connection with a real Agent as its listener (for a valid will), driven by the test."""
    config = config_for(broker, terminal_id, probes=[])
    connection = MqttConnection(
        ConnectionSettings(client_id=terminal_id, brokers=config.brokers, **settings)  # type: ignore[arg-type]
    )
    agent = Agent(config, [], RecordingOutbound(), SystemClock(), "0f0e0d0c-test", float)
    watcher = SelectorWatcher()
    connection.attach(agent, watcher)
    return connection, watcher


def drive(
    connection: MqttConnection,
    watcher: SelectorWatcher,
    until: Callable[[], object],
    timeout: float,
    what: str,
) -> None:
    """Do the connection's socket I/O until ``until()`` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        if connection.wants_write():
            connection.on_writable()
        if connection.fileno() is not None and watcher.selector.select(0.05):
            connection.on_readable()
        else:
            time.sleep(0.01)


def test_a_refused_connect_is_recorded_with_the_brokers_reason_code(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "mosquitto", overrides={"allow_anonymous": "false"}).start()
    connection, watcher = bare_connection(broker, new_id(), reconnect_min_s=5.0)
    try:
        connection.start(time.monotonic())
        connection.connect(time.monotonic())
        drive(connection, watcher, lambda: connection.stats.connect_failures, 5, "the CONNACK")
        error = connection.stats.last_error
        assert isinstance(error, ConnectRefusedError)
        assert error.reason_code == 0x87  # MQTT v5 "Not authorized"
        assert connection.state is ConnectionState.WAITING
        assert connection.fileno() is None
    finally:
        connection.close()
        broker.stop()


def test_a_pingresp_waiting_in_the_socket_keeps_the_session_when_the_loop_was_busy(
    broker: LocalBroker,
) -> None:
    connection, watcher = bare_connection(broker, new_id(), keepalive_s=1)
    connection.start(time.monotonic())
    connection.connect(time.monotonic())
    drive(connection, watcher, lambda: connection.connected, 5, "the CONNACK")
    # From here on only the housekeeping runs and the socket is never handed over as
    # readable, as when the loop is busy elsewhere: the PINGRESPs wait in the socket.
    # Two keepalive periods: a ping goes out, and its answer must be seen in time.
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        connection.service(time.monotonic())
        time.sleep(0.1)
    assert connection.connected
    assert connection.stats.losses == 0
    connection.disconnect()
    drive(connection, watcher, lambda: connection.closed, 5, "the clean disconnect")


def test_a_probe_stuck_on_its_device_does_not_stop_the_reports_or_the_session(
    broker: LocalBroker, runtimes: list[AgentRuntime], subscribers: list[Subscriber]
) -> None:
    tid = new_id()
    sub = Subscriber(broker.port, f"kf/v1/terminals/{tid}/report")
    subscribers.append(sub)
    printer = GatedProbe()
    runtime = start_agent(runtimes, config_for(broker, tid), probes=[printer])
    printer.gate.clear()
    try:
        assert printer.waiting.wait(5), "the probe was never read again"
        before = len(sub.received)
        wait_until(lambda: len(sub.received) >= before + 3, 5, "reports while the probe is stuck")
        assert not printer.gate.is_set()  # still stuck: the reports did not wait for it
        assert runtime.connection.stats.losses == 0
        (status,) = sub.messages()[-1].body.peripherals  # type: ignore[union-attr]
        assert (status.name, status.condition) == ("a4_printer", PeripheralCondition.OK)
    finally:
        printer.gate.set()


class TickBug(Agent):
    """An agent with a bug that raises out of ``tick`` once it is connected."""

    def tick(self, now: float) -> float:
        if self.connected:
            raise RuntimeError("bug in tick")
        return super().tick(now)


def test_a_loop_killed_by_an_error_closes_its_sockets_and_the_broker_sends_the_will(
    broker: LocalBroker, subscribers: list[Subscriber]
) -> None:
    tid, sub = new_watched_id(broker, subscribers)
    config = config_for(broker, tid, keepalive_s=60)  # no keepalive will within the test
    connection = MqttConnection(ConnectionSettings.from_config(config))
    agent = TickBug(config, [], connection, SystemClock(), "0f0e0d0c-test", float)
    loop = EventLoop()
    loop.add(agent, connection)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run()
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    try:
        assert not thread.is_alive()
        assert [str(e) for e in errors] == ["bug in tick"]
        assert connection.closed
        assert connection.fileno() is None
        wait_until(lambda: len(sub.states()) >= 2, 5, "the will")
        will = sub.states()[-1]
        assert (will.body.state.value, will.body.reason) == ("offline", "connection_lost")
    finally:
        connection.close()
