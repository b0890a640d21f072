"""The demo's rollout workflow (kioskfleet/demo_rollout.py) run for real, as `make demo` runs
it but without the demo's minutes: the operator's ceremony and the vendor's publish through
the repo's own console script, a server configured by ``server_env``, 20 simulated terminals
taking updates with the demo's planted failure fraction, and the rollout created by alice and
approved by bob through ``kioskfleet rollout``: its first phase pauses below the threshold."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from agent.simulator import Simulation, SimulationOptions, SimulationTuning
from kioskfleet.demo_rollout import FAILURE_FRACTION, ROLLOUT_ID, Commands, DemoRelease
from kioskfleet.local_broker import LocalBroker
from server.access import Role
from tests.integration.conftest import ServerFactory, admin_token, token
from tests.integration.test_rollouts import _rollout
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _secret_file(path: Path, secret: str) -> Path:
    path.write_text(secret + "\n")
    return path


def test_the_demo_release_workflow_publishes_and_its_rollout_pauses_on_the_planted_failures(
    private_server: ServerFactory, private_broker: LocalBroker, tmp_path: Path
) -> None:
    run = Commands(str(Path(sys.executable).parent / "kioskfleet"), dict(os.environ))
    release = DemoRelease(tmp_path / "updates", run)
    release.ceremony()
    settings = {
        name.removeprefix("KIOSKFLEET_").lower(): value
        for name, value in release.server_env().items()
    }
    server = private_server(**settings)
    admin = _secret_file(tmp_path / "admin.token", admin_token(server))
    release.upload_operator_metadata(server.base_url, admin, None)
    vendor = _secret_file(tmp_path / "vendor.token", token(server, Role.VENDOR, vendor="acme"))
    assert release.publish_release(server.base_url, vendor, None) == release.target

    opts = SimulationOptions(
        terminals=20,
        broker_url=private_broker.url,
        id_prefix="DEMO",
        report_interval_s=1.0,
        outbox_path=tmp_path / "outbox.sqlite",
        updates_server_url=server.base_url,
        trusted_root=release.trusted_root,
        update_failure_fraction=FAILURE_FRACTION,
        work_dir=tmp_path / "simulator",
    )
    sim = Simulation(opts, tuning=SimulationTuning(shutdown_timeout_s=5))
    sim.start()
    try:
        ids = sim.terminal_ids
        wait_until(lambda: all(server.fleet.get(t) for t in ids), 30, "the fleet reporting")
        alice = _secret_file(tmp_path / "alice.token", token(server, Role.OPERATOR, name="alice"))
        bob = _secret_file(tmp_path / "bob.token", token(server, Role.OPERATOR, name="bob"))
        release.start_rollout(server.base_url, alice, bob, None)
        wait_until(lambda: _rollout(server, ROLLOUT_ID)["status"] == "paused", 60, "the pause")
        rollout = _rollout(server, ROLLOUT_ID)
        assert (rollout["created_by"], rollout["approved_by"]) == ("token:alice", "token:bob")
        assert rollout["pause_reason"] == "below_success_threshold"
        assert rollout["counts"] == {"succeeded": 4, "rolled_back": 1, "pending": 15}
        current = tmp_path / "simulator" / "DEMO-00001" / "slots" / "current"
        assert (current / "VERSION").read_text() == "2.0.0"
    finally:
        sim.stop()
        sim.close()
