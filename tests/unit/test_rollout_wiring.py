"""Rollout wiring guardrails: the planner state survives its JSON codec, a malformed
document is a ValueError (never half-read), and every rollout route declares a role and an
audit name."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from fastapi.routing import APIRoute

from server.access import Role
from server.access_api import declared_role
from server.rollout_api import rollout_router
from server.rollout_codec import (
    definition_from_json,
    definition_to_json,
    rollout_from_json,
    rollout_to_json,
)
from server.rollout_planner import (
    MANUAL,
    AbortThreshold,
    Delay,
    Phase,
    RolloutDefinition,
    RolloutStatus,
    TerminalProgress,
    TerminalState,
    new_rollout,
)

DEFINITION = RolloutDefinition(
    rollout_id="R-1",
    target="acme/app.bin",
    created_by="token:alice",
    phases=(Phase(2, "count"), Phase(50, gate=MANUAL), Phase(100, gate=Delay(12.5))),
    success_threshold=0.95,
    abort=AbortThreshold(0.1, 5),
    terminal_timeout_s=900.0,
    max_attempts=2,
)


def test_a_rollout_survives_its_json_codec() -> None:
    at = datetime(2026, 12, 3, 10, tzinfo=UTC)
    rollout = replace(
        new_rollout(DEFINITION),
        status=RolloutStatus.PAUSED,
        gate_open=False,
        gate_opens_at=at,
        terminals=(TerminalProgress("T-1", TerminalState.FAILED, 0, 2, 1, at, at),),
    )
    definition = definition_from_json(definition_to_json(DEFINITION))
    assert definition == DEFINITION
    assert rollout_from_json(definition, rollout_to_json(rollout)) == rollout


@pytest.mark.parametrize(
    "broken",
    [{}, {**definition_to_json(DEFINITION), "phases": [{"size": 1, "unit": "percent", "gate": 3}]}],
)
def test_a_malformed_definition_is_a_value_error(broken: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"gate|not a rollout definition"):
        definition_from_json(broken)


def test_every_rollout_route_declares_a_role_and_changes_carry_an_audit_name() -> None:
    routes = [r for r in rollout_router(lambda: None).routes if isinstance(r, APIRoute)]  # type: ignore[arg-type,return-value]  # never called
    assert len(routes) == 8
    for route in routes:
        role = declared_role(route)
        if "POST" in (route.methods or set()):
            assert role is Role.OPERATOR, route.path
            assert route.name.startswith("rollout."), route.path
        else:
            assert role is Role.VIEWER, route.path


def test_the_driver_reads_the_pin_the_operator_tool_writes() -> None:
    from kioskfleet.update_repo import DIRECTIVE_KEY_TARGET
    from server.rollout_service import DIRECTIVE_KEY_PIN

    assert DIRECTIVE_KEY_PIN == DIRECTIVE_KEY_TARGET
