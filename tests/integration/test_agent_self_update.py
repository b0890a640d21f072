"""The agent updates itself: a real launcher process, real agent processes, a real mosquitto,
a real server's TUF repository over HTTP and vendor-signed agent releases (tar bundles).

The launcher starts the OS package's agent (``--fallback``: ``kioskfleet agent`` from this
checkout). A signed directive names a ``kioskfleet-agent`` release (handler ``agent``); that
agent stages it in its inactive slot and stops; the launcher puts the new agent on trial.

- The good release's ``run`` starts the real agent code; it connects, confirms, the launcher
  commits, and the new agent reports ``succeeded``. The old agent drains its outbox slowly and
  stops without waiting for PUBACKs, so it leaves a backlog: the new agent opens the same
  outbox, finds it waiting and delivers it (the whole timeline reaches the server).
- A release that crashes at start, and one that runs but never confirms, are rolled back: the
  previous agent runs again and reports ``rolled_back`` for the release, through the outbox.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.self_update import AgentSlots
from firmware_manifests.release_manifest import HealthCheck, InstallStep
from kioskfleet.local_broker import LocalBroker
from kioskfleet.update_client import UpdateClient
from protocol.topics import Channel, topic
from server.access import Role
from server.main import Server
from tests.integration import test_agent_updater
from tests.integration.conftest import TerminalFactory, api, token, unique
from tests.integration.test_agent_updater import Release, Terminal
from tests.support.tuf_world import TufWorld, release_manifest
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

world = test_agent_updater.world
server = test_agent_updater.server

REPO = Path(__file__).resolve().parents[2]
STAGED = ["notified", "downloading", "downloaded", "installing", "health_check"]

GOOD_AGENT = f'#!/bin/sh\nexec "{sys.executable}" -m kioskfleet.cli "$@"\n'
CRASHING_AGENT = "#!/bin/sh\necho 'agent 9.9: cannot start' >&2\nexit 3\n"
SILENT_AGENT = "#!/bin/sh\nexec sleep 600\n"  # runs, never connects, never confirms


def agent_bundle(script: str) -> bytes:
    buffer = io.BytesIO()
    data = script.encode()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("run")
        info.size, info.mode = len(data), 0o755
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def publish_agent(vendor: Terminal, counter: int, script: str) -> Release:
    """A signed ``kioskfleet-agent`` release (handler ``agent``) uploaded to the server."""
    world = vendor.world
    name = f"kioskfleet-agent-{counter}-{hashlib.sha256(script.encode()).hexdigest()[:8]}.tar.gz"
    artifact = world.path / "artifacts" / name
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_bytes(agent_bundle(script))
    manifest = release_manifest(
        counter,
        package="kioskfleet-agent",
        install=InstallStep(handler="agent"),
        health_check=HealthCheck(kind="command", target="true", timeout_s=1),
    )
    world.sign("acme", artifact, manifest)
    with UpdateClient(
        vendor.server.base_url, token(vendor.server, Role.VENDOR, vendor="acme")
    ) as c:
        c.upload_artifact("acme", name, artifact)
        c.publish_role("acme", world.role_file("acme").read_bytes())
    return Release(f"acme/{name}", artifact.read_bytes())


def _agent_toml(path: Path, common: str, *, drain_rate: float, shutdown_s: float) -> Path:
    path.write_text(
        common + f"[limits]\nshutdown_timeout_s = {shutdown_s}\n"
        f'[outbox]\npath = "{path.parent / "outbox.sqlite"}"\nsynchronous = "normal"\n'
        f"drain_rate_per_s = {drain_rate}\ndrain_burst = 1\ndrain_jitter_s = 0.1\n"
    )
    return path


@dataclass
class Kiosk:
    """A terminal directory: the agent's configs, outbox, slots; the launcher running it."""

    tid: str
    where: Path
    launcher: subprocess.Popen[bytes]
    log: Path

    @property
    def slots(self) -> AgentSlots:
        return AgentSlots(self.where / "agent-slots")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_kiosk(
    broker: LocalBroker, server: Server, world: TufWorld, where: Path, trial_s: float
) -> Kiosk:
    """The launcher with the fallback agent. The fallback drains its outbox at 1 message/s and
    stops without waiting for PUBACKs; the slot agents get a config that drains at once."""
    where.mkdir(parents=True)
    (where / "root.json").write_bytes(world.roots()[0])
    tid = unique("T-SELF")
    socket_dir = Path(tempfile.mkdtemp(prefix="kf-"))  # AF_UNIX paths are short
    common = (
        f'terminal_id = "{tid}"\nhall = "h"\nregion = "r"\nmodel = "KX-100"\n'
        f'broker_url = "{broker.url}"\nreport_interval_s = 60\nprobe_interval_s = 1\n'
        "reconnect_min_s = 0.1\nreconnect_max_s = 0.5\n"
        "[updates]\nenabled = true\nallow_http = true\n"
        f'server_url = "{server.base_url}"\ntrusted_root = "{where / "root.json"}"\n'
        f'work_dir = "{where / "work"}"\nslots_root = "{where / "app-slots"}"\n'
        f'agent_slots_root = "{where / "agent-slots"}"\nrestart_command = ["true"]\n'
        f'poll_s = 0.05\nkiosk_socket = "{socket_dir / "kiosk.sock"}"\n'
    )
    old = _agent_toml(where / "old.toml", common, drain_rate=1.0, shutdown_s=0)
    new = _agent_toml(where / "agent.toml", common, drain_rate=100.0, shutdown_s=5)
    fallback = shlex.join([sys.executable, "-m", "kioskfleet.cli", "agent", "--config", str(old)])
    log = where / "launcher.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_AGENT_")}
    env["PYTHONPATH"] = str(REPO)
    with log.open("wb") as out:
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.launcher",
                "--root",
                str(where / "agent-slots"),
                "--trial-s",
                str(trial_s),
                "--poll-s",
                "0.05",
                "--stop-timeout-s",
                "10",
                "--fallback",
                fallback,
                "--",
                "agent",
                "--config",
                str(new),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    kiosk = Kiosk(tid, where, launcher, log)
    wait_until(lambda: _timeline_or_none(server, tid) is not None, 30, "the first agent reports")
    return kiosk


def _timeline_or_none(server: Server, tid: str) -> list[dict[str, Any]] | None:
    if api(server, f"/api/v1/terminals/{tid}").status_code != 200:
        return None
    return _timeline(server, tid)


def _timeline(server: Server, tid: str) -> list[dict[str, Any]]:
    response = api(server, f"/api/v1/terminals/{tid}/updates")
    assert response.status_code == 200, response.text
    return list(reversed(response.json()["updates"]))


def _states(server: Server, tid: str) -> list[str]:
    return [u["state"] for u in _timeline(server, tid)]


@pytest.fixture
def kiosks() -> Iterator[list[Kiosk]]:
    made: list[Kiosk] = []
    yield made
    for kiosk in made:
        if kiosk.launcher.poll() is None:
            kiosk.launcher.send_signal(signal.SIGTERM)
            try:
                kiosk.launcher.wait(30)
            except subprocess.TimeoutExpired:
                kiosk.launcher.kill()
                kiosk.launcher.wait()


@pytest.fixture
def sender(terminals: TerminalFactory) -> Any:
    return terminals(unique("rollout-sender"))


def _roll_out(vendor: Terminal, sender: Any, kiosk: Kiosk, release: Release) -> None:
    sender.publish_raw(
        topic(kiosk.tid, Channel.CMD), vendor.directive(release, terminal_id=kiosk.tid)
    )


def test_a_good_agent_release_is_confirmed_committed_and_the_outbox_backlog_delivered(
    broker: LocalBroker,
    server: Server,
    world: TufWorld,
    tmp_path: Path,
    kiosks: list[Kiosk],
    sender: Any,
) -> None:
    vendor = Terminal(server, world, tmp_path / "vendor")
    release = publish_agent(vendor, 2, GOOD_AGENT)
    kiosk = start_kiosk(broker, server, world, tmp_path / "kiosk", trial_s=60)
    kiosks.append(kiosk)

    _roll_out(vendor, sender, kiosk, release)

    wait_until(
        lambda: _states(server, kiosk.tid) == [*STAGED, "succeeded"],
        60,
        "the staged statuses (from the old agent) and succeeded (from the new one)",
    )
    timeline = _timeline(server, kiosk.tid)
    assert {(u["rollout_id"], u["directive_seq"]) for u in timeline} == {("R-1", 1)}
    trial = kiosk.slots.load()
    assert trial is not None
    assert trial.step == "committed"
    assert kiosk.slots.active_slot() == trial.to_slot == "slot-a"
    assert kiosk.slots.confirmed(trial)
    assert kiosk.slots.reported(trial)
    assert kiosk.launcher.poll() is None  # the launcher still runs the new agent
    # The new agent found what the old one left unsent in the shared outbox.
    log = kiosk.log_text()
    started = log.index(f"starting the agent: ['{kiosk.where / 'agent-slots' / 'slot-a' / 'run'}'")
    waiting = re.search(r"(\d+) message\(s\) waiting", log[started:])
    assert waiting is not None
    assert int(waiting.group(1)) > 0, log[started:]
    # The committed release counts as installed: the same release again is already_installed.
    _roll_out(vendor, sender, kiosk, release)
    wait_until(
        lambda: _states(server, kiosk.tid)[-1:] == ["already_installed"],
        30,
        "the same agent release again ends already_installed",
    )


@pytest.mark.parametrize(
    ("script", "trial_s", "why"),
    [(CRASHING_AGENT, 60.0, "exited with 3"), (SILENT_AGENT, 3.0, "did not confirm")],
    ids=["crashes-at-start", "never-confirms"],
)
def test_a_failed_agent_release_returns_to_the_previous_agent_which_reports_rolled_back(
    broker: LocalBroker,
    server: Server,
    world: TufWorld,
    tmp_path: Path,
    kiosks: list[Kiosk],
    sender: Any,
    script: str,
    trial_s: float,
    why: str,
) -> None:
    vendor = Terminal(server, world, tmp_path / "vendor")
    release = publish_agent(vendor, 2, script)
    kiosk = start_kiosk(broker, server, world, tmp_path / "kiosk", trial_s=trial_s)
    kiosks.append(kiosk)

    _roll_out(vendor, sender, kiosk, release)

    wait_until(
        lambda: _states(server, kiosk.tid) == [*STAGED, "rolled_back"],
        60,
        "the staged statuses, then rolled_back from the previous agent",
    )
    last = _timeline(server, kiosk.tid)[-1]
    assert (last["rollout_id"], last["directive_seq"]) == ("R-1", 1)
    assert last["reason"] == "health_check_failed"
    assert why in last["detail"]
    trial = kiosk.slots.load()
    assert trial is not None
    assert trial.step == "rolled_back"
    assert kiosk.slots.active_slot() is None  # back to the OS package's agent
    assert kiosk.launcher.poll() is None
    # The previous agent was started again after the rollback (and queued that status).
    log = kiosk.log_text()
    rolled = log.index("rolled_back (None -> slot-a)")
    assert "starting the agent: [" + repr(sys.executable) in log[rolled:]
