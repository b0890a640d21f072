"""Fixtures for the fault-injection suite: server subprocesses, simulated fleets with durable
outboxes, loopback fault proxies, a small tmpfs that can be filled, and the drain-and-stop
step every scenario ends with before its exact count check (``accounting.py``), and a
three-node nats-server cluster for the tests that run on one.

Everything runs on loopback, with short intervals (reports every 0.2 s, drain
jitter ≤ 0.3 s, reconnect backoff ≤ 1 s) so that each test stays well under a
minute. The broker is the test's own mosquitto (``private_broker``), which the
tests may terminate, kill, pause and restart.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.outbox import OutboxStats
from agent.simulator import Simulation, SimulationOptions, SimulationTuning
from kioskfleet.local_broker import LocalBroker
from kioskfleet.server_process import ServerProcess
from tests.integration.conftest import unique
from tests.integration.faults.proxy import FaultProxy
from tests.support.nats_cluster import NatsCluster

REPORT_INTERVAL_S = 0.2

FAST_TUNING = SimulationTuning(
    probe_interval_s=0.1,
    keepalive_s=5,
    reconnect_min_s=0.2,
    reconnect_max_s=1.0,
    spread_reports=True,
    # A clean stop waits this long for the confirmations of what was handed; it ends as
    # soon as every one arrived. Long: a server restarted under load drains the backlog the
    # broker queued for it (tens of seconds) before it confirms the newest rows.
    shutdown_timeout_s=60.0,
    max_inflight_messages=20,
    drain_rate_per_s=100.0,
    drain_burst=50,
    drain_jitter_s=0.3,
)


# --- servers --------------------------------------------------------------------------------


ServerStarter = Callable[..., ServerProcess]


@pytest.fixture
def server_process(private_broker: LocalBroker, tmp_path: Path) -> Iterator[ServerStarter]:
    """Start ``kioskfleet server`` subprocesses on the test's broker with a persistent session
    (a stable client id, session expiry 10 min); each is stopped at teardown."""
    started: list[ServerProcess] = []

    def start(database_url: str, **settings: Any) -> ServerProcess:
        server = ServerProcess(
            tmp_path / f"server{len(started)}",
            database_url=database_url,
            broker_url=settings.pop("broker_url", private_broker.url),
            mqtt_client_id=settings.pop("mqtt_client_id", unique("kf-fault-server")),
            mqtt_session_expiry_s=settings.pop("mqtt_session_expiry_s", 600),
            **settings,
        )
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.terminate(timeout=15)


# --- fleets ---------------------------------------------------------------------------------


class Fleets:
    """Simulations started by a test; each is aborted (if still running) and closed at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: list[Simulation] = []

    def start(
        self,
        broker_url: str,
        terminals: int,
        *,
        prefix: str = "F",
        outbox_path: Path | None = None,
        broker_urls: tuple[str, ...] = (),
        tuning: SimulationTuning = FAST_TUNING,
        **tuning_changes: Any,
    ) -> Simulation:
        """``broker_urls``: failover, every terminal rotates over these (``broker_url`` unused)."""
        opts = SimulationOptions(
            terminals=terminals,
            broker_url=broker_url,
            broker_urls=broker_urls,
            halls=4,
            regions=2,
            seed=7,
            report_interval_s=REPORT_INTERVAL_S,
            fault_rate=0.000001,  # no spontaneous incidents: tests force events themselves
            id_prefix=prefix,
            outbox_path=outbox_path or self.tmp_path / f"outbox-{prefix}.sqlite",
        )
        sim = Simulation(opts, tuning=replace(tuning, **tuning_changes))
        self.running.append(sim)
        sim.start()
        return sim

    def close(self) -> None:
        for sim in self.running:
            with contextlib.suppress(Exception):
                sim.abort(timeout=10)
            with contextlib.suppress(Exception):
                sim.close()


@pytest.fixture
def fleets(tmp_path: Path) -> Iterator[Fleets]:
    f = Fleets(tmp_path)
    try:
        yield f
    finally:
        f.close()


def wait_connected(sim: Simulation, timeout: float = 30.0) -> None:
    if not sim.wait_connected(timeout):
        pytest.fail(f"not every simulated terminal connected: {sim.counters()}")


def drain_and_stop(sim: Simulation, timeout: float = 45.0) -> dict[str, OutboxStats]:
    """Wait until no terminal has a backlog (everything appended was handed to MQTT), stop the
    simulation cleanly (it waits for the PUBACKs and the kf.committed of what was handed), and
    return every terminal's final outbox stats. Fails the test if the backlog does not drain."""
    deadline = time.monotonic() + timeout
    while (counters := sim.counters()).backlog or counters.connected < counters.terminals:
        if time.monotonic() > deadline:
            pytest.fail(f"the outboxes did not drain within {timeout}s: {counters}")
        time.sleep(0.1)
    # hand_stored: a report written since the look above is sent (and confirmed) too
    sim.stop(timeout=sim.tuning.shutdown_timeout_s + 30, hand_stored=True)
    return {tid: sim.outbox_stats(tid) for tid in sim.terminal_ids}


def force_events(sim: Simulation, count: int, *, offset: int = 0) -> int:
    """Make ``count`` terminals' receipt printers jam now (one event each). Returns ``count``."""
    from protocol.messages import PeripheralCondition

    ids = sim.terminal_ids
    for i in range(count):
        sim.force(ids[(offset + i) % len(ids)], "receipt_printer", PeripheralCondition.JAM)
    return count


# --- a broker cluster ----------------------------------------------------------------------


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three nats-server JetStream nodes with an MQTT listener each (``tests/support``)."""
    cluster = NatsCluster(tmp_path / "nats")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def start_a_fleet_per_node(
    fleets: Fleets, cluster: NatsCluster, terminals: int, prefix: str
) -> list[Simulation]:
    """A simulated fleet of ``terminals`` on each node (ids ``{prefix}{node}-...``, MQTT 3.1.1),
    every terminal connected and 5 printers per fleet jammed (one event each)."""
    sims = [
        fleets.start(
            node.mqtt_url,
            terminals,
            prefix=f"{prefix}{i}",
            mqtt_protocol="3.1.1",
            shutdown_timeout_s=20.0,  # a clean stop waits this long for the confirmations
        )
        for i, node in enumerate(cluster.nodes)
    ]
    for sim in sims:
        wait_connected(sim)
    for sim in sims:
        force_events(sim, 5)
    return sims


# --- network and disk faults ----------------------------------------------------------------


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[int], FaultProxy]]:
    """Start loopback fault proxies in front of a port; all are stopped at teardown."""
    proxies: list[FaultProxy] = []

    def make(upstream_port: int) -> FaultProxy:
        proxy = FaultProxy(upstream_port).start()
        proxies.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.stop()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for this test (needs root; CI runs as root), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill up needs root (CI runs .ci/run as root)")
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "kf-faults", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_disk(directory: Path) -> Path:
    """Write a ballast file in ``directory`` until the file system is full. Returns its path."""
    ballast = directory / "ballast"
    chunk = b"\0" * 65536
    with ballast.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return ballast
