"""The ingest gate: enrolled ids only, a token bucket per terminal, bounded memory."""

from __future__ import annotations

import pytest

from server.ingest_gate import RATE_LIMITED, UNKNOWN_TERMINAL, IngestGate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Directory:
    def __init__(self, *active: str) -> None:
        self.active = set(active)

    def is_active(self, terminal_id: str) -> bool:
        return terminal_id in self.active


def test_a_burst_passes_then_the_bucket_refills_at_the_rate() -> None:
    clock = Clock()
    gate = IngestGate(rate_per_s=2.0, burst=5, clock=clock)
    assert [gate.admit("T-1") for _ in range(6)] == [None] * 5 + [RATE_LIMITED]
    clock.now += 1.0  # two tokens back
    assert [gate.admit("T-1") for _ in range(3)] == [None, None, RATE_LIMITED]
    clock.now += 1000.0  # never more than the burst
    assert [gate.admit("T-1") for _ in range(6)] == [None] * 5 + [RATE_LIMITED]


def test_one_terminal_spending_its_budget_leaves_the_others_theirs() -> None:
    gate = IngestGate(rate_per_s=1.0, burst=3, clock=Clock())
    for _ in range(10):
        gate.admit("flooder")
    assert gate.admit("flooder") == RATE_LIMITED
    assert gate.admit("quiet") is None


def test_ids_the_directory_does_not_know_are_refused_and_never_remembered() -> None:
    directory = Directory("T-1")
    gate = IngestGate(rate_per_s=1.0, burst=3, clock=Clock(), directory=directory)
    assert gate.admit("T-1") is None
    assert all(gate.admit(f"FAKE-{i}") == UNKNOWN_TERMINAL for i in range(1000))
    assert len(gate) == 1
    directory.active.discard("T-1")  # revoked
    assert gate.admit("T-1") == UNKNOWN_TERMINAL
    assert len(gate) == 0


def test_without_a_directory_memory_is_bounded_by_max_buckets() -> None:
    gate = IngestGate(rate_per_s=1.0, burst=1, clock=Clock(), max_buckets=100)
    for i in range(10_000):
        assert gate.admit(f"T-{i}") is None
    assert len(gate) == 100


def test_forget_drops_a_terminals_bucket() -> None:
    gate = IngestGate(rate_per_s=1.0, burst=1, clock=Clock())
    assert gate.admit("T-1") is None
    assert gate.admit("T-1") == RATE_LIMITED
    gate.forget("T-1")
    assert gate.admit("T-1") is None


@pytest.mark.parametrize(("rate", "burst", "buckets"), [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_impossible_limits_are_refused(rate: float, burst: int, buckets: int) -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        IngestGate(rate_per_s=rate, burst=burst, clock=Clock(), max_buckets=buckets)
