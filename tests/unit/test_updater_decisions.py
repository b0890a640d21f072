"""The updater's pure decisions: may this release be installed, may it be installed now,
how an install's outcome is reported, and what the state file must look like."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.install import InstallOutcome, InstallResult
from agent.updater import (
    DIRECTIVE_KEY_TARGET,
    WINDOW_OVER,
    UpdaterState,
    UpdaterStateError,
    check_release,
    outcome_ending,
    window_wait,
)
from kioskfleet import update_repo
from protocol.directives import Directive, DirectiveTarget
from protocol.update_status import UpdateState
from tests.support.tuf_world import release_manifest

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _check(counter: int = 3, highest: int | None = 2, **changes: Any) -> tuple[str, str]:
    ending = check_release(
        release_manifest(counter, **changes),
        model="KX-100",
        agent_version="1.10.0",
        highest_counter=highest,
    )
    return ("ok", "") if ending is None else (str(ending.state), str(ending.reason))


def test_the_pin_target_is_the_one_the_operator_tool_writes() -> None:
    assert DIRECTIVE_KEY_TARGET == update_repo.DIRECTIVE_KEY_TARGET


def test_a_higher_counter_for_this_model_may_be_installed_and_a_first_install_too() -> None:
    assert _check() == ("ok", "")
    assert _check(counter=1, highest=None) == ("ok", "")


def test_a_lower_counter_is_a_downgrade_and_an_equal_one_already_installed() -> None:
    assert _check(counter=1) == ("rejected", "downgrade")
    assert _check(counter=2) == ("already_installed", "None")


def test_another_model_is_refused_before_the_counter_is_looked_at() -> None:
    assert _check(counter=1, compatible_models=["KX-200"]) == ("rejected", "wrong_model")


@pytest.mark.parametrize(
    ("needed", "verdict"),
    [("1.9", "ok"), ("1.10", "ok"), ("1.10.0.1", "rejected"), ("2", "rejected")],
)
def test_the_agent_version_is_compared_numerically(needed: str, verdict: str) -> None:
    assert _check(min_agent_version=needed)[0] == verdict


def _directive(**changes: object) -> Directive:
    values: dict[str, object] = {
        "terminal_id": "T-0001",
        "rollout_id": "R-1",
        "seq": 1,
        "target": DirectiveTarget(path="acme/a.tar", length=1, sha256="0" * 64),
        "issued_at": NOW,
        "expires_at": NOW + timedelta(hours=1),
        "not_before": NOW,
        "not_after": NOW + timedelta(hours=6),
    }
    values.update(changes)
    return Directive.model_validate(values)


def test_the_window_waits_for_its_start_and_a_closed_hall_and_ends_at_not_after() -> None:
    d = _directive()
    assert window_wait(d, NOW - timedelta(seconds=1), hall_is_open=False) == (
        "the install window has not begun"
    )
    assert window_wait(d, NOW, hall_is_open=True) == "the hall is open"
    assert window_wait(d, NOW, hall_is_open=False) is None
    assert window_wait(d, NOW + timedelta(hours=6), hall_is_open=False) == WINDOW_OVER
    assert window_wait(_directive(install_while_open=True), NOW, hall_is_open=True) is None


@pytest.mark.parametrize(
    ("result", "reason", "state", "wire_reason"),
    [
        (InstallResult.SUCCEEDED, "healthy", UpdateState.SUCCEEDED, None),
        (
            InstallResult.ROLLED_BACK,
            "health_check_failed",
            UpdateState.ROLLED_BACK,
            "health_check_failed",
        ),
        (InstallResult.ROLLED_BACK, "activate_failed", UpdateState.ROLLED_BACK, "install_failed"),
        (InstallResult.REJECTED, "symlink_escape", UpdateState.REJECTED, "unsafe_archive"),
        (InstallResult.FAILED, "prepare_failed", UpdateState.FAILED, "install_failed"),
        (InstallResult.ROLLED_BACK, "interrupted", UpdateState.ROLLED_BACK, "interrupted"),
        (InstallResult.FAILED, "interrupted", UpdateState.FAILED, "interrupted"),
    ],
)
def test_each_install_outcome_has_its_state_and_reason_code(
    result: InstallResult, reason: str, state: UpdateState, wire_reason: str | None
) -> None:
    ending = outcome_ending(InstallOutcome(result, "1.0", reason, "why"))
    assert (ending.state, None if ending.reason is None else str(ending.reason)) == (
        state,
        wire_reason,
    )
    assert ending.detail == f"{reason}: why"


def test_the_state_round_trips_and_a_missing_file_is_the_empty_state(tmp_path: Path) -> None:
    path = tmp_path / "state" / "updater.json"
    assert UpdaterState.load(path) == UpdaterState()
    UpdaterState(7, {"kiosk-app": 3}).save(path)
    assert UpdaterState.load(path) == UpdaterState(7, {"kiosk-app": 3})
    pending: dict[str, str | int] = {
        "handler": "bundle",
        "package": "kiosk-app",
        "version": "1.4.0",
        "release_counter": 4,
    }
    UpdaterState(8, {"kiosk-app": 3}, pending).save(path)
    assert UpdaterState.load(path) == UpdaterState(8, {"kiosk-app": 3}, pending)
    assert [p.name for p in path.parent.iterdir()] == ["updater.json"]  # no temp file left


@pytest.mark.parametrize(
    "content",
    [
        "{",
        "[]",
        json.dumps({"schema_version": 2, "last_seq": 1, "highest_counter": {}}),
        json.dumps({"schema_version": 1, "last_seq": True, "highest_counter": {}}),
        json.dumps({"schema_version": 1, "last_seq": 1, "highest_counter": {"a": "3"}}),
        json.dumps(
            {"schema_version": 1, "last_seq": 1, "highest_counter": {}, "installing": {"a": 1}}
        ),
    ],
)
def test_a_state_file_this_version_did_not_write_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "updater.json"
    path.write_text(content)
    with pytest.raises(UpdaterStateError):
        UpdaterState.load(path)
