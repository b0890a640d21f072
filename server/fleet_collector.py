"""The fleet's Prometheus gauges, computed at scrape time from the in-memory fleet state.

``FleetCollector(fleet)`` is one ``prometheus_client`` collector: each scrape
takes one ``FleetState.summary()`` (a consistent reading of the incremental
tallies) and turns it into metric families (the contract in
``docs/monitoring.md``):

- ``kioskfleet_terminals{region,hall,status}``: every hall, every status
  (``ok``, ``warning``, ``faulty``, ``offline``, ``closed``; 0 when none); ``closed``
  are the terminals that shut down cleanly while their hall is closed
  (``server.health.closed_or``), else they count as ``offline``;
- ``kioskfleet_hall_open{region,hall}``: 1 while the hall is open by its opening hours
  (always, for a hall with none), else 0; ``kioskfleet_hall_opens_in_seconds{region,hall}``:
  seconds until it next opens (0 while open; no series when no opening is in sight).
  The hours come from ``openings`` (``server.hall_openings.HallOpenings``: cached, no
  database query at scrape time); the alert rules join on them;
- ``kioskfleet_peripherals{region,hall,family,kind,condition}``: every (kind,
  condition) that at least one peripheral of the hall is in, ``ok`` included; a
  pair with no peripheral has no series (not zero-filled: that would more than
  double the per-hall series, and the series count is what a scrape costs);
- ``kioskfleet_software_terminals{package,version}``;
- ``kioskfleet_agent_dropped_reports{region,hall}``: reports the hall's
  terminals' outboxes dropped on purpose (each terminal's count for its current
  boot_id), next to ``kioskfleet_agent_seq_gaps{region,hall}``: sequence numbers
  the server never received from them (persisted, all streams). Gaps beyond the
  drops are losses;
- ``kioskfleet_hall_unreachable{region,hall}``: 1 while the hall's offline terminals
  (status ``offline``) are too many to be isolated failures: at least 2 and either more
  than ``LabelBudget.offline_terminals_per_hall`` or at least half of the hall's
  terminals; else 0. Such a hall exports no per-terminal offline series: its
  ``kioskfleet_terminals{status="offline"}`` says how many, and ``HallUnreachable``
  alerts once for the hall (docs/monitoring.md, "A mass outage");
- ``kioskfleet_hall_peripheral_problems_withheld{region,hall,family}``: for a hall with more
  than ``LabelBudget.peripheral_problem_terminals_per_hall`` online terminals with a
  peripheral problem (``peripherals_withheld``), the problem peripherals of each family
  whose per-terminal series the hall does not export; no series for the other halls,
  nor while the hall is in maintenance. Its ``kioskfleet_peripherals`` still counts them
  by kind and condition, and ``HallPeripheralOutage`` alerts once per hall and family;
- per terminal, ONLY for terminals with a problem:
  ``kioskfleet_terminal_offline`` and
  ``kioskfleet_terminal_offline_since_timestamp_seconds`` while offline (not while
  ``closed``: a terminal switched off for the night has no series; nor in an
  unreachable hall),
  ``kioskfleet_terminal_peripheral_problem`` per peripheral not ``ok`` of an ONLINE
  terminal (not in a hall whose problems are withheld): an offline terminal's last
  reported problems are not current, so they are not exported (its
  ``kioskfleet_terminal_offline`` is);
- maintenance (``server.maintenance``, read from ``maintenance``: a cached
  ``server.maintenance_book.MaintenanceBook``): ``kioskfleet_hall_maintenance{region,hall}``
  for every hall (1 while the hall has an active window, else 0) and
  ``kioskfleet_terminal_maintenance{terminal,hall,region}`` = 1 per terminal with its own
  active window (bounded by ``maintenance_max_windows``). A terminal in maintenance (its
  own window or its hall's) exports NO problem series (neither offline nor peripheral
  problems): its alerts are suppressed at the source and come back when the window
  ends (docs/operations.md, "Maintenance and acknowledgements").

``family`` is the kind's family in the peripheral taxonomy
(``protocol.taxonomy``: ``printer``, ``identity_reader``, ...): alert rules and
dashboards select families, so a new kind of an existing family needs no rule
change. It adds no series (each kind has one family).

A terminal that never said its hall or region is labelled ``unknown``
(``UNKNOWN_LABEL``); never the empty string, which Prometheus treats as a
missing label and which Alertmanager routes to the platform team. Halls that end
up with the same labels (a hall really named ``unknown``) are added together so
the exposition never holds a duplicate series.

Device text never becomes an unbounded label: ``LabelBudget`` keeps, per
kind, the most reported fault codes and, per package, the versions on most
terminals (and only the packages on most terminals); the rest are folded into
``other``. Halls and regions come from the server's record of each terminal.

Only the replica holding the scheduled-jobs lease exports the fleet: the server
registers the collector wrapped in ``server.holder_only.HolderOnly`` (the lease's
belief asked at every scrape; docs/scale-out.md, "What each replica exports"), so
on a standby every family above is yielded without samples (``describe``), the
fleet is not read, and a sum over all replicas' scrapes counts each terminal once.

This module must never iterate over the whole fleet or create a series for a
healthy terminal: a scrape's cost follows the number of halls, versions and
problems. It does no I/O and registers nothing by itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from protocol.messages import PeripheralCondition, PeripheralKind
from protocol.taxonomy import family_of
from server.fleet_state import FleetState
from server.fleet_views import (
    AGENT_PACKAGE,
    FleetSummary,
    HallSummary,
    OfflineReason,
    SoftwareCount,
)
from server.health import Health, closed_or
from server.maintenance import NO_MAINTENANCE, ActiveMaintenance

__all__ = [
    "FLEET_METRIC_NAMES",
    "OTHER_LABEL",
    "UNKNOWN_LABEL",
    "FleetCollector",
    "LabelBudget",
    "fleet_families",
    "hall_unreachable",
    "peripherals_withheld",
]

UNKNOWN_LABEL: Final = "unknown"
"""Label value of ``region``/``hall`` for a terminal that has not said which it is in."""

_TERMINALS: Final = "kioskfleet_terminals"
_PERIPHERALS: Final = "kioskfleet_peripherals"
_SOFTWARE: Final = "kioskfleet_software_terminals"
_OFFLINE: Final = "kioskfleet_terminal_offline"
_OFFLINE_SINCE: Final = "kioskfleet_terminal_offline_since_timestamp_seconds"
_PROBLEM: Final = "kioskfleet_terminal_peripheral_problem"
_DROPPED: Final = "kioskfleet_agent_dropped_reports"
_GAPS: Final = "kioskfleet_agent_seq_gaps"
_HALL_OPEN: Final = "kioskfleet_hall_open"
_OPENS_IN: Final = "kioskfleet_hall_opens_in_seconds"
_HALL_MAINTENANCE: Final = "kioskfleet_hall_maintenance"
_TERMINAL_MAINTENANCE: Final = "kioskfleet_terminal_maintenance"
_UNREACHABLE: Final = "kioskfleet_hall_unreachable"
_WITHHELD: Final = "kioskfleet_hall_peripheral_problems_withheld"

FLEET_METRIC_NAMES: Final = (
    _TERMINALS,
    _PERIPHERALS,
    _SOFTWARE,
    _OFFLINE,
    _OFFLINE_SINCE,
    _PROBLEM,
    _DROPPED,
    _GAPS,
    _HALL_OPEN,
    _OPENS_IN,
    _HALL_MAINTENANCE,
    _TERMINAL_MAINTENANCE,
    _UNREACHABLE,
    _WITHHELD,
)
"""Every family this collector yields (always, with or without samples)."""

_HELP: Final = {
    _TERMINALS: "Terminals per hall by status: ok, warning (online, only paper low or an unknown"
    " peripheral state), faulty (online, a peripheral that blocks service), offline, closed"
    " (shut down cleanly while the hall is closed by its opening hours).",
    _PERIPHERALS: "Peripherals per hall by kind and normalised condition (ok included;"
    " no series for a kind and condition no peripheral of the hall is in).",
    _SOFTWARE: "Terminals (online or not) with this version of this package installed"
    " (the agent itself is package kioskfleet-agent).",
    _OFFLINE: "1 for each terminal that is offline; no series for online terminals, nor for"
    " closed ones (shut down cleanly while their hall is closed).",
    _OFFLINE_SINCE: "Unix time at which the offline terminal went offline (server time).",
    _PROBLEM: "1 for each peripheral of an online terminal whose condition is not ok; family"
    " is the kind's family (printer, identity_reader, ...); fault_code is empty when the"
    " device gave none. No series for healthy peripherals nor for offline terminals.",
    _DROPPED: "Reports the hall's terminals dropped on purpose from a full outbox (each"
    " terminal's count for its current boot_id).",
    _GAPS: "Sequence numbers never received from the hall's terminals (cumulative, persisted"
    " across server restarts); gaps beyond the dropped reports are losses.",
    _HALL_OPEN: "1 while the hall is open by its opening hours (always, for a hall with no"
    " hours set), else 0.",
    _OPENS_IN: "Seconds until the hall next opens by its opening hours: 0 while open; no"
    " series when it does not open within the hours' horizon (400 days).",
    _HALL_MAINTENANCE: "1 while the hall is in maintenance (an operator's window until its end),"
    " else 0. Its terminals export no problem series meanwhile.",
    _TERMINAL_MAINTENANCE: "1 for each terminal in maintenance by its own window; no series for"
    " the others. A terminal in maintenance (its own or its hall's) exports no problem series.",
    _UNREACHABLE: "1 while at least 2 of the hall's terminals, and more than the per-hall"
    " budget or at least half of them, are offline: the hall then has no per-terminal"
    ' offline series (kioskfleet_terminals{status="offline"} counts them); else 0, and'
    " 0 while the hall is in maintenance.",
    _WITHHELD: "Problem peripherals of the family on the hall's online terminals that have no"
    " per-terminal series because more of its terminals than the per-hall budget have a"
    " peripheral problem (kioskfleet_peripherals counts them); no series for other halls.",
}
_LABELS: Final = {
    _TERMINALS: ("region", "hall", "status"),
    _PERIPHERALS: ("region", "hall", "family", "kind", "condition"),
    _SOFTWARE: ("package", "version"),
    _OFFLINE: ("terminal", "hall", "region"),
    _OFFLINE_SINCE: ("terminal", "hall", "region"),
    _PROBLEM: (
        "terminal",
        "hall",
        "region",
        "peripheral",
        "family",
        "kind",
        "condition",
        "fault_code",
    ),
    _DROPPED: ("region", "hall"),
    _GAPS: ("region", "hall"),
    _HALL_OPEN: ("region", "hall"),
    _OPENS_IN: ("region", "hall"),
    _HALL_MAINTENANCE: ("region", "hall"),
    _TERMINAL_MAINTENANCE: ("terminal", "hall", "region"),
    _UNREACHABLE: ("region", "hall"),
    _WITHHELD: ("region", "hall", "family"),
}

_STATUSES: Final = tuple(Health)
_FAMILY: Final = {kind: family_of(kind).family.value for kind in PeripheralKind}


HallOpenings = Callable[[str | None], tuple[bool, float | None]]
"""A hall's (open now, seconds until it next opens) by its name (``HallOpenings``)."""


def always_open(hall: str | None) -> tuple[bool, float | None]:
    """The openings of a server with no opening hours: every hall open."""
    return True, 0.0


def _label(value: str | None) -> str:
    return UNKNOWN_LABEL if value is None else value


OTHER_LABEL: Final = "other"
"""Label value that device text beyond its ``LabelBudget`` is folded into."""


@dataclass(frozen=True, slots=True)
class LabelBudget:
    """How many distinct device-text values reach a label; the rest become ``other``.

    Per kind, the ``fault_codes_per_kind`` codes that most problem peripherals
    report now keep their value on ``kioskfleet_terminal_peripheral_problem``;
    per package, the ``versions_per_package`` versions on most terminals keep
    theirs on ``kioskfleet_software_terminals``, and only the ``packages`` packages
    on most terminals keep their name (the agent's own always does). Ties go to
    the smaller value, so the choice does not flicker between scrapes. Chosen per
    scrape from what the fleet holds now: no terminal can occupy a slot for good.

    A hall with more than ``offline_terminals_per_hall`` offline terminals (or at least
    ``unreachable_share`` of them offline, 2 or more) is *unreachable*: one hall series
    instead of two per offline terminal, so a mass outage neither multiplies the series
    nor holds the fleet lock to copy every offline terminal. Likewise a hall with more than
    ``peripheral_problem_terminals_per_hall`` online terminals with a peripheral problem (a
    bad paper batch, a driver update) withholds their per-terminal problem series: one
    series per family says how many.
    """

    fault_codes_per_kind: int = 20
    versions_per_package: int = 10
    packages: int = 30
    offline_terminals_per_hall: int = 10
    unreachable_share: float = 0.5  # of a hall's terminals offline: unreachable (> 1: never)
    peripheral_problem_terminals_per_hall: int = 20


def hall_unreachable(offline: int, total: int, budget: LabelBudget) -> bool:
    """Whether a hall with ``offline`` of ``total`` terminals offline is unreachable:
    at least 2 offline, and more than the budget or at least ``unreachable_share`` of
    the hall (half, by default)."""
    return offline >= 2 and (
        offline > budget.offline_terminals_per_hall or offline >= budget.unreachable_share * total
    )


def peripherals_withheld(hall: HallSummary, budget: LabelBudget) -> bool:
    """Whether the hall's per-terminal problem series are withheld: more of its online
    terminals have a peripheral problem than ``peripheral_problem_terminals_per_hall``
    (decided from the hall's counts, so they are all exported or none)."""
    return hall.degraded > budget.peripheral_problem_terminals_per_hall


def _top(counts: Counter[str], n: int) -> set[str]:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {value for value, _ in ranked[:n]}


def _fold_software(
    software: Iterable[SoftwareCount], budget: LabelBudget
) -> dict[tuple[str, str], int]:
    by_package: dict[str, Counter[str]] = {}
    for s in software:
        by_package.setdefault(s.package, Counter())[s.version] += s.count
    totals = Counter({p: sum(v.values()) for p, v in by_package.items()})
    kept_packages = _top(totals, budget.packages) | ({AGENT_PACKAGE} & set(totals))
    out: Counter[tuple[str, str]] = Counter()
    for package, versions in by_package.items():
        if package not in kept_packages:
            out[(OTHER_LABEL, OTHER_LABEL)] += sum(versions.values())
            continue
        kept = _top(versions, budget.versions_per_package)
        for version, n in versions.items():
            out[(package, version if version in kept else OTHER_LABEL)] += n
    return dict(out)


def _fault_code_labels(
    summary: FleetSummary, budget: LabelBudget
) -> dict[PeripheralKind, set[str]]:
    """Per kind, the fault codes that keep their own label value."""
    by_kind: dict[PeripheralKind, Counter[str]] = {}
    for t in summary.problem_terminals:
        for p in t.problems:
            if p.fault_code:
                by_kind.setdefault(p.kind, Counter())[p.fault_code] += 1
    return {kind: _top(codes, budget.fault_codes_per_kind) for kind, codes in by_kind.items()}


class FleetCollector(Collector):
    """Yields the fleet gauges from ``fleet`` at every scrape; register it on a registry."""

    def __init__(
        self,
        fleet: FleetState,
        budget: LabelBudget | None = None,
        openings: HallOpenings = always_open,
        maintenance: Callable[[], ActiveMaintenance] = lambda: NO_MAINTENANCE,
        on_lock_held: Callable[[float], None] | None = None,
    ) -> None:
        """``on_lock_held`` gets, at every scrape, the seconds the fleet lock was held to
        read the fleet (the server observes them in ``kioskfleet_fleet_lock_held_seconds``)."""
        self._fleet = fleet
        self._budget = budget or LabelBudget()
        self._openings = openings
        self._maintenance = maintenance
        self._on_lock_held = on_lock_held

    def describe(self) -> Iterator[Metric]:
        """The families without samples (lets the registry check names without a scrape)."""
        for name in FLEET_METRIC_NAMES:
            yield GaugeMetricFamily(name, _HELP[name], labels=_LABELS[name])

    def collect(self) -> Iterator[Metric]:
        maintenance = self._maintenance()
        placed = []  # the terminals with their own window that the fleet knows
        for terminal_id in sorted(maintenance.terminals):
            view = self._fleet.get(terminal_id)
            if view is not None:
                placed.append((terminal_id, view.hall, view.region))
        summary = self._fleet.summary(
            offline_per_hall=self._budget.offline_terminals_per_hall,
            faulted_per_hall=self._budget.peripheral_problem_terminals_per_hall,
        )
        if self._on_lock_held is not None:
            self._on_lock_held(summary.lock_held_s)
        yield from fleet_families(summary, self._budget, self._openings, maintenance, placed)


def fleet_families(
    summary: FleetSummary,
    budget: LabelBudget | None = None,
    openings: HallOpenings = always_open,
    maintenance: ActiveMaintenance = NO_MAINTENANCE,
    maintained: Iterable[tuple[str, str | None, str | None]] = (),
) -> list[Metric]:
    """The fleet metric families for one reading of the fleet (pure given ``openings``;
    what ``collect`` yields); ``maintenance`` is what is in maintenance now, ``maintained``
    the (id, hall, region) of the terminals with their own active window.

    Device text (fault codes, software packages and versions) beyond ``budget`` is folded
    into ``other``, so no terminal can multiply the series. ``openings`` is asked once per
    hall."""
    budget = budget or LabelBudget()
    out = {name: GaugeMetricFamily(name, _HELP[name], labels=_LABELS[name]) for name in _HELP}
    hall_openings: dict[str | None, tuple[bool, float | None]] = {}

    def opening(hall: str | None) -> tuple[bool, float | None]:
        found = hall_openings.get(hall)
        if found is None:
            found = hall_openings[hall] = openings(hall)
        return found

    terminals: dict[tuple[str, str], dict[Health, int]] = {}
    opens: dict[tuple[str, str], tuple[bool, float | None]] = {}
    delivery: dict[tuple[str, str], list[int]] = {}  # [dropped_reports, seq_gaps]
    peripherals: dict[tuple[str, str], dict[tuple[PeripheralKind, PeripheralCondition], int]] = {}
    in_maintenance: dict[tuple[str, str], bool] = {}
    withheld: dict[tuple[str, str], Counter[str]] = {}  # problem peripherals by family
    withheld_halls: set[tuple[str | None, str | None]] = set()  # as the terminals say them
    for h in summary.halls:
        key = (_label(h.region), _label(h.hall))
        in_maintenance[key] = in_maintenance.get(key, False) or (
            h.hall is not None and h.hall in maintenance.halls
        )
        if peripherals_withheld(h, budget):
            withheld_halls.add((h.region, h.hall))
            by_family = withheld.setdefault(key, Counter())
            for pc in h.online_peripheral_problems:
                by_family[_FAMILY[pc.kind]] += pc.count
        is_open, opens_in = opens.setdefault(key, opening(h.hall))
        counts = terminals.get(key)
        if counts is None:
            terminals[key] = h.by_health(hall_open=is_open)
        else:  # two halls with the same labels (see the module doc): add them up
            for health, n in h.by_health(hall_open=is_open).items():
                counts[health] += n
        sums = delivery.setdefault(key, [0, 0])
        sums[0] += h.dropped_reports
        sums[1] += h.seq_gaps
        by_kind = peripherals.setdefault(key, {})
        for pc in h.peripherals:
            pair = (pc.kind, pc.condition)
            by_kind[pair] = by_kind.get(pair, 0) + pc.count

    family, unreachable_family = out[_TERMINALS], out[_UNREACHABLE]
    unreachable: set[tuple[str, str]] = set()
    for key, counts in terminals.items():
        region, hall = key
        for health in _STATUSES:
            family.add_metric([region, hall, health.value], counts[health])
        if hall_unreachable(counts[Health.OFFLINE], sum(counts.values()), budget):
            unreachable.add(key)
        # a hall in maintenance is suppressed at the source like its terminals
        shown = key in unreachable and not in_maintenance.get(key, False)
        unreachable_family.add_metric([region, hall], 1 if shown else 0)
    family = out[_WITHHELD]
    for (region, hall), by_family in withheld.items():
        if not in_maintenance.get((region, hall), False):  # suppressed like its terminals
            for name, n in sorted(by_family.items()):
                family.add_metric([region, hall, name], n)
    family = out[_PERIPHERALS]
    for (region, hall), by_kind in peripherals.items():
        for (kind, condition), n in by_kind.items():
            family.add_metric([region, hall, _FAMILY[kind], kind.value, condition.value], n)
    hall_open, opens_in_s = out[_HALL_OPEN], out[_OPENS_IN]
    for (region, hall), (is_open, opens_in) in opens.items():
        hall_open.add_metric([region, hall], 1 if is_open else 0)
        if opens_in is not None:
            opens_in_s.add_metric([region, hall], opens_in)
    family = out[_HALL_MAINTENANCE]
    for (region, hall), flag in in_maintenance.items():
        family.add_metric([region, hall], 1 if flag else 0)
    family = out[_TERMINAL_MAINTENANCE]
    for terminal_id, t_hall, t_region in maintained:
        family.add_metric([terminal_id, _label(t_hall), _label(t_region)], 1)
    dropped, gaps = out[_DROPPED], out[_GAPS]
    for (region, hall), (n_dropped, n_gaps) in delivery.items():
        dropped.add_metric([region, hall], n_dropped)
        gaps.add_metric([region, hall], n_gaps)
    family = out[_SOFTWARE]
    for (package, version), n in sorted(_fold_software(summary.software, budget).items()):
        family.add_metric([package, version], n)

    offline, since, problem = out[_OFFLINE], out[_OFFLINE_SINCE], out[_PROBLEM]
    kept_codes = _fault_code_labels(summary, budget)
    for t in summary.problem_terminals:
        region, hall = _label(t.region), _label(t.hall)
        if maintenance.covers(t.id, t.hall):
            continue  # suppressed at the source: no alert while in maintenance
        if not t.online:
            health = closed_or(
                Health.OFFLINE,
                clean_shutdown=t.offline_reason is OfflineReason.SHUTDOWN,
                hall_open=opening(t.hall)[0],
            )
            if health is Health.OFFLINE and (region, hall) not in unreachable:
                offline.add_metric([t.id, hall, region], 1)
                since.add_metric([t.id, hall, region], t.state_since.timestamp())
            continue  # its last reported peripheral problems are not current
        if (t.region, t.hall) in withheld_halls:
            continue  # the hall's _withheld series and its counts stand for them
        for p in t.problems:
            problem.add_metric(
                [
                    t.id,
                    hall,
                    region,
                    p.name,
                    _FAMILY[p.kind],
                    p.kind.value,
                    p.condition.value,
                    _fault_code(p.fault_code, kept_codes.get(p.kind, set())),
                ],
                1,
            )
    return list(out.values())


def _fault_code(code: str | None, kept: set[str]) -> str:
    if not code:
        return ""
    return code if code in kept else OTHER_LABEL
