"""The clock port: where the agent learns what time it is.

The agent core and the scenario probes never read the system clock themselves;
they are handed a ``Clock`` so that tests can drive time by hand. This module
never sleeps and never schedules anything.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "FakeClock", "OffsetClock", "SystemClock"]


class Clock(Protocol):
    """Two readings of time: one for intervals, one for timestamps on the wire."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for intervals and deadlines)."""
        ...

    def wall(self) -> datetime:
        """The current UTC time, timezone-aware (for ``sent_at``)."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``datetime.now(UTC)``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.now(UTC)


class OffsetClock:
    """Another clock's readings with its wall time moved by ``offset_s`` seconds (may be
    negative): a simulated terminal whose clock says another day, running at real speed.
    Monotonic time is the other clock's, unchanged."""

    def __init__(self, base: Clock, offset_s: float) -> None:
        self._base = base
        self._offset = timedelta(seconds=offset_s)

    def monotonic(self) -> float:
        return self._base.monotonic()

    def wall(self) -> datetime:
        return self._base.wall() + self._offset


class FakeClock:
    """A clock that moves only when told to; wall time follows monotonic time."""

    def __init__(
        self,
        start: float = 1000.0,
        wall_start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    ) -> None:
        self._start = start
        self._now = start
        self._wall_start = wall_start

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> datetime:
        return self._wall_start + timedelta(seconds=self._now - self._start)

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` and return the new monotonic reading.

        Raises ValueError for a negative step: this clock never goes backwards.
        """
        if seconds < 0:
            raise ValueError("a clock never goes backwards")
        self._now += seconds
        return self._now
