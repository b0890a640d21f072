"""Which replica writes a terminal: the rendezvous partition of the live replicas, and the
hand-over's epochs (docs/scale-out.md, "One writer per terminal on nats-server").

- ``owner_of``: the pure core. The owner of a terminal among a set of members is the
  member with the highest weight of ``(member, terminal)`` (rendezvous hashing; the
  weight mixes the BLAKE2b keys of both):
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

import functools
import hashlib
from collections.abc import Callable, Collection, Iterable
from typing import Final

__all__ = ["Ownership", "owner_of"]

_MAX_CACHED: Final = 2_000_000  # ids known not to be this replica's, per epoch
_MAX_WANTED: Final = 200_000  # own ids waiting for a reload (drained every heartbeat)


_MASK: Final = (1 << 64) - 1


def _digest(text: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(text.encode(), digest_size=8, usedforsecurity=False).digest(), "big"
    )


@functools.lru_cache(maxsize=1024)
def _member_key(member: str) -> int:
    return _digest(member)


def _weight(member_key: int, terminal_key: int) -> int:
    """splitmix64's finalizer of the two keys combined: a bijective mixer, so each member's
    weights of the terminals are as uniform as the keys (one BLAKE2b per terminal, not one
    per pair: about a third of the cost at three members)."""
    x = member_key ^ terminal_key
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def owner_of(terminal_id: str, members: Collection[str]) -> str | None:
    """The member that owns ``terminal_id`` (None when there is no member). The same on
    every replica for the same set: the weights are a hash of the ids alone (BLAKE2b, not
    Python's ``hash``, which is salted per process)."""
    key = _digest(terminal_id)
    best: str | None = None
    best_weight = -1
    for member in members:
        weight = _weight(_member_key(member), key)
        if weight > best_weight or (weight == best_weight and best is not None and member > best):
            best, best_weight = member, weight
    return best


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
        replica's, and each time those whose messages came since (``writes``). The same as
        ``own_untrusted(*take_candidates(known))``."""
        candidates, epoch = self.take_candidates(known)
        return self.own_untrusted(candidates, epoch)

    def take_candidates(self, known: Callable[[], Iterable[str]]) -> tuple[set[str], int]:
        """``to_reload``'s cheap half (under the intake lock): the ids to look at and the
        epoch they are for; nothing during the grace."""
        if not self._members or self.in_grace():
            return set(), self._epoch
        ids = self._wanted
        self._wanted = set()
        if not self._swept:
            self._swept = True
            ids.update(known())
        return ids, self._epoch

    def own_untrusted(self, candidates: Iterable[str], epoch: int) -> list[str]:
        """``to_reload``'s costly half, the hashing (about 6 us a terminal at three members):
        of ``candidates``, the own, untrusted ones, sorted. Safe outside the intake lock on
        the thread that calls ``update`` and ``trust`` (it reads only what they change)."""
        if epoch != self._epoch:
            return []
        trusted = self._trusted
        return sorted(t for t in candidates if t not in trusted and self._mine(t))

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
