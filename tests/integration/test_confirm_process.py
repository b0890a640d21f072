"""``kf.committed`` published from the child process (``server.confirm_process``), against
a real mosquitto: order per terminal, a dead child replaced, a stop that drains, bounds."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from kioskfleet.local_broker import LocalBroker
from protocol.committed import decode_committed
from protocol.topics import Channel, parse_topic
from server.confirm_process import ConfirmProcess
from server.mqtt_source import MqttOptions
from server.write_behind import Confirmation
from tests.integration.conftest import unique

pytestmark = pytest.mark.integration


class CmdListener:
    """Every message on the terminals' ``cmd`` topics, decoded, in arrival order."""

    def __init__(self, broker: LocalBroker) -> None:
        self.received: list[tuple[str, str, int, tuple[tuple[int, int], ...]]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=unique("cmd-listener"), protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe("kf/v1/terminals/+/cmd", qos=1)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("listener could not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        terminal_id, channel = parse_topic(msg.topic)
        assert channel is Channel.CMD
        committed = decode_committed(bytes(msg.payload))
        with self._lock:
            self.received.append((terminal_id, committed.boot_id, committed.seq, committed.ranges))

    def wait_for(
        self, count: int, timeout_s: float = 20.0
    ) -> list[tuple[str, str, int, tuple[tuple[int, int], ...]]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def listener(broker: LocalBroker) -> Iterator[CmdListener]:
    running = CmdListener(broker)
    yield running
    running.close()


@pytest.fixture
def confirmer(broker: LocalBroker) -> Iterator[Callable[..., ConfirmProcess]]:
    made: list[ConfirmProcess] = []

    def make(**kw: object) -> ConfirmProcess:
        options = MqttOptions(host="127.0.0.1", port=broker.port, client_id=unique("srv"))
        process = ConfirmProcess(options, **kw)  # type: ignore[arg-type]
        process.start()
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop()


def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_each_terminals_confirmations_arrive_in_order_with_their_gaps(
    confirmer: Callable[..., ConfirmProcess], listener: CmdListener
) -> None:
    process = confirmer()
    for seq in range(1, 31):
        batch: list[Confirmation] = [(f"T-{i}", "boot-aaaa-0001", seq, ()) for i in range(3)]
        if seq == 30:
            batch.append(("T-9", "boot-bbbb-0001", 12, ((3, 4), (7, 7))))
        assert process.publish(batch)
    got = listener.wait_for(91)
    assert len(got) == 91
    for i in range(3):
        assert [seq for tid, _b, seq, _m in got if tid == f"T-{i}"] == list(range(1, 31))
    assert ("T-9", "boot-bbbb-0001", 12, ((3, 4), (7, 7))) in got


def test_a_child_that_died_is_replaced_and_the_next_batch_is_published(
    confirmer: Callable[..., ConfirmProcess], listener: CmdListener
) -> None:
    process = confirmer()
    assert process.publish([("T-1", "boot-aaaa-0001", 1, ())])
    assert len(listener.wait_for(1)) == 1
    first = process.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert _until(lambda: not process.alive)
    assert process.publish([("T-1", "boot-aaaa-0001", 2, ())])
    assert process.replaced == 1
    assert process.pid != first
    got = listener.wait_for(2)
    assert [seq for _t, _b, seq, _m in got] == [1, 2]


def test_stop_publishes_every_queued_batch_before_the_child_ends(
    confirmer: Callable[..., ConfirmProcess], listener: CmdListener
) -> None:
    process = confirmer()
    for start in range(0, 500, 100):
        assert process.publish(
            [(f"T-{i}", "boot-aaaa-0001", 5, ()) for i in range(start, start + 100)]
        )
    process.stop()  # at once: the child may not even be connected yet
    assert process.pid is None
    got = listener.wait_for(500)
    assert sorted(tid for tid, _b, _s, _m in got) == sorted(f"T-{i}" for i in range(500))


def test_a_full_queue_refuses_the_batch_and_does_not_block(
    confirmer: Callable[..., ConfirmProcess], listener: CmdListener
) -> None:
    process = confirmer(max_batches=2)
    pid = process.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a child that takes nothing
    try:
        assert process.publish([("T-1", "boot-aaaa-0001", 1, ())])
        assert process.publish([("T-1", "boot-aaaa-0001", 2, ())])
        assert not process.publish([("T-1", "boot-aaaa-0001", 3, ())])
    finally:
        os.kill(pid, signal.SIGCONT)
    assert _until(lambda: len(listener.wait_for(2, timeout_s=0.1)) >= 2, 20.0)
    assert process.publish([("T-1", "boot-aaaa-0001", 4, ())])
    got = listener.wait_for(3)
    assert [seq for _t, _b, seq, _m in got] == [1, 2, 4]
