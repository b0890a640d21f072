"""The agent's own slots and the launcher's trial steps on real files: staging refuses what
cannot run, and a power cut at each step of a trial ends, after the launcher's restart, in a
committed new agent (it had confirmed) or the previous agent back in ``current``."""

from __future__ import annotations

import io
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from agent.install import ArchiveRefusedError, InstallRequest
from agent.launcher import Launcher, LauncherConfig
from agent.self_update import AgentSlots, AgentSlotsError, Trial, finish_report
from protocol.update_status import UpdateState


class PowerCutError(Exception):
    pass


def agent_release(where: Path, name: str, script: str, *, mode: int = 0o755) -> Path:
    """A tar bundle whose ``run`` is ``script``."""
    buffer = io.BytesIO()
    data = script.encode()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("run")
        info.size, info.mode = len(data), mode
        archive.addfile(info, io.BytesIO(data))
    path = where / f"{name}.tar.gz"
    path.write_bytes(buffer.getvalue())
    return path


def _request(artifact: Path, counter: int = 2) -> InstallRequest:
    return InstallRequest(
        artifact=str(artifact),
        package="kioskfleet-agent",
        version=f"2.{counter}.0",
        release_counter=counter,
        health_argv=("true",),
        health_within_s=1.0,
    )


def _staged(tmp_path: Path, *, first: bool = False) -> tuple[AgentSlots, Trial]:
    """Slots with a running agent in slot-a (unless ``first``) and a release staged."""
    slots = AgentSlots(tmp_path / "agent-slots")
    if not first:
        _stage(slots, _request(agent_release(tmp_path, "old", "#!/bin/sh\n"), 1))
        old = slots.load()
        assert old is not None
        slots.switch(old.to_slot)
        slots.save(old.at("committed"))
    trial = _stage(slots, _request(agent_release(tmp_path, "new", "#!/bin/sh\n")))
    return slots, trial


def _stage(slots: AgentSlots, request: InstallRequest) -> Trial:
    return slots.stage(request, rollout_id="R-1", directive_seq=3, target="acme/agent.tar.gz")


def _launcher(slots: AgentSlots, cut_at: str | None = None) -> Launcher:
    def on_step(step: str) -> None:
        if step == cut_at:
            raise PowerCutError(step)

    return Launcher(LauncherConfig(root=slots.root), on_step=on_step)


def test_staging_puts_the_release_in_the_inactive_slot_and_leaves_current_alone(
    tmp_path: Path,
) -> None:
    slots, trial = _staged(tmp_path)
    assert (trial.step, trial.from_slot, trial.to_slot) == ("staged", "slot-a", "slot-b")
    assert slots.active_slot() == "slot-a"
    assert slots.entry_point("slot-b").is_file()
    assert (trial.rollout_id, trial.directive_seq, trial.release_counter) == ("R-1", 3, 2)


def test_a_release_without_an_executable_run_is_refused_and_its_slot_wiped(
    tmp_path: Path,
) -> None:
    slots = AgentSlots(tmp_path / "agent-slots")
    artifact = agent_release(tmp_path, "noexec", "#!/bin/sh\n", mode=0o644)
    with pytest.raises(AgentSlotsError, match="no executable"):
        _stage(slots, _request(artifact))
    assert not (slots.root / "slot-a").exists()
    assert slots.load() is None


def test_an_unsafe_agent_archive_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("../run")
        archive.addfile(info, io.BytesIO(b""))
    artifact = tmp_path / "evil.tar"
    artifact.write_bytes(buffer.getvalue())
    slots = AgentSlots(tmp_path / "agent-slots")
    with pytest.raises(ArchiveRefusedError):
        _stage(slots, _request(artifact))
    assert not (tmp_path / "run").exists()
    assert slots.load() is None


def test_no_second_release_is_staged_while_a_trial_is_open(tmp_path: Path) -> None:
    slots, _trial = _staged(tmp_path)
    with pytest.raises(AgentSlotsError, match="a trial is open"):
        _stage(slots, _request(agent_release(tmp_path, "again", "#!/bin/sh\n")))


def test_a_staged_release_found_at_start_goes_on_trial(tmp_path: Path) -> None:
    slots, trial = _staged(tmp_path)
    now = _launcher(slots).recover()
    assert now is not None
    assert now.step == "trial"
    assert slots.active_slot() == trial.to_slot


def test_cut_after_trial_was_written_before_the_switch_rolls_back(tmp_path: Path) -> None:
    slots, trial = _staged(tmp_path)
    with pytest.raises(PowerCutError):
        _launcher(slots, cut_at="trial").begin_trial(trial)
    assert slots.active_slot() == "slot-a"  # the switch never happened
    now = _launcher(slots).recover()
    assert now is not None
    assert now.step == "rolled_back"
    assert slots.active_slot() == "slot-a"


def test_cut_during_an_unconfirmed_trial_rolls_back_to_the_previous_agent(tmp_path: Path) -> None:
    slots, trial = _staged(tmp_path)
    _launcher(slots).begin_trial(trial)
    assert slots.active_slot() == "slot-b"
    now = _launcher(slots).recover()
    assert now is not None
    assert now.step == "rolled_back"
    assert slots.active_slot() == "slot-a"
    assert finish_report(now).state is UpdateState.ROLLED_BACK


def test_cut_during_a_confirmed_trial_commits_the_new_agent(tmp_path: Path) -> None:
    slots, trial = _staged(tmp_path)
    on_trial = _launcher(slots).begin_trial(trial)
    slots.confirm(on_trial)
    now = _launcher(slots).recover()
    assert now is not None
    assert now.step == "committed"
    assert slots.active_slot() == "slot-b"
    assert finish_report(now).state is UpdateState.SUCCEEDED


def test_a_confirm_of_another_trial_does_not_commit(tmp_path: Path) -> None:
    slots, trial = _staged(tmp_path)
    on_trial = _launcher(slots).begin_trial(trial)
    slots.confirm(replace(on_trial, trial_id="other"))
    now = _launcher(slots).recover()
    assert now is not None
    assert now.step == "rolled_back"


def test_cut_while_rolling_back_finishes_the_rollback(tmp_path: Path) -> None:
    slots, trial = _staged(tmp_path)
    on_trial = _launcher(slots).begin_trial(trial)
    with pytest.raises(PowerCutError):
        _launcher(slots, cut_at="rolling_back").roll_back(on_trial, "no confirm")
    assert slots.active_slot() == "slot-b"  # cut before the switch back
    now = _launcher(slots).recover()
    assert now is not None
    assert (now.step, now.detail) == ("rolled_back", "no confirm")
    assert slots.active_slot() == "slot-a"


def test_a_finished_trial_is_left_as_it_is(tmp_path: Path) -> None:
    slots, trial = _staged(tmp_path)
    committed = _launcher(slots).commit(_launcher(slots).begin_trial(trial))
    assert _launcher(slots).recover() == committed
    assert slots.active_slot() == "slot-b"


def test_the_first_agent_release_rolled_back_returns_to_the_fallback_agent(tmp_path: Path) -> None:
    slots, trial = _staged(tmp_path, first=True)
    assert trial.from_slot is None
    _launcher(slots).begin_trial(trial)
    now = _launcher(slots).recover()
    assert now is not None
    assert now.step == "rolled_back"
    assert slots.active_slot() is None


def test_an_unreadable_trial_file_is_an_error_not_a_guess(tmp_path: Path) -> None:
    slots, _trial = _staged(tmp_path)
    slots.trial_file.write_text('{"schema_version": 1, "step": "trial"}')
    with pytest.raises(AgentSlotsError, match="not a trial state"):
        _launcher(slots).recover()


def test_with_an_unreadable_trial_file_the_launcher_still_runs_the_current_agent(
    tmp_path: Path,
) -> None:
    slots, trial = _staged(tmp_path)
    slots.switch(trial.to_slot)
    (slots.root / trial.to_slot / "run").write_text("#!/bin/sh\nexit 7\n")
    slots.trial_file.write_text("{not json")
    assert Launcher(LauncherConfig(root=slots.root, poll_s=0.01)).run() == 7


def test_a_staged_release_goes_on_trial_and_an_exiting_new_agent_is_rolled_back(
    tmp_path: Path,
) -> None:
    slots, trial = _staged(tmp_path)
    (slots.root / "slot-a" / "run").write_text("#!/bin/sh\nexit 0\n")  # the previous agent
    (slots.root / trial.to_slot / "run").write_text("#!/bin/sh\nexit 3\n")  # crashes
    code = Launcher(LauncherConfig(root=slots.root, poll_s=0.01)).run()
    now = slots.load()
    assert now is not None
    assert (now.step, now.detail) == ("rolled_back", "the new agent exited with 3 within the trial")
    assert slots.active_slot() == "slot-a"
    assert code == 0  # the previous agent ran again (and here exited 0)
