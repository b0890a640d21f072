"""Which replica writes a terminal: the rendezvous partition of the live replicas, and the
hand-over's epochs (docs/scale-out.md, "One writer per terminal on nats-server").

- ``owner_of``: the pure core. The owner of a terminal among a set of members is the
  member with the highest BLAKE2b weight of ``(member, terminal)`` (rendezvous hashing):
  every terminal has exactly one owner among the members, a member leaving moves only its
  own terminals, a member joining takes terminals only from the others.
- ``Ownership``: one replica's belief about the partition. ``update`` sets the live set
  as last read (a different set is a new epoch); ``writes`` says whether this replica
  writes a terminal now: it must own it AND trust its fleet state of it, which it does
  only after reloading the terminal's row from the database in the current epoch
  (``to_reload``, then ``trust``), and never before ``grace_s`` after the epoch began (the
  old owner's batch commits first). A terminal that stayed this replica's across an
  epoch change stays trusted.

Pure: no I/O, no lock, no clock but the ``clock`` passed in (monotonic seconds). Not
thread-safe: the server calls every method holding the batched writer's intake lock
(``WriteBehind.applying``), the lock the ingest already holds while it claims a message.
Bounded: the sets it keeps hold terminal ids the fleet state holds too, each capped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable
from typing import Final

__all__ = ["Ownership", "owner_of"]

_MAX_CACHED: Final = 2_000_000  # ids known not to be this replica's, per epoch
_MAX_WANTED: Final = 200_000  # own ids waiting for a reload (drained every heartbeat)


def _weight(member: str, terminal_id: str) -> bytes:
    # A separator no id contains keeps ("ab", "c") and ("a", "bc") apart.
    return hashlib.blake2b(
        f"{member}\x00{terminal_id}".encode(), digest_size=8, usedforsecurity=False
    ).digest()


def owner_of(terminal_id: str, members: Collection[str]) -> str | None:
    """The member that owns ``terminal_id`` (None when there is no member). The same on
    every replica for the same set: the weights are a hash of the ids alone."""
    if not members:
        return None
    return max(members, key=lambda m: (_weight(m, terminal_id), m))


class Ownership:
    """This replica's partition belief; see the module docstring."""

    def __init__(self, me: str, *, grace_s: float, clock: Callable[[], float]) -> None:
        """``me``: this replica's member id; ``grace_s``: how long after a new epoch a
        terminal that became this replica's is written by nobody. Raises ValueError for a
        negative grace."""
        if grace_s < 0:
            raise ValueError("grace_s must not be negative")
        self._me = me
        self._grace = grace_s
        self._clock = clock
        self._members: frozenset[str] = frozenset()
        self._epoch = 0
        self._began = clock()
        self._trusted: set[str] = set()  # own terminals reloaded in this epoch or before it
        self._not_mine: set[str] = set()  # cache: owned by another member in this epoch
        self._wanted: set[str] = set()  # own, not trusted, a message came: reload them
        self._swept = True  # the epoch's eager reload was handed out

    @property
    def me(self) -> str:
        return self._me

    @property
    def members(self) -> frozenset[str]:
        """The live set as last read (empty: this replica believes itself out of it)."""
        return self._members

    @property
    def epoch(self) -> int:
        """Grows by one at every change of the live set."""
        return self._epoch

    def owned(self) -> int:
        """How many terminals this replica writes now (owned and reloaded)."""
        return len(self._trusted)

    def update(self, members: Iterable[str]) -> bool:
        """The live set as read now; without ``me`` in it this replica owns nothing. True
        if it is a new epoch: terminals that are no longer this replica's lose their trust
        (a later return is a new hand-over), the grace starts again."""
        live = frozenset(members)
        if self._me not in live:
            live = frozenset()
        if live == self._members:
            return False
        self._members = live
        self._epoch += 1
        self._began = self._clock()
        self._not_mine.clear()
        self._wanted.clear()
        self._trusted = {t for t in self._trusted if self._mine(t)}
        self._swept = False
        return True

    def writes(self, terminal_id: str) -> bool:
        """Whether this replica writes (and confirms) ``terminal_id`` now. An own terminal
        not yet reloaded is queued for ``to_reload`` and is not written meanwhile."""
        if terminal_id in self._trusted:
            return True
        if terminal_id in self._not_mine or not self._members:
            return False
        if not self._mine(terminal_id):
            if len(self._not_mine) >= _MAX_CACHED:
                self._not_mine.clear()
            self._not_mine.add(terminal_id)
            return False
        if len(self._wanted) < _MAX_WANTED:
            self._wanted.add(terminal_id)
        return False

    def in_grace(self) -> bool:
        """The current epoch began less than ``grace_s`` ago."""
        return self._clock() < self._began + self._grace

    def to_reload(self, known: Callable[[], Iterable[str]]) -> list[str]:
        """The own, untrusted terminals to reload now, sorted: none during the grace; after
        it, once per epoch every one of ``known()`` (the fleet state's ids) that is this
        replica's, and each time those whose messages came since (``writes``)."""
        if not self._members or self.in_grace():
            return []
        ids = self._wanted
        self._wanted = set()
        if not self._swept:
            self._swept = True
            ids.update(known())
        return sorted(t for t in ids if t not in self._trusted and self._mine(t))

    def trust(self, terminal_ids: Iterable[str], epoch: int) -> int:
        """Trust (write from now on) the terminals reloaded for ``epoch``; nothing if the
        epoch changed since (they are handed out again). Returns how many it trusted."""
        if epoch != self._epoch or not self._members:
            return 0
        before = len(self._trusted)
        self._trusted.update(t for t in terminal_ids if self._mine(t))
        return len(self._trusted) - before

    def _mine(self, terminal_id: str) -> bool:
        return owner_of(terminal_id, self._members) == self._me
