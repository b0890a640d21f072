"""A terminal's open sequence gaps: the seqs the server never received and would still take.

When a stream message skips numbers, the rules (``server.terminal_rules``) note
the skipped range here with the server time it was noticed. For
``window`` (``TerminalPolicy.gap_refill_window_s``) the range is *open*: each
``kf.committed`` lists it (``protocol.committed``, ``missing``) so the agent
re-sends what it still has, and a message inside it is a GAP FILL instead of a
duplicate. After the window it is forgotten and stays a counted gap (lost, or
dropped by the agent on purpose). Bounded: at most ``MAX_MISSING_RANGES``
ranges per terminal (the oldest are forgotten first, as if expired); a
terminal without gaps holds an empty tuple. Kept in memory; the owner also stores
them with the terminal's row (``terminal.open_gaps``) for a replica that takes the
terminal over (docs/scale-out.md), but a restarted server does not read them back:
it knows no open gap (docs/reliability.md).

Pure: immutable tuples of ``Gap`` in, new tuples out; no clock (the caller
passes ``now``), no lock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from protocol.committed import MAX_MISSING_RANGES, SeqRange

__all__ = ["Gap", "fill", "note", "open_ranges"]


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs ``first..last`` (both included) of the current stream, never received;
    ``noticed_at``: the server time the message after them arrived."""

    first: int
    last: int
    noticed_at: datetime


Gaps = tuple[Gap, ...]


def note(gaps: Gaps, first: int, last: int, noticed_at: datetime, window: timedelta) -> Gaps:
    """``gaps`` with ``first..last`` added (it lies above all of them: the stream only grows)
    and the expired ones dropped; the oldest go beyond ``MAX_MISSING_RANGES``."""
    kept = (*_live(gaps, noticed_at, window), Gap(first, last, noticed_at))
    return kept[-MAX_MISSING_RANGES:]


def fill(gaps: Gaps, seq: int, now: datetime, window: timedelta) -> Gaps | None:
    """``gaps`` without ``seq`` if an open gap holds it (the range split around it), else
    None: then ``seq`` is no gap fill (a duplicate, or a gap already forgotten)."""
    live = _live(gaps, now, window)
    for i, g in enumerate(live):
        if g.first <= seq <= g.last:
            parts = tuple(
                Gap(first, last, g.noticed_at)
                for first, last in ((g.first, seq - 1), (seq + 1, g.last))
                if first <= last
            )
            return (*live[:i], *parts, *live[i + 1 :])[-MAX_MISSING_RANGES:]
    return None


def open_ranges(gaps: Gaps, now: datetime, window: timedelta) -> tuple[SeqRange, ...]:
    """The open gaps as ``(first, last)``, ascending: what a ``kf.committed`` lists."""
    return tuple((g.first, g.last) for g in _live(gaps, now, window))


def _live(gaps: Gaps, now: datetime, window: timedelta) -> Gaps:
    if not gaps:
        return gaps
    return tuple(g for g in gaps if g.noticed_at + window > now)
