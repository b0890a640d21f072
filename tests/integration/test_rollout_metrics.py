"""The rollout gauges on a live server's /metrics while a real rollout runs (real mosquitto,
real server, SQLite and PostgreSQL, directives verified by a real TUF client): terminals by
phase and state, the status, the phase and the progress clock follow what the terminals
report; an abort shows as status aborted, and a real Prometheus scraping the server with the
project's rules fires ``RolloutAborted`` for it (skipped without the prometheus binary)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tuf.ngclient import Updater

from kioskfleet.local_prometheus import LocalPrometheus, prometheus_binary
from server.access import Role
from server.main import Server
from tests.integration.conftest import RawTerminal, ServerFactory, api, token
from tests.integration.test_rollouts import (
    FAILURE,
    CmdInbox,
    _create,
    _post,
    _status,
    _verified,
    fleet,
    server,
    updater,
    with_registry,  # noqa: F401 - the fixture that `server` asks for
    world,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

# fixtures reused from the rollout tests and the Prometheus alert tests
__all__ = ["fleet", "server", "updater", "world"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _rollout_samples(server: Server, rollout_id: str) -> Samples:
    """The ``kioskfleet_rollout_*`` samples of ``rollout_id`` on /metrics, ``rollout`` label
    dropped."""
    response = api(server, "/metrics")
    assert response.status_code == 200, response.text
    return {
        (s.name, frozenset((k, v) for k, v in s.labels.items() if k != "rollout")): s.value
        for family in text_string_to_metric_families(response.text)
        if family.name.startswith("kioskfleet_rollout_")
        for s in family.samples
        if s.labels.get("rollout") == rollout_id
    }


def _terminals(samples: Samples) -> dict[tuple[str, str], float]:
    """(phase, state) -> terminals."""
    out = {}
    for (name, labels), value in samples.items():
        if name == "kioskfleet_rollout_terminals":
            d = dict(labels)
            out[(d["phase"], d["state"])] = value
    return out


def _status_of(samples: Samples) -> list[str]:
    return [
        dict(labels)["status"]
        for (name, labels), value in samples.items()
        if name == "kioskfleet_rollout_status" and value == 1
    ]


def _one(samples: Samples, name: str) -> float:
    return samples[(name, frozenset())]


def _wait_for(
    server: Server, rollout_id: str, check: Callable[[Samples], bool], what: str
) -> Samples:
    """The rollout's samples once ``check`` holds for them (polling /metrics)."""

    def ready() -> Samples | None:
        samples = _rollout_samples(server, rollout_id)
        return samples if samples and check(samples) else None

    result: Samples = wait_until(ready, 10, what, every=0.1)
    return result


def _in_state(phase: str, state: str) -> Callable[[Samples], bool]:
    """True once one terminal of ``phase`` is in ``state``."""
    return lambda samples: _terminals(samples).get((phase, state)) == 1


_PROGRESS = "kioskfleet_rollout_last_progress_timestamp_seconds"


def test_a_running_rollout_shows_its_terminals_phase_status_and_progress_on_metrics_and_timeline(
    server: Server, updater: Updater, fleet: list[tuple[RawTerminal, CmdInbox]]
) -> None:
    alice = token(server, Role.OPERATOR, name="alice")
    bob = token(server, Role.OPERATOR, name="bob")
    assert _create(server, alice, "R-OBS").status_code == 201  # 1 terminal, then the rest
    waiting = _wait_for(
        server,
        "R-OBS",
        lambda s: _terminals(s) == {("none", "pending"): 3},
        "the selected terminals, before approval",
    )
    assert _status_of(waiting) == ["awaiting_approval"]
    assert _post(server, bob, "/api/v1/rollouts/R-OBS/approve").status_code == 200

    (first, inbox), *_ = fleet
    wait_until(lambda: inbox.count() == 1, 10, "the first phase's directive")
    running = _wait_for(
        server,
        "R-OBS",
        lambda s: _terminals(s) == {("0", "notified"): 1, ("none", "pending"): 2},
        "the first terminal notified",
    )
    assert _status_of(running) == ["running"]
    assert _one(running, "kioskfleet_rollout_phase") == 0
    last = _one(running, _PROGRESS)  # the approval started the clock

    directive = _verified(updater, first, inbox.payloads[0])
    for state in ("downloading", "downloaded", "installing", "health_check"):
        _status(first, directive, state)
        reported = _wait_for(server, "R-OBS", _in_state("0", state), f"the terminal's {state}")
        assert _one(reported, _PROGRESS) > last  # each accepted report is progress
        last = _one(reported, _PROGRESS)

    _status(first, directive, "succeeded")
    advanced = _wait_for(
        server,
        "R-OBS",
        lambda s: _one(s, "kioskfleet_rollout_phase") == 1,
        "the second phase",
    )
    assert _terminals(advanced) == {("0", "succeeded"): 1, ("1", "notified"): 2}
    assert _one(advanced, _PROGRESS) > last
    assert _status_of(advanced) == ["running"]

    # the terminal's timeline in this rollout: every state it reported, newest first
    def states(rollout_id: str) -> list[str]:
        page = api(server, f"/api/v1/terminals/{first.id}/updates", rollout=rollout_id)
        assert page.status_code == 200, page.text
        return [u["state"] for u in page.json()["updates"]]

    expected = ["succeeded", "health_check", "installing", "downloaded", "downloading"]
    assert wait_until(lambda: states("R-OBS") == expected, 10, "the timeline")
    assert states("R-NONE") == []


def _abort(server: Server, updater: Updater, fleet: list[tuple[RawTerminal, CmdInbox]]) -> None:
    """Rollout R-OBS-ABORT to hall R's three terminals; two of them fail: it aborts."""
    alice = token(server, Role.OPERATOR, name="alice")
    bob = token(server, Role.OPERATOR, name="bob")
    one_phase: dict[str, Any] = {"phases": [{"size": 100, "unit": "percent"}]}
    assert _create(server, alice, "R-OBS-ABORT", **one_phase).status_code == 201
    assert _post(server, bob, "/api/v1/rollouts/R-OBS-ABORT/approve").status_code == 200
    members = fleet[:3]
    wait_until(lambda: all(i.count() == 1 for _, i in members), 10, "all three directives")
    for t, inbox in members[:2]:
        _status(t, _verified(updater, t, inbox.payloads[0]), "failed", reason=FAILURE)


def test_an_aborted_rollout_shows_status_aborted_with_its_failures_on_metrics(
    server: Server, updater: Updater, fleet: list[tuple[RawTerminal, CmdInbox]]
) -> None:
    _abort(server, updater, fleet)
    aborted = _wait_for(
        server, "R-OBS-ABORT", lambda s: _status_of(s) == ["aborted"], "the abort on /metrics"
    )
    # the third terminal was notified before the abort: it keeps its series until it reports
    assert _terminals(aborted) == {("0", "failed"): 2, ("0", "notified"): 1}


def test_after_a_restart_the_first_tick_shows_the_rollouts_the_previous_process_left(
    server: Server,
    updater: Updater,
    fleet: list[tuple[RawTerminal, CmdInbox]],
    private_server: ServerFactory,
    database_url: str,
) -> None:
    _abort(server, updater, fleet)
    _wait_for(server, "R-OBS-ABORT", lambda s: _status_of(s) == ["aborted"], "the abort")
    server.stop()
    restarted = private_server(database_url=database_url, rollout_tick_interval_s=0.2)
    seeded = _wait_for(
        restarted, "R-OBS-ABORT", lambda s: _status_of(s) == ["aborted"], "the seeded board"
    )
    assert _terminals(seeded) == {("0", "failed"): 2, ("0", "notified"): 1}


@pytest.mark.skipif(prometheus_binary() is None, reason="the prometheus binary is not installed")
def test_a_real_prometheus_fires_rollout_aborted_for_the_aborted_rollout(
    server: Server,
    updater: Updater,
    fleet: list[tuple[RawTerminal, CmdInbox]],
    prometheus_for: Callable[[Server], LocalPrometheus],
) -> None:
    prom = prometheus_for(server)
    _abort(server, updater, fleet)

    def firing() -> list[dict[str, Any]]:
        return [
            a
            for a in prom.alerts()
            if a["labels"]["alertname"] == "RolloutAborted" and a["state"] == "firing"
        ]

    (alert,) = wait_until(firing, 30, "RolloutAborted firing in Prometheus", every=0.5)
    assert alert["labels"]["rollout"] == "R-OBS-ABORT"
    assert alert["labels"]["severity"] == "warning"
    assert "GET /api/v1/rollouts/R-OBS-ABORT/terminals" in alert["annotations"]["description"]
