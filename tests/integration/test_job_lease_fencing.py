"""The job lease's fencing token in the jobs' own writes, and expiry by the database's clock,
on SQLite and PostgreSQL (``server.lease_fence``, ``server.job_lease``).

A holder whose lease another lease object took over in the database (the token bumped) while
its job run was under way has the run's next write refused, counted in
``kioskfleet_job_lease_fenced_writes_total{job}``, and nothing of it written: the rollout
driver's save, the retention deletes, the usage rollup and availability sample, the offline
sweep's transitions (written later by the batched writer) and the TUF re-signing (files).
A holder whose lease is still its own writes as before. Replica clocks skewed a minute
apart cannot make two holders: expiry is judged by the database's clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from server.errors import FencedOffError
from server.fleet_views import CONNECTIVITY, TerminalView, Transition
from server.job_lease import Action, JobLease, LeaseMetrics
from server.lease_fence import current_fence
from server.metrics import ServerMetrics
from server.records import WriteBatch
from server.rollout_planner import (
    AbortThreshold,
    Phase,
    Rollout,
    RolloutDefinition,
    RolloutStatus,
    new_rollout,
)
from server.rollout_store import RolloutStore
from server.scheduler import Retention, RetentionPruner
from server.storage import Storage
from server.update_metrics import UpdateMetrics
from server.update_wiring import UpdateService
from server.usage_rollup_store import UsageRollupStore
from server.write_behind import WriteBehind
from tests.support.clocks import LeaseClock
from tests.support.tuf_world import TufWorld, online_repository
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

LEASE = timedelta(seconds=30)
START = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
_T = TypeVar("_T")


class _Replicas:
    """Replica a holds the lease; ``take_over()`` lets replica b take it in the database."""

    def __init__(self, storage: Storage) -> None:
        self.clock = LeaseClock(START)
        self.registry = CollectorRegistry()
        self.a = JobLease(
            storage,
            "replica-a",
            LeaseMetrics(self.registry),
            duration=LEASE,
            database_clock=self.clock.database,
            monotonic=self.clock.monotonic,
        )
        self.b = JobLease(
            storage,
            "replica-b",
            LeaseMetrics(CollectorRegistry()),
            duration=LEASE,
            database_clock=self.clock.database,
            monotonic=lambda: 0.0,  # b's belief plays no part here
        )
        assert self.a.tick() is Action.CREATE

    def take_over(self) -> None:
        """The lease expires in the database (a stalled in its run) and b takes it over."""
        self.clock.now += LEASE
        assert self.b.tick() is Action.TAKE_OVER
        assert self.b.token == 2

    def run_as_a(self, job: str, run: Callable[[], _T]) -> _T | None:
        return self.a.guard(job, run)()

    def fenced(self, job: str) -> float:
        value = self.registry.get_sample_value(
            "kioskfleet_job_lease_fenced_writes_total", {"job": job}
        )
        assert value is not None
        return value


@pytest.fixture
def replicas(storage: Storage) -> _Replicas:
    return _Replicas(storage)


def _definition() -> RolloutDefinition:
    return RolloutDefinition(
        rollout_id="r1",
        target="kiosk-agent/1.2.0.tar.gz",
        created_by="alice",
        phases=(Phase(100, "percent"),),
        success_threshold=0.9,
        abort=AbortThreshold(failure_ratio=0.2, min_decided=2),
        terminal_timeout_s=600.0,
    )


def _stored_rollout(storage: Storage) -> tuple[RolloutStore, Rollout, Rollout]:
    """A stored rollout awaiting approval, and the step that approves it."""
    store = RolloutStore(storage)
    rollout = new_rollout(_definition())
    store.insert(rollout, {}, now=START)
    return store, rollout, replace(rollout, status=RolloutStatus.RUNNING, approved_by="bob")


def test_a_holder_whose_lease_was_taken_over_mid_run_cannot_save_a_rollout_step(
    storage: Storage, replicas: _Replicas
) -> None:
    store, rollout, stepped = _stored_rollout(storage)
    later = START + timedelta(seconds=1)

    def tick() -> bool:
        replicas.take_over()  # while the run is under way
        with pytest.raises(FencedOffError):
            store.next_directive_seqs(["T1"])
        return store.save(stepped, wake_at=None, now=later, read_at=START)

    with pytest.raises(FencedOffError) as refused:
        replicas.run_as_a("rollout-tick", tick)
    assert (refused.value.lease, refused.value.token) == ("scheduled-jobs", 1)
    assert replicas.fenced("rollout-tick") == 2
    stored = store.get("r1")
    assert stored is not None
    assert (stored.rollout, stored.updated_at) == (rollout, START)  # nothing written
    assert store.next_directive_seqs(["T1"]) == {"T1": 1}  # none taken; outside a run: no fence
    assert store.save(stepped, wake_at=None, now=later, read_at=START)  # the API's path


def test_a_holder_still_holding_its_lease_saves_as_before(
    storage: Storage, replicas: _Replicas
) -> None:
    store, _rollout, stepped = _stored_rollout(storage)

    def tick() -> bool:
        replicas.clock.now += timedelta(seconds=5)
        assert replicas.a.tick() is Action.RENEW  # a renewal keeps the token: still fenced in
        return store.save(stepped, wake_at=None, now=START, read_at=START)

    assert replicas.run_as_a("rollout-tick", tick) is True
    stored = store.get("r1")
    assert stored is not None
    assert stored.rollout == stepped
    assert replicas.fenced("rollout-tick") == 0


def test_a_fenced_off_retention_run_deletes_nothing_and_stops(
    storage: Storage, replicas: _Replicas
) -> None:
    old = START - timedelta(days=400)
    old_transition = Transition("T1", CONNECTIVITY, CONNECTIVITY, None, "online", old, old)
    storage.write(WriteBatch(transitions=[old_transition]), now=old)
    calls: list[str] = []

    def prune_transitions(*, older_than: timedelta, now: datetime) -> int:
        calls.append("transitions")
        replicas.take_over()  # the lease moves during the run
        return storage.prune_transitions(older_than=older_than, now=now)

    def prune_events(*, older_than: timedelta, now: datetime) -> int:
        calls.append("events")
        return storage.prune_events(older_than=older_than, now=now)

    pruner = RetentionPruner(
        [
            Retention("transitions", prune_transitions, timedelta(days=30)),
            Retention("events", prune_events, timedelta(days=30)),
        ],
        ServerMetrics(CollectorRegistry()),
        clock=lambda: START,
    )
    assert replicas.run_as_a("retention-prune", pruner.run) == {}
    assert calls == ["transitions"]  # the run ended at the first refusal
    assert replicas.fenced("retention-prune") == 1
    assert storage.count_transitions() == 1  # nothing deleted
    assert storage.prune_transitions(older_than=timedelta(days=30), now=START) == 1


def test_a_fenced_off_usage_run_rolls_up_and_samples_nothing(
    storage: Storage, replicas: _Replicas
) -> None:
    store = UsageRollupStore(storage)

    def run() -> None:
        replicas.take_over()
        with pytest.raises(FencedOffError):
            store.add_availability(START, {("h1", "print"): (60.0, 60.0)})
        with pytest.raises(FencedOffError):
            store.roll_up(lambda _t: "h1")

    replicas.run_as_a("usage-rollup", run)
    assert replicas.fenced("usage-rollup") == 2
    assert store.availability(None, None, hall=None) == {}  # nothing added
    assert store.watermark() == 0


def test_the_offline_sweeps_transitions_are_dropped_once_its_lease_was_taken_over(
    storage: Storage, replicas: _Replicas
) -> None:
    writer = WriteBehind(
        storage, lambda _ids: list[TerminalView](), ServerMetrics(CollectorRegistry())
    )

    def offline(terminal_id: str) -> Transition:
        return Transition(
            terminal_id,
            CONNECTIVITY,
            CONNECTIVITY,
            "online",
            "offline",
            START,
            START,
            reason="timeout",
        )

    def sweep() -> None:  # as OfflineSweep.run: the transitions go to the writer
        writer.record("SWEPT", transitions=(offline("SWEPT"),))

    replicas.run_as_a("offline-sweep", sweep)
    writer.record("INGESTED", transitions=(offline("INGESTED"),))  # the ingest's: no fence
    replicas.take_over()  # before the writer's flush
    assert writer.flush()  # the rest of the batch is written; the refusal is no failure
    assert writer.failure is None
    assert replicas.fenced("offline-sweep") == 1
    assert _transition_terminals(storage) == ["INGESTED"]
    assert writer.pending() == (0, 0)  # dropped, not retried


def test_the_offline_sweeps_transitions_are_written_while_its_lease_holds(
    storage: Storage, replicas: _Replicas
) -> None:
    writer = WriteBehind(
        storage, lambda _ids: list[TerminalView](), ServerMetrics(CollectorRegistry())
    )
    t = Transition("SWEPT", CONNECTIVITY, CONNECTIVITY, "online", "offline", START, START)
    replicas.run_as_a("offline-sweep", lambda: writer.record("SWEPT", transitions=(t,)))
    assert writer.flush()
    assert _transition_terminals(storage) == ["SWEPT"]
    assert replicas.fenced("offline-sweep") == 0


def _transition_terminals(storage: Storage) -> list[str]:
    with storage.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT terminal_id FROM transition ORDER BY terminal_id")
            ).scalars()
        )


def test_a_fenced_off_holder_does_not_replace_the_tuf_files(
    tmp_path: Path, storage: Storage, replicas: _Replicas
) -> None:
    now = [START]
    repo = online_repository(
        TufWorld.create(tmp_path / "world"), tmp_path / "server", lambda: now[0]
    )
    service = UpdateService(repo, UpdateMetrics(CollectorRegistry(), repo), 60.0, timedelta(days=1))
    timestamp = repo.metadata_dir / "timestamp.json"
    before = timestamp.read_bytes()
    now[0] = START + timedelta(hours=13)  # the timestamp is due

    def resign() -> list[str]:
        assert current_fence() is not None
        replicas.take_over()
        return service.resign()

    assert replicas.run_as_a("tuf-resign", resign) == []
    assert timestamp.read_bytes() == before
    assert replicas.fenced("tuf-resign") == 1
    assert service.resign() == ["timestamp"]  # outside a run (one replica, no lease): written
    assert timestamp.read_bytes() != before


def test_replica_clocks_a_minute_apart_cannot_make_two_holders(storage: Storage) -> None:
    """Both read the real database clock; each replica's own clock runs a minute from the
    other's (b's jumps ahead between its ticks), which no longer matters."""
    offsets = {"replica-a": 0.0, "replica-b": 60.0}
    base = [0.0]

    def lease(name: str) -> JobLease:
        return JobLease(
            storage,
            name,
            LeaseMetrics(CollectorRegistry()),
            duration=LEASE,
            monotonic=lambda: base[0] + offsets[name],
        )

    a, b = lease("replica-a"), lease("replica-b")
    assert a.tick() is Action.CREATE
    for _ in range(3):
        assert b.tick() is Action.STAND_BY  # the database says a's lease is live
        offsets["replica-b"] += 60.0  # b's clock a minute further ahead at each tick
        assert a.tick() is Action.RENEW
        assert [x.held() for x in (a, b)] == [True, False]
    offsets["replica-a"] += 60.0  # a's own clock jumps a minute ahead: its belief ends early
    assert [x.held() for x in (a, b)] == [False, False]  # never longer than the row
    assert b.tick() is Action.STAND_BY
    assert a.tick() is Action.RENEW
    assert [x.held() for x in (a, b)] == [True, False]
    with storage.engine.connect() as conn:
        holder, token = conn.execute(sa.text("SELECT holder, token FROM job_lease")).one()
    assert (holder, int(token)) == ("replica-a", 1)


def _takeovers_waiting_on_a_lock(storage: Storage) -> int:
    with storage.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query ILIKE 'UPDATE job_lease%'"
                )
            ).scalar_one()
        )


def test_a_takeover_waits_for_a_fenced_write_in_progress_so_it_lands_first(
    postgres_url: str,
) -> None:
    storage = Storage(postgres_url)
    storage.open()
    try:
        replicas = _Replicas(storage)
        _stored_rollout(storage)
        took: list[Action] = []
        other = threading.Thread(target=lambda: took.append(replicas.b.tick()))

        def tick() -> None:
            with storage.begin("save rollout") as conn:  # the fence check holds the lease row
                conn.execute(sa.text("UPDATE rollout SET approved_by = 'bob' WHERE id = 'r1'"))
                replicas.clock.now += LEASE  # the lease expires; b tries to take it over
                other.start()
                wait_until(
                    lambda: _takeovers_waiting_on_a_lock(storage), 10, "b's takeover waiting"
                )
                assert took == []
            # committed: b's compare-and-set goes on against the row as a left it

        replicas.run_as_a("rollout-tick", tick)
        other.join(timeout=10)
        assert took == [Action.TAKE_OVER]
        with storage.engine.connect() as conn:
            approved = conn.execute(sa.text("SELECT approved_by FROM rollout")).scalar_one()
        assert approved == "bob"  # a's write landed, before the takeover
        assert replicas.fenced("rollout-tick") == 0
    finally:
        storage.close()
