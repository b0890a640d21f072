"""Terminal health end to end: the real agent -> real mosquitto -> the server -> the REST API.

The agent here is the production code (``AgentRuntime`` in-process, or the
``kioskfleet agent`` command in a subprocess that the test kills or freezes);
the server is ``server.main.Server`` on SQLite; the broker is mosquitto with
the project's config. Nothing is faked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_agent_config
from agent.main import AgentRuntime
from agent.probes.simulated import Scenario, build_scenario_probe
from kioskfleet.local_broker import LocalBroker
from protocol.messages import PeripheralCondition
from tests.integration.conftest import ServerFactory, api, metric, unique, wait_until

KIOSKFLEET = str(Path(sys.executable).parent / "kioskfleet")


def _agent_toml(path: Path, terminal_id: str, broker: LocalBroker, **extra: Any) -> Path:
    values = {
        "report_interval_s": 0.5,
        "probe_interval_s": 0.1,
        "keepalive_s": 2,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
    } | extra
    lines = [
        f'terminal_id = "{terminal_id}"',
        'hall = "hall-e2e"',
        'region = "region-e2e"',
        'model = "KF-300"',
        f'broker_url = "{broker.url}"',
        *(f"{key} = {value}" for key, value in values.items()),
        "[[probes]]",
        'type = "simulated"',
        'name = "receipt_printer"',
        'scenario = "receipt_printer"',
        "fault_rate = 0.000001",  # no spontaneous incidents: the test decides
        "[outbox]",
        f'path = "{path.with_suffix(".outbox.sqlite")}"',
        "drain_jitter_s = 0.2",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _terminal(server: Any, terminal_id: str) -> dict[str, Any] | None:
    response = api(server, f"/api/v1/terminals/{terminal_id}")
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


def _wait_state(server: Any, terminal_id: str, state: str, timeout: float, what: str) -> None:
    wait_until(
        lambda: (t := _terminal(server, terminal_id)) and t["state"] == state,
        timeout,
        what,
    )


@pytest.fixture
def agent_process(tmp_path: Path, broker: LocalBroker) -> Iterator[Any]:
    """Start ``kioskfleet agent --config`` subprocesses; kill whatever is left at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(terminal_id: str) -> subprocess.Popen[bytes]:
        config = _agent_toml(tmp_path / f"{terminal_id}.toml", terminal_id, broker)
        proc = subprocess.Popen(
            [KIOSKFLEET, "agent", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{terminal_id}.log").open("wb"),
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(10)


def test_agent_report_reaches_the_api_and_a_fault_becomes_a_transition(
    start_server: ServerFactory, broker: LocalBroker, tmp_path: Path
) -> None:
    server = start_server()
    terminal_id = unique("E2E")
    config = load_agent_config(_agent_toml(tmp_path / "agent.toml", terminal_id, broker))
    printer = build_scenario_probe(
        Scenario.RECEIPT_PRINTER, clock=lambda: 0.0, seed="e2e", fault_rate=1e-6
    )
    runtime = AgentRuntime(config, probes=[printer])
    runtime.start()
    try:
        # The boot event may arrive before the first report: wait for the report itself.
        seen = wait_until(
            lambda: (t := _terminal(server, terminal_id)) and t["peripherals"] and t,
            10,
            "the terminal's first report in the API",
        )
        assert seen["hall"] == "hall-e2e"
        assert seen["region"] == "region-e2e"
        assert seen["model"] == "KF-300"
        assert seen["state"] == "online"
        assert [(p["name"], p["condition"]) for p in seen["peripherals"]] == [
            ("receipt_printer", "ok")
        ]

        printer.force(PeripheralCondition.PAPER_OUT)

        def paper_out_transition() -> dict[str, Any] | None:
            detail = _terminal(server, terminal_id) or {}
            for t in detail.get("transitions", []):
                if t["subject"] == "receipt_printer" and t["to_state"] == "paper_out":
                    return detail
            return None

        detail = wait_until(paper_out_transition, 10, "the paper_out transition")
        assert detail["health"] == "faulty"  # paper out blocks service
        moved = [t for t in detail["transitions"] if t["subject"] == "receipt_printer"]
        assert moved[0]["from_state"] == "ok"
        listed = api(server, "/api/v1/terminals", condition="paper_out", hall="hall-e2e").json()
        assert [item["id"] for item in listed["items"]] == [terminal_id]
    finally:
        runtime.stop()
    # A clean stop says so: offline with reason shutdown, not a lost connection.
    stopped = wait_until(
        lambda: (t := _terminal(server, terminal_id)) and t["state"] == "offline" and t,
        10,
        "offline after a clean stop",
    )
    assert stopped["offline_reason"] == "shutdown"
    assert metric(server, "kioskfleet_ingest_messages_total", channel="report") >= 1


def test_killed_agent_is_marked_offline_by_its_will_within_one_and_a_half_keepalives(
    start_server: ServerFactory, agent_process: Any
) -> None:
    server = start_server()
    terminal_id = unique("E2E-KILL")
    proc = agent_process(terminal_id)
    _wait_state(server, terminal_id, "online", 60, "the agent online")
    before = metric(server, "kioskfleet_terminals_offline_detected_total", reason="will")
    proc.kill()  # the kernel closes the TCP connection; the broker publishes the will
    # keepalive is 2 s: the will must land well within 1.5 x keepalive = 3 s.
    _wait_state(server, terminal_id, "offline", 3.0, "offline by will")
    assert (
        metric(server, "kioskfleet_terminals_offline_detected_total", reason="will") == before + 1
    )


def test_frozen_agent_goes_offline_by_heartbeat_timeout(
    start_server: ServerFactory, agent_process: Any
) -> None:
    server = start_server()
    terminal_id = unique("E2E-FROZEN")
    proc = agent_process(terminal_id)
    _wait_state(server, terminal_id, "online", 60, "the agent online")
    before = metric(server, "kioskfleet_terminals_offline_detected_total", reason="timeout")
    os.kill(proc.pid, signal.SIGSTOP)  # TCP stays open; the agent just stops talking
    # 3 missed reports at 0.5 s: the server's timeout fires long before the broker's keepalive.
    _wait_state(server, terminal_id, "offline", 5.0, "offline by heartbeat timeout")
    assert (
        metric(server, "kioskfleet_terminals_offline_detected_total", reason="timeout")
        == before + 1
    )
    os.kill(proc.pid, signal.SIGCONT)
    # Thawed, it reports again and comes back online.
    _wait_state(server, terminal_id, "online", 10, "online again after thawing")
