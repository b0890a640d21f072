"""Planted update failures are exact for every prefix of the ids, and the simulator refuses
update options that cannot work before anything starts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.simulated_updates import MAX_UPDATING_TERMINALS, planted_failure
from agent.simulator import SimulationOptions


@given(fraction=st.floats(0, 1), k=st.integers(0, 500))
def test_the_first_k_terminals_hold_exactly_floor_k_times_the_fraction_failures(
    fraction: float, k: int
) -> None:
    assert sum(planted_failure(i, fraction) for i in range(1, k + 1)) == math.floor(k * fraction)


def test_thirty_percent_of_twenty_fails_at_evenly_spread_ids() -> None:
    assert [i for i in range(1, 21) if planted_failure(i, 0.3)] == [4, 7, 10, 14, 17, 20]
    assert not any(planted_failure(i, 0.0) for i in range(1, 21))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"update_failure_fraction": 1.5}, "update_failure_fraction"),
        ({"updates_server_url": "http://127.0.0.1:1"}, "trusted_root"),
        (
            {
                "updates_server_url": "http://127.0.0.1:1",
                "trusted_root": Path("root.json"),
                "terminals": MAX_UPDATING_TERMINALS + 1,
            },
            "per process",
        ),
    ],
)
def test_update_options_that_cannot_work_are_refused(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SimulationOptions(**changes).check()  # type: ignore[arg-type]  # a mix of field types
