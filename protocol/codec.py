"""Turning bytes into messages and back. Pure: no sockets, no clock, no logging.

``decode`` is the single gate every inbound payload passes. It raises a
``ProtocolError`` subclass (see ``protocol.errors``) and never anything else,
whatever the bytes are.
"""

from __future__ import annotations

import json
from typing import Any, Final

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
from protocol.topics import Channel, parse_topic

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "MAX_JSON_DEPTH",
    "cmd_schema",
    "decode",
    "encode",
    "loads_strict",
]

DEFAULT_MAX_PAYLOAD_BYTES: Final = 64 * 1024
MAX_JSON_DEPTH: Final = 16


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)  # in C; a key seen twice leaves fewer entries than pairs
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MalformedJSONError(f"duplicate key {key!r}")
            seen.add(key)
    return result


def _no_constants(name: str) -> Any:
    raise MalformedJSONError(f"{name} is not valid JSON")


# Built once: ``json.loads`` with hooks builds a new decoder (and its C scanner) per call.
# Shared by threads like the module's own default decoder: it keeps no state between calls.
_DECODER: Final = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
_BOM: Final = "\ufeff"


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of ``value``, stopping once it passes ``limit``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def loads_strict(payload: bytes) -> Any:
    """Parse UTF-8 JSON, refusing NaN/Infinity, duplicate keys and deep nesting.

    Raises MalformedJSONError.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedJSONError(f"payload is not UTF-8 ({exc.reason})") from None
    try:
        if text.startswith(_BOM):  # as json.loads refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _DECODER.decode(text)
    except MalformedJSONError:
        raise
    except RecursionError:
        raise MalformedJSONError("JSON nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError and int-conversion limits
        raise MalformedJSONError(f"not JSON: {exc}") from None
    # Nesting can never exceed the number of opening brackets (those inside strings only
    # over-count), so the walk is skipped for every ordinary message.
    opening = payload.count(b"{") + payload.count(b"[")
    if opening > MAX_JSON_DEPTH and _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise MalformedJSONError(f"JSON nested deeper than {MAX_JSON_DEPTH}")
    return value


def cmd_schema(payload: bytes) -> str | None:
    """The ``schema`` a ``cmd`` payload claims (unverified: only for routing), None if it is
    not a JSON object with a string ``schema``. Never raises."""
    try:
        raw = loads_strict(payload)
    except MalformedJSONError:
        return None
    schema = raw.get("schema") if isinstance(raw, dict) else None
    return schema if isinstance(schema, str) else None


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def decode(
    topic: str,
    payload: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    parsed: tuple[str, Channel] | None = None,
) -> Message:
    """Validate one inbound message against its topic.

    ``parsed``: ``parse_topic(topic)`` when the caller already has it (the ingest
    parses the topic first, for its gate); it must be exactly that.

    Raises (all ProtocolError): TopicError, OversizeError, MalformedJSONError,
    UnknownSchemaError, InvalidMessageError, ChannelMismatchError,
    IdentityMismatchError.
    """
    terminal_id, channel = parse_topic(topic) if parsed is None else parsed
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
