"""The MQTT adapter acknowledges a delivery only on the connection that delivered it."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from server.inbound import InboundMessage
from server.mqtt_source import MqttOptions, MqttSource


class _Rig:
    """An MqttSource whose paho client is driven by hand: callbacks called as paho's network
    thread would, acknowledgements captured instead of written to a socket."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.received: list[InboundMessage] = []
        self.source = MqttSource(
            MqttOptions(host="127.0.0.1", port=1, client_id="ack-test"), self.received.append
        )
        self.client: mqtt.Client = self.source._client  # driving paho by hand
        self.acked: list[int] = []

        def ack(mid: int, _qos: int) -> MQTTErrorCode:
            self.acked.append(mid)
            return MQTTErrorCode.MQTT_ERR_SUCCESS

        monkeypatch.setattr(self.client, "ack", ack)

    def deliver(self, mid: int) -> InboundMessage:
        msg = mqtt.MQTTMessage(mid=mid, topic=b"kf/v1/terminals/T-1/report")
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
        if self.client.on_pre_connect is not None:
            self.client.on_pre_connect(self.client, None)


def test_an_ack_of_a_delivery_from_a_lost_connection_is_never_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = _Rig(monkeypatch)
    rig.reconnecting()
    before = rig.deliver(7)
    rig.connection_lost()  # the writer commits and acknowledges only after this
    assert rig.source.ack([before.delivery] if before.delivery else []) == 0
    rig.reconnecting()  # the next connection reuses packet ids: mid 7 may be another message
    assert rig.source.ack([before.delivery] if before.delivery else []) == 0
    assert rig.acked == []


def test_a_delivery_is_acknowledged_on_its_own_connection_and_qos0_never(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = _Rig(monkeypatch)
    rig.reconnecting()
    rig.connection_lost()
    rig.reconnecting()
    current = rig.deliver(9)
    assert current.delivery is not None
    assert rig.source.ack([current.delivery, (current.delivery[0], 0)]) == 1
    assert rig.acked == [9]
