"""The demo's rollout helpers: the bundle is a safe tar the bundle handler accepts, the
manifest fits the simulated models, the definition is one the server accepts and pauses
on the planted failures, and the status line says what the API says."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

from agent.install.safe_tar import ArchiveLimits, unpack_into
from agent.simulated_updates import planted_failure
from agent.simulator import MODELS
from kioskfleet.demo_rollout import (
    FAILURE_FRACTION,
    PHASE_ONE,
    bundle,
    manifest,
    rollout_definition,
    rollout_line,
)
from server.rollout_api import RolloutCreate


def test_the_bundle_unpacks_safely_with_its_version(tmp_path: Path) -> None:
    archive = tmp_path / "bundle.tar.gz"
    archive.write_bytes(bundle("2.0.0"))
    slot = tmp_path / "slot"
    slot.mkdir()
    assert unpack_into(archive, slot, ArchiveLimits()) == 2
    assert (slot / "VERSION").read_text() == "2.0.0"
    with tarfile.open(fileobj=io.BytesIO(bundle("2.0.0"))) as tar:
        assert tar.getmember("bin/kiosk-app").mode == 0o755


def test_the_manifest_is_for_every_simulated_model_with_the_bundle_handler() -> None:
    release = manifest()
    assert sorted(release.compatible_models) == sorted(MODELS)
    assert release.install.handler == "bundle"
    assert (release.health_check.kind, release.health_check.target) == ("command", "true")


def test_the_first_phase_holds_a_planted_failure_and_so_falls_below_its_threshold() -> None:
    body = rollout_definition("acme/kiosk-app-2.0.0.tar.gz")
    definition = RolloutCreate.model_validate(body)  # what the API accepts
    failures = sum(planted_failure(i, FAILURE_FRACTION) for i in range(1, PHASE_ONE + 1))
    assert failures == math.floor(PHASE_ONE * FAILURE_FRACTION) == 1
    assert (PHASE_ONE - failures) / PHASE_ONE < definition.success_threshold
    assert failures / PHASE_ONE <= definition.abort_failure_ratio  # paused, not aborted
    assert len(definition.phases) == 2


def test_the_status_line_names_status_reason_phase_and_counts() -> None:
    body = {
        "rollout_id": "R-DEMO-1",
        "status": "paused",
        "pause_reason": "below_success_threshold",
        "phase": 0,
        "counts": {"succeeded": 4, "rolled_back": 1, "pending": 45},
    }
    assert rollout_line(body) == (
        "rollout R-DEMO-1: paused (below_success_threshold), "
        "phase 1: 45 pending, 1 rolled_back, 4 succeeded"
    )
    running = {"rollout_id": "R-1", "status": "running", "phase": 1, "counts": {}}
    assert rollout_line(running) == "rollout R-1: running, phase 2: no terminal yet"
