"""A terminal that floods crafted reports through a real mosquitto cannot blow up the scrape
nor crowd out the other terminals, and a forged huge ``seq`` silences nobody.

The flooder sends reports as fast as paho can publish, each with 32 peripherals
in fault with fresh fault codes and 32 packages with fresh versions. The
server's budget for one terminal is small here (burst 20, 5 messages/s), so
most of the flood is refused as ``rate_limited`` before it is decoded; what
passes is folded into ``other`` where it would reach a label. Every count below
is exact (accepted + refused = sent, every quiet terminal's every report
accepted); no wall-clock threshold is asserted. How long the quiet terminals'
reports take meanwhile is measured by ``bench/hostile.py``
(``docs/benchmarks.md``).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from protocol.codec import encode
from protocol.topics import Channel
from server.main import Server
from tests.integration.conftest import ServerFactory, TerminalFactory, api, metric, wait_until
from tests.support.fleet_messages import periph, report

pytestmark = pytest.mark.integration

FLOOD = 600
QUIET = 10
BUDGET = {"ingest_burst_per_terminal": 20, "ingest_rate_per_terminal_s": 5.0}


def _scrape(server: Server) -> list[tuple[str, dict[str, str]]]:
    text = api(server, "/metrics").text
    return [
        (s.name, dict(s.labels))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("kioskfleet_")
    ]


def _handled(server: Server, before: float) -> float:
    """Messages the server has counted (accepted, duplicate or rejected for any reason)."""
    accepted = metric(server, "kioskfleet_ingest_messages_total", channel="report")
    rejected = sum(
        s.value
        for family in server.registry.collect()
        if family.name == "kioskfleet_ingest_rejected"
        for s in family.samples
        if s.name.endswith("_total")
    )
    return accepted + rejected - before


def test_a_flooding_terminal_is_rate_limited_folded_and_does_not_crowd_out_the_others(
    start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server(**BUDGET)
    flooder = terminals(hall="Hall F", region="East")
    quiet = [terminals(hall="Hall Q", region="East") for _ in range(QUIET)]
    before = _handled(server, 0.0)

    for n in range(1, FLOOD + 1):
        peripherals = [
            periph(f"p{i:02d}", "id_card_reader", "fault", fault_code=f"X{n:04d}{i:02d}")
            for i in range(32)
        ]
        message = report(
            flooder.id,
            n,
            boot=flooder.boot,
            sent_at=datetime.now(UTC),
            peripherals=peripherals,
            hall="Hall F",
            region="East",
            software={f"pkg-{n:04d}-{i:02d}": f"{n}.{i}" for i in range(32)},
        )
        flooder.client.publish(flooder.topic(Channel.REPORT), encode(message), qos=1)
        if n % 60 == 0:  # the quiet terminals report now and then, in the middle of it
            for t in quiet:
                t.report()
    for t in quiet:
        t.report()
    sent = FLOOD + QUIET * (FLOOD // 60 + 1)
    wait_until(lambda: _handled(server, before) >= sent, 60, "every message counted")

    rate_limited = metric(server, "kioskfleet_ingest_rejected_total", reason="rate_limited")
    view = server.fleet.get(flooder.id)
    assert view is not None
    assert rate_limited > 0
    assert view.reports_received + rate_limited == FLOOD
    for t in quiet:  # none of theirs was refused, every one applied
        v = server.fleet.get(t.id)
        assert v is not None
        assert (v.last_seq, v.reports_received) == (t.seq, t.seq)

    series = _scrape(server)
    codes = Counter(
        labels["fault_code"]
        for name, labels in series
        if name == "kioskfleet_terminal_peripheral_problem" and labels["terminal"] == flooder.id
    )
    software = [labels for name, labels in series if name == "kioskfleet_software_terminals"]
    budget = server.settings
    assert len(codes) <= budget.metrics_fault_codes_per_kind + 1  # the kept ones and "other"
    assert codes["other"] == 32 - budget.metrics_fault_codes_per_kind
    assert len(software) <= budget.metrics_packages * (budget.metrics_versions_per_package + 1) + 1
    assert sum(codes.values()) == 32  # its latest accepted report's peripherals, no more


def test_a_forged_huge_seq_is_refused_and_the_real_terminal_keeps_reporting(
    start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server()
    real = terminals()
    real.report()
    wait_until(lambda: server.fleet.get(real.id) is not None, 10, "the first report")
    real.report(seq=2**53)  # what an attacker sent on the old, unauthenticated main
    wait_until(
        lambda: metric(server, "kioskfleet_ingest_rejected_total", reason="seq_jump") == 1,
        10,
        "the forged seq refused",
    )
    real.report(
        peripherals=[
            periph("printer", "receipt_printer", "paper_out"),
            periph("idcard", "id_card_reader"),
        ]
    )
    wait_until(
        lambda: (v := server.fleet.get(real.id)) is not None and v.last_seq == 2, 10, "seq 2"
    )
    view = server.fleet.get(real.id)
    assert view is not None
    assert view.health.value == "faulty"
    assert view.seq_gaps == 0
    assert metric(server, "kioskfleet_ingest_duplicates_total") == 0
