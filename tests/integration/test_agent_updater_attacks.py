"""Issue 11's repository and network attacks, each through the real agent updater.

Same world as ``test_agent_updater.py``: a real server's TUF repository over real HTTP,
real tar bundles, the real ``BundleHandler`` in temporary A/B slots. Every attack starts
from a terminal that installed release 1 and aims release 2 (or bytes of the attacker's)
at it; each asserts the final state and its precise reason, that the slots (the active one
and the inactive one, every file and byte) are unchanged, and that the stored
``release_counter`` did not move. The attacker writes the server's repository directly, as
a compromised server holding the online (snapshot, timestamp) keys could.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from agent.updater import UpdaterState
from firmware_manifests.keys import generate_key
from kioskfleet.update_client import UpdateClient
from protocol.update_status import UpdateBody, UpdateState
from server.main import Server
from server.tuf_online import next_timestamp
from tests.integration import test_agent_updater, test_updates
from tests.integration.conftest import admin_token
from tests.integration.test_agent_updater import Release, Terminal, _bundle, _publish
from tests.support.cutting_proxy import cutting_proxy
from tests.support.tuf_world import TufWorld, release_manifest

pytestmark = pytest.mark.integration

S = UpdateState
world = test_agent_updater.world
server = test_agent_updater.server
terminal = test_agent_updater.terminal

Tree = dict[str, str]


def _tree(terminal: Terminal) -> Tree:
    """Every path under the slots with what it is: link target or sha256 of the bytes."""
    out: Tree = {}
    for path in sorted(terminal.slots.rglob("*")):
        rel = str(path.relative_to(terminal.slots))
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def _installed_first(terminal: Terminal) -> tuple[Release, Tree]:
    first = _publish(terminal, 1)
    assert terminal.handle(terminal.directive(first)) is S.SUCCEEDED
    return first, _tree(terminal)


def _refused_and_nothing_changed(terminal: Terminal, before: Tree, reason: str) -> None:
    last = terminal.reports[-1]
    assert (last.state, str(last.reason)) == (S.REJECTED, reason), last.detail
    assert S.INSTALLING not in terminal.states()
    assert _tree(terminal) == before  # active slot still release 1, inactive slot untouched
    assert terminal.active_version() == "1.1.0"
    assert UpdaterState.load(terminal.state_file).highest_counter == {"kiosk-app": 1}


def _metadata_dir(server: Server) -> Path:
    assert server.updates is not None
    return server.updates.repository.metadata_dir


def _latest_role_file(server: Server, role: str) -> Path:
    files = _metadata_dir(server).glob(f"*.{role}.json")
    return max(files, key=lambda p: int(p.name.split(".", 1)[0]))


def _current_timestamp(server: Server) -> Metadata[Timestamp]:
    return Metadata.from_file(str(_metadata_dir(server) / "timestamp.json"))


def _serve_timestamp(server: Server, world: TufWorld, snapshot: Path, *, now: datetime) -> None:
    """The attacker (online timestamp key) serves a new timestamp naming ``snapshot``."""
    version = int(snapshot.name.split(".", 1)[0])
    timestamp = next_timestamp(
        _current_timestamp(server).signed,
        snapshot.read_bytes(),
        version,
        world.online_timestamp,
        now=now,
        expiry=timedelta(days=1),
    )
    (_metadata_dir(server) / "timestamp.json").write_bytes(timestamp.to_bytes(JSONSerializer()))


# --- metadata ---------------------------------------------------------------------------------


def test_vendor_metadata_edited_on_the_server_without_re_signing_is_refused_as_tampered(
    terminal: Terminal, server: Server
) -> None:
    _, before = _installed_first(terminal)
    second = _publish(terminal, 2)
    role = _latest_role_file(server, "acme")
    sha = hashlib.sha256(second.data).hexdigest()
    raw = role.read_bytes()
    assert sha.encode() in raw
    role.write_bytes(raw.replace(sha.encode(), sha[::-1].encode()))  # same length, new hash
    assert terminal.handle(terminal.directive(second)) is S.REJECTED
    _refused_and_nothing_changed(terminal, before, "metadata_tampered")


def test_vendor_metadata_signed_by_a_key_not_delegated_is_refused_as_an_unknown_key(
    terminal: Terminal, server: Server, world: TufWorld
) -> None:
    _, before = _installed_first(terminal)
    second = _publish(terminal, 2)
    role: Metadata[Targets] = Metadata.from_bytes(world.role_file("acme").read_bytes())
    role.signed.version += 1
    role.signatures.clear()
    role.sign(generate_key())  # the real targets, re-signed by a key of the attacker's
    test_updates._attacker_publishes(server, world, role)
    assert terminal.handle(terminal.directive(second)) is S.REJECTED
    _refused_and_nothing_changed(terminal, before, "metadata_unknown_key")


def test_a_vendor_listing_a_path_delegated_to_another_vendor_is_ignored_and_refused(
    terminal: Terminal, server: Server, world: TufWorld, tmp_path: Path
) -> None:
    _, before = _installed_first(terminal)
    world.add_vendor("duo")
    with UpdateClient(server.base_url, admin_token(server)) as admin:
        admin.upload_metadata("targets", world.targets_bytes())
    evil = _bundle("6.6.6")
    (test_updates._blobs_dir(server) / hashlib.sha256(evil).hexdigest()).write_bytes(evil)
    role = Metadata(Targets(version=1, expires=datetime.now(UTC) + timedelta(days=7)))
    manifest = release_manifest(9).to_custom()
    for path in ("acme/kiosk-app-9.tar.gz", "duo/own-9.tar.gz"):
        target = TargetFile.from_data(path, evil, ["sha256"])
        target.unrecognized_fields["custom"] = manifest
        role.signed.targets[path] = target
    role.sign(world.vendor_keys["duo"][0])  # duo's real, delegated key
    test_updates._attacker_publishes(server, world, role, vendor="duo")
    # duo's role verifies: a bare python-tuf client finds duo's own path in it ...
    client = test_updates._updater(server, tmp_path, world.roots()[0])
    client.refresh()
    assert client.get_targetinfo("duo/own-9.tar.gz") is not None
    # ... but acme/* is delegated to acme only, so duo's entry under it counts for nothing
    payload = terminal.directive(Release("acme/kiosk-app-9.tar.gz", evil))
    assert terminal.handle(payload) is S.REJECTED
    _refused_and_nothing_changed(terminal, before, "target_unknown")


@pytest.mark.parametrize("rolled_back", ["timestamp", "snapshot"])
def test_metadata_older_than_what_the_terminal_saw_is_refused_as_a_rollback(
    terminal: Terminal, server: Server, world: TufWorld, rolled_back: str
) -> None:
    first, before = _installed_first(terminal)
    old_timestamp = (_metadata_dir(server) / "timestamp.json").read_bytes()
    old_snapshot = _latest_role_file(server, "snapshot")
    second = _publish(terminal, 2)
    assert terminal.handle(terminal.directive(first)) is S.ALREADY_INSTALLED  # saw the newer
    if rolled_back == "timestamp":  # the server (or the network) replays the older file
        (_metadata_dir(server) / "timestamp.json").write_bytes(old_timestamp)
    else:  # a newer timestamp, signed with the online key, naming the older snapshot
        _serve_timestamp(server, world, old_snapshot, now=datetime.now(UTC))
    assert terminal.handle(terminal.directive(second)) is S.REJECTED
    _refused_and_nothing_changed(terminal, before, "metadata_rollback")


def test_metadata_served_past_its_expiry_is_refused_as_expired(
    terminal: Terminal, server: Server, world: TufWorld
) -> None:
    _, before = _installed_first(terminal)
    second = _publish(terminal, 2)
    # A frozen server: what it serves was signed two days ago and expired yesterday.
    snapshot = _latest_role_file(server, "snapshot")
    _serve_timestamp(server, world, snapshot, now=datetime.now(UTC) - timedelta(days=2))
    assert terminal.handle(terminal.directive(second)) is S.REJECTED
    _refused_and_nothing_changed(terminal, before, "metadata_expired")


# --- artifacts --------------------------------------------------------------------------------


def test_a_compromised_server_pointing_a_terminal_at_unsigned_bytes_is_refused_before_download(
    terminal: Terminal, server: Server
) -> None:
    _, before = _installed_first(terminal)
    second = _publish(terminal, 2)
    # The artifact store's blob and the directive's hash agree, the directive is signed with
    # the real directive key: only the vendor's signature is missing.
    evil = _bundle("6.6.6")
    blob = test_updates._blobs_dir(server) / hashlib.sha256(second.data).hexdigest()
    blob.write_bytes(evil)
    assert terminal.handle(terminal.directive(Release(second.path, evil))) is S.REJECTED
    _refused_and_nothing_changed(terminal, before, "target_mismatch")
    assert S.DOWNLOADING not in terminal.states()


def test_an_artifact_longer_than_tuf_declares_is_refused_and_nothing_is_kept(
    terminal: Terminal, server: Server
) -> None:
    _, before = _installed_first(terminal)
    second = _publish(terminal, 2)
    blob = test_updates._blobs_dir(server) / hashlib.sha256(second.data).hexdigest()
    blob.write_bytes(second.data + b"\0" * 70_000)  # the signed bytes, then more
    assert terminal.handle(terminal.directive(second)) is S.REJECTED
    _refused_and_nothing_changed(terminal, before, "artifact_too_long")
    assert list((terminal.root / "work" / "downloads").iterdir()) == []


def test_an_interrupted_download_resumes_with_a_range_request_and_installs(
    terminal: Terminal, server: Server
) -> None:
    _, before = _installed_first(terminal)
    second = _publish(terminal, 2, data=_bundle("1.2.0", app=os.urandom(300_000)))
    downloads = terminal.root / "work" / "downloads"
    with cutting_proxy(server.base_url) as proxy:
        terminal.target_base_url = f"{proxy.base_url}/tuf/targets/"
        proxy.cut_next_target(100_000)
        assert terminal.handle(terminal.directive(second)) is S.FAILED
        assert str(terminal.reports[-1].reason) == "download_failed"
        assert _tree(terminal) == before
        [partial] = downloads.iterdir()
        kept = partial.read_bytes()  # what arrived in whole reads before the cut
        assert 0 < len(kept) <= 100_000
        assert second.data.startswith(kept)

        assert terminal.handle(terminal.directive(second)) is S.SUCCEEDED
    [(_, first_range), (_, second_range)] = proxy.requests
    assert (first_range, second_range) == (None, f"bytes={len(kept)}-")
    assert terminal.active_version() == "1.2.0"
    assert UpdaterState.load(terminal.state_file).highest_counter == {"kiosk-app": 2}
    assert list(downloads.iterdir()) == []


# --- the agent killed mid-install -------------------------------------------------------------

_REPO = Path(__file__).resolve().parents[2]


def _wait_until_paused(paused: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    """Block until the updater process reached its pause point."""
    deadline = time.monotonic() + 120  # a hang guard, not a measurement
    while not paused():
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"the updater ended before its pause point: {err.decode()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("the updater never reached its pause point")
        time.sleep(0.02)


def _run_updater_process(terminal: Terminal, mode: str, **config: Any) -> subprocess.Popen[bytes]:
    trusted_root = terminal.root / "trusted-root.json"
    trusted_root.write_bytes(terminal.world.roots()[0])
    config |= {
        "mode": mode,
        "terminal_id": "T-0001",
        "model": "KX-100",
        "metadata_url": f"{terminal.server.base_url}/tuf/metadata/",
        "targets_url": terminal.target_base_url or f"{terminal.server.base_url}/tuf/targets/",
        "trusted_root": str(trusted_root),
        "work_dir": str(terminal.root / "work"),
        "state_file": str(terminal.state_file),
        "slots": str(terminal.slots),
        "reports": str(terminal.root / "reports.jsonl"),
    }
    config.setdefault("marker", str(terminal.root / "paused"))
    path = terminal.root / f"{mode}.json"
    path.write_text(json.dumps(config))
    env = os.environ | {"PYTHONPATH": str(_REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.updater_process", str(path)],
        cwd=_REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill takes its children too
    )


# pause point -> the updater's last reported state, the recovery's report (None: nothing was
# under way), the release running after the recovery
_KILL_POINTS = {
    "downloading": (S.DOWNLOADING, None, 1),  # part of the artifact arrived, then no more
    "prepared": (S.INSTALLING, S.FAILED, 1),  # the inactive slot is written, not switched to
    "active": (S.INSTALLING, S.ROLLED_BACK, 1),  # switched and restarted, before the check
    "health_check": (S.HEALTH_CHECK, S.ROLLED_BACK, 1),  # the health command is running
    "healthy": (S.HEALTH_CHECK, S.SUCCEEDED, 2),  # the check passed, not yet committed
}


@pytest.mark.parametrize("killed_at", list(_KILL_POINTS))
def test_the_agent_killed_at_each_step_of_an_install_recovers_to_the_working_slot(
    terminal: Terminal, server: Server, killed_at: str
) -> None:
    _installed_first(terminal)
    marker = terminal.root / "paused"
    paused: Callable[[], bool] = marker.exists
    pause_at: str | None = killed_at
    if killed_at == "health_check":  # the release's own health command blocks
        script = f"echo $$ > {marker}.tmp && mv {marker}.tmp {marker} && exec sleep 600"
        health = f"sh -c {shlex.quote(script)}"
        second = _publish(terminal, 2, health=health, health_timeout_s=600)
        pause_at = None
    else:
        second = _publish(terminal, 2, data=_bundle("1.2.0", app=os.urandom(300_000)))
    directive = terminal.root / "directive"
    directive.write_bytes(terminal.directive(second))
    partial = terminal.root / "work" / "downloads" / "partial"
    with cutting_proxy(server.base_url) as proxy:
        terminal.target_base_url = f"{proxy.base_url}/tuf/targets/"
        if killed_at == "downloading":  # the proxy sends 100 000 bytes and then holds on
            proxy.stall_next_target(100_000)
            pause_at = None

            def some_bytes_arrived() -> bool:
                parts = list(partial.parent.glob("*.part"))
                return bool(parts) and parts[0].stat().st_size > 0

            paused = some_bytes_arrived

        process = _run_updater_process(
            terminal, "install", directive=str(directive), pause_at=pause_at
        )
        _wait_until_paused(paused, process)
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
        if killed_at == "health_check":  # the handler runs it in a session of its own
            os.kill(int(marker.read_text()), signal.SIGKILL)
        kept = sum(p.stat().st_size for p in partial.parent.glob("*.part"))
        _after_the_kill(terminal, killed_at, second)
        if killed_at == "downloading":  # the next directive resumed the killed download
            name = second.path.rsplit("/", 1)[1]
            ranges = [wanted for path, wanted in proxy.requests if path.endswith(name)]
            assert ranges == [None, f"bytes={kept}-"]
            assert 0 < kept <= 100_000


def _after_the_kill(terminal: Terminal, killed_at: str, second: Release) -> None:
    reported = [
        UpdateBody.model_validate_json(line)
        for line in (terminal.root / "reports.jsonl").read_text().splitlines()
    ]
    last_state, recovered_state, running = _KILL_POINTS[killed_at]
    assert reported[-1].state is last_state
    assert S.SUCCEEDED not in [r.state for r in reported]

    restart = _run_updater_process(terminal, "recover")
    out, err = restart.communicate(timeout=120)
    assert restart.returncode == 0, err.decode()
    recovered = json.loads(out)
    assert recovered["active"] == terminal.active_version() == f"1.{running}.0"
    slot = "slot-a" if running == 1 else "slot-b"
    assert (terminal.slots / "current").readlink() == Path(slot)
    if recovered_state is None:
        assert recovered["report"] is None  # no install was under way
    else:
        report = UpdateBody.model_validate_json(json.dumps(recovered["report"]))
        assert report.state is recovered_state
        reason = None if report.reason is None else str(report.reason)
        assert reason == ("interrupted" if running == 1 else None)
    state = UpdaterState.load(terminal.state_file)
    assert (state.highest_counter, state.installing) == ({"kiosk-app": running}, None)

    # and the terminal goes on: release 2 again is installed or not by what runs now ...
    again = S.ALREADY_INSTALLED if running == 2 else S.SUCCEEDED
    if killed_at != "health_check":  # (that release's health command blocks for good)
        assert terminal.handle(terminal.directive(second)) is again
    # ... and the next release installs into the other slot
    third = _publish(terminal, 3)
    assert terminal.handle(terminal.directive(third)) is S.SUCCEEDED
    assert terminal.active_version() == "1.3.0"
