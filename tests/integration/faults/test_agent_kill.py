"""Scenario d: the agent process is SIGKILLed between writing to its outbox and the PUBACK.

The broker is frozen (SIGSTOP) so that no PUBACK can come: the agent appends
reports to its outbox and publishes them (the bytes wait in the broker's socket
buffer), and is SIGKILLed with those rows still pending. The broker resumes,
reads what the dead agent had sent and forwards it; the restarted agent (same
outbox file: same boot_id, seq continues) sends again every pending row that no
``kf.committed`` covered. Nothing is lost, nothing is stored twice: re-sent rows
the server already had are counted as duplicates, and the exact count check
holds with zero gaps.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.outbox import Outbox, OutboxStats
from kioskfleet.local_broker import LocalBroker
from kioskfleet.server_process import KIOSKFLEET
from kioskfleet.stream_accounting import wait_for_exact_accounting
from tests.integration.conftest import wait_until
from tests.integration.faults.conftest import ServerStarter

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TERMINAL = "KILL-00001"


def _agent_toml(path: Path, broker: LocalBroker, outbox: Path) -> Path:
    path.write_text(
        "\n".join(
            [
                f'terminal_id = "{TERMINAL}"',
                'hall = "hall-kill"',
                'region = "region-kill"',
                'model = "KF-200"',
                f'broker_url = "{broker.url}"',
                "report_interval_s = 0.2",
                "probe_interval_s = 0.1",
                "keepalive_s = 5",
                "reconnect_min_s = 0.1",
                "reconnect_max_s = 0.5",
                "[limits]",
                "shutdown_timeout_s = 10",
                "[outbox]",
                f'path = "{outbox}"',
                "drain_jitter_s = 0.1",
                "resend_grace_s = 0.1",
                "drain_rate_per_s = 100",
                'synchronous = "normal"',
                "[[probes]]",
                'type = "simulated"',
                'name = "receipt_printer"',
                'scenario = "receipt_printer"',
                "fault_rate = 0.000001",
            ]
        )
        + "\n"
    )
    return path


class AgentProcess:
    """``kioskfleet agent --config`` subprocesses on one config; the last one is killed at teardown."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [KIOSKFLEET, "--log-level", "WARNING", "agent", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def signal(self, sig: signal.Signals) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def agent(private_broker: LocalBroker, tmp_path: Path) -> Iterator[tuple[AgentProcess, Path]]:
    outbox = tmp_path / "agent-outbox.sqlite"
    config = _agent_toml(tmp_path / "agent.toml", private_broker, outbox)
    process = AgentProcess(config, tmp_path / "agent.log")
    try:
        yield process, outbox
    finally:
        process.close()


def _stats(outbox: Path) -> OutboxStats:
    with Outbox(outbox, synchronous="normal") as box:
        return box.stats(TERMINAL)


def test_agent_sigkill_before_the_puback_loses_nothing_and_resends_are_duplicates(
    database_url: str,
    private_broker: LocalBroker,
    server_process: ServerStarter,
    agent: tuple[AgentProcess, Path],
) -> None:
    process, outbox = agent
    server = server_process(database_url)
    process.start()
    wait_until(
        lambda: (
            (r := server.get(f"/api/v1/terminals/{TERMINAL}")).status_code == 200
            and r.json()["state"] == "online"
        ),
        20,
        "the agent to report",
    )
    time.sleep(0.5)
    duplicates_before = server.metric("kioskfleet_ingest_duplicates_total")

    private_broker.pause()
    try:
        # Reports keep coming every 0.2 s; each is appended, published, never acknowledged.
        wait_until(lambda: _stats(outbox).pending >= 5, 10, "unacknowledged rows in the outbox")
        assert process.signal(signal.SIGKILL) == -signal.SIGKILL
    finally:
        private_broker.resume()
    at_kill = _stats(outbox)
    assert at_kill.pending >= 5

    process.start()  # same outbox: same stream, and every pending row is sent again
    wait_until(lambda: _stats(outbox).last_seq > at_kill.last_seq + 5, 20, "the restarted agent")
    assert process.signal(signal.SIGTERM) == 0  # clean stop: waits for its PUBACKs

    final = _stats(outbox)
    assert final.boot_id == at_kill.boot_id
    wait_for_exact_accounting(database_url, {TERMINAL: final})
    resent_duplicates = server.metric("kioskfleet_ingest_duplicates_total") - duplicates_before
    # What the broker had read from the dead agent's socket reached the server once and was
    # committed; the restarted agent either got its kf.committed (queued for its persistent
    # session) within the resend grace and dropped the row, or re-sent it as a duplicate.
    # Rows the broker never got arrive once, as originals.
    assert 0 <= resent_duplicates <= at_kill.pending
