"""The job lease on real databases and across real server processes.

- ``JobLease`` on SQLite and PostgreSQL: the compare-and-set ``UPDATE`` decides as the
  pure core's ``cas_applies`` does (create, renew, stand by, take over, release), with
  test clocks; no wall-clock waits.
- Three ``kioskfleet server`` processes on one PostgreSQL database (short lease through
  the settings): exactly one runs the once-per-fleet jobs (its ``kioskfleet_fleet_job_runs``
  grow, the others' stay absent); SIGKILL of the holder hands the jobs to another after
  the lease expires, with a larger fencing token, and at no sample do two processes
  claim the lease.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from kioskfleet.local_broker import LocalBroker
from server.errors import StorageError
from server.job_lease import Action, JobLease, LeaseMetrics
from server.storage import Storage
from tests.integration.conftest import TerminalFactory, unique
from tests.integration.server_process import ServerProcess
from tests.support.clocks import LeaseClock
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE = timedelta(seconds=30)
FLEET_JOBS = ("offline-sweep", "rollout-tick", "retention-prune")


class _Clock(LeaseClock):
    def __init__(self) -> None:
        super().__init__(datetime(2026, 12, 4, 12, 0, tzinfo=UTC))


def _lease(storage: Storage, name: str, clock: LeaseClock, **kw: Any) -> JobLease:
    return JobLease(
        storage,
        name,
        kw.pop("metrics", None) or LeaseMetrics(CollectorRegistry()),
        duration=LEASE,
        database_clock=clock.database,
        monotonic=clock.monotonic,
        **kw,
    )


def _row(storage: Storage) -> tuple[str | None, int]:
    with storage.engine.connect() as conn:
        holder, token = conn.execute(sa.text("SELECT holder, token FROM job_lease")).one()
    return holder, int(token)


def test_the_lease_is_taken_renewed_taken_over_and_released_in_the_database(
    storage: Storage,
) -> None:
    clock = _Clock()
    a, b = (_lease(storage, name, clock) for name in ("replica-a", "replica-b"))
    assert a.tick() is Action.CREATE
    assert b.tick() is Action.STAND_BY
    assert (a.held(), b.held(), a.token) == (True, False, 1)
    clock.now += timedelta(seconds=20)
    assert a.tick() is Action.RENEW  # now live until +50 s
    clock.now += timedelta(seconds=20)
    assert b.tick() is Action.STAND_BY  # the renewal counts: +40 s is not expired
    assert _row(storage) == ("replica-a", 1)

    clock.now += timedelta(seconds=30)  # a renews no more (killed): expired at +50 s
    assert not a.held()
    assert b.tick() is Action.TAKE_OVER
    assert (b.token, _row(storage)) == (2, ("replica-b", 2))
    assert a.tick() is Action.STAND_BY  # it sees b's lease
    assert not a.held()

    b.release()
    assert _row(storage) == (None, 2)
    assert a.tick() is Action.TAKE_OVER  # at once, without waiting for the expiry
    assert (a.token, _row(storage)) == (3, ("replica-a", 3))


def test_a_renewal_decided_before_a_takeover_cannot_overwrite_it(storage: Storage) -> None:
    clock = _Clock()
    a, b = (_lease(storage, name, clock) for name in ("replica-a", "replica-b"))
    a.tick()
    clock.now += LEASE  # a stalled past its expiry; b takes over
    assert b.tick() is Action.TAKE_OVER
    clock.now -= timedelta(seconds=1)  # back to a time at which a's own lease was live
    assert a.tick() is Action.STAND_BY  # it reads b's row: no renewal of its own
    assert _row(storage) == ("replica-b", 2)
    assert not a.held()


def test_the_new_holder_takes_up_the_jobs_before_it_believes_and_retries_on_failure(
    storage: Storage,
) -> None:
    clock = _Clock()
    calls: list[bool] = []  # whether the lease was believed held during the call

    def take_up() -> None:
        calls.append(lease.held())
        if len(calls) == 1:
            raise StorageError("read offline terminals", "the database went away")

    lease = _lease(storage, "replica-a", clock, on_acquired=take_up)
    assert lease.tick() is Action.STAND_BY  # created the row, but could not take the jobs up
    assert not lease.held()
    clock.now += timedelta(seconds=5)
    assert lease.tick() is Action.RENEW  # its row: taken up now
    assert lease.held()
    clock.now += timedelta(seconds=5)
    assert lease.tick() is Action.RENEW
    assert calls == [False, False]  # never while believed; not again at a renewal


def test_a_holder_cut_off_from_the_database_stops_believing_at_its_expiry(
    storage: Storage, database_url: str
) -> None:
    clock = _Clock()
    registry = CollectorRegistry()
    own = Storage(database_url)  # the holder's own connection to the database, cut below
    own.open()
    lease = _lease(own, "replica-a", clock, metrics=LeaseMetrics(registry))
    ran: list[int] = []
    job = lease.guard("offline-sweep", lambda: ran.append(1))
    lease.tick()
    job()
    own.close()  # the database is gone for this replica
    clock.now += timedelta(seconds=20)
    assert lease.tick() is Action.STAND_BY  # the renewal failed, the belief still holds
    job()
    assert registry.get_sample_value("kioskfleet_job_lease_holder") == 1
    clock.now += timedelta(seconds=10)  # its expiry: a standby may take over now
    assert lease.tick() is Action.STAND_BY
    job()
    assert ran == [1, 1]  # nothing ran once the lease it could not renew expired
    assert registry.get_sample_value("kioskfleet_job_lease_holder") == 0
    assert registry.get_sample_value("kioskfleet_job_lease_errors_total") == 2
    assert _row(storage) == ("replica-a", 1)  # expired in the row; the others take it over


# --- real server processes ------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class _Replica:
    def __init__(self, process: ServerProcess) -> None:
        self.process = process

    def read(self) -> tuple[bool, float, dict[str, float]]:
        """(claims the lease, its fencing token, its runs of each fleet job)."""
        samples = _samples(self.process.metrics())
        runs = {
            job: samples.get(("kioskfleet_fleet_job_runs_total", (("job", job),)), 0.0)
            for job in FLEET_JOBS
        }
        holder = samples[("kioskfleet_job_lease_holder", ())] == 1
        return holder, samples[("kioskfleet_job_lease_token", ())], runs


_REPLICA_ENV = {
    "KIOSKFLEET_JOB_LEASE_DURATION_S": "2",
    "KIOSKFLEET_JOB_LEASE_RENEW_INTERVAL_S": "0.25",
    "KIOSKFLEET_ROLLOUT_TICK_INTERVAL_S": "0.2",
    "KIOSKFLEET_OFFLINE_CHECK_INTERVAL_S": "0.2",
    "KIOSKFLEET_MQTT_SESSION_EXPIRY_S": "0",
}


@pytest.fixture
def start_replicas(
    private_broker: LocalBroker, tmp_path: Path, postgres_url: str
) -> Iterator[Callable[..., list[_Replica]]]:
    """``start_replicas(n, **env)``: n server processes on one PostgreSQL database."""
    processes: list[ServerProcess] = []

    def start(count: int, **env: str) -> list[_Replica]:
        made = [
            ServerProcess(
                private_broker,
                tmp_path,
                postgres_url,
                name=f"replica-{len(processes) + i}",
                env={**_REPLICA_ENV, **env},
            )
            for i in range(count)
        ]
        processes.extend(made)
        for p in made:
            p.start()
        return [_Replica(p) for p in made]

    try:
        yield start
    finally:
        for p in processes:
            p.stop()


@pytest.fixture
def replicas(start_replicas: Callable[..., list[_Replica]]) -> list[_Replica]:
    return start_replicas(3)


def _one_holder(replicas: list[_Replica]) -> tuple[_Replica, float] | None:
    """The one replica claiming the lease, having run the rollout tick since; fails the
    test if two claim it at once."""
    readings = [(r, *r.read()) for r in replicas]
    holders = [(r, token, runs) for r, held, token, runs in readings if held]
    assert len(holders) <= 1, [r.process.log.name for r, _, _ in holders]
    if not holders or holders[0][2]["rollout-tick"] == 0:
        return None
    return holders[0][0], holders[0][1]


def _offline_transitions(postgres_url: str, terminal_id: str) -> int:
    storage = Storage(postgres_url)
    storage.open()
    try:
        with storage.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM transition WHERE terminal_id = :t"
                        " AND subject = 'connectivity' AND to_state = 'offline'"
                    ),
                    {"t": terminal_id},
                ).scalar_one()
            )
    finally:
        storage.close()


def _silent_terminal_goes_offline_once(
    terminals: TerminalFactory, holder: _Replica, postgres_url: str
) -> str:
    """A terminal every replica hears once (direct subscriptions), then silence: one
    offline transition, however many sweeps the holder runs afterwards."""
    terminal = terminals(unique("LEASE"))
    terminal.report(interval=0.3)
    wait_until(lambda: _offline_transitions(postgres_url, terminal.id) >= 1, 20, "offline")
    sweeps = holder.read()[2]["offline-sweep"]
    wait_until(lambda: holder.read()[2]["offline-sweep"] >= sweeps + 10, 20, "ten more sweeps")
    assert _offline_transitions(postgres_url, terminal.id) == 1
    return terminal.id


def test_one_of_three_replicas_runs_the_fleet_jobs_and_another_takes_over_after_a_kill(
    replicas: list[_Replica], private_terminals: TerminalFactory, postgres_url: str
) -> None:
    holder, token = wait_until(lambda: _one_holder(replicas), 30, "one replica holding the lease")
    first = _silent_terminal_goes_offline_once(private_terminals, holder, postgres_url)
    standbys = [r for r in replicas if r is not holder]
    for r in standbys:
        held, _, runs = r.read()
        assert not held
        assert runs == dict.fromkeys(FLEET_JOBS, 0.0)  # a standby runs none of the jobs
    ran_before = holder.read()[2]
    wait_until(lambda: holder.read()[2]["offline-sweep"] > ran_before["offline-sweep"], 10)

    assert holder.process.signal(signal.SIGKILL) == -signal.SIGKILL
    new_holder, new_token = wait_until(
        lambda: _one_holder(standbys), 30, "a standby taking the lease over"
    )
    assert new_token > token  # the fencing token grew with the takeover
    other = next(r for r in standbys if r is not new_holder)
    assert other.read()[2] == dict.fromkeys(FLEET_JOBS, 0.0)
    _silent_terminal_goes_offline_once(private_terminals, new_holder, postgres_url)
    assert _offline_transitions(postgres_url, first) == 1  # the new holder did not redo it
    storage = Storage(postgres_url)
    storage.open()
    try:
        holder_id, stored_token = _row(storage)
    finally:
        storage.close()
    assert stored_token == new_token
    assert new_holder.process.proc is not None
    assert holder_id is not None
    assert holder_id.split(":")[1] == str(new_holder.process.proc.pid)


def test_a_gracefully_stopped_holder_hands_the_lease_over_without_waiting_for_its_expiry(
    start_replicas: Callable[..., list[_Replica]],
) -> None:
    # A lease of 10 minutes: only the release on stop lets the standby take over in time.
    replicas = start_replicas(
        2, KIOSKFLEET_JOB_LEASE_DURATION_S="600", KIOSKFLEET_JOB_LEASE_RENEW_INTERVAL_S="0.25"
    )
    holder, token = wait_until(lambda: _one_holder(replicas), 30, "one replica holding the lease")
    assert holder.process.signal(signal.SIGTERM) == 0
    standby = next(r for r in replicas if r is not holder)
    _, new_token = wait_until(lambda: _one_holder([standby]), 30, "the standby taking over")
    assert new_token == token + 1
