"""Scenario b: the server is SIGKILLed and restarted mid-stream while 100 real agents report.

The server acknowledges a message only after the transaction holding its effects
committed, and its session at the broker is persistent: what it had received but
not committed when it died is redelivered by the broker, what it had committed is
recognised as a duplicate by (terminal, boot_id, seq). The exact count check holds
with zero gaps. (tests/integration/test_server_shutdown.py covers the same with raw
publishers and SIGTERM; this one runs the agents, their outboxes and a SIGKILL.)
"""

from __future__ import annotations

import time

import pytest

from kioskfleet.local_broker import LocalBroker
from kioskfleet.stream_accounting import wait_for_exact_accounting
from tests.integration.faults.conftest import (
    Fleets,
    ServerStarter,
    drain_and_stop,
    force_events,
    wait_connected,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TERMINALS = 100


def test_server_sigkill_mid_stream_loses_nothing_and_stores_nothing_twice(
    database_url: str, private_broker: LocalBroker, server_process: ServerStarter, fleets: Fleets
) -> None:
    server = server_process(database_url)
    sim = fleets.start(private_broker.url, TERMINALS, prefix="SVK")
    wait_connected(sim)
    force_events(sim, 10)
    time.sleep(1.5)  # ~750 messages in, some committed, some in the server's pending batch

    server.kill()
    force_events(sim, 10, offset=50)  # the broker queues them in the server's session
    time.sleep(1.0)
    server.start()
    time.sleep(1.0)

    outboxes = drain_and_stop(sim)
    wait_for_exact_accounting(database_url, outboxes)
    assert server.metric("kioskfleet_ingest_rejected_total", reason="internal") == 0
