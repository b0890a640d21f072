"""The wire contract: every valid message round-trips, every malformed shape is refused.

Refusals must come out as a ProtocolError with the right ``reason`` (the
server's reject-counter label) and never as any other exception.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    BootEvent,
    Channel,
    EventMessage,
    Message,
    PeripheralChangedEvent,
    PeripheralCondition,
    PeripheralKind,
    PeripheralStatus,
    ProtocolError,
    ReportBody,
    ReportMessage,
    StateBody,
    StateMessage,
    TerminalState,
    decode,
    encode,
    parse_topic,
    topic,
)
from protocol.errors import REJECT_REASONS, TopicError
from protocol.taxonomy import allowed_conditions
from protocol.topics import is_valid_terminal_id, server_subscriptions
from protocol.update_status import UpdateMessage, UpdateState

# ---------------------------------------------------------------- strategies

terminal_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
names = st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,20}\Z")
labels = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9 ._:-]{0,30}\Z")
boot_ids = st.from_regex(r"\A[A-Za-z0-9-]{8,64}\Z")
seqs = st.integers(min_value=0, max_value=2**53)
times = st.datetimes(
    min_value=datetime(2000, 1, 2),
    max_value=datetime(2199, 12, 30),
    timezones=st.just(UTC),
)
seconds = st.floats(min_value=0, max_value=3e8, allow_nan=False, allow_infinity=False)
printable = st.characters(blacklist_categories=("Cc", "Cs"))
short_text = st.text(printable, max_size=40)


def _envelope(draw: st.DrawFn) -> dict[str, Any]:
    """The envelope fields every schema shares."""
    return {
        "terminal_id": draw(terminal_ids),
        "boot_id": draw(boot_ids),
        "seq": draw(seqs),
        "sent_at": draw(times),
    }


@st.composite
def peripherals(draw: st.DrawFn) -> PeripheralStatus:
    kind = draw(st.sampled_from(list(PeripheralKind)))
    allowed = allowed_conditions(kind)
    return PeripheralStatus(
        name=draw(names),
        kind=kind,
        condition=draw(st.sampled_from(sorted(allowed))),
        fault_code=draw(st.none() | st.text(printable, min_size=1, max_size=16)),
        detail=draw(st.none() | short_text),
    )


@st.composite
def report_messages(draw: st.DrawFn) -> ReportMessage:
    items = draw(st.lists(peripherals(), max_size=6, unique_by=lambda p: p.name))
    body = ReportBody(
        hall=draw(labels),
        region=draw(labels),
        model=draw(labels),
        agent_version=draw(st.text(printable, min_size=1, max_size=12)),
        uptime_s=draw(seconds),
        report_interval_s=draw(st.floats(min_value=0.01, max_value=86400)),
        peripherals=items,
        software=draw(
            st.dictionaries(names, st.text(printable, min_size=1, max_size=12), max_size=4)
        ),
    )
    return ReportMessage(
        schema="kf.report",
        version=1,
        **_envelope(draw),
        body=body,
    )


@st.composite
def event_messages(draw: st.DrawFn) -> EventMessage:
    body: PeripheralChangedEvent | BootEvent
    if draw(st.booleans()):
        body = PeripheralChangedEvent(
            type="peripheral_changed",
            peripheral=draw(peripherals()),
            previous=draw(st.none() | st.sampled_from(list(PeripheralCondition))),
        )
    else:
        body = BootEvent(
            type="boot",
            uptime_s=draw(seconds),
            agent_version=draw(st.text(printable, min_size=1, max_size=8)),
        )
    return EventMessage(
        schema="kf.event",
        version=1,
        **_envelope(draw),
        body=body,
    )


@st.composite
def state_messages(draw: st.DrawFn) -> StateMessage:
    return StateMessage(
        schema="kf.state",
        version=1,
        **_envelope(draw),
        body=StateBody(
            state=draw(st.sampled_from(list(TerminalState))),
            reason=draw(st.sampled_from(["connect", "shutdown", "connection_lost"])),
            hall=draw(st.none() | labels),
            region=draw(st.none() | labels),
            model=draw(st.none() | labels),
        ),
    )


CHANNEL_OF = {
    ReportMessage: Channel.REPORT,
    EventMessage: Channel.EVENT,
    StateMessage: Channel.STATE,
}

# ---------------------------------------------------------------- round trips


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(report_messages(), event_messages(), state_messages()))
def test_every_valid_message_round_trips_through_the_wire(
    message: ReportMessage | EventMessage | StateMessage,
) -> None:
    wire = encode(message)
    back = decode(topic(message.terminal_id, CHANNEL_OF[type(message)]), wire)
    assert back == message
    assert encode(back) == wire


@given(terminal_ids, st.sampled_from(list(Channel)))
def test_topic_round_trips_for_every_valid_id_and_channel(
    terminal_id: str, channel: Channel
) -> None:
    assert parse_topic(topic(terminal_id, channel)) == (terminal_id, channel)


def test_wire_spells_the_schema_key_and_timestamps_with_utc_offset() -> None:
    raw = json.loads(encode(_report()))
    assert raw["schema"] == "kf.report"
    assert raw["version"] == 1
    assert raw["sent_at"].endswith("Z")
    assert set(raw) == {"schema", "version", "terminal_id", "boot_id", "seq", "sent_at", "body"}


# ---------------------------------------------------------------- rejections


def _report(**overrides: Any) -> ReportMessage:
    fields: dict[str, Any] = {
        "schema": "kf.report",
        "version": 1,
        "terminal_id": "T-0001",
        "boot_id": "3f2b8c1e-0000-4000-8000-000000000001",
        "seq": 7,
        "sent_at": datetime(2026, 11, 27, 9, 30, tzinfo=UTC),
        "body": ReportBody(
            hall="hall-01",
            region="region-1",
            model="KX-300",
            agent_version="0.1.0",
            uptime_s=3600.5,
            report_interval_s=60,
            peripherals=[
                PeripheralStatus(
                    name="receipt_printer",
                    kind=PeripheralKind.RECEIPT_PRINTER,
                    condition=PeripheralCondition.PAPER_LOW,
                ),
                PeripheralStatus(
                    name="id_card_reader",
                    kind=PeripheralKind.ID_CARD_READER,
                    condition=PeripheralCondition.FAULT,
                    fault_code="E17",
                ),
            ],
        ),
    }
    fields.update(overrides)
    return ReportMessage(**fields)


REPORT_TOPIC = "kf/v1/terminals/T-0001/report"


def _valid_raw() -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(encode(_report()))
    return raw


def _decode_or_reason(payload: bytes) -> Message | str:
    """The decoded message, or the reject reason; any other exception escapes."""
    try:
        return decode(REPORT_TOPIC, payload)
    except ProtocolError as exc:
        return exc.reason


def _reason(topic_name: str, payload: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(topic_name, payload)
    assert info.value.reason in REJECT_REASONS
    return info.value.reason


def _mutated(path: list[str | int], value: Any) -> bytes:
    raw = _valid_raw()
    target: Any = raw
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(raw).encode()


def _without(path: list[str | int]) -> bytes:
    raw = _valid_raw()
    target: Any = raw
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(b"", "bad_json", id="empty"),
        pytest.param(b"\xff\xfe{}", "bad_json", id="not-utf8"),
        pytest.param(b"{not json", "bad_json", id="not-json"),
        pytest.param(b"[1, 2]", "bad_json", id="array-not-object"),
        pytest.param(b'"report"', "bad_json", id="string-not-object"),
        pytest.param(b"NaN", "bad_json", id="bare-nan"),
        pytest.param(b'{"schema": "kf.report", "schema": "kf.event"}', "bad_json", id="dup-key"),
        pytest.param(b"[" * 20_000 + b"]" * 20_000, "bad_json", id="deep-nesting"),
        pytest.param(b'{"a":' * 20 + b"1" + b"}" * 20, "bad_json", id="nested-20"),
        pytest.param(b"{}", "unknown_schema", id="no-schema"),
        pytest.param(b'{"schema": "kf.report"}', "unknown_schema", id="no-version"),
        pytest.param(
            b'{"schema": "kf.report", "version": "1"}', "unknown_schema", id="str-version"
        ),
        pytest.param(
            b'{"schema": "kf.report", "version": true}', "unknown_schema", id="bool-version"
        ),
        pytest.param(
            b'{"schema": "kf.report", "version": 2}', "unknown_schema", id="newer-version"
        ),
        pytest.param(
            b'{"schema": "kf.firmware", "version": 1}', "unknown_schema", id="other-schema"
        ),
        pytest.param(b'{"schema": 5, "version": 1}', "unknown_schema", id="int-schema"),
        pytest.param(_mutated(["schema"], "kf.event"), "channel_mismatch", id="event-on-report"),
        pytest.param(_mutated(["terminal_id"], "T-0002"), "id_mismatch", id="speaks-for-other"),
        pytest.param(_mutated(["seq"], -1), "invalid", id="negative-seq"),
        pytest.param(_mutated(["seq"], 2**53 + 1), "invalid", id="huge-seq"),
        pytest.param(_mutated(["seq"], 10**400), "invalid", id="int-400-digits"),
        pytest.param(
            encode(_report()).replace(b'"seq":7', b'"seq":' + b"9" * 5000),
            "bad_json",
            id="int-past-python-digit-limit",
        ),
        pytest.param(_mutated(["seq"], "7"), "invalid", id="str-seq"),
        pytest.param(_mutated(["seq"], 7.5), "invalid", id="float-seq"),
        pytest.param(_mutated(["seq"], True), "invalid", id="bool-seq"),
        pytest.param(_mutated(["sent_at"], 1764235800), "invalid", id="epoch-number-time"),
        pytest.param(_mutated(["sent_at"], "2026-11-27T09:30:00"), "invalid", id="naive-time"),
        pytest.param(_mutated(["sent_at"], "yesterday"), "invalid", id="word-time"),
        pytest.param(_mutated(["sent_at"], "1970-01-01T00:00:00Z"), "invalid", id="far-past"),
        pytest.param(_mutated(["sent_at"], "9999-01-01T00:00:00Z"), "invalid", id="far-future"),
        pytest.param(_mutated(["boot_id"], "short"), "invalid", id="short-boot-id"),
        pytest.param(_mutated(["boot_id"], "a/b+c#d-efgh"), "invalid", id="wildcard-boot-id"),
        pytest.param(_mutated(["terminal_id"], "T/0001"), "invalid", id="slash-in-id"),
        pytest.param(_mutated(["extra"], 1), "invalid", id="unknown-envelope-field"),
        pytest.param(_mutated(["body", "extra"], 1), "invalid", id="unknown-body-field"),
        pytest.param(
            _mutated(["body", "peripherals", 0, "x"], 1), "invalid", id="unknown-periph-field"
        ),
        pytest.param(_without(["body"]), "invalid", id="no-body"),
        pytest.param(_without(["body", "hall"]), "invalid", id="no-hall"),
        pytest.param(_without(["sent_at"]), "invalid", id="no-sent-at"),
        pytest.param(_mutated(["body"], None), "invalid", id="null-body"),
        pytest.param(_mutated(["body"], []), "invalid", id="array-body"),
        pytest.param(_mutated(["body", "uptime_s"], -1), "invalid", id="negative-uptime"),
        pytest.param(_mutated(["body", "uptime_s"], 1e300), "invalid", id="absurd-uptime"),
        pytest.param(_mutated(["body", "report_interval_s"], 0), "invalid", id="zero-interval"),
        pytest.param(_mutated(["body", "hall"], ""), "invalid", id="empty-hall"),
        pytest.param(_mutated(["body", "hall"], "x" * 65), "invalid", id="long-hall"),
        pytest.param(_mutated(["body", "agent_version"], "v" * 1000), "invalid", id="long-version"),
        pytest.param(
            _mutated(["body", "peripherals", 0, "condition"], "on_fire"),
            "invalid",
            id="unknown-condition",
        ),
        pytest.param(
            _mutated(["body", "peripherals", 0, "condition"], "fault"),
            "invalid",
            id="reader-condition-on-printer",
        ),
        pytest.param(
            _mutated(["body", "peripherals", 1, "condition"], "paper_out"),
            "invalid",
            id="printer-condition-on-reader",
        ),
        pytest.param(
            _mutated(["body", "peripherals", 0, "kind"], "toaster"), "invalid", id="unknown-kind"
        ),
        pytest.param(
            _mutated(["body", "peripherals", 1, "name"], "receipt_printer"),
            "invalid",
            id="duplicate-peripheral-name",
        ),
        pytest.param(
            _mutated(["body", "peripherals"], [_valid_raw()["body"]["peripherals"][0]] * 33),
            "invalid",
            id="too-many-peripherals",
        ),
        pytest.param(
            _mutated(["body", "peripherals", 0, "detail"], "d" * 257), "invalid", id="long-detail"
        ),
        pytest.param(
            _mutated(["body", "peripherals", 1, "fault_code"], "E\u000017"),
            "invalid",
            id="nul-in-fault-code",
        ),
        pytest.param(
            _mutated(["body", "peripherals", 0, "detail"], "line1\nline2"),
            "invalid",
            id="newline-in-detail",
        ),
        pytest.param(
            _mutated(["body", "agent_version"], "1.0\u001b[31m"), "invalid", id="escape-in-version"
        ),
        pytest.param(
            _mutated(["body", "software", "app"], "2.\u007f"),
            "invalid",
            id="del-in-software-version",
        ),
        pytest.param(b" " * (64 * 1024 + 1), "oversize", id="oversize"),
    ],
)
def test_malformed_report_is_refused_with_its_reason(payload: bytes, reason: str) -> None:
    assert _reason(REPORT_TOPIC, payload) == reason


def test_nan_inside_a_report_is_refused_as_bad_json() -> None:
    payload = encode(_report()).replace(b'"uptime_s":3600.5', b'"uptime_s":NaN')
    assert b"NaN" in payload
    assert _reason(REPORT_TOPIC, payload) == "bad_json"


def test_a_key_repeated_deep_inside_a_valid_report_is_refused_as_bad_json() -> None:
    payload = encode(_report()).replace(b'"uptime_s":3600.5', b'"uptime_s":3600.5,"uptime_s":1.0')
    assert _reason(REPORT_TOPIC, payload) == "bad_json"
    with pytest.raises(ProtocolError, match="duplicate key 'uptime_s'"):
        decode(REPORT_TOPIC, payload)


def test_a_report_behind_a_byte_order_mark_or_before_extra_data_is_bad_json_not_spaces() -> None:
    valid = encode(_report())
    assert _reason(REPORT_TOPIC, "\ufeff".encode() + valid) == "bad_json"
    assert _reason(REPORT_TOPIC, valid + b" {}") == "bad_json"
    assert decode(REPORT_TOPIC, b" \n" + valid + b"\n ") == decode(REPORT_TOPIC, valid)


def test_infinity_inside_a_report_is_refused_as_bad_json() -> None:
    payload = encode(_report()).replace(b'"uptime_s":3600.5', b'"uptime_s":-Infinity')
    assert _reason(REPORT_TOPIC, payload) == "bad_json"


def test_float_overflowing_to_infinity_is_refused() -> None:
    payload = encode(_report()).replace(b'"uptime_s":3600.5', b'"uptime_s":1e400')
    assert _reason(REPORT_TOPIC, payload) == "invalid"


@pytest.mark.parametrize(
    "name",
    [
        "kf/v1/terminals/T-0001",
        "kf/v1/terminals/T-0001/report/extra",
        "kf/v2/terminals/T-0001/report",
        "kf/v1/terminals//report",
        "kf/v1/terminals/+/report",
        "kf/v1/terminals/T-0001/telemetry",
        "kf/v1/terminals/-leading-dash/report",
        "other/topic",
    ],
)
def test_malformed_topic_is_refused_as_bad_topic(name: str) -> None:
    assert _reason(name, encode(_report())) == "bad_topic"


def _update(**body: Any) -> bytes:
    return json.dumps(
        {
            "schema": "kf.update",
            "version": 1,
            "terminal_id": "T-0001",
            "boot_id": "boot-aaaa",
            "seq": 7,
            "sent_at": "2026-12-03T10:00:00Z",
            "body": {"rollout_id": "R-7", "directive_seq": 12, "state": "installing", **body},
        }
    ).encode()


def test_update_status_decodes_on_the_update_channel() -> None:
    message = decode(
        "kf/v1/terminals/T-0001/update", _update(state="rolled_back", reason="health_check_failed")
    )
    assert isinstance(message, UpdateMessage)
    assert (message.seq, message.body.rollout_id, message.body.directive_seq) == (7, "R-7", 12)
    assert message.body.state is UpdateState.ROLLED_BACK
    assert message.body.reason == "health_check_failed"
    assert decode("kf/v1/terminals/T-0001/update", encode(message)) == message


def test_update_status_carries_the_directive_attempt_or_none_from_an_older_agent() -> None:
    echoed = decode("kf/v1/terminals/T-0001/update", _update(attempt=3))
    older = decode("kf/v1/terminals/T-0001/update", _update())
    assert isinstance(echoed, UpdateMessage)
    assert isinstance(older, UpdateMessage)
    assert (echoed.body.attempt, older.body.attempt) == (3, None)
    assert decode("kf/v1/terminals/T-0001/update", encode(echoed)) == echoed


def test_update_status_elsewhere_than_the_update_channel_is_a_channel_mismatch() -> None:
    assert _reason("kf/v1/terminals/T-0001/event", _update()) == "channel_mismatch"


@pytest.mark.parametrize(
    "body",
    [
        {"state": "teleported"},  # not one of the 14 states
        {"state": "failed"},  # a failure needs a reason
        {"state": "rejected", "reason": "because"},  # not a known reason code
        {"detail": "x" * 257},  # detail is bounded
        {"detail": "line\nbreak"},  # no control characters
        {"extra": 1},  # unknown fields are an error
        {"attempt": 0},  # attempts count from 1
        {"attempt": -1},
        {"attempt": 2**53 + 1},
        {"attempt": "2"},  # strict: no numeric strings
        {"attempt": 1.5},
        {"attempt": True},
    ],
)
def test_malformed_update_status_is_refused_as_invalid(body: dict[str, Any]) -> None:
    assert _reason("kf/v1/terminals/T-0001/update", _update(**body)) == "invalid"


def test_topic_builder_refuses_ids_that_would_break_the_topic_tree() -> None:
    for bad in ["", "a/b", "a+b", "#", "x" * 65, "ünïcode"]:
        assert not is_valid_terminal_id(bad)
        with pytest.raises(TopicError):
            topic(bad, Channel.REPORT)


def test_server_reads_streams_through_the_shared_group_and_state_unshared() -> None:
    subs = dict(server_subscriptions())
    assert subs == {
        "kf/v1/terminals/+/state": 1,
        "$share/kioskfleet/kf/v1/terminals/+/report": 1,
        "$share/kioskfleet/kf/v1/terminals/+/event": 1,
        "$share/kioskfleet/kf/v1/terminals/+/update": 1,
        "$share/kioskfleet/kf/v1/terminals/+/usage": 1,
    }
    assert "kf/v1/terminals/+/report" in dict(server_subscriptions(shared=False))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise_anything_but_a_protocol_error(payload: bytes) -> None:
    outcome = _decode_or_reason(payload)
    assert isinstance(outcome, ReportMessage) or outcome in REJECT_REASONS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children)
    ),
    max_leaves=30,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(list(_valid_raw())), json_values))
def test_arbitrary_envelope_fields_never_raise_anything_but_a_protocol_error(
    overrides: dict[str, Any],
) -> None:
    raw = _valid_raw() | overrides
    outcome = _decode_or_reason(json.dumps(raw).encode())
    if isinstance(outcome, str):
        assert outcome in REJECT_REASONS
    else:
        # Anything accepted is fully typed and still speaks only for T-0001.
        assert outcome.terminal_id == "T-0001"
        assert isinstance(outcome, ReportMessage)


def test_sent_at_keeps_its_instant_whatever_the_offset() -> None:
    later = _report(sent_at=datetime(2026, 11, 27, 17, 30, tzinfo=UTC) + timedelta(0))
    wire = encode(later).replace(b'"2026-11-27T17:30:00Z"', b'"2026-11-28T01:30:00+08:00"')
    assert decode(REPORT_TOPIC, wire).sent_at == later.sent_at
