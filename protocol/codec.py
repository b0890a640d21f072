"""Turning bytes into messages and back. Pure: no sockets, no clock, no logging.

``decode`` is the single gate every inbound payload passes. It raises a
``ProtocolError`` subclass (see ``protocol.errors``) and never anything else,
whatever the bytes are.
"""

from __future__ import annotations

from typing import Final

from pydantic import ValidationError

from protocol.errors import (
    ChannelMismatchError,
    IdentityMismatchError,
    InvalidMessageError,
    MalformedJSONError,
    OversizeError,
    UnknownSchemaError,
)
from protocol.messages import SCHEMA_CHANNEL, SCHEMAS, Message
from protocol.strict_json import MAX_JSON_DEPTH, loads_strict
from protocol.topics import parse_topic

__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "MAX_JSON_DEPTH", "decode", "encode", "loads_strict"]

DEFAULT_MAX_PAYLOAD_BYTES: Final = 64 * 1024


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def decode(topic: str, payload: bytes, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Message:
    """Validate one inbound message against its topic.

    Raises (all ProtocolError): TopicError, OversizeError, MalformedJSONError,
    UnknownSchemaError, InvalidMessageError, ChannelMismatchError,
    IdentityMismatchError.
    """
    terminal_id, channel = parse_topic(topic)
    if len(payload) > max_bytes:
        raise OversizeError(len(payload), max_bytes, topic=topic)
    try:
        raw = loads_strict(payload)
    except MalformedJSONError as exc:
        exc.topic = topic
        raise
    if not isinstance(raw, dict):
        raise MalformedJSONError("payload is not a JSON object", topic=topic)
    schema, version = raw.get("schema"), raw.get("version")
    if not isinstance(schema, str) or type(version) is not int:
        raise UnknownSchemaError("missing or malformed schema/version", topic=topic)
    model = SCHEMAS.get((schema, version))
    if model is None:
        raise UnknownSchemaError(f"unknown schema {schema[:40]!r} version {version}", topic=topic)
    if SCHEMA_CHANNEL[schema] is not channel:
        raise ChannelMismatchError(
            f"{schema} is not sent on the {channel.value} channel", topic=topic
        )
    try:
        # The strict JSON parser validates the same bytes loads_strict vetted;
        # JSON mode is what lets strings become enums and timestamps.
        message = model.model_validate_json(payload)
    except ValidationError as exc:
        raise InvalidMessageError(_short(exc), topic=topic) from None
    if message.terminal_id != terminal_id:
        raise IdentityMismatchError(
            f"envelope terminal_id {message.terminal_id!r} differs from topic id {terminal_id!r}",
            topic=topic,
        )
    return message


def encode(message: Message) -> bytes:
    """Compact UTF-8 JSON for ``message``, with the ``schema`` key spelled as on the wire."""
    return message.model_dump_json(by_alias=True, exclude_none=True).encode("utf-8")
