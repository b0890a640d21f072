"""Strict JSON parsing: no NaN/Infinity, no duplicate keys, bounded nesting. Pure: no I/O.

Its own module so that the directive parser (``protocol.directives``) can use it without
importing the codec, which imports every registered message model (``kf.update`` among
them, which imports the directive reasons).
"""

from __future__ import annotations

import json
from typing import Any, Final

from protocol.errors import MalformedJSONError

__all__ = ["MAX_JSON_DEPTH", "loads_strict"]

MAX_JSON_DEPTH: Final = 16


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise MalformedJSONError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise MalformedJSONError(f"{name} is not valid JSON")


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
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
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
