"""The partition of terminals among live replicas (``server.ownership``): the rendezvous
function's properties, the epochs and the hand-over's grace and reload, and the settings
that refuse a partition the agents' re-sends could not make safe."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from server.config import Settings
from server.ownership import Ownership, owner_of

MEMBER = st.text(alphabet="abcdefgh0123456789:-", min_size=1, max_size=12)
TERMINAL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=24)
GRACE = 3.0


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_owner_is_the_same_in_every_process() -> None:
    # Fixed values: a salted hash (Python's hash()) would differ between processes.
    members = {"server-a", "server-b", "server-c"}
    assert [owner_of(f"kiosk-{i}", members) for i in range(6)] == [
        owner_of(f"kiosk-{i}", sorted(members)) for i in range(6)
    ]
    assert [owner_of(f"kiosk-{i}", members) for i in range(6)] == [
        "server-b",
        "server-c",
        "server-a",
        "server-a",
        "server-c",
        "server-b",
    ]
    assert owner_of("kiosk-0", set()) is None


@given(st.sets(MEMBER, min_size=1, max_size=6), st.sets(TERMINAL, min_size=1, max_size=40))
def test_every_terminal_has_exactly_one_owner_among_the_members(
    members: set[str], terminals: set[str]
) -> None:
    for tid in terminals:
        claims = [m for m in members if owner_of(tid, members) == m]
        assert len(claims) == 1


@given(
    st.sets(MEMBER, min_size=2, max_size=6), st.sets(TERMINAL, min_size=1, max_size=60), st.data()
)
def test_removing_a_member_moves_only_its_terminals(
    members: set[str], terminals: set[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(sorted(members)))
    rest = members - {gone}
    for tid in terminals:
        before, after = owner_of(tid, members), owner_of(tid, rest)
        if before != gone:
            assert after == before
        else:
            assert after in rest


@given(st.sets(MEMBER, min_size=1, max_size=6), MEMBER, st.sets(TERMINAL, min_size=1, max_size=60))
def test_a_joining_member_takes_terminals_only_from_the_others_to_itself(
    members: set[str], new: str, terminals: set[str]
) -> None:
    joined = members | {new}
    for tid in terminals:
        after = owner_of(tid, joined)
        assert after in (owner_of(tid, members), new)


def _own(me: str, clock: _Clock) -> Ownership:
    return Ownership(me, grace_s=GRACE, clock=clock)


def _terminal_of(member: str, members: set[str]) -> str:
    return next(f"t{i}" for i in range(1000) if owner_of(f"t{i}", members) == member)


def test_an_own_terminal_is_written_only_after_the_grace_and_its_reload() -> None:
    clock = _Clock()
    own = _own("a", clock)
    assert own.update({"a", "b"})
    tid = _terminal_of("a", {"a", "b"})
    assert not own.writes(tid)  # queued for a reload, not written meanwhile
    assert own.to_reload(lambda: [tid]) == []  # in the grace nobody writes it
    clock.now += GRACE
    assert own.to_reload(lambda: []) == [tid]  # the message queued it
    assert not own.writes(tid)
    assert own.trust([tid], own.epoch) == 1
    assert own.writes(tid)
    assert own.owned() == 1


def test_a_terminal_that_stays_own_across_an_epoch_stays_written_and_one_that_moves_is_not() -> (
    None
):
    clock = _Clock()
    own = _own("a", clock)
    own.update({"a", "b"})
    clock.now += GRACE
    ids = [f"t{i}" for i in range(200)]
    mine = own.to_reload(lambda: ids)  # the epoch's eager reload: every known own terminal
    assert mine == sorted(t for t in ids if owner_of(t, {"a", "b"}) == "a")
    own.trust(mine, own.epoch)
    assert own.update({"a", "b", "c"})  # c joins
    for tid in mine:
        assert own.writes(tid) == (owner_of(tid, {"a", "b", "c"}) == "a")
    assert not any(own.writes(t) for t in ids if owner_of(t, {"a", "b"}) == "b")


def test_a_reload_of_an_earlier_epoch_is_not_trusted() -> None:
    clock = _Clock()
    own = _own("a", clock)
    own.update({"a"})
    clock.now += GRACE
    ids = own.to_reload(lambda: ["t1", "t2"])
    epoch = own.epoch
    own.update({"a", "b"})  # a new epoch while the rows were read
    assert own.trust(ids, epoch) == 0
    assert not own.writes("t1")
    assert not own.writes("t2")


def test_a_replica_out_of_the_set_writes_nothing_and_reloads_again_when_back() -> None:
    clock = _Clock()
    own = _own("a", clock)
    own.update({"a"})
    clock.now += GRACE
    own.trust(own.to_reload(lambda: ["t1"]), own.epoch)
    assert own.writes("t1")
    assert own.update({"b"})  # its own row expired: it is out
    assert own.members == frozenset()
    assert not own.writes("t1")
    own.update({"a"})
    assert not own.writes("t1")  # back: a hand-over again


_UNIVERSE = ("a", "b", "c", "d")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sets(st.sampled_from(_UNIVERSE), min_size=1),
            st.lists(st.floats(0, GRACE * 0.9), min_size=4, max_size=4),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_replicas_that_see_a_change_within_the_grace_never_both_write_a_terminal(
    changes: list[tuple[set[str], list[float]]],
) -> None:
    """Each change of the live set is seen by each live replica after its own lag, shorter
    than the grace; between, every replica reloads what it is handed (as the heartbeat
    does). At no sample do two live replicas write one terminal, and once settled every
    terminal is written by exactly one."""
    clock = _Clock()
    replicas = {m: _own(m, clock) for m in _UNIVERSE}
    terminals = [f"kiosk-{i}" for i in range(40)]
    live: set[str] = set()
    events: list[tuple[float, str, frozenset[str]]] = []
    start = clock.now
    for k, (members, lags) in enumerate(changes):
        at = start + k * 10 * GRACE
        for m, lag in zip(_UNIVERSE, lags, strict=True):
            events.append((at + lag, m, frozenset(members)))
    end = start + len(changes) * 10 * GRACE
    ticks = [start + i * 0.25 for i in range(int((end - start) / 0.25) + 1)]
    idle: frozenset[str] = frozenset()
    timeline = sorted([(t, "", idle) for t in ticks] + events, key=lambda e: e[0])
    for at, who, seen in timeline:
        clock.now = at
        if who:
            if who in seen or who in live:
                replicas[who].update(seen)
            live.discard(who)  # one out of the set stops (dead)
            if who in seen:
                live.add(who)
            continue
        for m in live:
            own = replicas[m]
            own.trust(own.to_reload(lambda: terminals), own.epoch)
        for tid in terminals:
            writers = [m for m in live if replicas[m].writes(tid)]
            assert len(writers) <= 1, (at, tid, writers)
    final = set(changes[-1][0])
    for tid in terminals:
        assert [m for m in final if replicas[m].writes(tid)] == [owner_of(tid, final)]


def test_partition_is_refused_without_confirmations_or_with_a_shared_subscription() -> None:
    assert Settings(ingest_ownership="partition").ingest_ownership == "partition"
    assert Settings().ingest_ownership == "receiver"
    with pytest.raises(ValidationError, match="confirm_commits"):
        Settings(ingest_ownership="partition", confirm_commits=False)
    with pytest.raises(ValidationError, match="shared_subscription"):
        Settings(ingest_ownership="partition", shared_subscription=True)
    with pytest.raises(ValidationError, match="ingest_member_ttl_s"):
        Settings(ingest_heartbeat_interval_s=6.0, ingest_member_ttl_s=10.0)
