"""What the paper forecast needs, kept per terminal in memory, and the forecasts made from it.

The ingest feeds ``PaperTracker``: every accepted ``kf.usage`` with pages
(``note_usage``, at the message's ``sent_at``) and every condition change of a printer
(``note_transition``, the fleet state's transitions, first sightings included). Each
terminal has one ``server.paper_forecast.PrinterHistory`` (at most a week of hourly page
counts and a few instants and counts): memory follows the fleet, never the traffic. A
terminal's pages go to its printer; a terminal with two printers is tracked by the first
one whose condition change the server saw (``kf.usage`` does not say which printer
printed).

``refresh(now)`` is the scheduled job (``paper_forecast_interval_s``): it recomputes every
forecast (``roll_pages(terminal_id)`` gives the roll of the terminal's model) and drops the
histories of terminals silent for longer than ``retention`` (their state would be stale),
so a decommissioned or long-dead terminal leaves nothing behind. Readers (the API, the
metrics collector) get the forecasts of the last refresh.

The state lives in memory only: after a restart a printer's level is unknown until its next
``paper_low`` or refill (docs/analytics.md, "Paper forecasts"). Thread-safe; no I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from protocol.taxonomy import Family, PeripheralCondition, PeripheralKind, family_of
from server.fleet_views import CONNECTIVITY, Transition
from server.paper_forecast import PaperForecast, PrinterHistory, forecast

__all__ = ["PaperTracker"]


def _printer_condition(t: Transition) -> PeripheralCondition | None:
    if t.kind == CONNECTIVITY:
        return None
    try:
        if family_of(PeripheralKind(t.kind)).family is not Family.PRINTER:
            return None
        return PeripheralCondition(t.to_state)
    except (KeyError, ValueError):
        return None


class PaperTracker:
    """Per-terminal printer histories and their latest forecasts (see the module doc)."""

    def __init__(
        self, *, roll_pages: Callable[[str], int], low_share: float, retention: timedelta
    ) -> None:
        """Raises ValueError unless 0 < ``low_share`` < 1 and ``retention`` > 0."""
        if not 0 < low_share < 1 or retention <= timedelta(0):
            raise ValueError("0 < low_share < 1 and retention > 0 are required")
        self._roll_pages = roll_pages
        self._low_share = low_share
        self._retention = retention
        self._lock = threading.Lock()
        self._histories: dict[str, PrinterHistory] = {}
        self._printers: dict[str, str] = {}  # terminal -> the printer tracked
        self._forecasts: dict[str, PaperForecast] = {}

    def note_usage(self, terminal_id: str, at: datetime, pages: int) -> None:
        """``pages`` printed by ``terminal_id`` at ``at``."""
        if pages <= 0:
            return
        with self._lock:
            history = self._histories.get(terminal_id)
            if history is None:
                history = self._histories[terminal_id] = PrinterHistory(first_seen=at)
            history.note_pages(at, pages)

    def note_transition(self, t: Transition) -> None:
        """A condition change; only printers' count, and one printer per terminal."""
        condition = _printer_condition(t)
        if condition is None:
            return
        with self._lock:
            printer = self._printers.setdefault(t.terminal_id, t.subject)
            if printer != t.subject:
                return
            history = self._histories.get(t.terminal_id)
            if history is None:
                history = self._histories[t.terminal_id] = PrinterHistory(first_seen=t.occurred_at)
            history.note_condition(t.occurred_at, condition)

    def forget(self, terminal_id: str) -> None:
        """Drop the terminal's history and forecast (decommissioned)."""
        with self._lock:
            self._histories.pop(terminal_id, None)
            self._printers.pop(terminal_id, None)
            self._forecasts.pop(terminal_id, None)

    def refresh(self, now: datetime) -> int:
        """Recompute every forecast at ``now``; drop histories idle past the retention.
        Returns the number of forecasts. Calls ``roll_pages`` outside the lock."""
        with self._lock:
            idle = [
                tid
                for tid, h in self._histories.items()
                if h.last_change is not None and now - h.last_change > self._retention
            ]
            for tid in idle:
                del self._histories[tid]
                self._printers.pop(tid, None)
            ids = list(self._histories)
        rolls = {tid: self._roll_pages(tid) for tid in ids}
        with self._lock:
            made = {}
            for tid in ids:
                history = self._histories.get(tid)
                if history is None:
                    continue
                got = forecast(history, now, roll_pages=rolls[tid], low_share=self._low_share)
                if got is not None:
                    made[tid] = got
            self._forecasts = made
            return len(made)

    def forecast(self, terminal_id: str) -> PaperForecast | None:
        """The terminal's forecast at the last refresh; None if it has none."""
        with self._lock:
            return self._forecasts.get(terminal_id)

    def forecasts(self) -> dict[str, PaperForecast]:
        """Every forecast of the last refresh, by terminal."""
        with self._lock:
            return dict(self._forecasts)

    def printer(self, terminal_id: str) -> str | None:
        """The name of the printer tracked for the terminal."""
        with self._lock:
            return self._printers.get(terminal_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._histories)
