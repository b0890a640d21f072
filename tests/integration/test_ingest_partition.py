"""One writer per terminal across replicas (``ingest_ownership = "partition"``) on SQLite
and PostgreSQL.

- ``IngestMembership`` on the real table with a test clock: replicas see each other, one
  silent for a TTL drops out, long-dead rows are deleted, a graceful leave is seen at the
  next heartbeat, a replica whose heartbeats fail believes itself out after a TTL.
- Two whole servers in this process on one database, each fed every message (as every
  replica on nats-server is): each terminal is written and confirmed by exactly one of
  them, its owner; the other only applies it. Then one is cut off from the database for
  good (its heartbeats and flushes fail: dead, as far as the others can tell) after it
  received messages it never committed; the survivor takes its terminals over, reloads
  them with the open gap the dead one had stored (seq 6, which no replica received), and
  the agents' re-sends (the test plays the agent: it re-sends what no ``kf.committed``
  covers and what the newest lists missing) are applied, not taken for duplicates, and
  fill that gap: every row ends exactly at the stream the terminals sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from protocol.codec import encode
from protocol.committed import Committed, decode_committed
from protocol.topics import Channel, parse_topic, topic
from server.config import Settings
from server.errors import StorageError
from server.in_memory_source import InMemorySource
from server.main import Server
from server.membership import IngestMembership, MembershipMetrics
from server.ownership import Ownership, owner_of
from server.storage import Storage
from tests.support.clocks import LeaseClock
from tests.support.fleet_messages import report
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

TTL = timedelta(seconds=10)


class _NoFleet:
    def ids(self) -> list[str]:
        return []

    def reload(self, terminal_ids: object, views: object, gaps: object) -> None:
        raise AssertionError("nothing to reload")


class _Intake:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _member(storage: Storage, name: str, clock: LeaseClock) -> IngestMembership:
    own = Ownership(name, grace_s=1.0, clock=clock.monotonic)
    return IngestMembership(
        storage,
        own,
        _NoFleet(),
        MembershipMetrics(CollectorRegistry(), own),
        ttl=TTL,
        applying=_Intake,
        database_clock=clock.database,
        monotonic=clock.monotonic,
    )


def _rows(storage: Storage) -> set[str]:
    with storage.engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT member FROM ingest_member")).scalars())


def test_replicas_see_each_other_and_drop_one_silent_for_a_ttl(storage: Storage) -> None:
    clock = LeaseClock()
    a, b = _member(storage, "a", clock), _member(storage, "b", clock)
    assert a.tick() == {"a"}
    assert b.tick() == {"a", "b"}
    assert a.tick() == {"a", "b"}
    clock.now += TTL  # a heartbeats no more: expired at exactly its TTL
    assert b.tick() == {"b"}
    assert _rows(storage) == {"a", "b"}  # kept for one TTL more
    clock.now += TTL
    b.tick()
    assert _rows(storage) == {"b"}
    assert a.tick() == {"a", "b"}  # back: a member again (a new epoch for both)


def test_a_graceful_leave_is_seen_at_the_next_heartbeat(storage: Storage) -> None:
    clock = LeaseClock()
    a, b = _member(storage, "a", clock), _member(storage, "b", clock)
    a.tick()
    b.tick()
    a.leave()
    assert _rows(storage) == {"b"}
    assert b.tick() == {"b"}


def test_a_replica_whose_heartbeats_fail_believes_itself_out_after_a_ttl(
    database_url: str,
) -> None:
    clock = LeaseClock()
    storage = Storage(database_url)
    storage.open()
    a = _member(storage, "a", clock)
    assert a.tick() == {"a"}
    storage.close()  # every heartbeat fails from now on
    clock.now += TTL / 2
    assert a.tick() == {"a"}  # within its belief
    clock.now += TTL / 2
    assert a.tick() == frozenset()


# --- two servers on one database ------------------------------------------------------------

TERMINALS = [f"kiosk-{i:02d}" for i in range(16)]


def _settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "http_port": 0,
        "db_flush_interval_s": 0.05,
        "offline_check_interval_s": 0.2,
        "ingest_ownership": "partition",
        "ingest_heartbeat_interval_s": 0.1,
        "ingest_member_ttl_s": 0.6,
        "job_lease_duration_s": 2.0,
        "job_lease_renew_interval_s": 0.25,
    }
    values.update(overrides)
    return Settings(**values)


def _confirmations(source: InMemorySource) -> dict[str, Committed]:
    """Each terminal's ``kf.committed`` from this server with the highest seq (the last
    of those: its missing ranges are the newest)."""
    out: dict[str, Committed] = {}
    for name, payload in list(source.published):
        terminal_id, channel = parse_topic(name)
        if channel is Channel.CMD:
            committed = decode_committed(payload)
            if terminal_id not in out or committed.seq >= out[terminal_id].seq:
                out[terminal_id] = committed
    return out


def _confirmed(source: InMemorySource) -> dict[str, int]:
    """The highest seq each terminal's ``kf.committed`` from this server named."""
    return {tid: c.seq for tid, c in _confirmations(source).items()}


def _stored(database_url: str) -> dict[str, tuple[int, int, int]]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT id, last_seq, reports_received, seq_gaps FROM terminal")
            ).all()
    finally:
        engine.dispose()
    return {tid: (seq, reports, gaps) for tid, seq, reports, gaps in rows}


def _send(sources: list[InMemorySource], tid: str, seq: int) -> None:
    for source in sources:
        source.deliver(topic(tid, Channel.REPORT), encode(report(tid, seq)))


def _agents_resend(database_url: str, sources: list[InMemorySource], last: int) -> bool:
    """What the agents do on their confirmation timeout and on a gap list: re-send, to
    every replica, each seq up to ``last`` no ``kf.committed`` covers yet or the newest
    lists missing. True once every row is at ``last`` with each report counted once and
    no gap."""
    newest: dict[str, Committed] = {}
    for source in sources:
        for tid, committed in _confirmations(source).items():
            if tid not in newest or committed.seq >= newest[tid].seq:
                newest[tid] = committed
    for tid in TERMINALS:
        newest_of = newest.get(tid)
        covered = 0 if newest_of is None else newest_of.seq
        missing = (
            []
            if newest_of is None
            else [seq for first, end in newest_of.missing for seq in range(first, end + 1)]
        )
        for seq in [*missing, *range(covered + 1, last + 1)]:
            _send(sources, tid, seq)
    return _stored(database_url) == dict.fromkeys(TERMINALS, (last, last, 0))


@pytest.fixture
def two_servers(database_url: str) -> Iterator[tuple[Server, Server, list[InMemorySource]]]:
    built: list[InMemorySource] = []
    with ExitStack() as stack:
        servers = []
        for _ in range(2):
            server = Server(
                _settings(database_url), CollectorRegistry(), source=InMemorySource.factory(built)
            )
            server.start()
            stack.callback(server.stop)
            servers.append(server)
        yield servers[0], servers[1], built


def _settled(server: Server, members: set[str]) -> bool:
    own = server.ownership
    assert own is not None
    return own.members == members and not own.in_grace()


@pytest.mark.slow
def test_each_terminal_is_written_by_its_owner_only_and_a_dead_replicas_are_taken_over(
    database_url: str, two_servers: tuple[Server, Server, list[InMemorySource]]
) -> None:
    a, b, sources = two_servers
    ids = {a.replica_id, b.replica_id}
    wait_until(lambda: _settled(a, ids) and _settled(b, ids), 10, "both replicas members")

    for seq in range(1, 6):
        for tid in TERMINALS:
            _send(sources, tid, seq)
    owners = {tid: owner_of(tid, ids) for tid in TERMINALS}
    assert set(owners.values()) == ids  # both own some (16 terminals, two members)
    # a first message is a hand-over (nobody wrote the terminal yet): re-sends follow
    wait_until(lambda: _agents_resend(database_url, sources, 5), 20, "every row at seq 5")
    wait_until(
        lambda: all(max(_confirmed(s).values(), default=0) for s in sources),
        10,
        "confirmations from both",
    )
    by = {a.replica_id: _confirmed(sources[0]), b.replica_id: _confirmed(sources[1])}
    for tid, owner in owners.items():  # confirmed by the owner only: written by it only
        assert [r for r, confirmed in by.items() if tid in confirmed] == [owner]
    assert a.ownership is not None
    assert b.ownership is not None
    assert a.ownership.owned() + b.ownership.owned() == len(TERMINALS)
    for server in (a, b):
        assert server.metrics.ingest_not_owned._value.get() > 0

    # seq 6 reaches no replica: each owner counts and stores an open gap, and lists it
    for tid in TERMINALS:
        _send(sources, tid, 7)
    gapped = dict.fromkeys(TERMINALS, (7, 6, 1))
    wait_until(lambda: _stored(database_url) == gapped, 20, "every row at 7, 6 missing")
    # a is cut off from the database for good: its flushes and heartbeats fail from now on
    a.storage.close()
    for tid in TERMINALS:  # both receive it; a owns some, which it never commits
        _send(sources, tid, 8)
    wait_until(
        lambda: (
            b.ownership is not None
            and b.ownership.owned() == len(TERMINALS)
            and not b.ownership.in_grace()
        ),
        20,
        "b took every terminal over",
    )
    taken = [tid for tid, owner in owners.items() if owner == a.replica_id]
    stored = _stored(database_url)
    assert all(stored[tid] == (7, 6, 1) for tid in taken)  # a committed neither 6 nor 8

    wait_until(
        lambda: _agents_resend(database_url, sources[1:], 8),
        20,
        "every row at seq 8, the gap a listed filled, nothing counted twice or lost",
    )
    wait_until(
        lambda: all(_confirmed(sources[1]).get(tid) == 8 for tid in TERMINALS),
        10,
        "b confirms every terminal",
    )
    with pytest.raises(StorageError):
        a.storage.load_fleet()
