"""Which broker the next connection attempt goes to, and how long it waits: the failover core.

An agent may name several brokers (``broker_urls``: the nodes of one cluster,
or separate brokers that one server listens on). Its connection walks them
round robin: after a failed attempt or a lost session the next attempt goes to
the next broker in the list, wrapping at its end. Each terminal starts at its
own offset, ``start_offset(terminal_id, count)`` (a stable hash of the id), so
a fleet spreads over the nodes and a given terminal always starts at the same
one.

The wait between attempts:

- within a round (not every broker tried yet since the round began) the next
  broker is tried after a *hop*, ``uniform(0, reconnect_min_s)``: a node's
  whole fleet moves on at once but does not land on the next node in the same
  millisecond;
- after a full round (every broker failed once) the wait is the agent's
  reconnect backoff, exponential in the number of failed rounds with full
  jitter, ``uniform(min, min(max, min * 2**rounds))``. A round holds at most
  ``count`` attempts, so a fleet whose brokers all fail never loops hot.

A session that stayed up for ``stable_connection_s`` ends the count of failed
rounds: its loss starts a fresh round (its failure is that round's first). A
session that drops sooner is a failed attempt like any other. With a single
broker every failure completes a round: the backoff is exactly the one-broker
agent's.

Pure: no socket, no clock, no randomness of its own (``uniform`` is passed in),
nothing logged. ``agent.mqtt_connection`` holds a ``Rotation`` and acts on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

__all__ = ["MAX_BROKERS", "Retry", "Rotation", "retry_delay", "start_offset"]

MAX_BROKERS: Final = 16
"""The most brokers an agent may name (a cluster's nodes, not a fleet's address book)."""

# 2.0 ** n overflows a float beyond n = 1023; long before that the backoff is at its maximum.
_MAX_DOUBLINGS: Final = 1000


def start_offset(terminal_id: str, count: int) -> int:
    """The index of the broker ``terminal_id`` tries first among ``count``: the first eight
    bytes of the SHA-256 of the id, modulo ``count`` (stable across processes and versions,
    unlike ``hash()``). Raises ValueError unless ``1 <= count <= MAX_BROKERS``."""
    if not 1 <= count <= MAX_BROKERS:
        raise ValueError(f"count must be from 1 to {MAX_BROKERS}, not {count}")
    digest = hashlib.sha256(terminal_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True, slots=True)
class Retry:
    """What follows a failure: the rotation after it, and whether a full round just ended
    (then the wait is the backoff for ``rotation.rounds`` failed rounds, else a hop)."""

    rotation: Rotation
    full_round: bool


@dataclass(frozen=True, slots=True)
class Rotation:
    """Where a connection stands among ``count`` brokers.

    ``index`` is the broker of the current (or next) attempt, ``failed_in_round``
    how many attempts of the current round failed (always below ``count``), and
    ``rounds`` how many full rounds failed since the last stable session.
    """

    count: int
    index: int
    failed_in_round: int = 0
    rounds: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_BROKERS:
            raise ValueError(f"count must be from 1 to {MAX_BROKERS}, not {self.count}")
        if not 0 <= self.index < self.count or not 0 <= self.failed_in_round < self.count:
            raise ValueError("index and failed_in_round must lie in 0..count-1")
        if self.rounds < 0:
            raise ValueError("rounds must not be negative")

    @classmethod
    def first(cls, terminal_id: str, count: int) -> Rotation:
        """The rotation before a terminal's first attempt: at its own offset, nothing failed.
        Raises ValueError unless ``1 <= count <= MAX_BROKERS``."""
        return cls(count=count, index=start_offset(terminal_id, count))

    def failed(self, *, stable: bool = False) -> Retry:
        """The attempt at ``index`` failed, or its session was lost (``stable``: after
        ``stable_connection_s`` or more): move on to the next broker."""
        current = replace(self, failed_in_round=0, rounds=0) if stable else self
        failed = current.failed_in_round + 1
        index = (current.index + 1) % current.count
        if failed < current.count:
            return Retry(replace(current, index=index, failed_in_round=failed), full_round=False)
        rotation = replace(current, index=index, failed_in_round=0, rounds=current.rounds + 1)
        return Retry(rotation, full_round=True)


def retry_delay(
    retry: Retry, min_s: float, max_s: float, uniform: Callable[[float, float], float]
) -> float:
    """Seconds to wait before the attempt ``retry`` leads to: a hop ``uniform(0, min_s)``
    within a round; after a full round the backoff ``uniform(min_s, cap)`` with
    ``cap = min(max_s, min_s * 2**rounds)`` (never below ``min_s``)."""
    if not retry.full_round:
        return uniform(0.0, min_s)
    doublings = min(retry.rotation.rounds, _MAX_DOUBLINGS)
    cap = min(max_s, min_s * 2.0**doublings)
    return uniform(min_s, max(min_s, cap))
