"""Scenario a: the broker is restarted while 100 simulated terminals report.

A graceful restart (SIGTERM: mosquitto saves its database, sessions and queues)
loses nothing: the exact count check holds with zero gaps, for a server that
subscribes without sharing (one replica). mosquitto 2.0.11 does not restore a
*shared* subscription from its database (measured here: a persistent session's
queued messages come back, its ``$share/...`` subscription does not): until
the server re-subscribes after the restart, what terminals publish reaches no
one, is acknowledged to them, and the server counts it as seq gaps. After a SIGKILL the
broker comes back with its last autosave (``autosave_interval`` in
broker/mosquitto.conf): what it acknowledged to a terminal after that save and
had not yet delivered to the server is gone from the broker, but not from the
terminal: the agent keeps every message until the server's ``kf.committed``
covers it and re-sends the unconfirmed ones in seq order after the reconnect, so
the exact check holds with zero losses and every outbox ends empty.
"""

from __future__ import annotations

import signal
import time

import pytest

from kioskfleet.local_broker import LocalBroker
from kioskfleet.stream_accounting import wait_for_exact_accounting
from tests.integration.conftest import wait_until
from tests.integration.faults.conftest import (
    Fleets,
    ServerStarter,
    drain_and_stop,
    force_events,
    wait_connected,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TERMINALS = 100


def test_graceful_broker_restart_mid_stream_loses_nothing_and_stores_nothing_twice(
    database_url: str, private_broker: LocalBroker, server_process: ServerStarter, fleets: Fleets
) -> None:
    server = server_process(database_url, shared_subscription=False)
    sim = fleets.start(private_broker.url, TERMINALS, prefix="BRT")
    wait_connected(sim)
    force_events(sim, 10)
    time.sleep(1.0)  # reports flowing: 100 terminals x 5 per second

    private_broker.restart(graceful=True, down_s=1.0)
    force_events(sim, 10, offset=50)  # raised while the broker may still be away
    wait_connected(sim)
    wait_until(lambda: server.get("/readyz").status_code == 200, 15, "the server to reconnect")
    time.sleep(1.0)

    outboxes = drain_and_stop(sim)
    losses = wait_for_exact_accounting(database_url, outboxes)
    assert sum(losses.values()) == 0
    assert sum(s.events for s in outboxes.values()) >= TERMINALS + 20  # boot events + forced


def test_graceful_broker_restart_with_a_shared_subscription_loses_only_server_counted_gaps(
    private_broker: LocalBroker, server_process: ServerStarter, fleets: Fleets
) -> None:
    database_url = f"sqlite:///{private_broker.workdir.parent}/shared.db"
    server = server_process(database_url, shared_subscription=True)
    sim = fleets.start(private_broker.url, TERMINALS, prefix="BRS")
    wait_connected(sim)
    time.sleep(1.0)
    private_broker.restart(graceful=True, down_s=1.0)
    wait_connected(sim)
    wait_until(lambda: server.get("/readyz").status_code == 200, 15, "the server to reconnect")
    time.sleep(1.0)
    outboxes = drain_and_stop(sim)
    losses = wait_for_exact_accounting(database_url, outboxes, allow_losses=True)
    lost = sum(losses.values())
    print(f"graceful restart, shared subscription: {lost} messages lost (server-counted gaps)")
    # Only what was published between the broker's restart and the server's re-subscribe
    # (its reconnect delay is 1 s here; 100 terminals publish ~500 messages/s) can be missing.
    assert lost <= TERMINALS * 5 * 5


def test_broker_sigkill_mid_stream_loses_nothing_the_server_had_not_confirmed(
    private_broker: LocalBroker, server_process: ServerStarter, fleets: Fleets
) -> None:
    database_url = f"sqlite:///{private_broker.workdir.parent}/kill.db"
    server = server_process(database_url, shared_subscription=False)
    sim = fleets.start(private_broker.url, TERMINALS, prefix="BRK")
    wait_connected(sim)
    # The server's session and every terminal's must be in a save before the kill:
    # a session created after the last autosave is not there after a SIGKILL.
    private_broker.wait_saved(after=time.time(), timeout=15)
    force_events(sim, 10)
    time.sleep(1.0)
    # Make the loss certain: right after an autosave, freeze the server so that the broker
    # acknowledges to the terminals more than its in-flight window to the server (1 000) can
    # hold, keeps the rest in memory only, and is killed before its next save (5 s).
    private_broker.wait_saved(after=time.time(), timeout=15)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(3.0)  # 100 terminals x 5 messages/s: ~1 500 acknowledged, not delivered
        private_broker.kill()
    finally:
        server.proc.send_signal(signal.SIGCONT)
    time.sleep(1.0)
    private_broker.start()
    wait_connected(sim)
    wait_until(lambda: server.get("/readyz").status_code == 200, 15, "the server to reconnect")
    force_events(sim, 10, offset=50)
    time.sleep(1.0)

    outboxes = drain_and_stop(sim)
    # Exact accounting without allow_losses: every seq the agents numbered is in the
    # server's database (or was a deliberate quota drop), and every outbox is empty
    # because every row was covered by a kf.committed.
    losses = wait_for_exact_accounting(database_url, outboxes)
    assert sum(losses.values()) == 0
    assert all(s.pending == 0 for s in outboxes.values())
    duplicates = server.metric("kioskfleet_ingest_duplicates_total")
    print(f"broker SIGKILL: 0 lost; {duplicates:.0f} re-sent messages were duplicates")
    assert sum(s.events for s in outboxes.values()) >= TERMINALS + 20  # boot events + forced
