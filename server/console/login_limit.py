"""The console's login budget: token buckets per username and per source address.

A login attempt spends one token of the username's bucket and one of the address's
(``server.token_buckets``); with either empty it is refused before any password is
checked, so that guessing costs the attacker time and the server no argon2 work. A
successful login does not refill anything. Thread-safe (one lock); the clock is injected.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import StrEnum

from server.token_buckets import TokenBuckets

__all__ = ["LoginLimiter", "LoginRefusal"]


class LoginRefusal(StrEnum):
    USERNAME = "username"  # too many attempts for this username
    SOURCE = "source"  # too many attempts from this address


class LoginLimiter:
    """See the module docstring."""

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float],
        max_keys: int = 10_000,
    ) -> None:
        """Raises ValueError for a rate, burst or key count that is not positive."""
        self._lock = threading.Lock()
        self._by_user = TokenBuckets(
            rate_per_s=rate_per_s, burst=burst, clock=clock, max_keys=max_keys
        )
        self._by_source = TokenBuckets(
            rate_per_s=rate_per_s, burst=burst, clock=clock, max_keys=max_keys
        )

    def admit(self, username: str, source: str | None) -> LoginRefusal | None:
        """Spend this attempt's tokens; the reason it is refused, None when admitted."""
        with self._lock:
            if not self._by_source.take(source or "-"):
                return LoginRefusal.SOURCE
            if not self._by_user.take(username.lower()):
                return LoginRefusal.USERNAME
        return None
