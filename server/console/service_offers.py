"""What the hall page shows of the service catalogue: per terminal, the services it can
offer now and, for each it cannot, why (the needs no working peripheral meets, or the
terminal is offline); per hall, how many of its terminals offer each service.

Pure: the decisions are ``server.service_catalogue``'s (``working_needs``, ``offered``,
``unmet_needs``), this only arranges them for a page. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from protocol.messages import TerminalState
from server.fleet_views import TerminalView
from server.service_catalogue import Catalogue, offered, unmet_needs, working_needs

__all__ = ["OFFLINE_REASON", "HallOffers", "TerminalOffers", "hall_offers"]

OFFLINE_REASON: Final = TerminalState.OFFLINE.value
"""The reason an offline terminal offers nothing (a word of the console's vocabulary)."""


@dataclass(frozen=True, slots=True)
class TerminalOffers:
    """One terminal: the codes it offers now, and (code, reasons) for each it does not."""

    terminal_id: str
    online: bool
    offered: tuple[str, ...]
    missing: tuple[tuple[str, tuple[str, ...]], ...]  # offline: every code, (OFFLINE_REASON,)


@dataclass(frozen=True, slots=True)
class HallOffers:
    """A hall's terminals' offers and, per catalogued service, how many offer it."""

    terminals: dict[str, TerminalOffers]
    counts: tuple[tuple[str, int], ...]  # (code, terminals offering it), catalogue order
    total: int


def _terminal(catalogue: Catalogue, view: TerminalView) -> TerminalOffers:
    if not view.online:
        missing = tuple((s.code, (OFFLINE_REASON,)) for s in catalogue.services)
        return TerminalOffers(view.id, False, (), missing)
    working = working_needs(view)
    reasons = (
        (s.code, tuple(n.value for n in unmet_needs(s, working))) for s in catalogue.services
    )
    return TerminalOffers(
        view.id, True, offered(catalogue, working), tuple(r for r in reasons if r[1])
    )


def hall_offers(catalogue: Catalogue, terminals: Iterable[TerminalView]) -> HallOffers:
    """The offers of ``terminals`` (one hall's) under ``catalogue``."""
    per = {view.id: _terminal(catalogue, view) for view in terminals}
    counts = tuple(
        (s.code, sum(1 for t in per.values() if s.code in t.offered)) for s in catalogue.services
    )
    return HallOffers(per, counts, len(per))
