"""The kioskfleet wire protocol: topics, the message envelope and bodies, the codec.

The single source of truth for what travels over MQTT. Agent, server, simulator
and tests import it; nothing here opens a socket, reads a clock or logs.
"""

from protocol.codec import DEFAULT_MAX_PAYLOAD_BYTES, decode, encode
from protocol.errors import REJECT_REASONS, ProtocolError
from protocol.messages import (
    BootEvent,
    EventMessage,
    Message,
    PeripheralChangedEvent,
    PeripheralCondition,
    PeripheralKind,
    PeripheralStatus,
    ReportBody,
    ReportMessage,
    StateBody,
    StateMessage,
    TerminalState,
)
from protocol.topics import Channel, parse_topic, topic

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "REJECT_REASONS",
    "BootEvent",
    "Channel",
    "EventMessage",
    "Message",
    "PeripheralChangedEvent",
    "PeripheralCondition",
    "PeripheralKind",
    "PeripheralStatus",
    "ProtocolError",
    "ReportBody",
    "ReportMessage",
    "StateBody",
    "StateMessage",
    "TerminalState",
    "decode",
    "encode",
    "parse_topic",
    "topic",
]
