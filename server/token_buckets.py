"""Token buckets by key, bounded: the per-terminal message budget of the ingest gate and the
per-address budget of refused attempts in the audit log.

Each key has a bucket of ``burst`` tokens refilled at ``rate_per_s``; ``take`` spends one.
A new key starts full. At most ``max_keys`` buckets are kept, the least recently used
going first, so memory is bounded whatever the number of keys. Pure: the clock is
injected (monotonic seconds); no lock (callers that share one across threads hold theirs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

__all__ = ["TokenBuckets"]


class TokenBuckets:
    """See the module docstring."""

    def __init__(
        self, *, rate_per_s: float, burst: float, clock: Callable[[], float], max_keys: int
    ) -> None:
        """Raises ValueError for a rate, burst or key count that is not positive."""
        if rate_per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate_per_s > 0, burst >= 1 and max_keys >= 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._max = max_keys
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, at]

    def take(self, key: str) -> bool:
        """Spend one token of ``key``'s bucket; False (nothing spent) if it has none."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = [self._burst, now]
        else:
            self._buckets.move_to_end(key)
            tokens, at = bucket
            bucket[0] = min(self._burst, tokens + (now - at) * self._rate)
            bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)
