"""The broker fixture really runs mosquitto with the project's config, and ``LocalBroker``'s
faults (terminate, kill, restart, pause) do what the reliability tests rely on."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from kioskfleet.local_broker import LocalBroker, LocalBrokerError
from tests.integration.conftest import unique, wait_until

pytestmark = pytest.mark.integration

_TOPIC = "kf/v1/terminals/LB-1/report"


class _Client:
    """A paho MQTT v5 client with a persistent session that counts what it receives."""

    def __init__(self, broker: LocalBroker, client_id: str, *, subscribe: str | None = None):
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        self.client.max_inflight_messages_set(100)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda *_a: self._connected.set()
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
        props.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self._connected.wait(5), "no CONNACK"
        if subscribe is not None:
            self.client.subscribe(subscribe, qos=1)
            assert self._subscribed.wait(5), "no SUBACK"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append(bytes(msg.payload))

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(broker: LocalBroker, payloads: list[bytes], *, retain: bool = False) -> None:
    pub = _Client(broker, unique("lb-pub"))
    try:
        infos = []
        for payload in payloads:
            infos.append(pub.client.publish(_TOPIC, payload, qos=1, retain=retain))
            if len(infos) >= 2000:  # paho's own queue is bounded: wait for PUBACKs in batches
                for info in infos:
                    info.wait_for_publish(10)
                infos = []
        for info in infos:
            info.wait_for_publish(10)
        assert all(i.is_published() for i in infos)
    finally:
        pub.close()


def _register_offline_session(broker: LocalBroker) -> str:
    client_id = unique("lb-session")
    _Client(broker, client_id, subscribe=_TOPIC).close()
    return client_id


def test_broker_fixture_listens_on_loopback_with_project_config(broker: LocalBroker) -> None:
    with socket.create_connection(("127.0.0.1", broker.port), timeout=2) as sock:
        assert sock.getpeername()[1] == broker.port
    conf = (broker.workdir / "mosquitto.conf").read_text()
    assert "max_keepalive 300" in conf
    assert "persistence true" in conf
    assert f"persistence_location {broker.workdir}/" in conf
    assert conf.startswith(f"listener {broker.port} 127.0.0.1")


def test_terminate_saves_a_queue_larger_than_10000_and_restart_delivers_it_on_the_same_port(
    tmp_path: Path,
) -> None:
    broker = LocalBroker(tmp_path / "mosquitto").start()
    try:
        port = broker.port
        client_id = _register_offline_session(broker)
        payloads = [f"m{i}".encode() for i in range(12_000)]  # above the old 10 000 bound
        _publish(broker, payloads)
        _publish(broker, [b"retained"], retain=True)
        broker.restart(graceful=True)
        assert broker.port == port
        assert broker.persistence_file.exists()
        consumer = _Client(broker, client_id)  # no new SUBSCRIBE: the session carries it
        try:
            wait_until(lambda: consumer.count() >= len(payloads) + 1, 20, "the saved queue")
            time.sleep(0.2)
            assert sorted(consumer.received) == sorted([*payloads, b"retained"])
        finally:
            consumer.close()
        fresh = _Client(broker, unique("lb-fresh"), subscribe=_TOPIC)
        try:
            wait_until(lambda: fresh.count() == 1, what="the retained message after the restart")
            assert fresh.received == [b"retained"]
        finally:
            fresh.close()
    finally:
        broker.stop()


def test_kill_keeps_the_persistence_dir_and_restores_the_last_autosave(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "mosquitto", overrides={"autosave_interval": "1"}).start()
    try:
        client_id = _register_offline_session(broker)
        _publish(broker, [b"saved-1", b"saved-2"])
        broker.wait_saved(after=time.time(), timeout=10)
        broker.kill()
        assert not broker.running
        assert broker.persistence_file.exists()
        broker.start()
        consumer = _Client(broker, client_id)
        try:
            wait_until(lambda: consumer.count() == 2, 10, "the autosaved queue after SIGKILL")
            assert consumer.received == [b"saved-1", b"saved-2"]
        finally:
            consumer.close()
    finally:
        broker.stop()


def test_paused_broker_accepts_tcp_but_acknowledges_nothing_until_resumed(
    tmp_path: Path,
) -> None:
    broker = LocalBroker(tmp_path / "mosquitto").start()
    try:
        pub = _Client(broker, unique("lb-pub"))
        broker.pause()
        try:
            with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
                pass  # the kernel still completes the handshake
            info = pub.client.publish(_TOPIC, b"frozen", qos=1)
            info.wait_for_publish(1.0)
            assert not info.is_published()
        finally:
            broker.resume()
        info.wait_for_publish(10)
        assert info.is_published()
        pub.close()
    finally:
        broker.stop()


def test_terminate_of_a_paused_broker_still_saves_and_exits(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "mosquitto").start()
    client_id = _register_offline_session(broker)
    _publish(broker, [b"kept"])
    broker.pause()
    broker.terminate(timeout=10)
    assert not broker.running
    broker.start()
    try:
        consumer = _Client(broker, client_id)
        wait_until(lambda: consumer.count() == 1, 10, "the message saved at SIGTERM")
        consumer.close()
    finally:
        broker.stop()


def test_starting_twice_and_pausing_a_stopped_broker_are_refused(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "mosquitto").start()
    try:
        with pytest.raises(LocalBrokerError, match="already running"):
            broker.start()
    finally:
        broker.stop()
    with pytest.raises(LocalBrokerError, match="not running"):
        broker.pause()
