"""A three-node nats-server JetStream cluster as the broker, one node SIGKILLed mid-stream.

Three simulated fleets (the real agent: durable outbox, ``kf.committed``
confirmation on) connect one to each node over MQTT 3.1.1 (all that
nats-server 2.9 speaks); one server on PostgreSQL subscribes through the
first node without a shared subscription (server replicas sharing ingest are
not built, docs/scale-out.md). Terminal ids carry no ``.``: nats-server
refuses it in topics (docs/reliability.md).

A node is SIGKILLed while ~450 messages a second flow, held down 3 s, then
started again on the same store; its clients reconnect to it (an agent has one
``broker_url``). nats-server 2.9 PUBACKs QoS 1 messages that its stream never
stores (on a leader change, and on a node restarted under load): holes inside a
terminal's stream. The server counts each as a seq gap and lists it as
``missing`` in its ``kf.committed``; the agent still holds the row and re-sends
it, and the server takes it as a gap fill (docs/reliability.md, "A NATS
JetStream cluster"). The check is the fault suite's exact accounting with
nothing lost: every seq every agent numbered is in the database exactly once,
every gap counted was filled (``kioskfleet_ingest_gap_fills_total``), and every
outbox ends empty. Each test prints the gaps and fills, per node's fleet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.outbox import OutboxStats
from kioskfleet.server_process import ServerProcess
from kioskfleet.stream_accounting import wait_for_exact_accounting
from tests.integration.conftest import unique, wait_until
from tests.integration.faults.conftest import (
    Fleets,
    drain_and_stop,
    force_events,
    start_a_fleet_per_node,
    wait_connected,
)
from tests.support.nats_cluster import NatsCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TERMINALS_PER_NODE = 30
DOWN_S = 3.0


@pytest.fixture
def nats_server(
    nats_cluster: NatsCluster, postgres_url: str, tmp_path: Path
) -> Iterator[ServerProcess]:
    """One ``kioskfleet server`` on PostgreSQL, subscribed through node 0 with MQTT 3.1.1 and a
    persistent session (clean session off: nats-server keeps its queue in JetStream)."""
    server = ServerProcess(
        tmp_path / "server",
        database_url=postgres_url,
        broker_url=nats_cluster.nodes[0].mqtt_url,
        mqtt_protocol="3.1.1",
        mqtt_client_id=unique("kf-nats-server"),
        shared_subscription=False,
    )
    try:
        yield server.start()
    finally:
        server.terminate(timeout=15)


Choice = Callable[[NatsCluster], int]


def _run_with_a_node_killed(
    cluster: NatsCluster, server: ServerProcess, fleets: Fleets, choose: Choice
) -> tuple[str, dict[str, OutboxStats]]:
    """Stream, SIGKILL the node ``choose`` names, restart it, drain. Returns which node was
    killed and which led the MQTT message stream then, and every terminal's outbox."""
    sims = start_a_fleet_per_node(fleets, cluster, TERMINALS_PER_NODE, "NT")
    time.sleep(1.5)  # 90 terminals x 5 reports a second, spread over the three nodes

    leader = cluster.stream_leader()
    killed = choose(cluster)
    cluster.kill(killed)
    force_events(sims[killed], 5, offset=10)  # raised while its node is down: outbox only
    time.sleep(DOWN_S)
    cluster.start_node(killed)
    for sim in sims:
        wait_connected(sim)
    wait_until(lambda: server.get("/readyz").status_code == 200, 30, "the server to reconnect")
    for sim in sims:
        force_events(sim, 5, offset=20)
    time.sleep(1.0)

    outboxes: dict[str, OutboxStats] = {}
    for sim in sims:
        outboxes |= drain_and_stop(sim, timeout=60)
    names = [n.name for n in cluster.nodes]
    what = f"{names[killed]} killed, stream leader {names[leader] if leader is not None else '?'}"
    timeouts = sum(sim.counters().confirm_timeouts for sim in sims)
    refilled = sum(sim.counters().refilled for sim in sims)
    what += f" ({timeouts} confirmation timeouts, {refilled} rows re-sent by refills and timeouts)"
    return what, outboxes


def _assert_nothing_lost(
    server: ServerProcess, outboxes: dict[str, OutboxStats], what: str
) -> None:
    """The exact accounting with no loss allowed: every seq an agent numbered is stored once
    (or was dropped by its outbox on purpose), a row left in an outbox only where the server
    holds the whole stream (its kf.committed never reached the agent: nats-server can stop
    delivering ``cmd`` to sessions restored on a restarted node; counted and printed), and every gap the server counted beyond the drops was filled."""
    losses = wait_for_exact_accounting(
        server.database_url, outboxes, allow_losses=True, allow_unconfirmed=True, timeout=60
    )
    unconfirmed = sum(s.pending for s in outboxes.values())
    # boot events plus 5 + 5 forced per fleet, and 5 more on the killed node's fleet
    assert sum(s.events for s in outboxes.values()) >= 3 * TERMINALS_PER_NODE + 35
    sent = sum(s.reports + s.events for s in outboxes.values())
    per_fleet = [sum(n for tid, n in losses.items() if tid.startswith(f"NT{i}-")) for i in range(3)]
    gaps = server.metric("kioskfleet_ingest_seq_gaps_total")
    fills = server.metric("kioskfleet_ingest_gap_fills_total")
    dropped = sum(s.dropped_reports for s in outboxes.values())
    duplicates = server.metric("kioskfleet_ingest_duplicates_total")
    print(
        f"NATS cluster, {what}: {sent} messages, {gaps:.0f} gaps counted, {fills:.0f} filled,"
        f" {dropped} dropped by outboxes, {unconfirmed} stored but never confirmed to the agent,"
        f" {sum(per_fleet)} lost (fleets on n1, n2, n3:"
        f" {per_fleet}), {duplicates:.0f} re-sent duplicates"
    )
    assert per_fleet == [0, 0, 0]
    assert gaps - fills == dropped


def _a_follower_with_agents(cluster: NatsCluster) -> int:
    """A node other than the server's (0) that does not lead the MQTT message stream."""
    return 2 if cluster.stream_leader() == 1 else 1


def _the_stream_leader(cluster: NatsCluster) -> int:
    leader = cluster.stream_leader()
    assert leader is not None, "no node leads the MQTT message stream"
    return leader


def test_sigkill_of_a_follower_node_with_agents_is_exactly_accounted(
    nats_cluster: NatsCluster, nats_server: ServerProcess, fleets: Fleets
) -> None:
    what, outboxes = _run_with_a_node_killed(
        nats_cluster, nats_server, fleets, _a_follower_with_agents
    )
    _assert_nothing_lost(nats_server, outboxes, what)


def test_sigkill_of_the_stream_leader_loses_nothing(
    nats_cluster: NatsCluster, nats_server: ServerProcess, fleets: Fleets
) -> None:
    what, outboxes = _run_with_a_node_killed(nats_cluster, nats_server, fleets, _the_stream_leader)
    _assert_nothing_lost(nats_server, outboxes, what)


def test_sigkill_of_the_servers_node_is_exactly_accounted(
    nats_cluster: NatsCluster, nats_server: ServerProcess, fleets: Fleets
) -> None:
    what, outboxes = _run_with_a_node_killed(nats_cluster, nats_server, fleets, lambda _: 0)
    _assert_nothing_lost(nats_server, outboxes, what)
