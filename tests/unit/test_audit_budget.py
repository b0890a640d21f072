"""Refused attempts reach the audit log only within a budget per source address; everything
made with valid credentials always does."""

from __future__ import annotations

from datetime import UTC, datetime

from server.audit import AuditEntry, AuditResult, DeniedBudget, MemoryAudit

AT = datetime(2026, 12, 3, tzinfo=UTC)


def _entry(result: AuditResult, source: str | None) -> AuditEntry:
    return AuditEntry(at=AT, actor="anonymous", action="token.create", result=result, source=source)


class Seconds:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_denied_entries_beyond_the_budget_are_counted_not_stored() -> None:
    sink, clock, suppressed = MemoryAudit(), Seconds(), []
    budget = DeniedBudget(sink, rate_per_s=1.0, burst=3, clock=clock,
                          on_suppressed=lambda: suppressed.append(1))  # fmt: skip
    for _ in range(10):
        budget.record(_entry(AuditResult.DENIED, "10.0.0.9"))
    assert (len(sink.entries), len(suppressed)) == (3, 7)
    budget.record(_entry(AuditResult.DENIED, "10.0.0.10"))  # another address has its own
    assert len(sink.entries) == 4
    clock.now += 2.0  # two more refill for the first address
    for _ in range(5):
        budget.record(_entry(AuditResult.DENIED, "10.0.0.9"))
    assert (len(sink.entries), len(suppressed)) == (6, 10)


def test_entries_made_with_credentials_always_pass() -> None:
    sink = MemoryAudit()
    budget = DeniedBudget(sink, rate_per_s=0.001, burst=1, clock=Seconds())
    budget.record(_entry(AuditResult.DENIED, "10.0.0.9"))
    for _ in range(50):
        budget.record(_entry(AuditResult.OK, "10.0.0.9"))
        budget.record(_entry(AuditResult.FAILED, "10.0.0.9"))
    assert len(sink.entries) == 101


def test_memory_stays_bounded_by_the_number_of_sources_remembered() -> None:
    sink = MemoryAudit()
    budget = DeniedBudget(sink, rate_per_s=0.001, burst=1, clock=Seconds(), max_sources=100)
    for n in range(5000):
        budget.record(_entry(AuditResult.DENIED, f"10.1.{n // 256}.{n % 256}"))
    assert len(budget._buckets) == 100
    assert len(sink.entries) == 5000  # each new address gets its first entry in
