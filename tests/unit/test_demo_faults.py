"""The demo's planted faults fire their alerts within 3 minutes, under the real rules.

Computed from the rules file the demo's Prometheus loads (its `for:` and its selectors)
and the demo's plan: this fails when a rule's `for:` grows past what fits in the
promise, or when a planted fault no longer matches its rule's selector.
"""

from __future__ import annotations

import re

import pytest
import yaml

from agent.planted_faults import PlantedFault, PlantedOutage
from agent.probes.simulated import MODELS, Scenario
from kioskfleet.demo_faults import (
    FIRING_WITHIN_S,
    SCRAPE_INTERVAL_S,
    PlannedAlert,
    demo_fault_plan,
    simulate_args,
    worst_case_firing_s,
)
from kioskfleet.local_prometheus import project_rules_file
from protocol.messages import PeripheralKind
from protocol.taxonomy import family_of

_UNITS = {"s": 1, "m": 60, "h": 3600}


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)([smh])", duration)
    assert match, duration
    return int(match[1]) * _UNITS[match[2]]


def _rules() -> dict[str, dict[str, str]]:
    document = yaml.safe_load(project_rules_file().read_text())
    return {
        rule["alert"]: rule
        for group in document["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


PLAN = demo_fault_plan(50)


def test_the_demo_promises_paper_out_card_reader_and_offline() -> None:
    assert {p.alert for p in PLAN} >= {"PrinterPaperOut", "CardReaderFault", "TerminalOffline"}


@pytest.mark.parametrize("planned", PLAN, ids=lambda p: p.alert)
def test_each_planted_fault_fires_within_three_minutes_and_lasts_past_its_for(
    planned: PlannedAlert,
) -> None:
    rule = _rules()[planned.alert]
    rule_for = _seconds(rule.get("for", "0s"))
    assert worst_case_firing_s(planned, rule_for) <= FIRING_WITHIN_S, (planned.alert, rule_for)
    if planned.hold_s is not None:
        assert planned.hold_s >= rule_for + 2 * SCRAPE_INTERVAL_S


@pytest.mark.parametrize("planned", [p for p in PLAN if p.fault], ids=lambda p: p.alert)
def test_each_planted_peripheral_fault_matches_its_rules_selector(planned: PlannedAlert) -> None:
    fault = planned.fault
    assert fault is not None
    expr = _rules()[planned.alert]["expr"]
    kind = PeripheralKind(Scenario(fault.probe).value)
    assert f'family="{family_of(kind).family.value}"' in expr
    selected = re.search(r'condition=~?"([^"]+)"', expr)
    assert selected is not None
    assert fault.condition.value in selected[1].split("|")


def test_planted_terminals_carry_the_planted_probes_and_are_distinct() -> None:
    ids = [p.terminal_id for p in PLAN]
    assert len(set(ids)) == len(ids)
    for planned in PLAN:
        index = int(planned.terminal_id.rsplit("-", 1)[1])
        model = tuple(MODELS)[(index - 1) % len(MODELS)]
        if planned.fault is not None:
            assert Scenario(planned.fault.probe) in MODELS[model]


def test_the_simulate_flags_parse_back_into_the_plan() -> None:
    args = simulate_args(PLAN)
    faults = [PlantedFault.parse(a.split("=", 1)[1]) for a in args if a.startswith("--plant=")]
    outages = [
        PlantedOutage.parse(a.split("=", 1)[1]) for a in args if a.startswith("--plant-outage=")
    ]
    assert faults == [p.fault for p in PLAN if p.fault]
    assert outages == [p.outage for p in PLAN if p.outage]


@pytest.mark.parametrize(
    "text", ["X", "T-1:printer", "T-1:printer:melting", "bad id:p:fault", "T-1::fault"]
)
def test_malformed_planted_faults_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="planted fault"):
        PlantedFault.parse(text)


@pytest.mark.parametrize("text", ["T-1", "T-1:soon", "T-1:-5", ":10"])
def test_malformed_planted_outages_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="planted outage"):
        PlantedOutage.parse(text)


def test_a_fleet_too_small_for_the_plan_plants_nothing() -> None:
    assert demo_fault_plan(2) == []
    assert simulate_args(demo_fault_plan(2)) == []
