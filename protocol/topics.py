"""MQTT topic names: the one place that knows how a topic is spelled.

Topics are ``kf/v1/terminals/{terminal_id}/{channel}``. This module builds and
parses them; it never touches a socket.
"""

from __future__ import annotations

import re
from enum import StrEnum

from protocol.errors import TopicError

__all__ = [
    "SHARE_GROUP",
    "TERMINAL_ID_PATTERN",
    "TOPIC_PREFIX",
    "Channel",
    "is_valid_terminal_id",
    "parse_topic",
    "server_subscriptions",
    "topic",
]

TOPIC_PREFIX = "kf/v1/terminals"
SHARE_GROUP = "kioskfleet"

# Letters, digits, '.', '_', '-'; starts with a letter or digit; at most 64.
# MQTT wildcards ('+', '#') and '/' can never appear, so an id is one level.
TERMINAL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_TERMINAL_ID_RE = re.compile(TERMINAL_ID_PATTERN)


class Channel(StrEnum):
    """The last topic level: what kind of message travels there."""

    STATE = "state"  # agent -> server, retained: online / offline (will)
    REPORT = "report"  # agent -> server: full periodic health report
    EVENT = "event"  # agent -> server: edge-triggered change
    UPDATE = "update"  # agent -> server: update progress
    USAGE = "usage"  # agent -> server: one citizen transaction (protocol.usage)
    CMD = "cmd"  # server -> agent: signed directive, config, ping


_CHANNELS = {c.value: c for c in Channel}  # a dict lookup: Channel(name) costs ~1 us

AGENT_CHANNELS = (Channel.STATE, Channel.REPORT, Channel.EVENT, Channel.UPDATE, Channel.USAGE)


def is_valid_terminal_id(terminal_id: str) -> bool:
    """True if ``terminal_id`` may appear as one topic level."""
    return _TERMINAL_ID_RE.fullmatch(terminal_id) is not None


def topic(terminal_id: str, channel: Channel) -> str:
    """The topic for ``channel`` of ``terminal_id``.

    Raises TopicError if the id could not be parsed back from the topic.
    """
    if not is_valid_terminal_id(terminal_id):
        raise TopicError(f"invalid terminal id {terminal_id!r}", topic=terminal_id)
    return f"{TOPIC_PREFIX}/{terminal_id}/{channel.value}"


def parse_topic(name: str) -> tuple[str, Channel]:
    """Split a topic into (terminal_id, channel).

    Raises TopicError if ``name`` is not a kioskfleet terminal topic.
    """
    prefix = TOPIC_PREFIX + "/"
    if not name.startswith(prefix):
        raise TopicError("not a kioskfleet terminal topic", topic=name)
    parts = name[len(prefix) :].split("/")
    if len(parts) != 2:
        raise TopicError("expected kf/v1/terminals/{id}/{channel}", topic=name)
    terminal_id, channel_name = parts
    if not is_valid_terminal_id(terminal_id):
        raise TopicError("invalid terminal id in topic", topic=name)
    channel = _CHANNELS.get(channel_name)
    if channel is None:
        raise TopicError(f"unknown channel {channel_name!r}", topic=name)
    return terminal_id, channel


def server_subscriptions(shared: bool = True) -> list[tuple[str, int]]:
    """(topic filter, QoS) pairs the server subscribes to.

    Reports, events, updates and usage go through the shared subscription
    ``$share/kioskfleet/...`` so that replicas split the stream. The retained
    ``state`` channel is subscribed without sharing: MQTT v5 never delivers
    retained messages to a shared subscription, and a (re)starting server
    needs them to learn who is online.
    """
    subs: list[tuple[str, int]] = [(f"{TOPIC_PREFIX}/+/{Channel.STATE.value}", 1)]
    for channel in (Channel.REPORT, Channel.EVENT, Channel.UPDATE, Channel.USAGE):
        flt = f"{TOPIC_PREFIX}/+/{channel.value}"
        subs.append((f"$share/{SHARE_GROUP}/{flt}" if shared else flt, 1))
    return subs
