"""Rate-limited warnings, so that a flood of garbage cannot fill the disk with log lines.

At most one line per key per interval; the next line that gets through says how
many were suppressed in between. The clock is injected (``time.monotonic`` by
default) so tests need not wait. Thread-safe; never raises out of ``warning``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["ThrottledLog"]


class ThrottledLog:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next_at: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless ``key`` logged within the interval; True if it was logged."""
        now = self._clock()
        with self._lock:
            if now < self._next_at.get(key, float("-inf")):
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._next_at[key] = now + self._interval
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg += " (%d similar lines suppressed)"
            args = (*args, suppressed)
        self._logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)
