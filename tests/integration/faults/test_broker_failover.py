"""Failover: agents with ``broker_urls = [A, B]`` move to B when mosquitto A is SIGKILLed.

Two real mosquittos: B (the test's ``private_broker``) with one ``kioskfleet
server`` on it, and A bridged to B (``topic kf/v1/terminals/# both 1``), so the
server hears the terminals on A and its ``kf.committed`` reaches them. Each
simulated terminal (the real agent: durable outbox, confirmation on) starts at
its own offset in the list (agent.broker_rotation), so about half start on A.
A is SIGKILLed mid-stream and stays dead: what it acknowledged and had not yet
bridged is gone with it, and so are the confirmations on their way back (the
server is frozen across the switch, so A's terminals certainly hold unconfirmed
rows and re-send them to B, where the server then finds duplicates). Its
terminals switch to B, a new session there, and re-send what is unconfirmed;
the check is the fault suite's exact accounting without losses (every seq each
agent numbered is stored exactly once, every outbox ends empty).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.broker_rotation import start_offset
from kioskfleet.local_broker import LocalBroker, free_port
from kioskfleet.stream_accounting import read_stored, wait_for_exact_accounting
from tests.integration.conftest import wait_until
from tests.integration.faults.conftest import (
    Fleets,
    ServerStarter,
    drain_and_stop,
    force_events,
    wait_connected,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TERMINALS = 40


@pytest.fixture
def bridged_broker(private_broker: LocalBroker, tmp_path: Path) -> Iterator[LocalBroker]:
    """Mosquitto A, bridged both ways to the test's broker B for every terminal topic."""
    bridge = (
        "\nconnection kf-failover-bridge\n"
        f"address 127.0.0.1:{private_broker.port}\n"
        "topic kf/v1/terminals/# both 1\n"
        "cleansession false\n"
        "try_private true\n"
        "notifications false\n"
        "restart_timeout 1\n"
    )
    broker = LocalBroker(tmp_path / "mosquitto-a", extra_conf=bridge).start()
    try:
        yield broker
    finally:
        broker.stop()


def first_on(index: int, terminal_ids: list[str], count: int = 2) -> set[str]:
    return {tid for tid in terminal_ids if start_offset(tid, count) == index}


def test_agents_switch_to_the_second_broker_when_the_first_is_killed_and_lose_nothing(
    private_broker: LocalBroker,
    bridged_broker: LocalBroker,
    server_process: ServerStarter,
    fleets: Fleets,
) -> None:
    database_url = f"sqlite:///{private_broker.workdir.parent}/failover.db"
    server = server_process(database_url, shared_subscription=False)
    a, b = bridged_broker.url, private_broker.url
    sim = fleets.start(b, TERMINALS, prefix="FO", broker_urls=(a, b))
    wait_connected(sim)
    on_a = first_on(0, sim.terminal_ids)
    assert 0 < len(on_a) < TERMINALS  # the offsets spread the fleet over both brokers
    assert {tid for tid, url in sim.sessions().items() if url == a} == on_a
    # The bridge carries A's terminals to the server: every terminal has its row.
    wait_until(
        lambda: len(read_stored(database_url, sim.terminal_ids)) == TERMINALS,
        20,
        "every terminal's first messages in the server's database",
    )
    force_events(sim, 10)
    time.sleep(1.0)  # 40 terminals x 5 reports a second, half of them through A and the bridge

    # Freeze the server so that A's terminals hold rows A acknowledged and the server has not
    # confirmed (bridged and queued at B, or still at A): the switch must re-send them all.
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(1.0)
        bridged_broker.kill()
        force_events(sim, 10, offset=20)  # raised while A's terminals move to B
        wait_until(
            lambda: len(sim.sessions()) == TERMINALS and set(sim.sessions().values()) == {b},
            10,
            "every terminal to be connected to B",
        )
        time.sleep(2.0)  # past resend_grace_s + drain jitter: the moved terminals re-send
    finally:
        server.proc.send_signal(signal.SIGCONT)
    force_events(sim, 10, offset=30)
    time.sleep(1.0)

    switches = sim.counters().switches
    outboxes = drain_and_stop(sim)
    losses = wait_for_exact_accounting(database_url, outboxes)
    assert sum(losses.values()) == 0
    assert all(s.pending == 0 for s in outboxes.values())
    assert sum(s.events for s in outboxes.values()) >= TERMINALS + 30  # boot events + forced
    assert switches >= len(on_a)  # each of A's terminals moved at least once
    # The bridged originals and the re-sends after the switch both reached the server;
    # the database kept each once.
    duplicates = server.metric("kioskfleet_ingest_duplicates_total")
    assert duplicates > 0
    print(
        f"failover A -> B: {len(on_a)} of {TERMINALS} terminals moved ({switches} switches),"
        f" 0 lost, {duplicates:.0f} re-sent duplicates"
    )


def test_agents_whose_first_broker_is_down_at_start_come_up_on_the_next(
    private_broker: LocalBroker, server_process: ServerStarter, fleets: Fleets
) -> None:
    database_url = f"sqlite:///{private_broker.workdir.parent}/down.db"
    server_process(database_url, shared_subscription=False)
    dead = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    sim = fleets.start(private_broker.url, 10, prefix="FD", broker_urls=(dead, private_broker.url))
    wait_connected(sim)
    assert set(sim.sessions().values()) == {private_broker.url}
    starting_on_dead = first_on(0, sim.terminal_ids)
    assert sim.counters().switches >= len(starting_on_dead) > 0
    force_events(sim, 5)
    outboxes = drain_and_stop(sim)
    assert sum(wait_for_exact_accounting(database_url, outboxes).values()) == 0
