"""Paper forecasts: when will a terminal's printer run out of paper (issue 14, item 4).

``PrinterHistory`` is what one terminal's printer needs remembered, bounded by
construction: the pages printed per hour over the last ``WINDOW_HOURS`` (one week, at most
168 small entries), the last refill (a transition to ``ok`` after ``paper_low`` or
``paper_out``), the last ``paper_low`` and ``paper_out`` and the pages printed since each,
and what the last full roll and the last ``paper_low`` reserve really held (the pages
between refill and ``paper_out``, and between ``paper_low`` and ``paper_out``).
``note_pages`` and ``note_condition`` change it; ``forecast`` reads it.

``forecast(history, now, roll_pages=..., low_share=...)`` estimates:

- **remaining pages**: while the printer is ``paper_low``, the reserve (the pages seen
  between ``paper_low`` and ``paper_out`` last time, else ``low_share`` x the roll) minus the
  pages printed since ``paper_low``; after a refill, the roll (the last full roll seen, else
  the model's ``roll_pages``) minus the pages since; 0 while ``paper_out``; unknown (no
  forecast) before the first refill or ``paper_low`` is seen.
- **pages per hour by hour of day**: with at least a day of history, the mean of each hour
  of day (UTC) over the days seen, weekdays and weekends apart (a day type not seen yet
  borrows the other's): the printer's own opening-hours shape, so the ETA skips nights and
  closed weekends; with less, one flat rate (pages / hours seen, at least
  ``MIN_HISTORY_H``).
- **ETA to paper_out**: walking the profile forward from ``now`` until the remaining pages
  are used, at most ``HORIZON_H`` ahead (beyond it: no ETA).
- **an interval** (``eta_low_s``, ``eta_high_s``): the ETA again with the rate scaled by
  ``1 ± Z x u``, where ``u`` combines the Poisson error of the pages counted, the Poisson
  error of the pages still to come and the day-to-day spread of daily totals (each day
  against the mean of its day type)
  (docs/analytics.md, "Paper forecasts").

Pure: no I/O, no clock (``now`` is an argument), no logging; times are aware datetimes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from protocol.taxonomy import PeripheralCondition

__all__ = [
    "HORIZON_H",
    "MIN_HISTORY_H",
    "WINDOW_HOURS",
    "PaperForecast",
    "PrinterHistory",
    "Z",
    "forecast",
]

WINDOW_HOURS: Final = 7 * 24
"""Hours of page counts kept per printer (one week)."""
MIN_HISTORY_H: Final = 1.0
"""Below an hour of history there is no rate to speak of: no forecast."""
HORIZON_H: Final = 14 * 24
"""An ETA further than two weeks is not given (the printer is idle or barely used)."""
Z: Final = 1.645
"""The interval's width in standard errors (about 90 % two-sided, for a normal error)."""
_HOUR_S: Final = 3600.0
_DAY_H: Final = 24

_C = PeripheralCondition


def _hour_index(at: datetime) -> int:
    return math.floor(at.timestamp() / _HOUR_S)


@dataclass(slots=True)
class PrinterHistory:
    """One printer's remembered history (see the module doc). Not thread-safe."""

    first_seen: datetime
    condition: PeripheralCondition | None = None
    refilled_at: datetime | None = None
    pages_since_refill: int = 0
    low_at: datetime | None = None
    pages_since_low: int = 0
    out_at: datetime | None = None
    observed_roll_pages: int | None = None
    observed_reserve_pages: int | None = None
    last_change: datetime | None = None
    hourly: dict[int, int] = field(default_factory=dict)  # epoch hour -> pages

    def note_pages(self, at: datetime, pages: int) -> None:
        """``pages`` printed at ``at`` (a ``kf.usage``'s ``sent_at``). Raises ValueError < 0."""
        if pages < 0:
            raise ValueError("pages must be >= 0")
        self.last_change = at if self.last_change is None else max(self.last_change, at)
        if pages == 0:
            return
        hour = _hour_index(at)
        self.hourly[hour] = self.hourly.get(hour, 0) + pages
        oldest = _hour_index(self.last_change) - WINDOW_HOURS
        for stale in [h for h in self.hourly if h <= oldest]:
            del self.hourly[stale]
        if at < self.first_seen:
            self.first_seen = at
        # a late message (an outbox backlog) counts only after what it happened after
        if self.refilled_at is None or at >= self.refilled_at:
            self.pages_since_refill += pages
        if self.low_at is None or at >= self.low_at:
            self.pages_since_low += pages

    def note_condition(self, at: datetime, condition: PeripheralCondition) -> None:
        """The printer reported ``condition`` at ``at`` (a change, or a first sighting)."""
        previous = self.condition
        self.condition = condition
        self.last_change = at if self.last_change is None else max(self.last_change, at)
        if condition is _C.PAPER_LOW and previous is not _C.PAPER_LOW:
            self.low_at, self.pages_since_low = at, 0
        elif condition is _C.PAPER_OUT and previous is not _C.PAPER_OUT:
            if previous is not None and self.refilled_at is not None:
                self.observed_roll_pages = self.pages_since_refill
            if previous is _C.PAPER_LOW and self.low_at is not None:
                self.observed_reserve_pages = self.pages_since_low
            self.out_at = at
        elif condition is _C.OK and previous in (_C.PAPER_LOW, _C.PAPER_OUT):
            self.refilled_at, self.pages_since_refill = at, 0
            self.low_at = None

    def hours_seen(self, now: datetime) -> float:
        """Hours of history behind ``now``, at most a window."""
        return min(max((now - self.first_seen).total_seconds() / _HOUR_S, 0.0), WINDOW_HOURS)


@dataclass(frozen=True, slots=True)
class PaperForecast:
    """When one printer runs out: ``eta_s`` seconds from ``computed_at`` (None: not within
    ``HORIZON_H``), in ``[eta_low_s, eta_high_s]`` (``eta_high_s`` None: beyond the horizon).
    ``basis``: ``out`` (already out), ``reserve`` (paper_low: the reserve is left) or
    ``roll`` (since the refill). ``profile``: ``hour_of_day`` or ``flat``."""

    computed_at: datetime
    remaining_pages: int
    pages_per_hour: float  # mean over the history seen
    eta_s: float | None
    eta_low_s: float | None
    eta_high_s: float | None
    basis: str
    profile: str
    history_h: float

    @property
    def runs_out_at(self) -> datetime | None:
        return None if self.eta_s is None else self.computed_at + timedelta(seconds=self.eta_s)


def _remaining(history: PrinterHistory, roll_pages: int, low_share: float) -> tuple[int, str]:
    if history.condition is _C.PAPER_OUT:
        return 0, "out"
    if history.condition is _C.PAPER_LOW and history.low_at is not None:
        reserve = history.observed_reserve_pages
        if reserve is None:
            reserve = round(low_share * roll_pages)
        return max(reserve - history.pages_since_low, 0), "reserve"
    if history.refilled_at is not None:
        roll = history.observed_roll_pages or roll_pages
        return max(roll - history.pages_since_refill, 0), "roll"
    return -1, "unknown"


def _day_type(hour: int) -> int:
    """1 for an hour of a Saturday or Sunday (UTC), else 0 (1970-01-01 was a Thursday)."""
    return 1 if (hour // _DAY_H + 3) % 7 >= 5 else 0


def _profile(
    history: PrinterHistory, now: datetime
) -> tuple[list[float], str, float, float] | None:
    """Pages per hour for each (day type, hour of day) (UTC): 48 rates, weekdays first; its
    kind; the day-to-day spread (cv); the pages counted. None under ``MIN_HISTORY_H``."""
    seen_h = history.hours_seen(now)
    if seen_h < MIN_HISTORY_H:
        return None
    newest = _hour_index(now)
    counts = {h: n for h, n in history.hourly.items() if newest - WINDOW_HOURS < h <= newest}
    total = float(sum(counts.values()))
    if seen_h < _DAY_H:
        return [total / seen_h] * (2 * _DAY_H), "flat", 0.0, total
    # each slot: its pages over the full hours seen, divided by how often it was seen
    start = max(_hour_index(history.first_seen) + 1, newest - WINDOW_HOURS + 1)
    seen = [0] * (2 * _DAY_H)
    sums = [0.0] * (2 * _DAY_H)
    for h in range(start, newest):
        slot = _day_type(h) * _DAY_H + h % _DAY_H
        seen[slot] += 1
        sums[slot] += counts.get(h, 0)
    rates = []
    for slot in range(2 * _DAY_H):
        other = (slot + _DAY_H) % (2 * _DAY_H)  # a day type not seen yet: like the other
        if seen[slot]:
            rates.append(sums[slot] / seen[slot])
        elif seen[other]:
            rates.append(sums[other] / seen[other])
        else:
            rates.append(0.0)
    # full days behind now: how much a day differs from the mean of its day type
    days: list[tuple[int, float]] = []
    for d in range((newest - start) // _DAY_H):
        first = newest - (d + 1) * _DAY_H
        days.append(
            (
                _day_type(first + _DAY_H // 2),
                float(sum(counts.get(first + k, 0) for k in range(_DAY_H))),
            )
        )
    means = {}
    for kind in (0, 1):
        totals = [x for t, x in days if t == kind]
        means[kind] = sum(totals) / len(totals) if totals else 0.0
    spread = [x / means[t] - 1 for t, x in days if means[t] > 0]
    cv = math.sqrt(sum(r * r for r in spread) / (len(spread) - 1)) if len(spread) >= 2 else 0.0
    return rates, "hour_of_day", cv, total


def _eta_s(rates: list[float], now: datetime, pages: float) -> float | None:
    """Seconds from ``now`` until ``pages`` are printed at ``rates`` (per day type and hour)."""
    if pages <= 0:
        return 0.0
    t = now.timestamp()
    elapsed = 0.0
    left = pages
    while elapsed < HORIZON_H * _HOUR_S:
        hour = math.floor(t / _HOUR_S)
        span = (hour + 1) * _HOUR_S - t  # seconds to the end of this hour
        rate = rates[_day_type(hour) * _DAY_H + hour % _DAY_H] / _HOUR_S  # pages per second
        if rate > 0 and rate * span >= left:
            return elapsed + left / rate
        left -= rate * span
        elapsed += span
        t += span
    return None


def forecast(
    history: PrinterHistory, now: datetime, *, roll_pages: int, low_share: float
) -> PaperForecast | None:
    """The printer's forecast at ``now``; None while its paper level is unknown (no refill
    or paper_low seen yet) or its history is shorter than ``MIN_HISTORY_H``.

    Raises ValueError unless ``roll_pages`` >= 1 and 0 < ``low_share`` < 1.
    """
    if roll_pages < 1 or not 0 < low_share < 1:
        raise ValueError("roll_pages must be >= 1 and 0 < low_share < 1")
    remaining, basis = _remaining(history, roll_pages, low_share)
    if remaining < 0:
        return None
    profile = _profile(history, now)
    if profile is None:
        return None
    rates, kind, cv, counted = profile
    seen_h = history.hours_seen(now)
    per_hour = counted / seen_h
    if remaining == 0:
        return PaperForecast(now, 0, per_hour, 0.0, 0.0, 0.0, basis, kind, seen_h)
    u = math.sqrt(1 / max(counted, 1.0) + 1 / remaining + cv**2)
    fast = [r * (1 + Z * u) for r in rates]
    slow = [r * max(1 - Z * u, 0.1) for r in rates]
    eta = _eta_s(rates, now, remaining)
    return PaperForecast(
        computed_at=now,
        remaining_pages=remaining,
        pages_per_hour=per_hour,
        eta_s=eta,
        eta_low_s=_eta_s(fast, now, remaining),
        eta_high_s=_eta_s(slow, now, remaining),
        basis=basis,
        profile=kind,
        history_h=seen_h,
    )
