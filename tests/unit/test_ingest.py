"""The ingest pipeline: rejections by reason, never raising, counting, rate-limited logging."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from protocol.codec import encode
from protocol.messages import SCHEMA_CHANNEL, Message
from server.fleet_state import FleetState
from server.fleet_views import Transition
from server.inbound import Delivery, InboundMessage
from server.ingest import Ingest, IngestResult
from server.ingest_gate import IngestGate
from server.log_throttle import ThrottledLog
from server.metrics import REJECT_LABELS, ServerMetrics
from server.records import EventRecord, UpdateRecord, UsageRecord
from tests.support.fleet_messages import (
    PRINTER_OK,
    at,
    peripheral_event,
    report,
    state,
    update_status,
)

TOPIC = "kf/v1/terminals/T-1/report"


@dataclass
class RecordingSink:
    calls: list[tuple[str, bool, tuple[Transition, ...]]] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    updates: list[UpdateRecord] = field(default_factory=list)
    usage: list[UsageRecord] = field(default_factory=list)
    recorded: list[Delivery | None] = field(default_factory=list)  # acked after a commit
    settled: list[Delivery | None] = field(default_factory=list)  # not applied

    def record(
        self,
        terminal_id: str,
        *,
        peripherals_changed: bool = False,
        transitions: Sequence[Transition] = (),
        event: EventRecord | None = None,
        update: UpdateRecord | None = None,
        usage: UsageRecord | None = None,
        delivery: Delivery | None = None,
        position_only: bool = False,
    ) -> None:
        self.calls.append((terminal_id, peripherals_changed, tuple(transitions)))
        if usage is not None:
            self.usage.append(usage)
        if event is not None:
            self.events.append(event)
        if update is not None:
            self.updates.append(update)
        self.recorded.append(delivery)

    def settle(self, delivery: Delivery | None, *, terminal_id: str | None = None) -> None:
        self.settled.append(delivery)

    def applying(self) -> AbstractContextManager[object]:
        return nullcontext()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    ingest: Ingest
    fleet: FleetState
    sink: RecordingSink
    registry: CollectorRegistry
    clock: FakeClock

    def value(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v

    def send(
        self, message: Message, received_at: datetime, *, retained: bool = False, mid: int = 0
    ) -> Any:
        topic = f"kf/v1/terminals/{message.terminal_id}/{_channel(message)}"
        return self.ingest.handle(
            InboundMessage(topic, encode(message), retained, received_at, mid=mid, connection=1)
        )

    def raw(self, topic: str, payload: bytes, *, mid: int = 0) -> IngestResult:
        return self.ingest.handle(InboundMessage(topic, payload, False, at(0), mid=mid))


def _channel(message: Message) -> str:
    return SCHEMA_CHANNEL[message.schema_].value


def make_rig(
    fleet: FleetState | None = None, gate: Callable[[FakeClock], IngestGate] | None = None
) -> Rig:
    registry = CollectorRegistry()
    fleet = fleet or FleetState()
    sink = RecordingSink()
    clock = FakeClock()
    ingest = Ingest(
        fleet,
        sink,
        ServerMetrics(registry),
        max_payload_bytes=4096,
        throttled_log=ThrottledLog(logging.getLogger("test.ingest"), interval_s=10, clock=clock),
        gate=None if gate is None else gate(clock),
    )
    return Rig(ingest, fleet, sink, registry, clock)


@pytest.fixture
def rig() -> Rig:
    return make_rig()


def _valid_report_dict(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(encode(report()))
    raw.update(over)
    return raw


GARBAGE: list[tuple[str, str, bytes]] = [
    ("bad_topic", "kf/v1/other/T-1/report", b"{}"),
    ("bad_json", TOPIC, b"{not json"),
    ("bad_json", TOPIC, b"\xff\xfe\x00garbage"),
    ("oversize", TOPIC, b"x" * 5000),
    ("unknown_schema", TOPIC, json.dumps(_valid_report_dict(schema="kf.nope")).encode()),
    ("invalid", TOPIC, json.dumps(_valid_report_dict(seq="1")).encode()),
    ("channel_mismatch", "kf/v1/terminals/T-1/event", encode(report())),
    ("id_mismatch", "kf/v1/terminals/T-2/report", encode(report())),
]


@pytest.mark.parametrize(("reason", "topic", "payload"), GARBAGE)
def test_each_malformed_message_counts_its_reason_and_changes_nothing(
    rig: Rig, reason: str, topic: str, payload: bytes
) -> None:
    assert rig.raw(topic, payload) is IngestResult.REJECTED
    assert rig.value("kioskfleet_ingest_rejected_total", reason=reason) == 1
    others = [r for r in REJECT_LABELS if r != reason]
    assert all(rig.value("kioskfleet_ingest_rejected_total", reason=r) == 0 for r in others)
    assert len(rig.fleet) == 0
    assert rig.sink.calls == []


def test_every_reject_reason_exists_at_zero_from_the_start(rig: Rig) -> None:
    for reason in REJECT_LABELS:
        assert (
            rig.registry.get_sample_value("kioskfleet_ingest_rejected_total", {"reason": reason})
            == 0
        )


def test_unexpected_exception_is_counted_as_internal_and_never_raised(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    class Exploding(FleetState):
        def apply(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("boom")

    registry = CollectorRegistry()
    ingest = Ingest(Exploding(), rig.sink, ServerMetrics(registry), max_payload_bytes=4096)
    with caplog.at_level(logging.ERROR):
        result = ingest.handle(InboundMessage(TOPIC, encode(report()), False, at(0)))
    assert result is IngestResult.INTERNAL_ERROR
    assert (
        registry.get_sample_value("kioskfleet_ingest_rejected_total", {"reason": "internal"}) == 1
    )
    assert "boom" in caplog.text  # the traceback is logged


def test_rejection_log_lines_are_rate_limited_per_reason(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="test.ingest"):
        for _ in range(100):
            rig.raw(TOPIC, b"{not json")
        rig.raw("kf/v1/terminals/T-1/nope", b"{}")
        assert len(caplog.records) == 2  # one per reason
        assert "bad_json" in caplog.records[0].getMessage()
        assert TOPIC in caplog.records[0].getMessage()
        rig.clock.now += 11
        rig.raw(TOPIC, b"{not json")
    assert len(caplog.records) == 3
    assert "99 similar lines suppressed" in caplog.records[2].getMessage()
    assert rig.value("kioskfleet_ingest_rejected_total", reason="bad_json") == 101


def test_accepted_report_is_counted_recorded_and_its_delay_observed(rig: Rig) -> None:
    sent = report(seq=1, sent_at=at(0))
    assert rig.send(sent, at(0.2)) is IngestResult.ACCEPTED
    assert rig.value("kioskfleet_ingest_messages_total", channel="report") == 1
    assert rig.value("kioskfleet_ingest_delay_seconds_count") == 1
    assert rig.value("kioskfleet_ingest_delay_seconds_sum") == pytest.approx(0.2)
    [(tid, peripherals_changed, transitions)] = rig.sink.calls
    assert (tid, peripherals_changed) == ("T-1", True)
    assert [t.to_state for t in transitions] == ["online"]


def test_negative_delay_from_clock_skew_is_observed_as_zero(rig: Rig) -> None:
    rig.send(report(seq=1, sent_at=at(30)), at(0))
    assert rig.value("kioskfleet_ingest_delay_seconds_sum") == 0


def test_duplicates_and_seq_gaps_are_counted(rig: Rig) -> None:
    rig.send(report(seq=1), at(0))
    assert rig.send(report(seq=1), at(1)) is IngestResult.DUPLICATE
    rig.send(report(seq=5), at(2))
    assert rig.value("kioskfleet_ingest_duplicates_total") == 1
    assert rig.value("kioskfleet_ingest_seq_gaps_total") == 3
    assert rig.value("kioskfleet_ingest_messages_total", channel="report") == 2
    assert len(rig.sink.calls) == 2  # the duplicate is not written


def test_accepted_deliveries_wait_for_the_write_and_the_rest_are_settled(rig: Rig) -> None:
    assert rig.send(report(seq=1), at(0), mid=11) is IngestResult.ACCEPTED
    assert rig.send(report(seq=1), at(1), mid=12) is IngestResult.DUPLICATE
    assert rig.raw(TOPIC, b"{not json", mid=13) is IngestResult.REJECTED
    assert rig.send(report(seq=2), at(2)) is IngestResult.ACCEPTED  # QoS 0: nothing to ack
    assert rig.sink.recorded == [(1, 11), None]
    assert rig.sink.settled == [(1, 12), (0, 13)]


def test_accepted_event_is_handed_over_as_a_row_with_its_body(rig: Rig) -> None:
    rig.send(peripheral_event("T-1", 3, PRINTER_OK, "jam", sent_at=at(0)), at(1))
    [event] = rig.sink.events
    assert (event.terminal_id, event.seq, event.type, event.sent_at, event.received_at) == (
        "T-1",
        3,
        "peripheral_changed",
        at(0),
        at(1),
    )
    assert event.body["previous"] == "jam"
    assert event.body["peripheral"]["name"] == "printer"


def test_retained_redelivery_is_not_counted_as_a_duplicate(rig: Rig) -> None:
    will = state("T-1", False, sent_at=at(0))
    rig.send(will, at(1), retained=True)
    assert rig.send(will, at(2), retained=True) is IngestResult.DUPLICATE
    assert rig.value("kioskfleet_ingest_duplicates_total") == 0
    assert rig.value("kioskfleet_ingest_delay_seconds_count") == 0  # retained: no delay


def test_will_of_an_online_terminal_counts_an_offline_detection(rig: Rig) -> None:
    rig.send(report(seq=1), at(0))
    rig.send(state("T-1", False), at(5))
    rig.send(state("T-9", False), at(5))  # first seen offline: not a detection
    assert rig.value("kioskfleet_terminals_offline_detected_total", reason="will") == 1
    assert rig.value("kioskfleet_ingest_messages_total", channel="state") == 2


def test_a_valid_report_after_garbage_is_still_ingested(rig: Rig) -> None:
    for _reason, topic, payload in GARBAGE:
        rig.raw(topic, payload)
    assert rig.send(report(seq=1), at(1)) is IngestResult.ACCEPTED
    assert rig.fleet.get("T-1") is not None


# --- the gate and the rules' bounds -----------------------------------------------------


class Enrolled:
    def __init__(self, *ids: str) -> None:
        self.ids = set(ids)

    def is_active(self, terminal_id: str) -> bool:
        return terminal_id in self.ids


def _gated_rig(directory: Enrolled, *, burst: int = 100) -> Rig:
    return make_rig(
        FleetState(max_seq_jump=1000),
        lambda clock: IngestGate(rate_per_s=1.0, burst=burst, clock=clock, directory=directory),
    )


def test_a_terminal_that_is_not_enrolled_is_refused_before_anything_is_kept() -> None:
    rig = _gated_rig(Enrolled("T-1"))
    for i in range(200):
        assert rig.send(report(f"FAKE-{i}", seq=1), at(0), mid=i) is IngestResult.REJECTED
    assert rig.send(report("T-1", seq=1), at(0), mid=999) is IngestResult.ACCEPTED
    assert len(rig.fleet) == 1
    assert rig.value("kioskfleet_ingest_rejected_total", reason="unknown_terminal") == 200
    assert len(rig.sink.settled) == 200  # acknowledged (nothing to keep), never applied


def test_a_terminal_over_its_budget_is_rate_limited_and_others_are_not() -> None:
    rig = _gated_rig(Enrolled("T-1", "T-2"), burst=5)
    results = [rig.send(report("T-1", seq=i), at(0), mid=i) for i in range(1, 11)]
    assert results.count(IngestResult.ACCEPTED) == 5
    assert rig.value("kioskfleet_ingest_rejected_total", reason="rate_limited") == 5
    assert rig.send(report("T-2", seq=1), at(0), mid=100) is IngestResult.ACCEPTED


def test_a_refused_seq_jump_is_counted_and_settled() -> None:
    rig = _gated_rig(Enrolled("T-1"))
    rig.send(report("T-1", seq=1), at(0), mid=1)
    assert rig.send(report("T-1", seq=2**40), at(1), mid=2) is IngestResult.REJECTED
    assert rig.value("kioskfleet_ingest_rejected_total", reason="seq_jump") == 1
    assert rig.sink.settled == [(1, 2)]  # the refused delivery, acknowledged with the next flush
    assert rig.send(report("T-1", seq=2), at(2), mid=3) is IngestResult.ACCEPTED


def test_accepted_update_status_is_recorded_for_the_writer_once(rig: Rig) -> None:
    rig.send(report("T-1", 1), at(0))
    message = update_status("T-1", 2, "failed", reason="install_failed", detail="exit 3")
    assert rig.send(message, at(1)) is IngestResult.ACCEPTED
    assert rig.send(message, at(2)) is IngestResult.DUPLICATE
    assert len(rig.sink.updates) == 1
    record = rig.sink.updates[0]
    assert (record.terminal_id, record.seq, record.rollout_id, record.directive_seq) == (
        "T-1",
        2,
        "R-1",
        3,
    )
    assert (record.state, record.reason, record.detail) == ("failed", "install_failed", "exit 3")
    assert record.received_at == at(1)
    assert rig.value("kioskfleet_ingest_messages_total", channel="update") == 1
    assert rig.sink.events == []
