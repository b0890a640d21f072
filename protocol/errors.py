"""Errors raised while reading the wire.

Every error carries a short machine ``reason`` that the server uses as the
label of its reject counter, so the set of reasons is closed and documented::

    ProtocolError            (base; reason is one of REJECT_REASONS)
    ├── TopicError           reason "bad_topic"
    ├── OversizeError        reason "oversize"
    ├── MalformedJSONError   reason "bad_json"   (not UTF-8, not JSON, NaN,
    │                                             duplicate keys, too deep)
    ├── UnknownSchemaError   reason "unknown_schema"
    ├── InvalidMessageError     reason "invalid"    (known schema, bad content)
    ├── ChannelMismatchError reason "channel_mismatch"
    └── IdentityMismatchError reason "id_mismatch" (topic id != envelope id)
"""

from __future__ import annotations

__all__ = [
    "REJECT_REASONS",
    "ChannelMismatchError",
    "IdentityMismatchError",
    "InvalidMessageError",
    "MalformedJSONError",
    "OversizeError",
    "ProtocolError",
    "TopicError",
    "UnknownSchemaError",
]


class ProtocolError(Exception):
    """A message that must be rejected. ``reason`` labels the reject counter."""

    reason = "invalid"

    def __init__(self, message: str, *, topic: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.topic = topic

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class TopicError(ProtocolError):
    reason = "bad_topic"


class OversizeError(ProtocolError):
    reason = "oversize"

    def __init__(self, size: int, limit: int, *, topic: str | None = None) -> None:
        super().__init__(f"payload of {size} bytes exceeds {limit}", topic=topic)
        self.size = size
        self.limit = limit


class MalformedJSONError(ProtocolError):
    reason = "bad_json"


class UnknownSchemaError(ProtocolError):
    reason = "unknown_schema"


class InvalidMessageError(ProtocolError):
    reason = "invalid"


class ChannelMismatchError(ProtocolError):
    reason = "channel_mismatch"


class IdentityMismatchError(ProtocolError):
    reason = "id_mismatch"


REJECT_REASONS: tuple[str, ...] = (
    TopicError.reason,
    OversizeError.reason,
    MalformedJSONError.reason,
    UnknownSchemaError.reason,
    InvalidMessageError.reason,
    ChannelMismatchError.reason,
    IdentityMismatchError.reason,
)
