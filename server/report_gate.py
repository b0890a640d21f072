"""How many hall reports one process renders at a time, and the last one kept for a while.

A report render (``server.hall_report_service``) reads a week of rollups, draws charts
with matplotlib and lays out a PDF with WeasyPrint: about a core for a second. A viewer
asking for many at once could take every worker thread and core of the server, so
``RenderGate.run`` lets at most ``ReportLimits.concurrent`` renders run together in this
process and refuses one more at once (``ReportsBusyError``: the API and the console answer
429 with ``Retry-After``), never queues it. The last rendered answer is kept for
``ReportLimits.cache_s`` seconds under its key (hall, week, format, language) and handed
out again without rendering, even while the gate is full: one entry, so the memory it
holds is one report's. Each call is counted in ``kioskfleet_hall_report_renders_total``
by ``result`` (``rendered``, ``cached``, ``refused``). Knows nothing of reports itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter

from server.errors import ReportsBusyError

__all__ = ["RESULTS", "RenderGate", "ReportLimits"]

RESULTS: Final = ("rendered", "cached", "refused")


@dataclass(frozen=True, slots=True)
class ReportLimits:
    """Renders at once per process (settings ``report_renders_max``), how long the last
    answer is kept (``report_cache_s``; 0: not at all) and the ``Retry-After`` of a
    refusal."""

    concurrent: int = 2
    cache_s: float = 60.0
    retry_after_s: int = 5


class RenderGate:
    """Bounds concurrent renders and keeps the last answer (module docstring). Thread-safe:
    renders run in the server's worker threads."""

    def __init__(
        self,
        limits: ReportLimits,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._slots = threading.BoundedSemaphore(limits.concurrent)
        self._lock = threading.Lock()
        self._last: tuple[Hashable, float, bytes] | None = None  # key, rendered at, body
        self._renders = Counter(
            "kioskfleet_hall_report_renders",
            "Hall report requests by result (rendered, cached, refused: the gate was full)",
            ["result"],
            registry=registry,
        )
        for result in RESULTS:  # every series exists from the start (rate() needs a zero)
            self._renders.labels(result)

    def run(self, key: Hashable, render: Callable[[], bytes]) -> bytes:
        """``render()``'s bytes, or the kept ones of ``key`` while fresh. Raises
        ReportsBusyError when ``concurrent`` renders are running, and what ``render``
        raises."""
        with self._lock:
            last = self._last
        if last is not None and last[0] == key and self._clock() - last[1] < self._limits.cache_s:
            self._renders.labels("cached").inc()
            return last[2]
        if not self._slots.acquire(blocking=False):
            self._renders.labels("refused").inc()
            raise ReportsBusyError(self._limits.concurrent, self._limits.retry_after_s)
        try:
            body = render()
        finally:
            self._slots.release()
        self._renders.labels("rendered").inc()
        if self._limits.cache_s > 0:
            with self._lock:
                self._last = (key, self._clock(), body)
        return body
