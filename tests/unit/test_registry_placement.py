"""With the terminal registry on, hall, region and model come from the registry's placement,
never from what the terminal's messages claim (the pure rules, through FleetState)."""

from __future__ import annotations

from server.fleet_state import FleetState
from server.terminal_rules import Placement
from tests.support.fleet_messages import at, report, state

REGISTERED = {"T-1": Placement("Hall Registered", "Region Registered", "KX-REG")}


def placed_fleet() -> FleetState:
    return FleetState(placements=REGISTERED.get)


def test_a_report_claiming_another_hall_is_shown_in_the_registry_hall() -> None:
    fleet = placed_fleet()
    fleet.apply(report("T-1", 1, hall="Hall Claimed", region="Region Claimed"), at(1))
    view = fleet.get("T-1")
    assert view is not None
    assert (view.hall, view.region, view.model) == (
        "Hall Registered",
        "Region Registered",
        "KX-REG",
    )
    assert [h.hall for h in fleet.halls()] == ["Hall Registered"]


def test_a_state_message_claiming_a_hall_is_placed_by_the_registry_too() -> None:
    fleet = placed_fleet()
    fleet.apply(state("T-1", True, hall="Hall Claimed"), at(1))
    view = fleet.get("T-1")
    assert view is not None
    assert view.hall == "Hall Registered"


def test_without_placements_the_report_decides_as_before() -> None:
    fleet = FleetState()
    fleet.apply(report("T-1", 1, hall="Hall Claimed"), at(1))
    view = fleet.get("T-1")
    assert view is not None
    assert view.hall == "Hall Claimed"
