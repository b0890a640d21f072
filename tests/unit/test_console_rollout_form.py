"""The console's rollout create form read into the API's body model: phases written as
``5, 25%@manual, 100%@600s``, the selector's empty fields left out, every wrong field named."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.console.rollout_pages import RolloutFormError, parse_phases, rollout_form
from server.rollout_api import PhaseIn

FORM = {
    "rollout_id": "R-1",
    "target": "acme/app.tar.gz",
    "region": "",
    "hall": " hall-01 ",
    "model": "",
    "phases": "5, 100%",
    "success_threshold": "0.9",
    "abort_failure_ratio": "0.5",
    "abort_min_decided": "10",
    "terminal_timeout_s": "600",
    "max_attempts": "1",
}


def test_phases_are_counts_or_shares_each_with_an_optional_gate() -> None:
    assert parse_phases("5, 25%@manual,100 %@600s") == [
        PhaseIn(size=5, unit="count", gate=0.0),
        PhaseIn(size=25, unit="percent", gate="manual"),
        PhaseIn(size=100, unit="percent", gate=600.0),
    ]


_PHASES = st.lists(
    st.builds(
        PhaseIn,
        size=st.integers(1, 10**6),
        unit=st.sampled_from(["count", "percent"]),
        gate=st.one_of(st.just(0.0), st.just("manual"), st.integers(1, 10**6).map(float)),
    ),
    min_size=1,
    max_size=20,
)


def _written(phase: PhaseIn) -> str:
    gate = "" if phase.gate == 0.0 else "@manual" if phase.gate == "manual" else f"@{phase.gate}s"
    return f"{phase.size}{'%' if phase.unit == 'percent' else ''}{gate}"


@given(_PHASES)
def test_any_phases_written_as_the_form_says_read_back_the_same(phases: list[PhaseIn]) -> None:
    assert parse_phases(", ".join(_written(p) for p in phases)) == phases


@pytest.mark.parametrize("text", ["", "5,", "five", "5@later", "-1", "0", "5%@600"])
def test_a_phase_that_is_not_one_is_refused_naming_the_field(text: str) -> None:
    with pytest.raises(RolloutFormError) as refused:
        parse_phases(text)
    assert refused.value.field == "phases"


def test_the_form_becomes_the_apis_body_with_only_the_selector_fields_given() -> None:
    body = rollout_form(FORM)
    assert (body.rollout_id, body.target, body.max_attempts) == ("R-1", "acme/app.tar.gz", 1)
    assert body.selector.model_dump(exclude_none=True) == {"hall": "hall-01"}
    assert [p.size for p in body.phases] == [5, 100]
    assert body.install_while_open is False
    assert rollout_form({**FORM, "install_while_open": "on"}).install_while_open is True


@pytest.mark.parametrize(
    ("field", "value"),
    [("success_threshold", "1.5"), ("max_attempts", "many"), ("rollout_id", "no spaces")],
)
def test_a_wrong_field_is_named(field: str, value: str) -> None:
    with pytest.raises(RolloutFormError) as refused:
        rollout_form({**FORM, field: value})
    assert refused.value.field == field
