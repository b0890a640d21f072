"""The failover core: which broker comes next, from which offset, and how long each wait is."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.broker_rotation import MAX_BROKERS, Retry, Rotation, retry_delay, start_offset


def lowest(low: float, high: float) -> float:
    return low


def highest(low: float, high: float) -> float:
    return high


def walk(rotation: Rotation, failures: int) -> list[Retry]:
    steps = []
    for _ in range(failures):
        retry = rotation.failed()
        steps.append(retry)
        rotation = retry.rotation
    return steps


def test_the_offset_is_a_stable_hash_of_the_terminal_id_not_pythons_salted_hash() -> None:
    # Pinned: the same terminal starts at the same node in every process and version.
    assert [start_offset("TAX-SH-0001", n) for n in (1, 2, 3, 16)] == [0, 1, 2, 7]


def test_a_fleet_spreads_over_the_brokers_by_its_offsets() -> None:
    counts = Counter(start_offset(f"T-{n:05d}", 3) for n in range(3000))
    assert set(counts) == {0, 1, 2}
    assert all(900 <= c <= 1100 for c in counts.values()), counts


@pytest.mark.parametrize("count", [0, MAX_BROKERS + 1])
def test_a_rotation_needs_one_to_sixteen_brokers(count: int) -> None:
    with pytest.raises(ValueError, match="count must be from 1 to 16"):
        Rotation.first("T-1", count)


def test_failures_walk_the_brokers_round_robin_from_the_offset_and_wrap() -> None:
    rotation = Rotation(count=3, index=2)
    steps = walk(rotation, 7)
    assert [s.rotation.index for s in steps] == [0, 1, 2, 0, 1, 2, 0]
    assert [s.full_round for s in steps] == [False, False, True, False, False, True, False]
    assert [s.rotation.rounds for s in steps] == [0, 0, 1, 1, 1, 2, 2]


def test_within_a_round_the_next_broker_follows_after_a_hop_below_the_minimum() -> None:
    hop = Rotation(count=3, index=0).failed()
    assert not hop.full_round
    assert retry_delay(hop, 2.0, 60.0, lowest) == 0.0
    assert retry_delay(hop, 2.0, 60.0, highest) == 2.0


def test_after_each_full_round_the_backoff_doubles_up_to_the_maximum() -> None:
    rounds = [s for s in walk(Rotation(count=2, index=0), 14) if s.full_round]
    caps = [retry_delay(s, 1.0, 20.0, highest) for s in rounds]
    floors = [retry_delay(s, 1.0, 20.0, lowest) for s in rounds]
    assert caps == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0, 20.0]
    assert floors == [1.0] * 7


def test_with_one_broker_every_failure_is_a_full_round_the_one_broker_backoff() -> None:
    steps = walk(Rotation.first("T-1", 1), 4)
    assert all(s.full_round and s.rotation.index == 0 for s in steps)
    assert [retry_delay(s, 1.0, 60.0, highest) for s in steps] == [2.0, 4.0, 8.0, 16.0]


def test_a_stable_session_lost_starts_a_fresh_round_at_the_next_broker() -> None:
    worn = Rotation(count=3, index=1, failed_in_round=2, rounds=5)
    after_stable = worn.failed(stable=True)
    assert after_stable == Retry(Rotation(count=3, index=2, failed_in_round=1), full_round=False)
    after_short = worn.failed()  # a session that dropped soon is one more failed attempt
    assert after_short == Retry(Rotation(count=3, index=2, rounds=6), full_round=True)


def test_the_backoff_stays_finite_after_thousands_of_rounds() -> None:
    retry = Retry(Rotation(count=1, index=0, rounds=5000), full_round=True)
    assert retry_delay(retry, 0.5, 60.0, highest) == 60.0


@given(
    count=st.integers(1, MAX_BROKERS),
    index=st.integers(0, MAX_BROKERS - 1),
    failures=st.integers(1, 200),
)
def test_every_round_tries_each_broker_once_and_ends_in_a_backoff(
    count: int, index: int, failures: int
) -> None:
    start = Rotation(count=count, index=index % count)
    tried = [start.index] + [s.rotation.index for s in walk(start, failures)]
    steps = walk(start, failures)
    for r in range(len(steps) // count):
        assert sorted(tried[r * count : (r + 1) * count]) == list(range(count))
        window = steps[r * count : (r + 1) * count]
        # Never a hot loop: at most count - 1 hops, then a wait of at least the minimum.
        assert [s.full_round for s in window] == [False] * (count - 1) + [True]
        assert retry_delay(window[-1], 0.5, 30.0, lowest) >= 0.5
