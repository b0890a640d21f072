"""Scenario probes: deterministic, realistic incidents, and a manual override for tests."""

from __future__ import annotations

import pytest

from agent.clock import FakeClock
from agent.probes.base import Probe
from agent.probes.simulated import (
    RECEIPT_PRINTER,
    Scenario,
    ScenarioPrinter,
    build_scenario_probe,
)
from protocol.messages import PeripheralCondition, PeripheralKind

C = PeripheralCondition


def conditions_over(
    probe: Probe, clock: FakeClock, hours: float, step_s: float = 60.0
) -> list[str]:
    seen = []
    for _ in range(int(hours * 3600 / step_s)):
        clock.advance(step_s)
        status = probe.read()
        seen.append(f"{status.condition.value}:{status.fault_code}")
    return seen


@pytest.mark.parametrize("scenario", list(Scenario))
def test_same_seed_and_same_clock_give_the_same_story(scenario: Scenario) -> None:
    stories = []
    for _ in range(2):
        clock = FakeClock()
        probe = build_scenario_probe(scenario, clock=clock.monotonic, seed="7:T-1", fault_rate=20)
        stories.append(conditions_over(probe, clock, hours=10))
    assert stories[0] == stories[1]
    assert len(set(stories[0])) > 1  # something happened


def test_another_seed_gives_another_story() -> None:
    clock_a, clock_b = FakeClock(), FakeClock()
    a = build_scenario_probe(
        Scenario.ID_CARD_READER, clock=clock_a.monotonic, seed=1, fault_rate=50
    )
    b = build_scenario_probe(
        Scenario.ID_CARD_READER, clock=clock_b.monotonic, seed=2, fault_rate=50
    )
    assert conditions_over(a, clock_a, 5) != conditions_over(b, clock_b, 5)


def test_a_receipt_printer_runs_low_then_out_then_staff_refill_it() -> None:
    clock = FakeClock()
    printer = ScenarioPrinter(
        "receipt_printer", RECEIPT_PRINTER, clock=clock.monotonic, seed=3, initial_fill=0.2
    )
    seen = conditions_over(printer, clock, hours=48)
    compact = [c for i, c in enumerate(seen) if i == 0 or seen[i - 1] != c]
    low, out, ok = "paper_low:None", "paper_out:None", "ok:None"
    assert low in compact
    assert out in compact
    first_out = compact.index(out)
    assert low in compact[:first_out]
    assert ok in compact[first_out:]  # refilled after running out
    assert printer.remaining > 0


def test_fault_rate_speeds_the_scenario_up() -> None:
    slow_clock, fast_clock = FakeClock(), FakeClock()
    slow = build_scenario_probe(Scenario.ID_CARD_READER, clock=slow_clock.monotonic, seed=5)
    fast = build_scenario_probe(
        Scenario.ID_CARD_READER, clock=fast_clock.monotonic, seed=5, fault_rate=100
    )
    slow_story = conditions_over(slow, slow_clock, hours=100)
    fast_story = conditions_over(fast, fast_clock, hours=1, step_s=0.6)
    assert slow_story == fast_story


def test_readers_fault_with_vendor_codes_and_recover() -> None:
    clock = FakeClock()
    reader = build_scenario_probe(
        Scenario.ID_CARD_READER, clock=clock.monotonic, seed=9, fault_rate=30
    )
    seen = conditions_over(reader, clock, hours=24)
    faults = {s for s in seen if s.startswith("fault:")}
    assert faults
    assert all(s.split(":")[1] in {"E17", "E21", "E42"} for s in faults)
    first_fault = next(i for i, s in enumerate(seen) if s.startswith("fault:"))
    assert "ok:None" in seen[first_fault:]


def test_force_overrides_the_scenario_until_release() -> None:
    clock = FakeClock()
    printer = build_scenario_probe(Scenario.RECEIPT_PRINTER, clock=clock.monotonic, seed=1)
    assert printer.read().condition is C.OK
    printer.force(C.PAPER_OUT)
    clock.advance(10)
    assert printer.read().condition is C.PAPER_OUT
    printer.release()
    assert printer.read().condition is C.OK


def test_force_carries_a_fault_code_for_readers() -> None:
    clock = FakeClock()
    scanner = build_scenario_probe(Scenario.QR_SCANNER, clock=clock.monotonic, seed=1)
    scanner.force(C.FAULT, "Q03")
    status = scanner.read()
    assert (status.kind, status.condition, status.fault_code) == (
        PeripheralKind.QR_SCANNER,
        C.FAULT,
        "Q03",
    )


def test_force_refuses_a_condition_the_kind_cannot_have() -> None:
    scanner = build_scenario_probe(Scenario.QR_SCANNER, clock=lambda: 0.0, seed=1)
    with pytest.raises(ValueError, match="does not apply"):
        scanner.force(C.PAPER_OUT)


def test_refill_clears_paper_out_at_once() -> None:
    clock = FakeClock()
    printer = ScenarioPrinter(
        "receipt_printer", RECEIPT_PRINTER, clock=clock.monotonic, seed=1, initial_fill=0.0
    )
    assert printer.read().condition is C.PAPER_OUT
    printer.refill()
    assert printer.read().condition is C.OK


def test_an_unchanged_reading_returns_the_same_status_object() -> None:
    clock = FakeClock()
    printer = build_scenario_probe(Scenario.A4_PRINTER, clock=clock.monotonic, seed=1)
    first = printer.read()
    clock.advance(1)
    assert printer.read() is first
    assert isinstance(printer, Probe)
