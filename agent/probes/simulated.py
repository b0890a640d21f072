"""Scenario probes: peripherals that behave like a busy service hall's, for the simulator and demo.

Each probe plays one scenario (a receipt printer that runs out of paper and is
refilled by staff, an A4 printer; a reader, scanner or payment device that is
ok but for independent incidents, each with its own rate and repair time) as a
sequence of random incidents drawn from its own seeded ``random.Random``.
A new kind of device is one ``Scenario`` member and one ``IncidentScenario``
in the table below; ``MODELS`` says which simulated terminal models carry it. Time comes only from the injected ``clock`` (monotonic
seconds): the same seed and the same clock readings give the same conditions.
``fault_rate`` runs the whole scenario faster (every rate multiplied, every
repair delay divided), so a demo shows a day of incidents in minutes.

Tests steer a probe by hand with ``force(condition, fault_code)`` and
``release()``; printers also have ``refill()``.

This module never reads the wall clock, sleeps, or touches a device.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.probes.base import NamedProbe, Verdict, status_from_verdict
from protocol.messages import Name, PeripheralCondition, PeripheralKind, PeripheralStatus
from protocol.taxonomy import most_severe

__all__ = [
    "A4_PRINTER",
    "CASH_ACCEPTOR",
    "ID_CARD_READER",
    "MODELS",
    "QR_SCANNER",
    "RECEIPT_PRINTER",
    "Incident",
    "IncidentScenario",
    "PrinterScenario",
    "Scenario",
    "ScenarioDevice",
    "ScenarioPrinter",
    "ScenarioProbe",
    "SimulatedProbeSpec",
    "build_scenario_probe",
]

_HOUR = 3600.0
_MINUTE = 60.0


class Scenario(StrEnum):
    """The peripheral scenarios a simulated terminal can carry."""

    RECEIPT_PRINTER = "receipt_printer"
    A4_PRINTER = "a4_printer"
    ID_CARD_READER = "id_card_reader"
    QR_SCANNER = "qr_scanner"
    CASH_ACCEPTOR = "cash_acceptor"


@dataclass(frozen=True, slots=True)
class PrinterScenario:
    """How a printer is used and how it fails, in scenario seconds (before ``fault_rate``)."""

    kind: PeripheralKind
    capacity: float  # paper units in a full load: cm of roll, or sheets
    unit: str  # "cm" or "sheets", for the detail text
    use_per_print: tuple[float, float]  # uniform range of units one print consumes
    transactions_per_hour: float
    print_probability: float  # share of transactions that print on this printer
    low_fraction: float  # paper_low below this share of capacity
    jam_per_print: float
    jam_clear_s: tuple[float, float]
    cover_open_per_hour: float
    cover_close_s: tuple[float, float]
    refill_delay_s: tuple[float, float]  # staff notice paper_out and refill


@dataclass(frozen=True, slots=True)
class Incident:
    """One way a device fails: how often (per scenario hour), for how long, with which codes."""

    condition: PeripheralCondition
    per_hour: float
    clear_s: tuple[float, float]  # uniform range until it clears (repair, reconnect, emptying)
    fault_codes: tuple[str, ...] = ()  # one is drawn per occurrence; none: no fault code
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class IncidentScenario:
    """A device that is ``ok`` but for independent incidents (readers, scanners, payment).

    When several are under way at once, the family's precedence
    (``protocol.taxonomy``) says which one the device reports.
    """

    kind: PeripheralKind
    incidents: tuple[Incident, ...]


RECEIPT_PRINTER = PrinterScenario(
    kind=PeripheralKind.RECEIPT_PRINTER,
    capacity=8000.0,  # an 80 m roll
    unit="cm",
    use_per_print=(8.0, 20.0),
    transactions_per_hour=25.0,
    print_probability=0.9,
    low_fraction=0.1,
    jam_per_print=1 / 1500,
    jam_clear_s=(3 * _MINUTE, 20 * _MINUTE),
    cover_open_per_hour=1 / 48,
    cover_close_s=(1 * _MINUTE, 8 * _MINUTE),
    refill_delay_s=(10 * _MINUTE, 45 * _MINUTE),
)
A4_PRINTER = PrinterScenario(
    kind=PeripheralKind.A4_PRINTER,
    capacity=250.0,  # one tray
    unit="sheets",
    use_per_print=(1.0, 3.0),
    transactions_per_hour=25.0,
    print_probability=0.2,
    low_fraction=0.1,
    jam_per_print=1 / 2000,
    jam_clear_s=(5 * _MINUTE, 30 * _MINUTE),
    cover_open_per_hour=1 / 96,
    cover_close_s=(1 * _MINUTE, 5 * _MINUTE),
    refill_delay_s=(15 * _MINUTE, 60 * _MINUTE),
)
ID_CARD_READER = IncidentScenario(
    kind=PeripheralKind.ID_CARD_READER,
    incidents=(
        Incident(
            PeripheralCondition.FAULT,
            per_hour=1 / 72,
            clear_s=(2 * _MINUTE, 20 * _MINUTE),
            fault_codes=("E17", "E21", "E42"),
        ),
        Incident(
            PeripheralCondition.DISCONNECTED,
            per_hour=1 / 168,
            clear_s=(5 * _MINUTE, 60 * _MINUTE),
            detail="device not present",
        ),
    ),
)
QR_SCANNER = IncidentScenario(
    kind=PeripheralKind.QR_SCANNER,
    incidents=(
        Incident(
            PeripheralCondition.FAULT,
            per_hour=1 / 96,
            clear_s=(1 * _MINUTE, 10 * _MINUTE),
            fault_codes=("Q03", "Q11"),
        ),
        Incident(
            PeripheralCondition.DISCONNECTED,
            per_hour=1 / 240,
            clear_s=(5 * _MINUTE, 30 * _MINUTE),
            detail="device not present",
        ),
    ),
)

CASH_ACCEPTOR = IncidentScenario(
    kind=PeripheralKind.CASH_ACCEPTOR,
    incidents=(
        Incident(
            PeripheralCondition.FULL,
            per_hour=1 / 120,
            clear_s=(15 * _MINUTE, 90 * _MINUTE),  # staff empty the cash box
            detail="cash box full",
        ),
        Incident(
            PeripheralCondition.JAM,
            per_hour=1 / 60,
            clear_s=(3 * _MINUTE, 30 * _MINUTE),
            fault_codes=("J01", "J04"),
        ),
        Incident(
            PeripheralCondition.FAULT,
            per_hour=1 / 240,
            clear_s=(5 * _MINUTE, 60 * _MINUTE),
            fault_codes=("C12", "C30"),
        ),
        Incident(
            PeripheralCondition.DISCONNECTED,
            per_hour=1 / 336,
            clear_s=(5 * _MINUTE, 60 * _MINUTE),
            detail="device not present",
        ),
    ),
)

_SCENARIOS: dict[Scenario, PrinterScenario | IncidentScenario] = {
    Scenario.RECEIPT_PRINTER: RECEIPT_PRINTER,
    Scenario.A4_PRINTER: A4_PRINTER,
    Scenario.ID_CARD_READER: ID_CARD_READER,
    Scenario.QR_SCANNER: QR_SCANNER,
    Scenario.CASH_ACCEPTOR: CASH_ACCEPTOR,
}

MODELS: dict[str, tuple[Scenario, ...]] = {
    "KF-200": (Scenario.RECEIPT_PRINTER, Scenario.ID_CARD_READER, Scenario.QR_SCANNER),
    "KF-300": (
        Scenario.RECEIPT_PRINTER,
        Scenario.A4_PRINTER,
        Scenario.ID_CARD_READER,
        Scenario.QR_SCANNER,
        Scenario.CASH_ACCEPTOR,
    ),
}
"""The simulated terminal models and the peripherals each carries (the simulator's fleet)."""

_Forced = tuple[PeripheralCondition, str | None]


class _ScenarioBase(NamedProbe):
    """Scenario time, the manual override and the cached status shared by every scenario probe."""

    def __init__(
        self,
        name: str,
        kind: PeripheralKind,
        *,
        clock: Callable[[], float],
        seed: int | str,
        fault_rate: float,
    ) -> None:
        if fault_rate <= 0:
            raise ValueError("fault_rate must be positive")
        super().__init__(name, kind)
        self._clock = clock
        self._rng = random.Random(seed)  # noqa: S311 - scenario dice, not cryptography
        self._speed = fault_rate
        self._origin = clock()
        self._t = 0.0  # scenario seconds reached so far
        self._forced: _Forced | None = None
        self._lock = threading.Lock()  # force()/release() may come from a test thread
        self._last: PeripheralStatus | None = None

    def force(self, condition: PeripheralCondition, fault_code: str | None = None) -> None:
        """Report ``condition`` (and ``fault_code``) from now on, whatever the scenario says.

        Raises ValueError if the condition does not apply to this kind of peripheral.
        """
        status_from_verdict(self._name, self._kind, (condition, fault_code, None))  # validates
        with self._lock:
            self._forced = (condition, fault_code)

    def release(self) -> None:
        """Stop forcing: the scenario's own condition is reported again."""
        with self._lock:
            self._forced = None

    def read(self) -> PeripheralStatus:
        """The condition at the clock's current reading; never raises for a simulated fault."""
        now = (self._clock() - self._origin) * self._speed
        with self._lock:
            if now > self._t:
                self._advance(now)
                self._t = now
            forced = self._forced
            condition, fault_code, detail = (
                (forced[0], forced[1], "forced by test") if forced else self._condition()
            )
        last = self._last
        if (
            last is not None
            and last.condition is condition
            and last.fault_code == fault_code
            and last.detail == detail
        ):
            return last
        self._last = status_from_verdict(self._name, self._kind, (condition, fault_code, detail))
        return self._last

    def _uniform(self, bounds: tuple[float, float]) -> float:
        return self._rng.uniform(*bounds)

    def _next_after(self, t: float, per_hour: float) -> float:
        if per_hour <= 0:
            return float("inf")
        return t + self._rng.expovariate(per_hour / _HOUR)

    def _advance(self, to_t: float) -> None:
        raise NotImplementedError

    def _condition(self) -> Verdict:
        raise NotImplementedError


class ScenarioPrinter(_ScenarioBase):
    """A printer that consumes paper per transaction, jams, and gets refilled by staff."""

    def __init__(
        self,
        name: str,
        scenario: PrinterScenario,
        *,
        clock: Callable[[], float],
        seed: int | str,
        fault_rate: float = 1.0,
        initial_fill: float | None = None,
    ) -> None:
        super().__init__(name, scenario.kind, clock=clock, seed=seed, fault_rate=fault_rate)
        self._s = scenario
        fill = self._rng.uniform(0.3, 1.0) if initial_fill is None else initial_fill
        self._remaining = scenario.capacity * fill
        self._next_tx = self._next_after(0.0, scenario.transactions_per_hour)
        self._next_cover = self._next_after(0.0, scenario.cover_open_per_hour)
        self._jam_until: float | None = None
        self._cover_until: float | None = None
        self._refill_at: float | None = None

    @property
    def remaining(self) -> float:
        """Paper left, in the scenario's unit."""
        return self._remaining

    def refill(self) -> None:
        """Staff load a full roll or tray now."""
        with self._lock:
            self._remaining = self._s.capacity
            self._refill_at = None

    def _advance(self, to_t: float) -> None:
        s = self._s
        while True:
            t = min(
                self._next_tx,
                self._next_cover,
                self._jam_until if self._jam_until is not None else float("inf"),
                self._cover_until if self._cover_until is not None else float("inf"),
                self._refill_at if self._refill_at is not None else float("inf"),
            )
            if t > to_t:
                return
            if t == self._jam_until:
                self._jam_until = None
            elif t == self._cover_until:
                self._cover_until = None
            elif t == self._refill_at:
                self._remaining = s.capacity
                self._refill_at = None
            elif t == self._next_cover:
                self._next_cover = self._next_after(t, s.cover_open_per_hour)
                if self._cover_until is None:
                    self._cover_until = t + self._uniform(s.cover_close_s)
            else:
                self._next_tx = self._next_after(t, s.transactions_per_hour)
                self._transaction(t)

    def _transaction(self, t: float) -> None:
        s = self._s
        if self._rng.random() >= s.print_probability:
            return
        if self._jam_until is not None or self._cover_until is not None or self._remaining <= 0:
            return  # the citizen gets no printout; nothing changes
        self._remaining = max(0.0, self._remaining - self._uniform(s.use_per_print))
        if self._remaining <= 0:
            self._refill_at = t + self._uniform(s.refill_delay_s)
        elif self._rng.random() < s.jam_per_print:
            self._jam_until = t + self._uniform(s.jam_clear_s)

    def _condition(self) -> Verdict:
        if self._cover_until is not None:
            return PeripheralCondition.COVER_OPEN, None, None
        if self._jam_until is not None:
            return PeripheralCondition.JAM, None, None
        if self._remaining <= 0:
            return PeripheralCondition.PAPER_OUT, None, None
        if self._remaining < self._s.capacity * self._s.low_fraction:
            return (
                PeripheralCondition.PAPER_LOW,
                None,
                f"about {self._remaining:.0f} {self._s.unit} left",
            )
        return PeripheralCondition.OK, None, None


class ScenarioDevice(_ScenarioBase):
    """A reader, scanner or payment device that is ok but for the incidents of its scenario."""

    def __init__(
        self,
        name: str,
        scenario: IncidentScenario,
        *,
        clock: Callable[[], float],
        seed: int | str,
        fault_rate: float = 1.0,
    ) -> None:
        super().__init__(name, scenario.kind, clock=clock, seed=seed, fault_rate=fault_rate)
        self._incidents = scenario.incidents
        self._next = [self._next_after(0.0, i.per_hour) for i in scenario.incidents]
        # Per incident: (until, fault code) while it is under way, else None.
        self._active: list[tuple[float, str | None] | None] = [None] * len(scenario.incidents)

    def _advance(self, to_t: float) -> None:
        inf = float("inf")
        while True:
            ends = [a[0] if a is not None else inf for a in self._active]
            t = min(*self._next, *ends)
            if t > to_t:
                return
            if t in ends:
                self._active[ends.index(t)] = None
                continue
            i = self._next.index(t)
            incident = self._incidents[i]
            self._next[i] = self._next_after(t, incident.per_hour)
            if self._active[i] is None:
                code = self._rng.choice(incident.fault_codes) if incident.fault_codes else None
                self._active[i] = (t + self._uniform(incident.clear_s), code)

    def _condition(self) -> Verdict:
        under_way = {
            incident.condition: (incident, active[1])
            for incident, active in zip(self._incidents, self._active, strict=True)
            if active is not None
        }
        worst = most_severe(self._kind, under_way)
        if worst is PeripheralCondition.OK:
            return PeripheralCondition.OK, None, None
        incident, code = under_way[worst]
        return worst, code, incident.detail


ScenarioProbe = ScenarioPrinter | ScenarioDevice


def build_scenario_probe(
    scenario: Scenario,
    *,
    clock: Callable[[], float],
    seed: int | str,
    fault_rate: float = 1.0,
    name: str | None = None,
) -> ScenarioProbe:
    """A scenario probe named ``name`` (default: the scenario's name)."""
    params = _SCENARIOS[scenario]
    probe_name = name or scenario.value
    if isinstance(params, PrinterScenario):
        return ScenarioPrinter(probe_name, params, clock=clock, seed=seed, fault_rate=fault_rate)
    return ScenarioDevice(probe_name, params, clock=clock, seed=seed, fault_rate=fault_rate)


class SimulatedProbeSpec(BaseModel):
    """``[[probes]] type = "simulated"``: a scenario probe in a real agent's config (demo, tests).

    Shaped like the hardware specs in ``agent.probes.factory`` (frozen, no
    unknown keys, a required wire ``name``) and part of its ``ProbeSpec`` union.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["simulated"] = "simulated"
    name: Name
    scenario: Scenario
    seed: int = 0
    fault_rate: Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)] = 1.0

    def build(self, clock: Callable[[], float] = time.monotonic) -> ScenarioProbe:
        """The probe this spec describes, reading time from ``clock``."""
        return build_scenario_probe(
            self.scenario,
            clock=clock,
            seed=f"{self.seed}:{self.name}",
            fault_rate=self.fault_rate,
            name=self.name,
        )
