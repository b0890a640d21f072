"""The update-state tally: one series per state, latest status per terminal wins."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from protocol.update_status import UpdateState
from server.update_tally import UPDATE_STATES, UpdateTally


def _gauge(registry: CollectorRegistry, state: str) -> float | None:
    return registry.get_sample_value("kioskfleet_update_terminals", {"state": state})


def test_every_one_of_the_14_states_is_exported_even_at_zero() -> None:
    registry = CollectorRegistry()
    UpdateTally(registry)
    assert len(UPDATE_STATES) == len(UpdateState) == 14
    assert all(_gauge(registry, state) == 0 for state in UPDATE_STATES)


def test_a_terminal_counts_once_in_the_state_of_its_latest_status() -> None:
    registry = CollectorRegistry()
    tally = UpdateTally(registry)
    tally.note("T-1", "downloading")
    tally.note("T-1", "rolled_back")
    tally.note("T-2", "rolled_back")
    tally.note("T-3", "succeeded")
    assert _gauge(registry, "rolled_back") == 2
    assert _gauge(registry, "downloading") == 0
    assert _gauge(registry, "succeeded") == 1
    statuses = "kioskfleet_update_statuses_total"
    assert registry.get_sample_value(statuses, {"state": "rolled_back"}) == 2
    assert registry.get_sample_value(statuses, {"state": "downloading"}) == 1


def test_load_replaces_the_tally_and_forget_drops_a_decommissioned_terminal() -> None:
    registry = CollectorRegistry()
    tally = UpdateTally(registry)
    tally.note("T-9", "installing")
    tally.load({"T-1": "succeeded", "T-2": "succeeded", "T-3": "not-a-state"})
    assert tally.counts()["succeeded"] == 2
    assert tally.counts()["installing"] == 0
    assert sum(tally.counts().values()) == 2  # an unknown state is not counted
    tally.forget("T-1")
    assert tally.counts()["succeeded"] == 1


def test_an_unknown_state_adds_no_series() -> None:
    registry = CollectorRegistry()
    tally = UpdateTally(registry)
    tally.note("T-1", "exploded")
    assert _gauge(registry, "exploded") is None
    assert sum(tally.counts().values()) == 0
