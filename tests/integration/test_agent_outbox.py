"""The durable outbox end to end: real agents, a real mosquitto, outages, crashes, restarts,
a message the broker acknowledged but the server never got (re-sent, the gap filled), and a
confirmation lost on its way back (re-sent after the confirmation timeout, confirmed again)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import AgentConfig
from agent.main import AgentRuntime
from agent.mqtt_connection import ConnectionSettings, MqttConnection
from agent.outbox import Outbox
from agent.probes.simulated import Scenario, SimulatedProbeSpec
from kioskfleet.local_broker import LocalBroker, project_broker_conf
from kioskfleet.stream_accounting import wait_for_exact_accounting
from protocol.codec import cmd_schema, decode, encode
from protocol.committed import COMMITTED_SCHEMA, decode_committed
from protocol.messages import EventMessage, Message, PeripheralCondition, StateMessage
from tests.integration.conftest import ServerFactory, api, metric, wait_until
from tests.support.fleet_messages import at, periph, peripheral_event, report
from tests.support.outbox_v1 import V1Row, write_v1_outbox

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


class DurableSubscriber:
    """A paho subscriber with a persistent session: what arrives while it is away is kept for it."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.received: list[Message] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sub-{uuid.uuid4().hex[:10]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.reconnect_delay_set(1, 1)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *args: subscribed.set()
        self._client.on_connect = lambda c, *args: c.subscribe(topic_filter, qos=1)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
        props.SessionExpiryInterval = 600
        self._client.connect("127.0.0.1", port, keepalive=5, clean_start=False, properties=props)
        self._client.loop_start()
        assert subscribed.wait(5), "no SUBACK"

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if msg.topic.endswith("/cmd"):
            return  # the server's kf.committed to the agent, not the terminal's stream
        message = decode(msg.topic, bytes(msg.payload))
        with self._lock:
            self.received.append(message)

    def stream(self) -> list[Message]:
        """Reports and events in arrival order (duplicates included)."""
        with self._lock:
            return [m for m in self.received if not isinstance(m, StateMessage)]

    def seqs(self) -> set[int]:
        return {m.seq for m in self.stream()}

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def durable_broker() -> Iterator[LocalBroker]:
    """A private mosquitto that keeps sessions across its restarts (persistence on)."""
    workdir = Path(tempfile.mkdtemp(prefix="kf-broker-"))
    workdir.chmod(0o777)  # mosquitto may drop to its own user
    has_persistence = "persistence true" in project_broker_conf().read_text()
    broker = LocalBroker(workdir, extra_conf="" if has_persistence else "persistence true\n")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], None]]]:
    undo: list[Callable[[], None]] = []
    yield undo
    for fn in reversed(undo):
        fn()


def agent_config(
    broker: LocalBroker, terminal_id: str, outbox: Path, *, confirm: bool = False
) -> AgentConfig:
    """An agent reporting every 0.1 s; ``confirm``: keep rows until the server's kf.committed
    (only with a server on the broker)."""
    return AgentConfig.model_validate(
        {
            "terminal_id": terminal_id,
            "hall": "hall-01",
            "region": "region-1",
            "model": "KF-200",
            "broker_url": broker.url,
            "report_interval_s": 0.1,
            "probe_interval_s": 0.05,
            "keepalive_s": 2,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.3,
            "limits": {"shutdown_timeout_s": 5},
            # Without a server, only the broker: PUBACK semantics (the confirmations of
            # kf.committed are proven in tests/integration/faults/test_broker_restart.py).
            "outbox": {
                "path": str(outbox),
                "synchronous": "normal",
                "drain_jitter_s": 0.3,
                "require_commit_confirmation": confirm,
            },
        }
    )


def new_id() -> str:
    return f"O-{uuid.uuid4().hex[:10]}"


def start_runtime(
    config: AgentConfig, cleanup: list[Callable[[], None]], **kwargs: object
) -> AgentRuntime:
    runtime = AgentRuntime(config, **kwargs)  # type: ignore[arg-type]
    runtime.start()

    def finish() -> None:
        runtime.stop()
        runtime.close()

    cleanup.append(finish)
    return runtime


def assert_every_seq_once_in_order(sub: DurableSubscriber, boot_id: str, last_seq: int) -> None:
    """Every seq 1..last_seq arrived at least once, first arrivals in order, one stream id."""
    stream = sub.stream()
    assert {m.boot_id for m in stream} == {boot_id}
    assert sub.seqs() == set(range(1, last_seq + 1))
    first_arrivals: list[int] = []
    seen: set[int] = set()
    for m in stream:
        if m.seq not in seen:
            seen.add(m.seq)
            first_arrivals.append(m.seq)
    assert first_arrivals == sorted(first_arrivals)


def test_an_agent_cut_off_from_the_broker_delivers_every_queued_report_and_event_in_order(
    durable_broker: LocalBroker, tmp_path: Path, cleanup: list[Callable[[], None]]
) -> None:
    tid = new_id()
    sub = DurableSubscriber(durable_broker.port, f"kf/v1/terminals/{tid}/#")
    cleanup.append(sub.close)
    printer = SimulatedProbeSpec(name="receipt_printer", scenario=Scenario.RECEIPT_PRINTER).build()
    config = agent_config(durable_broker, tid, tmp_path / "outbox.sqlite")
    runtime = start_runtime(config, cleanup, probes=[printer])
    wait_until(lambda: len(sub.seqs()) >= 3, 10, "the first reports")

    durable_broker.stop()
    wait_until(lambda: not runtime.connection.connected, 10, "the agent to notice the outage")
    wait_until(lambda: runtime.outbox.stats(tid).pending >= 8, 10, "reports kept while offline")
    printer.force(PeripheralCondition.PAPER_OUT)
    runtime.loop.check_now(tid)
    wait_until(lambda: runtime.outbox.stats(tid).events >= 2, 5, "the fault event stored")
    offline_last = runtime.outbox.stats(tid).last_seq

    durable_broker.start()
    wait_until(lambda: runtime.connection.connected, 15, "the reconnect")
    wait_until(lambda: set(range(1, offline_last + 1)) <= sub.seqs(), 15, "the backlog")
    runtime.stop()
    stats = runtime.outbox.stats(tid)
    wait_until(lambda: len(sub.seqs()) >= stats.last_seq - stats.pending, 5, "the last messages")

    assert stats.pending == 0  # everything acknowledged, nothing left behind
    assert stats.dropped_reports == 0
    assert_every_seq_once_in_order(sub, stats.boot_id, stats.last_seq)
    changes = [
        m
        for m in sub.stream()
        if isinstance(m, EventMessage) and m.body.type == "peripheral_changed"
    ]
    assert changes[0].body.peripheral.condition is PeripheralCondition.PAPER_OUT  # type: ignore[union-attr]
    assert runtime.sender.stats().handed >= stats.reports + stats.events


def test_an_agent_restarted_on_its_outbox_continues_the_stream_and_resends_what_was_not_acked(
    durable_broker: LocalBroker, tmp_path: Path, cleanup: list[Callable[[], None]]
) -> None:
    tid = new_id()
    sub = DurableSubscriber(durable_broker.port, f"kf/v1/terminals/{tid}/#")
    cleanup.append(sub.close)
    path = tmp_path / "outbox.sqlite"
    config = agent_config(durable_broker, tid, path)
    first = AgentRuntime(config, probes=[])
    first.start()
    wait_until(lambda: len(sub.seqs()) >= 3, 10, "the first reports")
    boot_id = first.outbox.stats(tid).boot_id

    durable_broker.stop()
    wait_until(lambda: first.outbox.stats(tid).pending >= 5, 10, "reports kept while offline")
    first.abort()  # a crash: nothing acknowledged, the rows stay
    left = first.outbox.stats(tid)
    first.close()
    assert left.pending >= 5

    durable_broker.start()
    second = start_runtime(config, cleanup, probes=[])
    assert second.sender.last_seq == left.last_seq  # it continues after what was stored
    wait_until(lambda: set(range(1, left.last_seq + 3)) <= sub.seqs(), 15, "old and new messages")
    second.stop()
    stats = second.outbox.stats(tid)
    assert stats.boot_id == boot_id
    assert stats.pending == 0
    wait_until(lambda: sub.seqs() >= set(range(1, stats.last_seq + 1)), 5, "the last messages")
    assert_every_seq_once_in_order(sub, boot_id, stats.last_seq)
    boots = [m.seq for m in sub.stream() if isinstance(m, EventMessage) and m.body.type == "boot"]
    assert sorted(set(boots)) == [1, left.last_seq + 1]  # one boot event per process start


def kill_and_wait(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def kioskfleet(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "kioskfleet.cli", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_AGENT_")},
    )


def test_a_sigkilled_agent_process_restarts_on_the_same_outbox_and_continues_its_stream(
    broker: LocalBroker, tmp_path: Path, cleanup: list[Callable[[], None]]
) -> None:
    tid = new_id()
    sub = DurableSubscriber(broker.port, f"kf/v1/terminals/{tid}/#")
    cleanup.append(sub.close)
    path = tmp_path / "outbox.sqlite"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'terminal_id = "{tid}"\nhall = "h"\nregion = "r"\nmodel = "m"\n'
        f'broker_url = "{broker.url}"\nreport_interval_s = 0.2\n'
        f'[outbox]\npath = "{path}"\nsynchronous = "normal"\ndrain_jitter_s = 0.2\n'
        "require_commit_confirmation = false\n"  # no server here, only the broker
    )
    proc = kioskfleet("agent", "--config", str(config))
    cleanup.append(lambda: kill_and_wait(proc))
    wait_until(lambda: len(sub.seqs()) >= 4, 20, "the agent process's reports")
    kill_and_wait(proc)
    with Outbox(path) as outbox:
        before = outbox.stats(tid)

    again = kioskfleet("agent", "--config", str(config))
    cleanup.append(lambda: kill_and_wait(again))
    wait_until(lambda: max(sub.seqs()) > before.last_seq + 2, 20, "the restarted agent's reports")
    again.send_signal(signal.SIGTERM)
    assert again.wait(20) == 0
    with Outbox(path) as outbox:
        after = outbox.stats(tid)
    assert after.boot_id == before.boot_id
    assert after.last_seq > before.last_seq
    assert after.pending == 0
    wait_until(lambda: sub.seqs() >= set(range(1, after.last_seq + 1)), 5, "every seq")
    assert_every_seq_once_in_order(sub, before.boot_id, after.last_seq)


def test_a_sigkilled_simulate_command_restarts_on_its_outbox_file_and_continues_the_streams(
    broker: LocalBroker, tmp_path: Path, cleanup: list[Callable[[], None]]
) -> None:
    prefix = "K" + uuid.uuid4().hex[:6].upper()
    path = tmp_path / "sim-outbox.sqlite"
    args = (
        "simulate",
        "--terminals",
        "3",
        "--broker",
        broker.url,
        "--report-interval",
        "0.3",
        "--id-prefix",
        prefix,
        "--outbox",
        str(path),
        "--no-commit-confirmation",  # no server here, only the broker
        "--drain-jitter",
        "0.2",
    )
    ids = [f"{prefix}-{i:05d}" for i in range(1, 4)]
    sub = DurableSubscriber(broker.port, "kf/v1/terminals/#")
    cleanup.append(sub.close)

    def mine() -> list[Message]:
        return [m for m in sub.stream() if m.terminal_id in ids]

    proc = kioskfleet(*args)
    cleanup.append(lambda: kill_and_wait(proc))
    assert proc.stdout is not None
    assert str(path) in proc.stdout.readline().decode()  # the outbox path is printed first
    wait_until(lambda: len(mine()) >= 12, 20, "reports from the three terminals")
    kill_and_wait(proc)
    with Outbox(path) as outbox:
        before = {tid: outbox.stats(tid) for tid in ids}

    def seqs_of(tid: str) -> set[int]:
        return {m.seq for m in mine() if m.terminal_id == tid}

    # Stopped once every terminal said new things, not after a fixed duration: a loaded
    # machine once spent the whole --duration 8 starting and connecting, and a terminal
    # that inherited a row still in flight at the kill waited out its drain jitter (then
    # 10 s) with everything it said after that still pending at the stop.
    again = kioskfleet(*args)
    cleanup.append(lambda: kill_and_wait(again))
    wait_until(
        lambda: all(max(seqs_of(tid), default=0) > before[tid].last_seq + 2 for tid in ids),
        30,
        "the restarted terminals' new reports",
    )
    again.send_signal(signal.SIGTERM)
    assert again.wait(60) == 0
    with Outbox(path) as outbox:
        after = {tid: outbox.stats(tid) for tid in ids}

    def has_all(tid: str, wanted: set[int]) -> bool:
        return seqs_of(tid) >= wanted

    for tid in ids:
        assert after[tid].boot_id == before[tid].boot_id
        assert after[tid].last_seq > before[tid].last_seq
        assert after[tid].pending == 0
        wanted = set(range(1, after[tid].last_seq + 1))
        wait_until(partial(has_all, tid, wanted), 5, f"every seq of {tid}")
        assert seqs_of(tid) == wanted
        assert {m.boot_id for m in mine() if m.terminal_id == tid} == {before[tid].boot_id}


def test_an_upgraded_agent_delivers_the_backlog_an_older_agent_left_with_its_stream(
    broker: LocalBroker,
    start_server: ServerFactory,
    tmp_path: Path,
    cleanup: list[Callable[[], None]],
) -> None:
    """The agent's upgrade (outbox schema 1 -> current) loses nothing: same boot_id, same seqs."""
    tid = new_id()
    boot = str(uuid.uuid4())
    sent = [at(-60 + seq) for seq in range(1, 6)]
    backlog = [V1Row.of(report(tid, seq, boot=boot, sent_at=when)) for seq, when in zip(range(1, 4), sent, strict=False)]  # fmt: skip
    backlog.append(V1Row.of(peripheral_event(tid, 4, periph("printer", "receipt_printer", "paper_out"), "ok", boot=boot, sent_at=sent[3])))  # fmt: skip
    backlog.append(V1Row.of(report(tid, 5, boot=boot, sent_at=sent[4])))
    path = tmp_path / "outbox.sqlite"
    write_v1_outbox(path, tid, boot, backlog)
    server = start_server()
    sub = DurableSubscriber(broker.port, f"kf/v1/terminals/{tid}/#")
    cleanup.append(sub.close)

    runtime = start_runtime(agent_config(broker, tid, path), cleanup, probes=[])
    assert runtime.sender.last_seq == 5  # it continues the old stream
    wait_until(lambda: set(range(1, 8)) <= sub.seqs(), 15, "the old backlog and new reports")
    wait_until(lambda: api(server, f"/api/v1/terminals/{tid}").status_code == 200, 10, "the server")
    runtime.stop()

    by_seq = {m.seq: m for m in sub.stream()}
    assert [encode(by_seq[row.seq]) for row in backlog] == [row.payload for row in backlog]
    assert {m.boot_id for m in sub.stream()} == {boot}
    assert runtime.outbox.stats(tid).pending == 0

    def delivery() -> dict[str, Any]:
        found: dict[str, Any] = api(server, f"/api/v1/terminals/{tid}").json()["delivery"]
        return found

    wait_until(lambda: delivery()["last_seq"] >= 7, 10, "the server to apply them")
    seen = delivery()
    assert (seen["boot_id"], seen["seq_gaps"], seen["events_received"]) == (boot, 0, 2)
    events = api(server, f"/api/v1/terminals/{tid}/events").json()["items"]
    assert 4 in {e["seq"] for e in events if e["boot_id"] == boot}


class LosingConnection(MqttConnection):
    """The real connection, except that the first hand-over of one seq reaches the broker
    empty: the broker acknowledges it (a real PUBACK) and the server can never apply it
    (``bad_json``), as a JetStream hole looks from the agent."""

    def __init__(self, settings: ConnectionSettings, lose_seq: int) -> None:
        super().__init__(settings)
        self.lose_seq = lose_seq
        self.lost = 0

    def publish(self, topic: str, payload: bytes, retain: bool, *, seq: int | None = None) -> int:
        if not self.lost and not retain and json.loads(payload).get("seq") == self.lose_seq:
            self.lost += 1
            payload = b""
        return super().publish(topic, payload, retain, seq=seq)


def test_a_message_acknowledged_but_never_applied_is_re_sent_on_the_confirmation_and_fills_the_gap(
    private_broker: LocalBroker,
    private_server: ServerFactory,
    database_url: str,
    tmp_path: Path,
    cleanup: list[Callable[[], None]],
) -> None:
    lose = 4
    server = private_server(database_url=database_url)
    tid = new_id()
    config = agent_config(private_broker, tid, tmp_path / "outbox.sqlite", confirm=True)
    connection = LosingConnection(ConnectionSettings.from_config(config), lose)
    runtime = start_runtime(config, cleanup, connection=connection)

    wait_until(lambda: connection.lost == 1, 15, "the report to be lost at the broker")
    wait_until(
        lambda: metric(server, "kioskfleet_ingest_gap_fills_total") == 1,
        15,
        "the agent to re-send it on the confirmation and the server to fill the gap",
    )
    wait_until(lambda: runtime.outbox.stats(tid).last_seq >= lose + 5, 15, "more reports")
    runtime.stop()  # a clean stop waits for the confirmations

    stats = runtime.outbox.stats(tid)
    assert stats.pending == 0  # every row confirmed, the lost one included
    assert runtime.sender.stats().refilled >= 1
    wait_for_exact_accounting(database_url, {tid: stats})  # server seq_gaps 0: nothing lost
    assert metric(server, "kioskfleet_ingest_seq_gaps_total") == 1
    assert metric(server, "kioskfleet_ingest_rejected_total", reason="bad_json") == 1


class ConfirmationDroppingConnection(MqttConnection):
    """The real connection, except that every ``kf.committed`` reaching ``seq`` that the
    broker delivers to the agent until ``lose_until()`` never reaches the sender (as
    nats-server's JetStream loses QoS 1 messages); one covering less goes through."""

    def __init__(self, settings: ConnectionSettings, seq: int) -> None:
        super().__init__(settings)
        self.seq = seq
        self.lose_until: Callable[[], bool] = lambda: False
        self.dropped = 0

    def receive_commands(self, command: Callable[[bytes], None]) -> None:
        def dropping(payload: bytes) -> None:
            if (
                cmd_schema(payload) == COMMITTED_SCHEMA
                and decode_committed(payload).seq >= self.seq
                and not self.lose_until()
            ):
                self.dropped += 1
                return
            command(payload)

        super().receive_commands(dropping)


@pytest.mark.parametrize(
    ("confirm_timeout_s", "at_stop"),
    [(2.0, False), (600.0, True)],
    ids=["while-running", "at-a-clean-stop"],
)
def test_a_quiet_agent_whose_confirmation_is_lost_re_sends_after_the_timeout_and_empties(
    private_broker: LocalBroker,
    private_server: ServerFactory,
    database_url: str,
    tmp_path: Path,
    cleanup: list[Callable[[], None]],
    confirm_timeout_s: float,
    at_stop: bool,
) -> None:
    """Only the boot event and the report on connect are said (reports hourly), and every
    kf.committed covering both is lost until the sender's confirmation timeout re-sends
    what is unconfirmed (at a clean stop the confirmation of its ``offline`` state too):
    the server takes the duplicates and confirms them again. At a clean stop the timeout
    is 2 s (well inside the 5 s stop wait), not 600 s."""
    server = private_server(database_url=database_url)
    tid = new_id()
    config = agent_config(private_broker, tid, tmp_path / "outbox.sqlite", confirm=True)
    config = config.model_copy(
        update={
            "report_interval_s": 3600.0,
            "outbox": config.outbox.model_copy(update={"confirm_timeout_s": confirm_timeout_s}),
        }
    )
    said = 2  # seq 1 the boot event, seq 2 the report on connect
    connection = ConfirmationDroppingConnection(ConnectionSettings.from_config(config), said)
    runtime = start_runtime(config, cleanup, connection=connection, probes=[])
    connection.lose_until = lambda: runtime.sender.stats().confirm_timeouts > 0

    wait_until(lambda: connection.dropped >= 1, 15, "the last kf.committed to be lost")
    if at_stop:
        assert runtime.outbox.stats(tid).pending >= 1  # no re-send for 600 s
        runtime.stop()  # the stop's wait re-sends after 2 s and gets the confirmation
    else:
        wait_until(lambda: runtime.outbox.stats(tid).pending == 0, 15, "the re-send confirmed")
        runtime.stop()

    stats = runtime.outbox.stats(tid)
    assert (stats.pending, stats.last_seq, stats.events) == (0, said, 1)
    sent = runtime.sender.stats()
    # seq 2 re-sent, and seq 1 too if the lost confirmation was the first to cover it
    assert sent.refilled in (1, 2)
    assert (sent.confirm_timeouts, sent.handed, sent.confirmed) == (1, said + sent.refilled, said)
    wait_for_exact_accounting(database_url, {tid: stats})
    assert metric(server, "kioskfleet_ingest_duplicates_total") == sent.refilled  # confirmed again
    assert metric(server, "kioskfleet_ingest_seq_gaps_total") == 0
