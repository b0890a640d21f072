"""The ingest of ``kf.usage``: a stored row per transaction, bounded metric labels, refusals
counted on the usage channel."""

from __future__ import annotations

import json
import logging

from prometheus_client import CollectorRegistry

from protocol.codec import encode
from server.fleet_state import FleetState
from server.inbound import InboundMessage
from server.ingest import Ingest, IngestResult
from server.log_throttle import ThrottledLog
from server.metrics import ServerMetrics
from server.service_catalogue import Catalogue, service_label
from server.usage_metrics import UsageMetrics
from tests.support.fleet_messages import at, report, usage
from tests.unit.test_ingest import FakeClock, RecordingSink

CATALOGUE = Catalogue.model_validate(
    {"services": [{"code": "tax.invoice.print", "needs": ["printer"]}]}
)
TOPIC = "kf/v1/terminals/T-1/usage"


class Rig:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sink = RecordingSink()
        self.fleet = FleetState()
        self.ingest = Ingest(
            self.fleet,
            self.sink,
            ServerMetrics(self.registry),
            max_payload_bytes=4096,
            throttled_log=ThrottledLog(
                logging.getLogger("test.usage"), interval_s=10, clock=FakeClock()
            ),
            usage_metrics=UsageMetrics(self.registry),
            service_label=lambda code: service_label(CATALOGUE, code),
        )

    def send(self, topic: str, payload: bytes) -> IngestResult:
        return self.ingest.handle(InboundMessage(topic, payload, False, at(5), mid=0))

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def test_a_transaction_is_recorded_once_and_counted_by_hall_service_and_outcome() -> None:
    rig = Rig()
    rig.send("kf/v1/terminals/T-1/report", encode(report("T-1", 1)))
    message = usage("T-1", 2, "tax.invoice.print", "failed", cause="printer", pages=0)
    assert rig.send(TOPIC, encode(message)) is IngestResult.ACCEPTED
    assert rig.send(TOPIC, encode(message)) is IngestResult.DUPLICATE
    [row] = rig.sink.usage
    assert (row.terminal_id, row.seq, row.service, row.outcome, row.cause) == (
        "T-1", 2, "tax.invoice.print", "failed", "printer",
    )  # fmt: skip
    labels = {"region": "North", "hall": "Hall A", "service": "tax.invoice.print"}
    assert rig.value("kioskfleet_usage_transactions_total", **labels, outcome="failed") == 1
    assert rig.value("kioskfleet_ingest_messages_total", channel="usage") == 1


def test_a_code_outside_the_catalogue_is_counted_as_other_and_stored_as_sent() -> None:
    rig = Rig()
    rig.send(TOPIC, encode(usage("T-1", 1, "tax.invoice.reprint")))
    assert rig.sink.usage[0].service == "tax.invoice.reprint"
    labels = {"region": "unknown", "hall": "unknown", "outcome": "completed"}
    assert rig.value("kioskfleet_usage_transactions_total", **labels, service="other") == 1
    assert (
        rig.value("kioskfleet_usage_transactions_total", **labels, service="tax.invoice.reprint")
        == 0
    )


def test_a_personal_data_shaped_transaction_is_refused_counted_and_never_stored(
    caplog: object,
) -> None:
    rig = Rig()
    raw = json.loads(encode(usage("T-1", 1, "tax.invoice.print")))
    raw["body"]["citizen_name"] = "Jane Doe"
    assert rig.send(TOPIC, json.dumps(raw).encode()) is IngestResult.REJECTED
    assert rig.sink.usage == []
    assert rig.value("kioskfleet_usage_refused_total", reason="invalid") == 1
    assert rig.value("kioskfleet_ingest_rejected_total", reason="invalid") == 1
