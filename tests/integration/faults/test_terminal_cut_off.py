"""Scenario c: one terminal's link is cut for longer than its outbox can hold, then comes back.

The terminal keeps producing reports (every 0.2 s) and an event into an outbox
limited to 15 messages; the oldest reports are dropped and counted, the events
are kept beyond the quota. When the link returns, the backlog drains at the
bounded rate and the next report carries the cumulative ``dropped_reports``:
the server's seq gaps equal exactly the deliberate drops, every event is stored
once, and the other terminals never noticed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from kioskfleet.local_broker import LocalBroker
from kioskfleet.stream_accounting import wait_for_exact_accounting
from protocol.messages import PeripheralCondition
from tests.integration.conftest import wait_until
from tests.integration.faults.conftest import Fleets, ServerStarter, drain_and_stop, wait_connected
from tests.integration.faults.proxy import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTBOX_MAX_MESSAGES = 15


def test_terminal_cut_off_beyond_its_quota_drops_oldest_reports_counted_and_keeps_events(
    database_url: str,
    private_broker: LocalBroker,
    server_process: ServerStarter,
    fleets: Fleets,
    fault_proxy: Callable[[int], FaultProxy],
) -> None:
    server = server_process(database_url)
    proxy = fault_proxy(private_broker.port)
    others = fleets.start(private_broker.url, 5, prefix="CUTPEER")
    lonely = fleets.start(
        proxy.url(), 1, prefix="CUT", outbox_max_messages=OUTBOX_MAX_MESSAGES, keepalive_s=2
    )
    tid = lonely.terminal_ids[0]
    wait_connected(others)
    wait_connected(lonely)
    time.sleep(0.5)

    proxy.cut()
    wait_until(lambda: lonely.counters().connected == 0, 10, "the terminal to notice the cut")
    lonely.force(tid, "receipt_printer", PeripheralCondition.JAM)
    lonely.force(tid, "id_card_reader", PeripheralCondition.FAULT, "E17")
    # Far more reports than the quota: every 0.2 s, for 5 s while only 15 rows fit.
    wait_until(
        lambda: lonely.outbox_stats(tid).dropped_reports >= 10, 15, "the outbox to drop reports"
    )
    lonely.release(tid, "receipt_printer")
    during = lonely.outbox_stats(tid)
    assert during.pending >= OUTBOX_MAX_MESSAGES  # events kept beyond the quota
    proxy.restore()

    wait_connected(lonely)
    # The backlog drains; then one more periodic report carries the final drop count.
    wait_until(lambda: lonely.counters().backlog == 0, 20, "the backlog to drain")
    time.sleep(0.6)
    outboxes = drain_and_stop(lonely)
    peers = drain_and_stop(others)
    stats = outboxes[tid]
    assert stats.dropped_reports >= 10
    assert stats.events >= 4  # boot, jam, fault, release
    wait_for_exact_accounting(database_url, {**outboxes, **peers})
    wait_until(
        lambda: server.get(f"/api/v1/terminals/{tid}").json()["state"] == "offline",
        10,
        "its clean stop to take it offline",
    )
