"""The faults ``make demo`` plants so that a new user sees alerts *firing* within 3 minutes.

The simulator's own incidents at the demo's ``--fault-rate`` come and go within
seconds, shorter than any rule's ``for:``: they show as pending and never fire. So
the demo also plants, on three terminals near the end of the id range (outside the
rollout's first phase), one fault per alert it promises:

- ``PrinterPaperOut``: a receipt printer held at ``paper_out`` for the whole run;
- ``CardReaderFault``: an ID card reader held at ``fault``;
- ``TerminalOffline``: a terminal whose connection is cut for good (no DISCONNECT, so
  the broker publishes its will) ``OUTAGE_AFTER_S`` into the run.

The demo's Prometheus scrapes and evaluates every ``SCRAPE_INTERVAL_S``. When each
alert fires at the latest is ``worst_case_firing_s``: the terminals' time to enroll
and connect (``CONNECT_BUDGET_S``), the fault's start, a probe read and a report, a
scrape, an evaluation to go pending, the rule's ``for:``, an evaluation to fire.
tests/unit/test_demo_faults.py reads the real rules file and fails when a rule's
``for:`` grows past what fits in ``FIRING_WITHIN_S`` or past a planted fault's hold.

Pure: data and arithmetic; scripts/demo.py turns ``simulate_args`` into flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.planted_faults import PlantedFault, PlantedOutage
from agent.probes.simulated import MODELS, Scenario
from protocol.messages import PeripheralCondition

__all__ = [
    "CONNECT_BUDGET_S",
    "FIRING_WITHIN_S",
    "OUTAGE_AFTER_S",
    "PROBE_INTERVAL_S",
    "SCRAPE_INTERVAL_S",
    "PlannedAlert",
    "demo_fault_plan",
    "simulate_args",
    "worst_case_firing_s",
]

FIRING_WITHIN_S: Final = 180.0
"""The promise: these alerts are firing this long after the demo printed its URLs."""
SCRAPE_INTERVAL_S: Final = 5.0
"""The demo Prometheus' scrape and rule evaluation interval."""
PROBE_INTERVAL_S: Final = 5.0
"""The simulated terminals read their probes this often (min(5, report interval / 2))."""
CONNECT_BUDGET_S: Final = 20.0
"""Time for 50 terminals to enroll over EST and connect (a few seconds on a laptop)."""
OUTAGE_AFTER_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class PlannedAlert:
    """An alert the demo promises, and the planted fault that makes it fire."""

    alert: str
    terminal_id: str
    starts_after_s: float  # into the run (0: from the first report)
    hold_s: float | None  # None: until the demo stops
    fault: PlantedFault | None = None
    outage: PlantedOutage | None = None


def _terminal(prefix: str, index: int) -> str:
    return f"{prefix}-{index:05d}"


def _model(index: int) -> str:
    """The simulator's model of terminal ``index`` (agent/simulator.py: odd, even)."""
    names = tuple(MODELS)
    return names[(index - 1) % len(names)]


def demo_fault_plan(terminals: int, prefix: str = "DEMO") -> list[PlannedAlert]:
    """The plan for a fleet of ``terminals``: the last three terminals (none planted in a
    fleet of fewer than 3, e.g. ``DEMO_TERMINALS=2``)."""
    if terminals < 3:
        return []
    paper, reader, gone = terminals - 2, terminals - 1, terminals
    for index, scenario in ((paper, Scenario.RECEIPT_PRINTER), (reader, Scenario.ID_CARD_READER)):
        assert scenario in MODELS[_model(index)]  # every model carries both
    return [
        PlannedAlert(
            "PrinterPaperOut",
            _terminal(prefix, paper),
            0.0,
            None,
            fault=PlantedFault(
                _terminal(prefix, paper),
                Scenario.RECEIPT_PRINTER.value,
                PeripheralCondition.PAPER_OUT,
            ),
        ),
        PlannedAlert(
            "CardReaderFault",
            _terminal(prefix, reader),
            0.0,
            None,
            fault=PlantedFault(
                _terminal(prefix, reader), Scenario.ID_CARD_READER.value, PeripheralCondition.FAULT
            ),
        ),
        PlannedAlert(
            "TerminalOffline",
            _terminal(prefix, gone),
            OUTAGE_AFTER_S,
            None,
            outage=PlantedOutage(_terminal(prefix, gone), OUTAGE_AFTER_S),
        ),
    ]


def simulate_args(plan: list[PlannedAlert]) -> list[str]:
    """The ``kioskfleet simulate`` flags that plant ``plan``."""
    args = []
    for planned in plan:
        if planned.fault is not None:
            args.append(f"--plant={planned.fault}")
        if planned.outage is not None:
            args.append(f"--plant-outage={planned.outage}")
    return args


def worst_case_firing_s(planned: PlannedAlert, rule_for_s: float) -> float:
    """The latest time, after the demo printed its URLs, at which ``planned`` fires."""
    detect = PROBE_INTERVAL_S if planned.fault is not None else 0.0  # a will arrives at once
    return (
        CONNECT_BUDGET_S
        + planned.starts_after_s
        + detect
        + SCRAPE_INTERVAL_S  # the server's gauge is scraped
        + SCRAPE_INTERVAL_S  # an evaluation sees it: pending
        + rule_for_s
        + SCRAPE_INTERVAL_S  # the evaluation after `for:`: firing
    )
