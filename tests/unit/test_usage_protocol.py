"""The ``kf.usage`` wire contract: a citizen transaction round-trips, every malformed or
personal-data-shaped body is refused as a ProtocolError, and the schema holds no free text."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import ProtocolError, decode, encode
from protocol.topics import Channel, topic
from protocol.usage import (
    MAX_DURATION_S,
    MAX_PAGES,
    SERVICE_CODE_PATTERN,
    FailureCause,
    Outcome,
    UsageBody,
    UsageMessage,
)

T = "T-0001"
USAGE_TOPIC = topic(T, Channel.USAGE)


def _raw(**body: Any) -> dict[str, Any]:
    return {
        "schema": "kf.usage",
        "version": 1,
        "terminal_id": T,
        "boot_id": "9f0c1d2e-aaaa",
        "seq": 7,
        "sent_at": "2026-12-04T09:15:00Z",
        "body": {"service": "tax.invoice.print", "outcome": "completed", "duration_s": 42.5} | body,
    }


def _decode(raw: dict[str, Any], on: str = USAGE_TOPIC) -> Any:
    return decode(on, json.dumps(raw).encode())


def test_a_transaction_round_trips_through_the_codec() -> None:
    message = _decode(_raw(pages=2))
    assert isinstance(message, UsageMessage)
    assert message.body == UsageBody(
        service="tax.invoice.print", outcome=Outcome.COMPLETED, duration_s=42.5, pages=2
    )
    assert decode(USAGE_TOPIC, encode(message)) == message


def test_a_failed_transaction_carries_its_cause() -> None:
    message = _decode(_raw(outcome="failed", cause="printer", pages=0))
    assert message.body.cause is FailureCause.PRINTER


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"citizen_name": "Jane Doe"}, "invalid"),  # an unknown field: refused, never kept
        ({"id_number": "110101199003071234"}, "invalid"),
        ({"service": "Jane Doe"}, "invalid"),  # free text where a code belongs
        ({"service": "tax.invoice.print for 110101199003071234"}, "invalid"),
        ({"service": "tax"}, "invalid"),  # one part: not a dotted code
        ({"service": "Tax.Invoice"}, "invalid"),  # upper case
        ({"service": "tax..print"}, "invalid"),
        ({"service": "a.b.c.d.e"}, "invalid"),  # five parts
        ({"service": "tax." + "x" * 60}, "invalid"),  # too long
        ({"service": 12}, "invalid"),
        ({"outcome": "succeeded"}, "invalid"),
        ({"outcome": "failed"}, "invalid"),  # a failure without its cause
        ({"cause": "printer"}, "invalid"),  # a cause for a completed transaction
        ({"outcome": "failed", "cause": "the printer jammed on page 2"}, "invalid"),
        ({"duration_s": -1}, "invalid"),
        ({"duration_s": MAX_DURATION_S + 1}, "invalid"),
        ({"duration_s": "42"}, "invalid"),  # strict: no coercion
        ({"pages": -1}, "invalid"),
        ({"pages": MAX_PAGES + 1}, "invalid"),
        ({"pages": 1.5}, "invalid"),
        ({"pages": True}, "invalid"),
    ],
)
def test_every_malformed_transaction_is_refused(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        _decode(_raw(**change))
    assert refused.value.reason == reason


def test_a_body_without_a_required_field_is_refused() -> None:
    for field in ("service", "outcome", "duration_s"):
        raw = _raw()
        del raw["body"][field]
        with pytest.raises(ProtocolError) as refused:
            _decode(raw)
        assert refused.value.reason == "invalid"


def test_a_transaction_on_another_channel_is_refused_as_a_channel_mismatch() -> None:
    with pytest.raises(ProtocolError) as refused:
        _decode(_raw(), on=topic(T, Channel.EVENT))
    assert refused.value.reason == "channel_mismatch"


service_codes = st.from_regex(SERVICE_CODE_PATTERN, fullmatch=True).filter(lambda c: len(c) <= 64)
bodies = st.fixed_dictionaries(
    {
        "service": service_codes,
        "outcome": st.sampled_from([Outcome.COMPLETED.value, Outcome.ABANDONED.value]),
        "duration_s": st.floats(0, MAX_DURATION_S, allow_nan=False),
        "pages": st.integers(0, MAX_PAGES),
    }
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=8,
)


@given(bodies)
def test_any_valid_transaction_round_trips(body: dict[str, Any]) -> None:
    message = _decode(_raw(**body))
    assert message.body.service == body["service"]
    assert decode(USAGE_TOPIC, encode(message)) == message


_KEYS = ["service", "outcome", "cause", "duration_s", "pages", "note"]


@given(st.dictionaries(st.sampled_from(_KEYS), json_values | st.sampled_from(["failed", "a.b"])))
def test_any_body_is_either_a_transaction_or_a_protocol_error(body: dict[str, Any]) -> None:
    raw = _raw()
    raw["body"] = body
    reason: str | None
    try:
        message = _decode(raw)
    except ProtocolError as refused:
        reason = refused.reason
    else:
        reason = None
    if reason is not None:
        assert reason == "invalid"
        return
    assert isinstance(message, UsageMessage)
    assert re.fullmatch(SERVICE_CODE_PATTERN, message.body.service)
    assert "note" not in body


def _leaves(schema: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives a JSON-schema property allows ($ref resolved, anyOf flattened, null
    left out)."""
    if "$ref" in schema:
        return _leaves(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema:
        return [leaf for alt in schema["anyOf"] for leaf in _leaves(alt, defs)]
    return [] if schema.get("type") == "null" else [schema]


def test_the_usage_schema_has_no_free_text_field() -> None:
    """Every string of the body is an enum or a bounded pattern, every number is bounded, and
    unknown fields are refused: nothing a citizen typed, no name, no document number can be
    carried. The guardrail for a field added later."""
    schema = UsageBody.model_json_schema()
    defs = schema.get("$defs", {})
    assert schema["additionalProperties"] is False
    for name, prop in schema["properties"].items():
        for leaf in _leaves(prop, defs):
            if "enum" in leaf:
                continue
            if leaf["type"] == "string":
                assert "pattern" in leaf, f"{name}: free text"
                assert "maxLength" in leaf, f"{name}: unbounded text"
                assert not re.search(leaf["pattern"], "Jane Doe"), f"{name}: takes a name"
                assert not re.search(leaf["pattern"], "110101199003071234"), name
            else:
                assert leaf["type"] in ("integer", "number"), f"{name}: {leaf}"
                assert "maximum" in leaf, f"{name}: an unbounded number"
                assert "minimum" in leaf, f"{name}: an unbounded number"
    assert UsageMessage.model_config.get("extra") == "forbid"


def test_the_envelope_time_is_the_only_time_a_transaction_carries() -> None:
    message = _decode(_raw())
    assert message.sent_at == datetime(2026, 12, 4, 9, 15, tzinfo=UTC)
    assert not any("at" in name.split("_") for name in UsageBody.model_fields)
