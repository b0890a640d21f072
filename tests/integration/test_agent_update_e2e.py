"""The running agent installs an update end to end: signed directive on its cmd topic ->
the agent's updater (real python-tuf against the real server's repository over HTTP) ->
a vendor-published tar bundle into temporary A/B slots -> kf.update statuses through the
outbox and a real mosquitto into the server's update timeline -> the next report's software.

The agent is the production ``AgentRuntime`` with ``[updates]`` enabled (restart ``true``,
health check ``true``); the directive is signed with the key the operator pinned in TUF.
"""

from __future__ import annotations

import base64
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.main import AgentRuntime
from kioskfleet.local_broker import LocalBroker
from protocol.directives import Directive
from protocol.topics import Channel, topic
from server.main import Server
from tests.integration import test_agent_mqtt, test_agent_updater
from tests.integration.conftest import TerminalFactory, api, unique
from tests.integration.test_agent_mqtt import config_for, start_agent
from tests.integration.test_agent_updater import Release, Terminal, _publish
from tests.support.tuf_world import TufWorld
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

world = test_agent_updater.world
server = test_agent_updater.server
runtimes = test_agent_mqtt.runtimes

SUCCESS = ["notified", "downloading", "downloaded", "installing", "health_check", "succeeded"]


def _updating_config(
    broker: LocalBroker, server: Server, world: TufWorld, where: Path
) -> AgentConfig:
    where.mkdir(parents=True, exist_ok=True)
    (where / "root.json").write_bytes(world.roots()[0])
    return config_for(
        broker,
        unique("T-UPD"),
        model="KX-100",
        agent_version="1.4.0",
        probes=[],
        updates={
            "enabled": True,
            "server_url": server.base_url,
            "allow_http": True,
            "trusted_root": str(where / "root.json"),
            "work_dir": str(where / "work"),
            "slots_root": str(where / "slots"),
            "restart_command": ["true"],
            "health_interval_s": 0.05,
            "poll_s": 0.05,
            # AF_UNIX paths are short: the socket lives in a short temporary directory
            "kiosk_socket": str(Path(tempfile.mkdtemp(prefix="kf-")) / "kiosk.sock"),
        },
    )


def _timeline(server: Server, terminal_id: str) -> list[dict[str, Any]]:
    response = api(server, f"/api/v1/terminals/{terminal_id}/updates")
    assert response.status_code == 200, response.text
    updates: list[dict[str, Any]] = response.json()["updates"]
    return list(reversed(updates))  # oldest first


def _software(server: Server, terminal_id: str) -> dict[str, str] | None:
    response = api(server, f"/api/v1/terminals/{terminal_id}")
    software: dict[str, str] | None = response.json().get("software")
    return software if response.status_code == 200 else None


@pytest.fixture
def sender(terminals: TerminalFactory) -> Any:
    """The server side's publisher of directives (a raw MQTT client)."""
    return terminals(unique("rollout-sender"))


@dataclass
class Scene:
    """A published release (kiosk-app 1.1.0), the vendor's directive maker, a running agent."""

    vendor: Terminal
    release: Release
    runtime: AgentRuntime
    slots: Path

    @property
    def tid(self) -> str:
        return self.runtime.config.terminal_id


@pytest.fixture
def scene(
    broker: LocalBroker,
    server: Server,
    world: TufWorld,
    tmp_path: Path,
    runtimes: list[AgentRuntime],
) -> Scene:
    vendor = Terminal(server, world, tmp_path / "vendor")
    release = _publish(vendor, 1)
    config = _updating_config(broker, server, world, tmp_path / "terminal")
    return Scene(vendor, release, start_agent(runtimes, config), tmp_path / "terminal" / "slots")


def test_a_signed_directive_on_the_cmd_topic_installs_and_the_server_sees_every_status(
    scene: Scene, server: Server, sender: Any
) -> None:
    vendor, release, runtime, tid = scene.vendor, scene.release, scene.runtime, scene.tid

    payload = vendor.directive(release, terminal_id=tid)
    sender.publish_raw(topic(tid, Channel.CMD), payload)

    wait_until(
        lambda: [u["state"] for u in _timeline(server, tid)] == SUCCESS,
        30,
        "notified ... succeeded in the server's timeline",
    )
    timeline = _timeline(server, tid)
    assert all(u["rollout_id"] == "R-1" and u["directive_seq"] == 1 for u in timeline)
    slots = scene.slots
    assert (slots / "current").readlink() == Path("slot-a")
    assert (slots / "current" / "VERSION").read_text() == "1.1.0"
    wait_until(
        lambda: _software(server, tid) == {"kiosk-app": "1.1.0"},
        10,
        "the next report's software names the new version",
    )
    assert runtime.updates is not None
    assert runtime.updates.stats.handled == 1


def test_directives_for_another_terminal_or_unsigned_are_rejected_reported_and_install_nothing(
    scene: Scene, server: Server, sender: Any
) -> None:
    vendor, release, tid = scene.vendor, scene.release, scene.tid
    cmd = topic(tid, Channel.CMD)

    sender.publish_raw(cmd, vendor.directive(release, terminal_id="T-SOMEONE-ELSE"))
    signed = vendor.directive(release, terminal_id=tid)
    unsigned = Directive.model_validate_json(_payload_of(signed)).model_dump_json().encode()
    sender.publish_raw(cmd, unsigned)

    wait_until(lambda: len(_timeline(server, tid)) == 2, 30, "two rejections in the timeline")
    timeline = _timeline(server, tid)
    assert [(u["state"], u["reason"]) for u in timeline] == [
        ("rejected", "wrong_terminal"),
        ("rejected", "malformed"),
    ]
    assert all(u["directive_seq"] == 0 and u["rollout_id"] is None for u in timeline)
    assert not (scene.slots / "current").exists()
    assert _software(server, tid) == {}


def _payload_of(signed: bytes) -> bytes:
    """The directive inside a signed envelope, without its signature."""
    body: str = json.loads(signed)["payload"]
    return base64.b64decode(body)
