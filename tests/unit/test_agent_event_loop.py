"""The event loop's bookkeeping that needs no broker: which pairs it accepts."""

from __future__ import annotations

import pytest

from agent.agent import Agent, RecordingOutbound
from agent.clock import FakeClock
from agent.config import AgentConfig
from agent.event_loop import EventLoop
from agent.mqtt_connection import ConnectionSettings, MqttConnection
from protocol.broker_url import BrokerAddress


def make_agent(terminal_id: str) -> Agent:
    config = AgentConfig.model_validate(
        {"terminal_id": terminal_id, "hall": "hall-01", "region": "region-1", "model": "KF-200"}
    )
    return Agent(config, [], RecordingOutbound(), FakeClock(), "0f0e0d0c-boot", float)


def make_connection(client_id: str) -> MqttConnection:
    broker = BrokerAddress("127.0.0.1", 1883, tls=False)
    return MqttConnection(ConnectionSettings(client_id=client_id, brokers=(broker,)))


def test_a_terminal_cannot_be_paired_with_another_terminals_connection() -> None:
    loop = EventLoop()
    try:
        with pytest.raises(ValueError, match="T-0001 cannot use the connection of T-0002"):
            loop.add(make_agent("T-0001"), make_connection("T-0002"))
        assert loop.pairs == []
        pair = loop.add(make_agent("T-0002"), make_connection("T-0002"))
        assert loop.pair("T-0002") is pair
    finally:
        loop.run(duration_s=0.0)  # closes the loop's own sockets


def test_a_terminal_id_can_be_added_only_once() -> None:
    loop = EventLoop()
    try:
        loop.add(make_agent("T-0001"), make_connection("T-0001"))
        with pytest.raises(ValueError, match="already"):
            loop.add(make_agent("T-0001"), make_connection("T-0001"))
    finally:
        loop.run(duration_s=0.0)
