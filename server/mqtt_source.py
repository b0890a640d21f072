"""The server's MQTT adapter: the only server module that imports paho.

``MqttSource`` is the real ``server.message_source.MessageSource`` (the fake
is ``server.in_memory_source.InMemorySource``). One paho client
(``CallbackAPIVersion.VERSION2``, MQTT v5, QoS 1) with a persistent session
(``clean_start=False``, a Session Expiry Interval and a stable client id), so the broker queues reports while the server restarts.
MQTT 3.1.1 (``clean_session=False``) is an opt-in alternative: paho parses no
v5 properties then, about a third less CPU per message.
It subscribes to ``protocol.topics.server_subscriptions`` on every connect
(reports, events and updates through the shared subscription; the retained
``state`` channel unshared), reconnects with backoff (paho's network thread,
``loop_start``), and hands every message to ``on_message`` as a frozen
``InboundMessage`` stamped with the server's receive time, never a paho object.

Acknowledgements are manual (``manual_ack=True``): a QoS 1 message is
acknowledged only when ``ack`` is called with its delivery, which the database
writer does after the message's effects are committed. A delivery from an
earlier connection is never acknowledged on a later one (the port's
``DeliveryGate``): the connection number changes as soon as paho reports the
connection lost and again before it reconnects. ``pause`` stops intake for a
graceful stop: messages that arrive after it are neither passed on nor
acknowledged, so the broker keeps them for the next run; ``stop`` then waits up
to ``drain_timeout_s`` for paho to write the acknowledgements already queued.

paho's error codes become ``BrokerError`` or log lines here; nothing paho-shaped
leaves this module. It never decodes or judges a payload (that is the ingest).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from protocol.topics import server_subscriptions
from server.errors import BrokerError
from server.inbound import Delivery, InboundMessage
from server.message_source import ConnectionHandler, DeliveryGate, MessageHandler

__all__ = ["InboundMessage", "MqttOptions", "MqttSource"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MqttOptions:
    """What the adapter needs from the settings."""

    host: str
    port: int
    client_id: str
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 86400
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    shared_subscription: bool = False
    protocol: Literal["5", "3.1.1"] = "5"
    receive_maximum: int = 0  # QoS 1 messages the broker may have in flight to us; 0: broker's
    drain_timeout_s: float = 2.0  # on stop, how long paho may take to write queued PUBACKs


class MqttSource:
    """Receives the terminals' messages from the broker and passes them on."""

    def __init__(
        self,
        options: MqttOptions,
        on_message: MessageHandler,
        *,
        on_connection_change: ConnectionHandler | None = None,
    ) -> None:
        self._options = options
        self._on_message = on_message
        self._on_connection_change = on_connection_change
        self._connected_since: datetime | None = None
        self._connected = threading.Event()
        self._stopping = False
        self._paused = False
        self._gate = DeliveryGate()  # a new connection when one ends and before the next starts
        self._client = self._build_client()

    # --- public state ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while connected and subscribed (as far as we know)."""
        return self._connected.is_set()

    @property
    def connected_since(self) -> datetime | None:
        """When the current connection was established; None while disconnected."""
        return self._connected_since

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def ack(self, deliveries: Iterable[Delivery]) -> int:
        """Acknowledge (PUBACK) these deliveries, in the order given; thread-safe.

        Deliveries of an earlier connection are skipped (the broker redelivers
        them on the new one). Returns how many acknowledgements were queued.
        """
        return self._gate.acknowledge(deliveries, self._send_ack)

    def pause(self) -> None:
        """Stop passing messages on; those that arrive now are not acknowledged either."""
        self._paused = True

    def clear_retained(self, topic: str) -> bool:
        """An empty retained PUBLISH (QoS 1) on ``topic``; False when not connected."""
        if not self.connected:
            return False
        info = self._client.publish(topic, b"", qos=1, retain=True)
        return info.rc is MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes) -> bool:
        """A PUBLISH (QoS 1, not retained); False when not connected or paho refused it."""
        if not self.connected:
            return False
        info = self._client.publish(topic, payload, qos=1, retain=False)
        return info.rc is MQTTErrorCode.MQTT_ERR_SUCCESS

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the network thread; connecting (and reconnecting) happens in the background.

        Raises BrokerError if the client cannot even start (unreadable TLS files, a
        network thread already running).
        """
        o = self._options
        self._stopping = False
        if o.tls:
            try:
                self._client.tls_set(
                    ca_certs=str(o.ca_file) if o.ca_file else None,
                    certfile=str(o.cert_file) if o.cert_file else None,
                    keyfile=str(o.key_file) if o.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise BrokerError(f"TLS setup failed: {exc}") from exc
        try:
            if o.protocol == "5":
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho
                props.SessionExpiryInterval = o.session_expiry_s
                if o.receive_maximum:
                    props.ReceiveMaximum = o.receive_maximum
                self._client.connect_async(
                    o.host, o.port, keepalive=o.keepalive_s, clean_start=False, properties=props
                )
            else:  # 3.1.1: the session persists (clean_session=False) as long as the broker keeps it
                self._client.connect_async(o.host, o.port, keepalive=o.keepalive_s)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to {o.host}:{o.port}: {exc}") from exc
        if self._client.loop_start() is not MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError("the MQTT network thread is already running")

    def stop(self) -> None:
        """Let paho write the queued acknowledgements (waiting at most the options'
        ``drain_timeout_s``), disconnect cleanly (the session stays on the broker) and stop
        the thread."""
        self._paused = True
        deadline = time.monotonic() + self._options.drain_timeout_s
        while self.connected and self._client.want_write() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stopping = True
        try:
            self._client.disconnect()
        except (OSError, ValueError) as exc:
            log.debug("disconnect: %s", exc)
        self._client.loop_stop()
        self._set_connected(False)

    # --- paho plumbing --------------------------------------------------------------------

    def _build_client(self) -> mqtt.Client:
        o = self._options
        v5 = o.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=o.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            reconnect_on_failure=True,
            manual_ack=True,
        )
        client.reconnect_delay_set(min_delay=o.reconnect_min_s, max_delay=o.reconnect_max_s)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        client.on_connect_fail = self._handle_connect_fail
        client.on_pre_connect = self._handle_pre_connect
        return client

    def _send_ack(self, mid: int) -> bool:
        return self._client.ack(mid, 1) is MQTTErrorCode.MQTT_ERR_SUCCESS

    def _set_connected(self, up: bool) -> None:
        was = self._connected.is_set()
        if up:
            self._connected_since = datetime.now(UTC)
            self._connected.set()
        else:
            self._connected_since = None
            self._connected.clear()
        if was != up and self._on_connection_change is not None:
            self._on_connection_change(up)

    def _handle_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        # Subscribe on every connect: a session that expired or a new broker has none.
        subscriptions = server_subscriptions(shared=self._options.shared_subscription)
        if self._options.protocol == "5":
            result, _mid = client.subscribe(
                [(flt, SubscribeOptions(qos=qos)) for flt, qos in subscriptions]
            )
        else:
            result, _mid = client.subscribe(subscriptions)
        if result is not MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("subscribe failed: %s", mqtt.error_string(result))
            return
        log.info(
            "connected to %s:%d (session present: %s)",
            self._options.host,
            self._options.port,
            flags.session_present,
        )

    def _handle_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("broker refused subscriptions: %s", ", ".join(failed))
            return
        self._set_connected(True)

    def _handle_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._gate.new_connection()  # what was not acknowledged yet, the broker redelivers
        self._set_connected(False)
        if not self._stopping:
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _handle_pre_connect(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._gate.new_connection()  # paho dropped its unsent packets; a new connection starts

    def _handle_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        log.warning(
            "cannot reach the broker at %s:%d; retrying", self._options.host, self._options.port
        )

    def _handle_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._paused:
            return  # not applied, not acknowledged: the broker redelivers it to the next run
        received_at = datetime.now(UTC)
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # the broker should refuse these; the ingest rejects them
            topic = "<not UTF-8>"
        try:
            self._on_message(
                InboundMessage(
                    topic,
                    bytes(msg.payload),
                    bool(msg.retain),
                    received_at,
                    mid=msg.mid if msg.qos else 0,
                    connection=self._gate.connection,
                )
            )
        except Exception:  # an exception here would kill paho's network thread
            log.exception("message handler failed on topic %r", topic)
