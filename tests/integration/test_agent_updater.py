"""The agent's updater against a real server's TUF repository over real HTTP.

The operator pins the directive key in the offline-signed targets, the vendor publishes real
tar bundles through the server, the terminal's ``agent.updater.Updater`` builds its own
python-tuf ``Updater`` per directive and installs with the real ``BundleHandler`` into
temporary A/B slots (restart ``true``, health check ``true`` or ``false``). Every refusal
asserts its reason and that nothing was installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.clock import SystemClock
from agent.install import BundleConfig, BundleHandler
from agent.install_gate import InstallGate
from agent.updater import Updater, UpdaterConfig, UpdaterState
from firmware_manifests.release_manifest import HealthCheck, InstallStep
from kioskfleet.update_client import UpdateClient
from protocol.directives import (
    Directive,
    DirectiveTarget,
    Withdrawal,
    sign_directive,
    sign_withdrawal,
)
from protocol.update_status import UpdateBody, UpdateState
from server.access import Role
from server.main import Server
from tests.integration import test_directives_tuf, test_updates
from tests.integration.conftest import token
from tests.integration.test_directives_tuf import SERVER_KEY
from tests.support.tuf_world import TufWorld, release_manifest

pytestmark = pytest.mark.integration

S = UpdateState

# The directive tests' world: acme delegated, the directive key SERVER_KEY pinned.
world = test_directives_tuf.world

# The signed-releases tests' server: the world's roots and targets uploaded, online keys set.
server = test_updates.server


class ShiftedClock(SystemClock):
    """The real clock, moved ahead by ``shift`` (python-tuf keeps using the real one)."""

    def __init__(self) -> None:
        self.shift = timedelta()

    def wall(self) -> datetime:
        return super().wall() + self.shift


@dataclass
class Release:
    path: str  # the TUF target path
    data: bytes


@dataclass
class Terminal:
    """One terminal: its updater, the statuses it reported, its slots and state file."""

    server: Server
    world: TufWorld
    root: Path
    reports: list[UpdateBody] = field(default_factory=list)
    gate: InstallGate = field(default_factory=lambda: InstallGate(SystemClock()))
    seq: int = 0
    sleep: Callable[[float], None] = lambda _s: None
    hall_open: Callable[[datetime], bool] = lambda _now: False
    clock: ShiftedClock = field(default_factory=ShiftedClock)
    target_base_url: str | None = None  # None: the server's; a proxy in front of it otherwise

    @property
    def slots(self) -> Path:
        return self.root / "slots"

    @property
    def state_file(self) -> Path:
        return self.root / "state" / "updater.json"

    def updater(self, model: str = "KX-100") -> Updater:
        config = UpdaterConfig(
            terminal_id="T-0001",
            terminal_model=model,
            agent_version="1.4.0",
            metadata_base_url=f"{self.server.base_url}/tuf/metadata/",
            target_base_url=self.target_base_url or f"{self.server.base_url}/tuf/targets/",
            trusted_root=self.world.roots()[0],
            work_dir=self.root / "work",
            state_file=self.state_file,
            poll_s=0.01,
        )
        handler = BundleHandler(
            BundleConfig(root=self.slots, restart_argv=("true",), health_interval_s=0.05)
        )
        return Updater(
            config,
            handlers={"bundle": handler},
            gate=self.gate,
            hall_open=lambda now: self.hall_open(now),
            report=self.reports.append,
            clock=self.clock,
            sleep=lambda s: self.sleep(s),
        )

    def directive(self, release: Release, **changes: Any) -> bytes:
        self.seq += 1
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "terminal_id": "T-0001",
            "rollout_id": "R-1",
            "seq": self.seq,
            "target": DirectiveTarget(
                path=release.path,
                length=len(release.data),
                sha256=hashlib.sha256(release.data).hexdigest(),
            ),
            "issued_at": now - timedelta(minutes=1),
            "expires_at": now + timedelta(hours=1),
            "not_before": now - timedelta(minutes=1),
            "not_after": now + timedelta(days=1),
        }
        values.update(changes)
        key = values.pop("key", SERVER_KEY)
        return sign_directive(Directive(**values), key)

    def handle(self, payload: bytes, model: str = "KX-100") -> UpdateState:
        self.reports.clear()
        return self.updater(model).handle(payload)

    def states(self) -> list[UpdateState]:
        return [r.state for r in self.reports]

    def active_version(self) -> str | None:
        current = self.slots / "current"
        return (current / "VERSION").read_text() if current.exists() else None


def _bundle(version: str, app: bytes = b"#!/bin/sh\n") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in (("VERSION", version.encode()), ("bin/app", app)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@pytest.fixture
def terminal(server: Server, world: TufWorld, tmp_path: Path) -> Terminal:
    return Terminal(server, world, tmp_path / "terminal")


def _publish(
    terminal: Terminal,
    counter: int,
    *,
    health: str = "true",
    health_timeout_s: int = 1,
    data: bytes | None = None,
    **changes: Any,
) -> Release:
    world = terminal.world
    tag = health if health.isalnum() else hashlib.sha256(health.encode()).hexdigest()[:8]
    name = f"kiosk-app-{counter}-{tag}.tar.gz"
    artifact = world.path / "artifacts" / name
    artifact.parent.mkdir(parents=True, exist_ok=True)
    data = _bundle(f"1.{counter}.0") if data is None else data
    artifact.write_bytes(data)
    manifest = release_manifest(
        counter,
        install=InstallStep(handler="bundle"),
        health_check=HealthCheck(kind="command", target=health, timeout_s=health_timeout_s),
        **changes,
    )
    world.sign("acme", artifact, manifest)
    vendor_token = token(terminal.server, Role.VENDOR, vendor="acme")
    with UpdateClient(terminal.server.base_url, vendor_token) as acme:
        acme.upload_artifact("acme", name, artifact)
        acme.publish_role("acme", world.role_file("acme").read_bytes())
    return Release(f"acme/{name}", data)


def _refused_with_nothing_installed(terminal: Terminal, reason: str) -> None:
    last = terminal.reports[-1]
    assert (last.state, str(last.reason)) == (S.REJECTED, reason)
    assert S.INSTALLING not in terminal.states()
    assert not (terminal.slots / "current").exists()


# --- happy path -----------------------------------------------------------------------------


def test_a_verified_directive_installs_switches_the_slot_and_reports_each_state_in_order(
    terminal: Terminal,
) -> None:
    release = _publish(terminal, 1)
    assert terminal.handle(terminal.directive(release)) is S.SUCCEEDED
    assert terminal.states() == [
        S.NOTIFIED,
        S.DOWNLOADING,
        S.DOWNLOADED,
        S.INSTALLING,
        S.HEALTH_CHECK,
        S.SUCCEEDED,
    ]
    assert all(r.rollout_id == "R-1" and r.directive_seq == 1 for r in terminal.reports)
    assert terminal.active_version() == "1.1.0"
    assert (terminal.slots / "current").readlink() == Path("slot-a")
    state = UpdaterState.load(terminal.state_file)
    assert (state.last_seq, state.highest_counter) == (1, {"kiosk-app": 1})
    assert list((terminal.root / "work" / "downloads").iterdir()) == []


def test_a_newer_release_goes_into_the_other_slot(terminal: Terminal) -> None:
    first, second = _publish(terminal, 1), _publish(terminal, 2)
    assert terminal.handle(terminal.directive(first)) is S.SUCCEEDED
    assert terminal.handle(terminal.directive(second)) is S.SUCCEEDED
    assert terminal.active_version() == "1.2.0"
    assert (terminal.slots / "current").readlink() == Path("slot-b")
    assert UpdaterState.load(terminal.state_file).highest_counter == {"kiosk-app": 2}


def test_the_same_release_again_is_already_installed_and_not_reinstalled(
    terminal: Terminal,
) -> None:
    release = _publish(terminal, 1)
    assert terminal.handle(terminal.directive(release)) is S.SUCCEEDED
    assert terminal.handle(terminal.directive(release)) is S.ALREADY_INSTALLED
    assert S.DOWNLOADING not in terminal.states()
    assert (terminal.slots / "current").readlink() == Path("slot-a")


# --- refusals: nothing installed, the reason reported ----------------------------------------


def test_a_tampered_artifact_on_the_server_is_rejected_and_nothing_installed(
    terminal: Terminal, server: Server
) -> None:
    release = _publish(terminal, 1)
    blob = test_updates._blobs_dir(server) / hashlib.sha256(release.data).hexdigest()
    blob.write_bytes(b"X" * blob.stat().st_size)
    assert terminal.handle(terminal.directive(release)) is S.REJECTED
    _refused_with_nothing_installed(terminal, "artifact_mismatch")
    assert terminal.states() == [S.NOTIFIED, S.DOWNLOADING, S.REJECTED]


def test_a_directive_for_another_terminal_is_rejected(terminal: Terminal) -> None:
    release = _publish(terminal, 1)
    assert terminal.handle(terminal.directive(release, terminal_id="T-0002")) is S.REJECTED
    _refused_with_nothing_installed(terminal, "wrong_terminal")
    assert terminal.reports[-1].directive_seq == 0  # nothing of it is reported as trusted


def test_a_replayed_directive_is_rejected_and_changes_nothing(terminal: Terminal) -> None:
    first, second = _publish(terminal, 1), _publish(terminal, 2)
    assert terminal.handle(terminal.directive(first)) is S.SUCCEEDED
    newer = terminal.directive(second)
    terminal.seq = 0  # an old seq (1) for the newer release
    assert terminal.handle(terminal.directive(second)) is S.REJECTED
    assert str(terminal.reports[-1].reason) == "replayed"
    assert terminal.active_version() == "1.1.0"
    assert terminal.handle(newer) is S.SUCCEEDED  # seq 2 is still above the accepted 1
    assert terminal.handle(newer) is S.REJECTED  # the very same bytes again
    assert str(terminal.reports[-1].reason) == "replayed"
    assert terminal.active_version() == "1.2.0"


def test_an_expired_directive_is_rejected(terminal: Terminal) -> None:
    release = _publish(terminal, 1)
    now = datetime.now(UTC)
    payload = terminal.directive(
        release, issued_at=now - timedelta(hours=2), expires_at=now - timedelta(hours=1)
    )
    assert terminal.handle(payload) is S.REJECTED
    _refused_with_nothing_installed(terminal, "expired")


def test_a_directive_signed_by_a_key_the_operator_did_not_pin_is_rejected(
    terminal: Terminal,
) -> None:
    release = _publish(terminal, 1)
    payload = terminal.directive(release, key=Ed25519PrivateKey.generate())
    assert terminal.handle(payload) is S.REJECTED
    _refused_with_nothing_installed(terminal, "unknown_key")
    assert UpdaterState.load(terminal.state_file).last_seq == 0


def test_a_directive_for_bytes_no_vendor_signed_is_rejected(terminal: Terminal) -> None:
    release = _publish(terminal, 1)
    evil = Release(release.path, b"malware")
    assert terminal.handle(terminal.directive(evil)) is S.REJECTED
    _refused_with_nothing_installed(terminal, "target_mismatch")


def test_a_lower_release_counter_is_a_downgrade_also_after_the_tuf_cache_is_wiped(
    terminal: Terminal,
) -> None:
    old, new = _publish(terminal, 1), _publish(terminal, 2)
    assert terminal.handle(terminal.directive(new)) is S.SUCCEEDED
    assert terminal.handle(terminal.directive(old)) is S.REJECTED
    assert str(terminal.reports[-1].reason) == "downgrade"
    shutil.rmtree(terminal.root / "work" / "tuf")
    assert terminal.handle(terminal.directive(old)) is S.REJECTED
    assert str(terminal.reports[-1].reason) == "downgrade"
    assert S.DOWNLOADING not in terminal.states()
    assert terminal.active_version() == "1.2.0"


def test_a_release_for_another_model_is_rejected(terminal: Terminal) -> None:
    release = _publish(terminal, 1, compatible_models=["KX-200"])
    assert terminal.handle(terminal.directive(release)) is S.REJECTED
    _refused_with_nothing_installed(terminal, "wrong_model")


def test_a_release_needing_a_newer_agent_is_rejected(terminal: Terminal) -> None:
    release = _publish(terminal, 1, min_agent_version="2.0")
    assert terminal.handle(terminal.directive(release)) is S.REJECTED
    _refused_with_nothing_installed(terminal, "wrong_model")
    assert "needs agent 2.0" in (terminal.reports[-1].detail or "")


def test_a_corrupt_state_file_fails_closed_and_installs_nothing(terminal: Terminal) -> None:
    release = _publish(terminal, 1)
    terminal.state_file.parent.mkdir(parents=True)
    terminal.state_file.write_text(json.dumps({"last_seq": "x"}))
    assert terminal.handle(terminal.directive(release)) is S.FAILED
    assert str(terminal.reports[-1].reason) == "install_failed"
    assert not (terminal.slots / "current").exists()


# --- install: health check, gate, window ------------------------------------------------------


def test_a_failed_health_check_rolls_back_to_the_previous_release(terminal: Terminal) -> None:
    good, bad = _publish(terminal, 1), _publish(terminal, 2, health="false")
    assert terminal.handle(terminal.directive(good)) is S.SUCCEEDED
    assert terminal.handle(terminal.directive(bad)) is S.ROLLED_BACK
    assert terminal.states()[-3:] == [S.INSTALLING, S.HEALTH_CHECK, S.ROLLED_BACK]
    assert str(terminal.reports[-1].reason) == "health_check_failed"
    assert terminal.active_version() == "1.1.0"
    assert UpdaterState.load(terminal.state_file).highest_counter == {"kiosk-app": 1}


def test_no_install_starts_during_a_citizen_session_and_it_installs_after(
    terminal: Terminal,
) -> None:
    release = _publish(terminal, 1)
    session = terminal.gate.session_start()
    seen_while_waiting: list[str | None] = []

    def session_ends_while_the_updater_waits(_seconds: float) -> None:
        seen_while_waiting.append(terminal.active_version())
        terminal.gate.session_end(session)

    terminal.sleep = session_ends_while_the_updater_waits
    assert terminal.handle(terminal.directive(release)) is S.SUCCEEDED
    assert seen_while_waiting == [None]
    waiting = terminal.reports[3]
    assert (waiting.state, str(waiting.reason)) == (S.WAITING_WINDOW, "session_active")
    assert terminal.states()[4:] == [S.INSTALLING, S.HEALTH_CHECK, S.SUCCEEDED]
    assert terminal.gate.try_begin_install()  # the updater ended its install


def test_no_install_while_the_hall_is_open_unless_the_directive_allows_it(
    terminal: Terminal,
) -> None:
    first, second = _publish(terminal, 1), _publish(terminal, 2)
    hall = {"open": True}
    terminal.hall_open = lambda _now: hall["open"]

    def the_hall_closes(_seconds: float) -> None:
        assert terminal.active_version() is None
        hall["open"] = False

    terminal.sleep = the_hall_closes
    assert terminal.handle(terminal.directive(first)) is S.SUCCEEDED
    assert (terminal.reports[3].state, terminal.reports[3].detail) == (
        S.WAITING_WINDOW,
        "the hall is open",
    )
    hall["open"] = True
    assert terminal.handle(terminal.directive(second, install_while_open=True)) is S.SUCCEEDED
    assert S.WAITING_WINDOW not in terminal.states()


def test_a_window_that_begins_later_is_waited_for_and_one_that_ends_times_out(
    terminal: Terminal,
) -> None:
    first, second = _publish(terminal, 1), _publish(terminal, 2)
    now = datetime.now(UTC)
    later = {"not_before": now + timedelta(hours=2), "not_after": now + timedelta(hours=3)}

    def time_passes(_seconds: float) -> None:
        assert terminal.active_version() is None
        terminal.clock.shift += timedelta(hours=2, minutes=30)

    terminal.sleep = time_passes
    assert terminal.handle(terminal.directive(first, **later)) is S.SUCCEEDED
    waiting = terminal.reports[3]
    assert (waiting.state, waiting.detail) == (S.WAITING_WINDOW, "the install window has not begun")

    terminal.clock.shift = timedelta()
    terminal.sleep = lambda _s: setattr(terminal.clock, "shift", timedelta(hours=4))
    assert terminal.handle(terminal.directive(second, **later)) is S.TIMED_OUT
    assert S.INSTALLING not in terminal.states()
    assert terminal.active_version() == "1.1.0"
    assert terminal.gate.try_begin_install()  # no install left holding the gate


def _withdrawal(release: Release, seq: int, *, rollout_id: str = "R-1", key: Any = None) -> bytes:
    now = datetime.now(UTC)
    withdrawal = Withdrawal(
        terminal_id="T-0001",
        rollout_id=rollout_id,
        seq=seq,
        target=release.path,
        issued_at=now - timedelta(minutes=1),
        expires_at=now + timedelta(hours=1),
    )
    return sign_withdrawal(withdrawal, key or SERVER_KEY)


def test_a_withdrawal_while_waiting_for_the_window_cancels_and_installs_nothing(
    terminal: Terminal,
) -> None:
    release = _publish(terminal, 1)
    terminal.hall_open = lambda _now: True
    directive = terminal.directive(release)  # seq 1
    updater = terminal.updater()
    terminal.sleep = lambda _s: updater.post_withdrawal(_withdrawal(release, seq=2))
    terminal.reports.clear()
    assert updater.handle(directive) is S.CANCELED
    assert terminal.states() == [
        S.NOTIFIED,
        S.DOWNLOADING,
        S.DOWNLOADED,
        S.WAITING_WINDOW,
        S.CANCELED,
    ]
    assert terminal.reports[-1].rollout_id == "R-1"
    assert terminal.active_version() is None
    assert not list((terminal.root / "work" / "downloads").iterdir())  # artifact deleted
    assert terminal.gate.try_begin_install()


def test_a_directive_still_queued_when_its_withdrawal_came_is_canceled_once_accepted(
    terminal: Terminal,
) -> None:
    release = _publish(terminal, 1)
    directive = terminal.directive(release)  # seq 1, queued behind another directive
    updater = terminal.updater()
    updater.post_withdrawal(_withdrawal(release, seq=2))
    terminal.reports.clear()
    assert updater.handle(directive) is S.CANCELED
    assert terminal.states() == [S.NOTIFIED, S.CANCELED]  # nothing downloaded
    assert UpdaterState.load(terminal.state_file).last_seq == 1  # the seq stays accepted


def test_a_withdrawal_of_another_rollout_an_older_seq_or_another_key_cancels_nothing(
    terminal: Terminal,
) -> None:
    release = _publish(terminal, 1)
    hall = {"open": True}
    terminal.hall_open = lambda _now: hall["open"]
    directive = terminal.directive(release)  # seq 1
    updater = terminal.updater()
    updater.post_withdrawal(_withdrawal(release, seq=5, rollout_id="R-2"))
    updater.post_withdrawal(_withdrawal(release, seq=1))  # not after the directive
    updater.post_withdrawal(_withdrawal(release, seq=9, key=Ed25519PrivateKey.generate()))
    updater.post_withdrawal(b'{"schema": "kf.withdraw"}')

    def the_hall_closes(_seconds: float) -> None:
        hall["open"] = False

    terminal.sleep = the_hall_closes
    terminal.reports.clear()
    assert updater.handle(directive) is S.SUCCEEDED
    assert terminal.active_version() == "1.1.0"


def test_an_archive_escaping_its_slot_is_rejected_as_unsafe_and_nothing_installed(
    terminal: Terminal,
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("../outside")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    release = _publish(terminal, 1, data=buffer.getvalue())
    assert terminal.handle(terminal.directive(release)) is S.REJECTED
    assert str(terminal.reports[-1].reason) == "unsafe_archive"
    assert not (terminal.slots / "current").exists()
    assert not (terminal.slots / "outside").exists()
    assert UpdaterState.load(terminal.state_file).highest_counter == {}


def test_a_repository_the_trusted_root_does_not_sign_is_refused_as_an_unknown_key(
    terminal: Terminal, tmp_path: Path
) -> None:
    release = _publish(terminal, 1)
    payload = terminal.directive(release)
    foreign = TufWorld.create(tmp_path / "foreign", vendors={"acme": 1})
    terminal.world = foreign  # the terminal now trusts another operator's root
    assert terminal.handle(payload) is S.REJECTED
    assert str(terminal.reports[-1].reason) == "metadata_unknown_key"
    assert not (terminal.slots / "current").exists()
    assert UpdaterState.load(terminal.state_file).last_seq == 0
