"""A paho MQTT client over TLS with a client certificate, for the broker-identity and attack
tests: it records CONNACK, PUBACK and SUBACK reason codes and the messages it receives."""

from __future__ import annotations

import secrets
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from kioskfleet.local_broker import LocalBroker
from tests.support.pki import ClientFiles
from tests.support.waiting import wait_until

__all__ = ["NOT_AUTHORIZED", "Client"]

NOT_AUTHORIZED = 0x87  # MQTT 5 PUBACK/SUBACK reason code


class Client:
    """A paho client over TLS that records CONNACK, PUBACK and SUBACK codes and messages."""

    def __init__(
        self,
        broker: LocalBroker,
        files: ClientFiles | None,
        *,
        ca_file: Path,
        protocol: MQTTProtocolVersion = mqtt.MQTTv5,
        client_id: str | None = None,
        clean_start: bool = True,
    ) -> None:
        self.broker = broker
        self.protocol = protocol
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.disconnected = threading.Event()
        self.acks: dict[int, int] = {}  # mid -> PUBACK reason code
        self.suback: list[int] = []
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"tls-{secrets.token_hex(4)}",
            protocol=protocol,
            reconnect_on_failure=False,
            clean_session=None if protocol == mqtt.MQTTv5 else clean_start,
        )
        self.clean_start = clean_start
        self.client.tls_set(
            ca_certs=str(ca_file),
            certfile=str(files.cert_file) if files else None,
            keyfile=str(files.key_file) if files else None,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self.disconnected.set()  # also: TLS refused
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        if not rc.is_failure:
            self.connected.set()

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self._lock:
            self.acks[mid] = rc.value

    def _on_subscribe(
        self, _c: object, _u: object, _mid: int, codes: list[ReasonCode], _p: object
    ) -> None:
        self.suback = [c.value for c in codes]
        self.subscribed.set()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((msg.topic, bytes(msg.payload)))

    def connect(self, timeout: float = 5.0) -> bool:
        """True on a successful CONNACK; False if TLS or MQTT refused us (the broker closed the
        connection during the handshake: paho reports a disconnect, never a CONNACK)."""
        kwargs: dict[str, Any] = {}
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
            props.SessionExpiryInterval = 300
            kwargs = {"clean_start": self.clean_start, "properties": props}
        try:
            self.client.connect("127.0.0.1", self.broker.port, keepalive=10, **kwargs)
        except (OSError, ssl.SSLError):
            return False
        self.client.loop_start()
        wait_until(lambda: self.connected.is_set() or self.disconnected.is_set(), timeout,
                   "CONNACK or the connection closed")  # fmt: skip
        return self.connected.is_set()

    def subscribe(self, topic_filter: str) -> list[int]:
        self.subscribed.clear()
        self.client.subscribe(topic_filter, qos=1)
        assert self.subscribed.wait(5), "no SUBACK"
        return self.suback

    def publish(self, topic_name: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK reason code."""
        info = self.client.publish(topic_name, payload, qos=1, retain=retain)
        wait_until(lambda: info.mid in self.acks, 5, f"PUBACK for {topic_name}")
        return self.acks[info.mid]

    def messages(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
