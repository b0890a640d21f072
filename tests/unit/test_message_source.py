"""A source acknowledges a delivery only on the connection that delivered it, in order.

The rule is the port's ``DeliveryGate``, shared by the paho adapter and the
in-memory fake; the tests drive the fake, and check on the paho adapter (its
callbacks called by hand, nothing patched) that it numbers its connections as
the fake does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from server.errors import BrokerError
from server.in_memory_source import InMemorySource
from server.inbound import InboundMessage
from server.message_source import MessageSource
from server.mqtt_source import MqttOptions, MqttSource

TOPIC = "kf/v1/terminals/T-1/report"


class _Rig:
    """An InMemorySource with what it passed on and its connection changes recorded."""

    def __init__(self, **options: Any) -> None:
        self.received: list[InboundMessage] = []
        self.changes: list[bool] = []
        self.source = InMemorySource(
            self.received.append, on_connection_change=self.changes.append, **options
        )

    def deliver(self, mid: int | None = None, **options: Any) -> InboundMessage:
        message = self.source.deliver(TOPIC, b"{}", mid=mid, **options)
        assert message is not None
        assert self.received[-1] is message
        return message


def test_an_ack_of_a_delivery_from_a_lost_connection_is_never_sent() -> None:
    rig = _Rig(connect_on_start=False)
    rig.source.connect()
    before = rig.deliver(7)
    rig.source.connection_lost()  # the writer commits and acknowledges only after this
    assert rig.source.ack([before.delivery] if before.delivery else []) == 0
    rig.source.connect()  # the next connection reuses packet ids: mid 7 may be another message
    assert rig.source.ack([before.delivery] if before.delivery else []) == 0
    assert rig.source.acked == []


def test_a_delivery_is_acknowledged_on_its_own_connection_and_qos0_never() -> None:
    rig = _Rig(connect_on_start=False)
    rig.source.connect()
    rig.source.connection_lost()
    rig.source.connect()
    current = rig.deliver(9)
    assert current.delivery is not None
    assert rig.source.ack([current.delivery, (current.delivery[0], 0)]) == 1
    assert rig.source.acked == [current.delivery]
    assert [mid for _connection, mid in rig.source.acked] == [9]
    assert rig.deliver(qos=0).delivery is None


def test_acknowledgements_go_out_in_the_order_given_numbered_per_connection() -> None:
    rig = _Rig()
    rig.source.start()
    first, second, third = rig.deliver(), rig.deliver(), rig.deliver()
    assert [m.mid for m in (first, second, third)] == [1, 2, 3]
    deliveries = [m.delivery for m in (third, first, second) if m.delivery]
    assert rig.source.ack(deliveries) == 3
    assert rig.source.acked == deliveries


def test_a_paused_source_passes_nothing_on_and_stop_ends_the_connection() -> None:
    rig = _Rig()
    rig.source.start()
    kept = rig.deliver()
    rig.source.pause()
    assert rig.source.deliver(TOPIC, b"{}") is None
    assert rig.received == [kept]
    rig.source.stop()
    assert (rig.source.connected, rig.source.connected_since) == (False, None)
    assert rig.changes == [True, False]
    assert rig.source.ack([kept.delivery] if kept.delivery else []) == 0


def test_the_fake_reports_its_connection_and_refuses_a_second_start() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    source: MessageSource = InMemorySource(lambda _m: None, clock=lambda: now)
    assert (source.connected, source.connected_since) == (False, None)
    source.start()
    assert (source.connected, source.connected_since) == (True, now)
    with pytest.raises(BrokerError, match="already started"):
        source.start()


def test_the_fake_refuses_a_delivery_while_disconnected() -> None:
    rig = _Rig(connect_on_start=False)
    with pytest.raises(RuntimeError, match="not connected"):
        rig.source.deliver(TOPIC, b"{}")


# --- the paho adapter keeps the same numbering -----------------------------------------------


class _PahoByHand:
    """An MqttSource whose paho callbacks are called as paho's network thread would."""

    def __init__(self) -> None:
        self.received: list[InboundMessage] = []
        self.source = MqttSource(
            MqttOptions(host="127.0.0.1", port=1, client_id="ack-test"), self.received.append
        )
        self.client: mqtt.Client = self.source._client  # driving paho's callbacks by hand

    def deliver(self, mid: int) -> InboundMessage:
        msg = mqtt.MQTTMessage(mid=mid, topic=TOPIC.encode())
        msg.qos, msg.payload = 1, b"{}"
        assert self.client.on_message is not None
        self.client.on_message(self.client, None, msg)
        return self.received[-1]

    def connection_lost(self) -> None:
        on_disconnect: Any = self.client.on_disconnect  # paho types it as the v1 signature
        on_disconnect(
            self.client,
            None,
            mqtt.DisconnectFlags(is_disconnect_packet_from_server=False),
            ReasonCode(PacketTypes.DISCONNECT, identifier=0x80),
            None,
        )

    def reconnecting(self) -> None:
        """What paho's reconnect() does before it opens the next connection."""
        assert self.client.on_pre_connect is not None
        self.client.on_pre_connect(self.client, None)


def test_the_paho_adapter_starts_a_new_connection_on_loss_and_before_each_reconnect() -> None:
    paho = _PahoByHand()
    paho.reconnecting()
    first = paho.deliver(7)
    assert paho.deliver(8).connection == first.connection
    paho.connection_lost()
    lost = paho.deliver(7)  # a straggler paho hands over after reporting the loss
    paho.reconnecting()
    later = paho.deliver(7)
    assert first.connection < lost.connection < later.connection
    assert paho.source.ack([first.delivery] if first.delivery else []) == 0
