"""The fleet's incremental tallies: counts that readers get without a scan over the fleet.

Per (region, hall): terminals by online/health, peripherals by (kind,
condition) with ``ok`` included, problems by (kind, condition) (all, and those of
online terminals), and the sums
of the terminals' ``seq_gaps`` and ``dropped_reports``, and the terminals offline
after a clean shutdown; fleet-wide: terminals
per (package, version) of installed software (the agent itself counts as
package ``kioskfleet-agent``); and the set of terminals with a problem
(offline or a peripheral not ``ok``), kept per hall as frozen ``ProblemTerminal``
copies made when the terminal changes, in three groups (offline lost, offline after
a clean shutdown, online with a peripheral problem).

Each terminal's share of them (its *contribution*) is remembered; ``update``
subtracts the old share and adds the new one, so it costs what one terminal
costs, and readers (``halls``, ``software``, ``problem_ids``) cost what the
number of halls, versions and problems costs. ``reading`` (what a metrics scrape
takes under the fleet lock) costs what the number of halls costs plus reference copies
of the problem entries it may export: a hall's offline entries only while there are at
most ``offline_per_hall`` of them, and its online ones with a peripheral problem only while
there are at most ``faulted_per_hall``, so a mass outage copies counts, not terminals; each
hall's ``HallSummary`` is cached until one of its counts changes. Only the per-terminal
rules' results change the tallies: ``server.fleet_state`` calls ``update`` for a
record whose ``Outcome.retally`` is set (or that went offline by silence).
No lock (the caller holds one), no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeVar

from protocol.messages import PeripheralCondition, PeripheralKind
from server.fleet_views import (
    AGENT_PACKAGE,
    HallSummary,
    OfflineReason,
    PeripheralCount,
    ProblemTerminal,
    SoftwareCount,
)
from server.health import Health, terminal_health
from server.terminal_rules import TerminalRecord

__all__ = ["FleetTallies"]

_HallKey = tuple[str | None, str | None]  # (region, hall)
_PeripheralKey = tuple[PeripheralKind, PeripheralCondition]
_SoftwareKey = tuple[str, str]  # (package, version)
_OK: Final = PeripheralCondition.OK

_K = TypeVar("_K")


def _bump(counts: dict[_K, int], keys: Iterable[_K], sign: int) -> None:
    """Add ``sign`` to ``counts[key]`` for every key; a count reaching 0 is removed."""
    for key in keys:
        n = counts.get(key, 0) + sign
        if n:
            counts[key] = n
        else:
            del counts[key]


@dataclass(frozen=True, slots=True)
class _Contribution:
    """What one terminal adds to the tallies (its hall's and the fleet's software counts)."""

    key: _HallKey
    online: bool
    health: Health
    peripherals: tuple[_PeripheralKey, ...]  # every peripheral's (kind, condition), sorted
    problems: tuple[_PeripheralKey, ...]  # those not ok
    software: tuple[_SoftwareKey, ...]
    seq_gaps: int
    dropped_reports: int
    shut_down: bool  # offline after a clean shutdown

    @classmethod
    def of(cls, t: TerminalRecord) -> _Contribution:
        peripherals = tuple(sorted((p.kind, p.condition) for p in t.peripherals.values()))
        problems = tuple(pc for pc in peripherals if pc[1] is not _OK)
        software = dict(t.software)
        if t.agent_version is not None:
            software.setdefault(AGENT_PACKAGE, t.agent_version)
        return cls(
            key=(t.region, t.hall),
            online=t.online,
            health=terminal_health(t.online, problems),
            peripherals=peripherals,
            problems=problems,
            software=tuple(sorted(software.items())),
            seq_gaps=t.seq_gaps,
            dropped_reports=t.dropped_reports,
            shut_down=not t.online and t.offline_reason is OfflineReason.SHUTDOWN,
        )

    @property
    def has_problem(self) -> bool:
        return not self.online or bool(self.problems)


def _problem_terminal(t: TerminalRecord) -> ProblemTerminal:
    return ProblemTerminal(
        t.id, t.hall, t.region, t.online, t.state_since, t.problems(), t.offline_reason
    )


class _HallTally:
    __slots__ = (
        "_summary",
        "degraded",
        "dropped_reports",
        "faulted",
        "faulty",
        "lost",
        "online",
        "online_problems",
        "peripherals",
        "problems",
        "seq_gaps",
        "shut",
        "shut_down",
        "total",
        "warning",
        "with_problems",
    )

    def __init__(self) -> None:
        self.total = 0
        self.online = 0
        self.degraded = 0
        self.warning = 0
        self.faulty = 0
        self.with_problems = 0
        self.problems: dict[_PeripheralKey, int] = {}
        self.online_problems: dict[_PeripheralKey, int] = {}
        self.peripherals: dict[_PeripheralKey, int] = {}
        self.seq_gaps = 0
        self.dropped_reports = 0
        self.shut_down = 0
        # the hall's problem terminals, by id: offline lost (will, timeout), offline after a
        # clean shutdown, online with a peripheral not ok
        self.lost: dict[str, ProblemTerminal] = {}
        self.shut: dict[str, ProblemTerminal] = {}
        self.faulted: dict[str, ProblemTerminal] = {}
        self._summary: HallSummary | None = None  # until a count changes

    def forget(self, terminal_id: str) -> None:
        self.lost.pop(terminal_id, None)
        self.shut.pop(terminal_id, None)
        self.faulted.pop(terminal_id, None)

    def remember(self, p: ProblemTerminal) -> None:
        if p.online:
            self.faulted[p.id] = p
        elif p.offline_reason is OfflineReason.SHUTDOWN:
            self.shut[p.id] = p
        else:
            self.lost[p.id] = p

    def problem_ids(self) -> Iterable[str]:
        yield from self.lost
        yield from self.shut
        yield from self.faulted

    def add(self, c: _Contribution, sign: int) -> None:
        self._summary = None
        self.total += sign
        if c.online:
            self.online += sign
        if c.problems:
            self.with_problems += sign
            if c.online:
                self.degraded += sign
        if c.health is Health.WARNING:
            self.warning += sign
        elif c.health is Health.FAULTY:
            self.faulty += sign
        self.seq_gaps += sign * c.seq_gaps
        self.dropped_reports += sign * c.dropped_reports
        if c.shut_down:
            self.shut_down += sign
        _bump(self.problems, c.problems, sign)
        if c.online:
            _bump(self.online_problems, c.problems, sign)
        _bump(self.peripherals, c.peripherals, sign)

    def summary(self, key: _HallKey) -> HallSummary:
        if self._summary is None:
            self._summary = self._count(key)
        return self._summary

    def _count(self, key: _HallKey) -> HallSummary:
        return HallSummary(
            region=key[0],
            hall=key[1],
            total=self.total,
            online=self.online,
            offline=self.total - self.online,
            degraded=self.degraded,
            with_peripheral_problems=self.with_problems,
            peripheral_problems=_counts(self.problems),
            online_peripheral_problems=_counts(self.online_problems),
            warning=self.warning,
            faulty=self.faulty,
            peripherals=_counts(self.peripherals),
            seq_gaps=self.seq_gaps,
            dropped_reports=self.dropped_reports,
            shut_down=self.shut_down,
        )


def _counts(counts: dict[_PeripheralKey, int]) -> tuple[PeripheralCount, ...]:
    return tuple(
        PeripheralCount(kind, condition, n) for (kind, condition), n in sorted(counts.items())
    )


class FleetTallies:
    """Every tally of the fleet, kept up to date one terminal at a time."""

    def __init__(self) -> None:
        self._contributions: dict[str, _Contribution] = {}
        self._halls: dict[_HallKey, _HallTally] = {}
        self._software: dict[_SoftwareKey, int] = {}

    def clear(self) -> None:
        self._contributions.clear()
        self._halls.clear()
        self._software.clear()

    def update(self, t: TerminalRecord) -> None:
        """Count ``t`` as it is now instead of as it was (or for the first time)."""
        new = _Contribution.of(t)
        old = self._contributions.get(t.id)
        if old is not None:
            self._halls[old.key].forget(t.id)
        if old != new:
            if old is not None:
                self._add(old, -1)
            self._add(new, +1)
            self._contributions[t.id] = new
        if new.has_problem:  # its entry again: since, fault codes may change the counts do not
            self._halls[new.key].remember(_problem_terminal(t))

    def remove(self, terminal_id: str) -> None:
        """Stop counting the terminal (it left the fleet)."""
        old = self._contributions.pop(terminal_id, None)
        if old is not None:
            self._halls[old.key].forget(terminal_id)
            self._add(old, -1)

    def _add(self, c: _Contribution, sign: int) -> None:
        hall = self._halls.get(c.key)
        if hall is None:
            hall = self._halls[c.key] = _HallTally()
        hall.add(c, sign)
        if hall.total == 0:
            del self._halls[c.key]
        _bump(self._software, c.software, sign)

    def halls(self) -> list[HallSummary]:
        """Per (region, hall) counts, by region then hall."""
        out = [h.summary(key) for key, h in self._halls.items()]
        out.sort(key=lambda s: (s.region or "", s.hall or ""))
        return out

    def hall_keys(self) -> list[tuple[str | None, str | None]]:
        """The (region, hall) of every hall that has a terminal (cost follows halls)."""
        return list(self._halls)

    def software(self) -> list[SoftwareCount]:
        """Terminals per installed (package, version)."""
        return [SoftwareCount(p, v, n) for (p, v), n in sorted(self._software.items())]

    def problem_ids(self) -> list[str]:
        """Ids of the terminals that are offline or have a peripheral not ok, sorted."""
        return sorted(tid for h in self._halls.values() for tid in h.problem_ids())

    def reading(
        self, offline_per_hall: int, faulted_per_hall: int
    ) -> tuple[list[HallSummary], list[ProblemTerminal]]:
        """Every hall's counts, and the problem entries a scrape may export, unsorted.

        A hall's online terminals with a peripheral problem: only while there are at most
        ``faulted_per_hall``. Its offline ones lost by will
        or timeout: only while there are at most ``offline_per_hall``; those offline after
        a clean shutdown: only while lost and shut down together are at most that (in a
        closed hall they are ``closed`` and the lost ones alone count). Beyond, the hall's
        counts stand for them (``server.fleet_collector``)."""
        halls = []
        problems: list[ProblemTerminal] = []
        for key, h in self._halls.items():
            halls.append(h.summary(key))
            if len(h.faulted) <= faulted_per_hall:
                problems.extend(h.faulted.values())
            if len(h.lost) <= offline_per_hall:
                problems.extend(h.lost.values())
                if len(h.lost) + len(h.shut) <= offline_per_hall:
                    problems.extend(h.shut.values())
        return halls, problems
