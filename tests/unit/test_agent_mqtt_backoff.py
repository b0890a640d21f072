"""The MQTT connection's retry policy and in-memory queue, against a port nobody listens on."""

from __future__ import annotations

import random

import pytest

from agent.agent import OutboundError, OutboundFullError
from agent.broker_rotation import start_offset
from agent.config import AgentConfig
from agent.mqtt_connection import (
    BrokerUnreachableError,
    ConnectionSettings,
    ConnectionSetupError,
    ConnectionState,
    MqttConnection,
)
from protocol.broker_url import BrokerAddress


class Listener:
    def __init__(self) -> None:
        self.wills = 0

    def on_connected(self) -> None:
        raise AssertionError("nobody listens on that port")

    def on_disconnected(self) -> None:
        return None

    def will_message(self) -> bytes:
        self.wills += 1
        return b"{}"


def closed_port_connection(**overrides: object) -> MqttConnection:
    values: dict[str, object] = {
        "client_id": "T-0001",
        # Port 1: nothing listens there, and it lies below the ephemeral range, so
        # a long run of attempts can never hit a TCP self-connect (source port ==
        # destination port), which a closed ephemeral port eventually does.
        "brokers": (BrokerAddress("127.0.0.1", 1, tls=False),),
        "reconnect_min_s": 1.0,
        "reconnect_max_s": 8.0,
    }
    values.update(overrides)
    return MqttConnection(ConnectionSettings(**values), rng=random.Random(4))  # type: ignore[arg-type]


def test_failed_attempts_back_off_exponentially_with_jitter_within_the_bounds() -> None:
    conn = closed_port_connection()
    listener = Listener()
    conn.attach(listener)
    conn.start(0.0)
    now, delays = 0.0, []
    for _ in range(12):
        assert conn.connect_due(now)
        conn.connect(now)
        assert conn.state is ConnectionState.WAITING
        assert isinstance(conn.stats.last_error, BrokerUnreachableError)
        due = conn.next_service_at()
        assert not conn.connect_due(due - 0.001)
        delays.append(due - now)
        now = due
    caps = [min(8.0, 2.0 ** (n + 1)) for n in range(12)]
    assert all(1.0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert max(delays[6:]) > 4.0  # it really grows towards the maximum
    assert len(set(delays)) == len(delays)  # jittered, not lock-step
    assert conn.stats.connect_failures == 12
    assert listener.wills == 12  # the will is rebuilt before every attempt


def test_publishing_while_offline_queues_up_to_the_limit_then_refuses() -> None:
    conn = closed_port_connection(max_queued_messages=10)
    for n in range(10):
        conn.publish("kf/v1/terminals/T-0001/event", b"%d" % n, retain=False)
    assert conn.pending_acks() == 10
    with pytest.raises(OutboundFullError) as info:
        conn.publish("kf/v1/terminals/T-0001/event", b"x", retain=False)
    assert info.value.limit == 10


def test_a_closed_connection_never_tries_again() -> None:
    conn = closed_port_connection()
    conn.start(0.0)
    conn.close()
    assert conn.closed
    assert not conn.connect_due(1e9)
    assert conn.fileno() is None


def test_backoff_stays_within_its_bounds_after_thousands_of_failed_attempts() -> None:
    # A night-long outage: 2.0 ** failures would overflow a float after 1023 attempts.
    conn = closed_port_connection(reconnect_min_s=0.5, reconnect_max_s=60.0)
    conn.attach(Listener())
    conn.start(0.0)
    now = 0.0
    for _ in range(1100):
        conn.connect(now)
        due = conn.next_service_at()
        assert 0.5 <= due - now <= 60.0
        now = due
    assert conn.state is ConnectionState.WAITING
    assert conn.stats.connect_failures == 1100
    assert conn.stats.switches == 0  # one broker: every attempt goes to it


class ClocklessListener(Listener):
    def will_message(self) -> bytes:
        raise ValueError("sent_at is outside 2000..2200")


def test_a_will_that_cannot_be_built_fails_the_attempt_and_backs_off() -> None:
    conn = closed_port_connection()
    conn.attach(ClocklessListener())
    conn.start(0.0)
    conn.connect(0.0)
    assert conn.state is ConnectionState.WAITING
    assert conn.fileno() is None
    assert isinstance(conn.stats.last_error, ConnectionSetupError)
    assert "2000..2200" in str(conn.stats.last_error)
    assert conn.stats.connect_failures == 1
    assert conn.next_service_at() >= 1.0


@pytest.mark.parametrize(
    "topic",
    [
        "kf/v1/terminals/T-0002/event",  # another terminal
        "kf/v1/terminals/T-0001/event/extra",
        "kf/v1/terminals/+/event",
        "somewhere/else",
    ],
)
def test_a_connection_refuses_to_publish_on_any_topic_but_its_own_terminals(topic: str) -> None:
    conn = closed_port_connection()
    with pytest.raises(OutboundError) as info:
        conn.publish(topic, b"{}", retain=False)
    assert info.value.topic == topic
    assert conn.pending_acks() == 0
    conn.publish("kf/v1/terminals/T-0001/event", b"{}", retain=False)
    assert conn.pending_acks() == 1


def test_with_two_brokers_attempts_alternate_hop_within_a_round_and_back_off_after_it() -> None:
    first, second = (BrokerAddress("127.0.0.1", port, tls=False) for port in (1, 2))
    conn = closed_port_connection(brokers=(first, second), reconnect_min_s=1.0)
    conn.attach(Listener())
    conn.start(0.0)
    start = conn.broker
    now, tried, delays, errors = 0.0, [], [], []
    for _ in range(8):
        tried.append(conn.broker)
        conn.connect(now)
        assert isinstance(conn.stats.last_error, BrokerUnreachableError)
        errors.append(conn.stats.last_error.port)
        due = conn.next_service_at()
        delays.append(due - now)
        now = due
    other = second if start == first else first
    assert tried == [start, other] * 4  # round robin from the terminal's offset
    assert errors == [b.port for b in tried]  # each attempt really went to that broker
    hops, backoffs = delays[0::2], delays[1::2]
    assert all(0.0 <= d <= 1.0 for d in hops)  # the next broker, within a round
    caps = [min(8.0, 2.0**n) for n in range(1, 5)]
    assert all(1.0 <= d <= cap for d, cap in zip(backoffs, caps, strict=True))
    assert conn.stats.switches == 8
    assert conn.stats.connect_failures == 8


@pytest.mark.parametrize(
    ("brokers", "problem"),
    [
        ((), "1 to 16"),
        (tuple(BrokerAddress("127.0.0.1", p, tls=False) for p in range(1, 18)), "1 to 16"),
        (
            (BrokerAddress("a", 1883, tls=False), BrokerAddress("b", 8883, tls=True)),
            "all be mqtt:// or all mqtts://",
        ),
    ],
)
def test_connection_settings_refuse_no_brokers_too_many_or_mixed_schemes(
    brokers: tuple[BrokerAddress, ...], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        ConnectionSettings(client_id="T-0001", brokers=brokers)


def test_forgotten_messages_no_longer_count_as_awaiting_a_puback() -> None:
    # The outbox sender takes its rows back at a loss (and re-sends them, maybe to another
    # broker): a clean stop must not wait for PUBACKs that can never come.
    conn = closed_port_connection()
    mids = [conn.publish("kf/v1/terminals/T-0001/event", b"%d" % n, retain=False) for n in range(3)]
    conn.publish("kf/v1/terminals/T-0001/state", b"{}", retain=True)
    conn.forget(mids[:2])
    assert conn.pending_acks() == 2  # the third event and the retained state stay queued
    assert conn.stats.forgotten == 2


def test_a_connection_from_config_starts_at_the_terminals_offset_in_broker_urls() -> None:
    urls = ["mqtt://n1:1883", "mqtt://n2:1883", "mqtt://n3:1883"]
    config = AgentConfig.model_validate(
        {
            "terminal_id": "TAX-SH-0001",
            "hall": "h",
            "region": "r",
            "model": "m",
            "broker_urls": urls,
        }
    )
    conn = MqttConnection(ConnectionSettings.from_config(config))
    assert conn.settings.brokers == config.brokers
    assert conn.broker == config.brokers[start_offset("TAX-SH-0001", 3)]
