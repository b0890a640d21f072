"""The ingest's first gate: may this terminal id speak at all, and has it spoken too much?

Runs on the topic's terminal id, before the payload is even decoded, so that
what an unknown or flooding terminal sends costs almost nothing:

- ``unknown_terminal``: the id is not an active enrolled terminal (with a
  directory configured: never enrolled, revoked, decommissioned). Nothing about
  it is kept, so invented ids cannot grow memory.
- ``rate_limited``: the terminal spent its message budget, a token bucket per
  terminal (``rate_per_s`` refill, ``burst`` capacity). Generous for a real
  agent, whose outbox drains a backlog at 20 messages/s with bursts of 50
  (``docs/agent.md``); it keeps one terminal from delaying the others.

Buckets exist only for admitted ids and at most ``max_buckets`` of them (the
least recently used goes first), so memory is bounded even without a
directory. Pure: the clock is injected; no I/O, no lock (the ingest calls it
from one thread).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from server.token_buckets import TokenBuckets

__all__ = ["RATE_LIMITED", "UNKNOWN_TERMINAL", "IngestGate", "TerminalDirectory"]

UNKNOWN_TERMINAL: Final = "unknown_terminal"
RATE_LIMITED: Final = "rate_limited"


class TerminalDirectory(Protocol):
    """Which terminal ids are enrolled and active (the server's registry, or a fake)."""

    def is_active(self, terminal_id: str) -> bool: ...


class IngestGate:
    """Admits or refuses one message by its terminal id; see the module docstring."""

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: float,
        clock: Callable[[], float],
        directory: TerminalDirectory | None = None,
        max_buckets: int = 1_000_000,
    ) -> None:
        """Raises ValueError for a rate, burst or bucket count that is not positive."""
        self._buckets = TokenBuckets(
            rate_per_s=rate_per_s, burst=burst, clock=clock, max_keys=max_buckets
        )
        self._directory = directory

    def admit(self, terminal_id: str) -> str | None:
        """None if the message may be decoded and applied, else the reject reason."""
        if self._directory is not None and not self._directory.is_active(terminal_id):
            self._buckets.forget(terminal_id)
            return UNKNOWN_TERMINAL
        return None if self._buckets.take(terminal_id) else RATE_LIMITED

    def forget(self, terminal_id: str) -> None:
        """Drop the terminal's bucket (it was decommissioned)."""
        self._buckets.forget(terminal_id)

    def __len__(self) -> int:
        return len(self._buckets)
