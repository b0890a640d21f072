"""Clocks a test sets by hand: ``clock.now`` is what the code under test reads."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["T0", "LeaseClock", "WallClock"]

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class WallClock:
    """Aware UTC times, starting at ``start``; move it with ``clock.now += timedelta(...)``."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class LeaseClock(WallClock):
    """The clocks of ``server.job_lease.JobLease``, stepped together: ``database`` (its
    ``database_clock``: ``now``, whatever the connection) and ``monotonic`` (seconds since
    ``start``)."""

    def __init__(self, start: datetime = T0) -> None:
        super().__init__(start)
        self._start = start

    def database(self, _conn: object) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return (self.now - self._start).total_seconds()
