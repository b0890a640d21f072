"""Rollouts through a real mosquitto and a real server (SQLite and PostgreSQL): created by one
operator, approved by another (never by its creator), the driver sends directives signed with
the pinned directive key to the first phase's terminals, their update statuses advance the
phase, failures past the abort threshold abort, a cancel stops notifications."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tuf.ngclient import Updater

from agent.main import AgentRuntime
from kioskfleet.cli import main
from kioskfleet.update_client import UpdateClient
from kioskfleet.update_repo import DIRECTIVE_KEY_TARGET
from protocol.codec import decode
from protocol.committed import COMMITTED_SCHEMA
from protocol.directives import (
    Directive,
    Withdrawal,
    pinned_key_from_custom,
    verify_directive,
    verify_withdrawal,
)
from protocol.topics import Channel
from server.access import Role
from server.access_store import AuditFilter
from server.console.web import CONSOLE_PREFIX
from server.main import Server
from server.update_status_store import timeline
from tests.integration import test_agent_mqtt
from tests.integration.conftest import (
    RawTerminal,
    ServerFactory,
    TerminalFactory,
    admin_token,
    api,
    bearer,
    token,
)
from tests.integration.test_agent_mqtt import start_agent
from tests.integration.test_agent_update_e2e import _timeline, _updating_config
from tests.integration.test_agent_updater import Release, Terminal, _publish
from tests.integration.test_console import _httpx_login, add_user
from tests.integration.test_directives_tuf import SERVER_KEY, updater, world
from tests.support.device_identity import make_ca
from tests.support.tuf_world import release_manifest
from tests.support.waiting import HTTP_TIMEOUT_S, wait_until

pytestmark = pytest.mark.integration

__all__ = ["updater", "world"]  # fixtures reused from the directive tests
runtimes = test_agent_mqtt.runtimes

TARGET = "acme/kiosk-app-1.bin"
FAILURE = "install_failed"


def _start(
    private_server: ServerFactory,
    world: Any,
    tmp_path: Path,
    database_url: str,
    key: Any,
    tick_s: float = 0.2,
    **settings: Any,
) -> Server:
    """Signed releases on, ``key`` as the directive key, a fast rollout tick (``tick_s``)."""
    key_file = tmp_path / "directive.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = private_server(
        database_url=database_url,
        updates_dir=tmp_path / "repository",
        updates_snapshot_key_file=world.operator.online_dir / "snapshot.key",
        updates_timestamp_key_file=world.operator.online_dir / "timestamp.key",
        updates_max_artifact_bytes=1 << 20,
        updates_directive_key_file=key_file,
        rollout_tick_interval_s=tick_s,
        **settings,
    )
    with UpdateClient(server.base_url, admin_token(server)) as admin:
        for root in world.roots():
            admin.upload_metadata("root", root)
        admin.upload_metadata("targets", world.targets_bytes())
    return server


@pytest.fixture
def with_registry() -> bool:
    """Whether ``server`` has a terminal registry (a test parametrizes it to True)."""
    return False


@pytest.fixture
def server(
    database_url: str, private_server: ServerFactory, world: Any, tmp_path: Path,
    with_registry: bool,
) -> Server:  # fmt: skip
    """The directive key is the one the operator pinned. With a registry (a device CA),
    enrollment is not required: raw terminals still report."""
    extra: dict[str, Any] = {}
    if with_registry:
        extra = {"ca_dir": make_ca(tmp_path / "ca").directory, "require_enrollment": False}
    return _start(private_server, world, tmp_path, database_url, SERVER_KEY, **extra)


class CmdInbox:
    """A RawTerminal's ``cmd`` subscription: every payload it received, in order."""

    def __init__(self, terminal: RawTerminal) -> None:
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        terminal.client.on_message = self._received
        terminal.client.on_subscribe = lambda *_a: subscribed.set()
        terminal.client.subscribe(terminal.topic(Channel.CMD), qos=1)
        assert subscribed.wait(5), "cmd subscription"

    def _received(self, _client: Any, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # The server also confirms each committed report on ``cmd`` (``kf.committed``,
        # protocol/committed.py); those are not the rollout's messages.
        if json.loads(msg.payload).get("schema") == COMMITTED_SCHEMA:
            return
        with self._lock:
            self.payloads.append(bytes(msg.payload))

    def count(self) -> int:
        with self._lock:
            return len(self.payloads)


def _post(server: Server, secret: str, path: str, body: dict[str, Any] | None = None) -> Any:
    return httpx.post(
        server.base_url + path, json=body, headers=bearer(secret), timeout=HTTP_TIMEOUT_S
    )


def _rollout(server: Server, rollout_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{server.base_url}/api/v1/rollouts/{rollout_id}",
        headers=bearer(admin_token(server)),
        timeout=HTTP_TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _status(t: RawTerminal, directive: Directive, state: str, **extra: Any) -> None:
    raw = {
        "schema": "kf.update",
        "version": 1,
        "terminal_id": t.id,
        "boot_id": t.boot,
        "seq": t.next_seq(),
        "sent_at": datetime.now(UTC).isoformat(),
        "body": {
            "rollout_id": directive.rollout_id,
            "directive_seq": directive.seq,
            "state": state,
            **extra,
        },
    }
    t.publish(decode(t.topic(Channel.UPDATE), json.dumps(raw).encode()))


def _withdrawal(updater: Updater, terminal: RawTerminal, payload: bytes) -> Withdrawal:
    pin = updater.get_targetinfo(DIRECTIVE_KEY_TARGET)
    assert pin is not None
    return verify_withdrawal(
        payload,
        pinned_key=pinned_key_from_custom(pin.custom),
        terminal_id=terminal.id,
        now=datetime.now(UTC),
    )


def _verified(updater: Updater, terminal: RawTerminal, payload: bytes) -> Directive:
    pin = updater.get_targetinfo(DIRECTIVE_KEY_TARGET)
    assert pin is not None
    return verify_directive(
        payload,
        pinned_key=pinned_key_from_custom(pin.custom),
        terminal_id=terminal.id,
        last_seq=0,
        now=datetime.now(UTC),
        target_info=updater.get_targetinfo,
    )


@pytest.fixture
def fleet(server: Server, private_terminals: TerminalFactory) -> list[tuple[RawTerminal, CmdInbox]]:
    """Three terminals in hall R (in id order) reporting, each listening on its cmd; one
    terminal elsewhere that no rollout for hall R may reach."""
    members = []
    for tid in ("T-RO-1", "T-RO-2", "T-RO-3", "T-RO-X"):
        t = private_terminals(tid, hall="Hall R" if tid != "T-RO-X" else "Hall Q")
        inbox = CmdInbox(t)
        t.report()
        members.append((t, inbox))
    wait_until(lambda: all(server.fleet.get(t.id) for t, _ in members), 10, "the fleet")
    return members


def _create(server: Server, creator: str, rollout_id: str, **overrides: Any) -> Any:
    body = {
        "rollout_id": rollout_id,
        "target": TARGET,
        "selector": {"hall": "Hall R"},
        "phases": [{"size": 1, "unit": "count"}, {"size": 100, "unit": "percent"}],
        "success_threshold": 1.0,
        "abort_failure_ratio": 0.5,
        "abort_min_decided": 2,
        "terminal_timeout_s": 3600,
        "max_attempts": 1,
        **overrides,
    }
    return _post(server, creator, "/api/v1/rollouts", body)


def test_a_rollout_needs_another_operator_and_advances_on_reported_successes(
    server: Server, updater: Updater, fleet: list[tuple[RawTerminal, CmdInbox]]
) -> None:
    alice = token(server, Role.OPERATOR, name="alice")
    bob = token(server, Role.OPERATOR, name="bob")
    created = _create(server, alice, "R-ADV")
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "awaiting_approval"
    assert _create(server, alice, "R-BAD", target="acme/never-published.bin").status_code == 409

    refused = _post(server, alice, "/api/v1/rollouts/R-ADV/approve")
    assert refused.status_code == 409, refused.text
    assert _rollout(server, "R-ADV")["status"] == "awaiting_approval"
    approved = _post(server, bob, "/api/v1/rollouts/R-ADV/approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["approved_by"] == "token:bob"

    (first, first_inbox), *rest = fleet
    wait_until(lambda: first_inbox.count() == 1, 10, "the first phase's directive")
    directive = _verified(updater, first, first_inbox.payloads[0])
    assert (directive.rollout_id, directive.target.path) == ("R-ADV", TARGET)
    assert [inbox.count() for _, inbox in rest] == [0, 0, 0]

    _status(first, directive, "succeeded")
    second, third, outsider = rest
    wait_until(lambda: second[1].count() == 1 and third[1].count() == 1, 10, "the second phase")
    for t, inbox in (second, third):
        assert _verified(updater, t, inbox.payloads[0]).terminal_id == t.id
    for t, inbox in (second, third):
        _status(t, _verified(updater, t, inbox.payloads[0]), "succeeded")
    wait_until(lambda: _rollout(server, "R-ADV")["status"] == "completed", 10, "completion")
    assert _rollout(server, "R-ADV")["counts"] == {"succeeded": 3}
    assert outsider[1].count() == 0


def test_failures_past_the_abort_threshold_abort_the_rollout(
    server: Server, updater: Updater, fleet: list[tuple[RawTerminal, CmdInbox]]
) -> None:
    alice = token(server, Role.OPERATOR, name="alice")
    bob = token(server, Role.OPERATOR, name="bob")
    one_phase = {"phases": [{"size": 100, "unit": "percent"}]}
    assert _create(server, alice, "R-ABORT", **one_phase).status_code == 201
    assert _post(server, bob, "/api/v1/rollouts/R-ABORT/approve").status_code == 200
    members = fleet[:3]
    wait_until(lambda: all(i.count() == 1 for _, i in members), 10, "all three directives")
    for t, inbox in members[:2]:
        _status(t, _verified(updater, t, inbox.payloads[0]), "failed", reason=FAILURE)
    wait_until(lambda: _rollout(server, "R-ABORT")["status"] == "aborted", 10, "the abort")


def test_a_canceled_rollout_notifies_no_one_else(
    server: Server, updater: Updater, fleet: list[tuple[RawTerminal, CmdInbox]]
) -> None:
    alice = token(server, Role.OPERATOR, name="alice")
    bob = token(server, Role.OPERATOR, name="bob")
    assert _create(server, alice, "R-CANCEL").status_code == 201
    assert _post(server, bob, "/api/v1/rollouts/R-CANCEL/approve").status_code == 200
    (first, inbox), *rest = fleet
    wait_until(lambda: inbox.count() == 1, 10, "the first directive")
    canceled = _post(server, bob, "/api/v1/rollouts/R-CANCEL/cancel")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    directive = _verified(updater, first, inbox.payloads[0])
    wait_until(lambda: inbox.count() == 2, 10, "the withdrawal of the notified terminal")
    withdrawal = _withdrawal(updater, first, inbox.payloads[1])
    assert (withdrawal.rollout_id, withdrawal.target) == ("R-CANCEL", TARGET)
    assert withdrawal.seq > directive.seq  # it withdraws that directive, never a later one
    _status(first, directive, "succeeded")  # a raw terminal ignores the request
    wait_until(
        lambda: _rollout(server, "R-CANCEL")["counts"] == {"succeeded": 1, "canceled": 2},
        10,
        "the late report counted",
    )  # before the cancel, this success would have opened phase two
    assert server.rollouts.tick() == 0  # settled: canceled and every terminal final
    assert [i.count() for _, i in rest] == [0, 0, 0]
    assert _post(server, bob, "/api/v1/rollouts/R-CANCEL/resume").status_code == 409


def test_the_rollout_cli_creates_approves_and_shows_through_the_api(
    server: Server, updater: Updater, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {}
    for name in ("alice", "bob"):
        files[name] = tmp_path / f"{name}.token"
        files[name].write_text(token(server, Role.OPERATOR, name=name) + "\n")
    definition = tmp_path / "rollout.json"
    definition.write_text(
        json.dumps(
            {
                "rollout_id": "R-CLI",
                "target": TARGET,
                "phases": [{"size": 100}],
                "success_threshold": 0.9,
                "abort_failure_ratio": 0.5,
                "abort_min_decided": 2,
                "terminal_timeout_s": 600,
            }
        )
    )

    def cli(who: str, *words: str) -> int:
        flags = ["--server", server.base_url, "--token-file", str(files[who])]
        return main(["rollout", *words, *flags])

    assert cli("alice", "create", str(definition)) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "awaiting_approval"
    assert cli("alice", "approve", "R-CLI") == 1
    assert "refused (409)" in capsys.readouterr().err
    assert cli("bob", "approve", "R-CLI") == 0
    capsys.readouterr()
    assert cli("bob", "status", "R-CLI") == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["status"], shown["approved_by"]) == ("running", "token:bob")
    assert cli("bob", "cancel", "R-CLI") == 0
    assert json.loads(capsys.readouterr().out)["status"] == "canceled"


@pytest.fixture
def unpinned_server(
    database_url: str, private_server: ServerFactory, world: Any, tmp_path: Path
) -> Server:
    """A server whose directive key is not the one the operator pinned."""
    return _start(private_server, world, tmp_path, database_url, Ed25519PrivateKey.generate())


def test_a_directive_key_that_is_not_the_pinned_one_sends_nothing_and_is_audited(
    unpinned_server: Server, world: Any, private_terminals: TerminalFactory
) -> None:
    server = unpinned_server
    artifact = world.artifact("kiosk-app-1.bin")
    world.sign("acme", artifact, release_manifest(1))
    with UpdateClient(server.base_url, token(server, Role.VENDOR, vendor="acme")) as acme:
        acme.upload_artifact("acme", artifact.name, artifact)
        acme.publish_role("acme", world.role_file("acme").read_bytes())
    t = private_terminals("T-RO-P", hall="Hall R")
    inbox = CmdInbox(t)
    t.report()
    wait_until(lambda: server.fleet.get(t.id), 10, "the terminal")
    alice = token(server, Role.OPERATOR, name="alice")
    bob = token(server, Role.OPERATOR, name="bob")
    assert _create(server, alice, "R-PIN", phases=[{"size": 100}]).status_code == 201
    assert _post(server, bob, "/api/v1/rollouts/R-PIN/approve").status_code == 200

    def refused() -> list[Any]:
        page = api(server, "/api/v1/audit", action="rollout.notify", result="failed")
        assert page.status_code == 200, page.text
        entries: list[Any] = page.json()["items"]
        return entries

    wait_until(refused, 10, "the audited refusal")
    entry = refused()[0]
    assert (entry["actor"], entry["target"]) == ("system", "T-RO-P")
    assert "not the pinned directive key" in entry["detail"]["error"]
    assert inbox.count() == 0


# --- opening hours, attempts, withdrawals with a real agent ------------------------------------


def _hours_closing_at(closing: datetime, now: datetime) -> dict[str, Any]:
    """Opening hours (UTC) open from today's midnight until ``closing`` (< 24 h ahead),
    closed on every other day."""
    days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    until = closing.strftime("%H:%M")
    weekly: dict[str, list[dict[str, str]]] = {}
    if closing.date() == now.date():
        weekly[days[now.weekday()]] = [{"start": "00:00", "end": until}]
    else:  # open over midnight: the two parts are one opening
        weekly[days[now.weekday()]] = [{"start": "00:00", "end": "24:00"}]
        if until != "00:00":
            weekly[days[closing.weekday()]] = [{"start": "00:00", "end": until}]
    return {"timezone": "UTC", "weekly": weekly}


def _open_until(server: Server, hall: str, hours_ahead: int = 2) -> datetime:
    """Give ``hall`` hours that are open now and close ``hours_ahead`` hours from now."""
    now = datetime.now(UTC)
    closing = (now + timedelta(hours=hours_ahead)).replace(second=0, microsecond=0)
    response = httpx.put(
        f"{server.base_url}/api/v1/halls/{hall}/opening-hours",
        json=_hours_closing_at(closing, now),
        headers=bearer(admin_token(server)),
        timeout=HTTP_TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    return closing


SIX_HOURS = 6 * 3600


def test_a_directive_for_an_open_hall_starts_at_its_closing_and_the_override_starts_now(
    server: Server, updater: Updater, fleet: list[tuple[RawTerminal, CmdInbox]]
) -> None:
    closing = _open_until(server, "Hall R")
    alice = token(server, Role.OPERATOR, name="alice")
    bob = token(server, Role.OPERATOR, name="bob")
    one_phase = {"phases": [{"size": 100}], "terminal_timeout_s": SIX_HOURS}
    assert _create(server, alice, "R-CLOSED", **one_phase).status_code == 201
    assert _post(server, bob, "/api/v1/rollouts/R-CLOSED/approve").status_code == 200
    (first, inbox), *_ = fleet
    wait_until(lambda: inbox.count() == 1, 10, "the directive")
    closed = _verified(updater, first, inbox.payloads[0])
    assert closed.not_before == closing  # downloads now, installs once the hall closed
    assert closed.not_after == closed.expires_at == closed.issued_at + timedelta(hours=6)
    assert (closed.install_while_open, closed.attempt) == (False, 1)

    override = {**one_phase, "install_while_open": True}
    assert _create(server, alice, "R-OPEN", **override).status_code == 201
    assert _rollout(server, "R-OPEN")["definition"]["install_while_open"] is True
    assert _post(server, bob, "/api/v1/rollouts/R-OPEN/approve").status_code == 200
    wait_until(lambda: inbox.count() == 2, 10, "the overriding rollout's directive")
    now = _verified(updater, first, inbox.payloads[1])
    assert (now.rollout_id, now.install_while_open) == ("R-OPEN", True)
    assert now.not_before == now.issued_at  # installs at once, hall open or not


def test_a_hall_open_past_the_directive_lifetime_gets_no_directive_and_it_is_audited(
    server: Server, updater: Updater, fleet: list[tuple[RawTerminal, CmdInbox]]
) -> None:
    _open_until(server, "Hall R", hours_ahead=3)
    alice = token(server, Role.OPERATOR, name="alice")
    bob = token(server, Role.OPERATOR, name="bob")
    short = {"phases": [{"size": 100}], "terminal_timeout_s": 3600}  # lives 1 h < 3 h
    assert _create(server, alice, "R-SHORT", **short).status_code == 201
    assert _post(server, bob, "/api/v1/rollouts/R-SHORT/approve").status_code == 200

    def refused() -> list[Any]:
        page = api(server, "/api/v1/audit", action="rollout.notify", result="failed")
        assert page.status_code == 200, page.text
        entries: list[Any] = page.json()["items"]
        return entries

    wait_until(lambda: len(refused()) == 3, 10, "three audited refusals")
    assert all("after the directive would expire" in e["detail"]["error"] for e in refused())
    assert [inbox.count() for _, inbox in fleet] == [0, 0, 0, 0]


def test_a_late_report_of_an_earlier_attempt_is_not_taken_for_the_current_one(
    server: Server, updater: Updater, fleet: list[tuple[RawTerminal, CmdInbox]]
) -> None:
    alice = token(server, Role.OPERATOR, name="alice")
    bob = token(server, Role.OPERATOR, name="bob")
    retried = {"phases": [{"size": 100}], "max_attempts": 2, "retry_backoff_s": 0}
    assert _create(server, alice, "R-ATT", **retried).status_code == 201
    assert _post(server, bob, "/api/v1/rollouts/R-ATT/approve").status_code == 200
    (first, inbox), *_ = fleet
    wait_until(lambda: inbox.count() == 1, 10, "attempt 1")
    one = _verified(updater, first, inbox.payloads[0])
    _status(first, one, "failed", reason=FAILURE, attempt=1)
    wait_until(lambda: inbox.count() == 2, 10, "attempt 2 after the failure")
    two = _verified(updater, first, inbox.payloads[1])
    assert (one.attempt, two.attempt) == (1, 2)

    # Attempt 1's success arrives late, after attempt 2 was sent: receive time alone would
    # take it for attempt 2's.
    _status(first, one, "succeeded", attempt=1)
    wait_until(
        lambda: (
            [u["attempt"] for u in _timeline(server, first.id)][-1:] == [1]
            and len(_timeline(server, first.id)) == 2
        ),
        10,
        "the late status stored",
    )
    server.rollouts.tick()
    assert _rollout(server, "R-ATT")["counts"] == {"notified": 3}
    _status(first, two, "succeeded", attempt=2)
    wait_until(
        lambda: _rollout(server, "R-ATT")["counts"] == {"succeeded": 1, "notified": 2},
        10,
        "attempt 2's success counted",
    )


@pytest.fixture
def agent(
    server: Server, world: Any, tmp_path: Path, runtimes: list[AgentRuntime], private_broker: Any
) -> tuple[AgentRuntime, Release]:
    """A real agent (hall-01) updating from the server's repository, a bundle published."""
    release = _publish(Terminal(server, world, tmp_path / "vendor"), 1)
    config = _updating_config(private_broker, server, world, tmp_path / "terminal")
    runtime = start_agent(runtimes, config)
    wait_until(lambda: server.fleet.get(config.terminal_id), 10, "the agent's first report")
    return runtime, release


def test_a_real_agent_waits_for_its_hall_to_close_and_a_cancel_withdraws_it_installing_nothing(
    server: Server, agent: tuple[AgentRuntime, Release], tmp_path: Path
) -> None:
    runtime, release = agent
    tid = runtime.config.terminal_id
    _open_until(server, runtime.config.hall)
    alice = token(server, Role.OPERATOR, name="alice")
    bob = token(server, Role.OPERATOR, name="bob")
    body = {
        "target": release.path,
        "selector": {"hall": runtime.config.hall},
        "phases": [{"size": 100}],
        "terminal_timeout_s": SIX_HOURS,
    }
    assert _create(server, alice, "R-AGENT", **body).status_code == 201
    assert _post(server, bob, "/api/v1/rollouts/R-AGENT/approve").status_code == 200
    waiting = ["notified", "downloading", "downloaded", "waiting_window"]
    wait_until(
        lambda: [u["state"] for u in _timeline(server, tid)] == waiting,
        30,
        "the agent downloaded and waits for the hall to close",
    )
    assert _timeline(server, tid)[-1]["detail"] == "the install window has not begun"
    assert {u["attempt"] for u in _timeline(server, tid)} == {1}

    assert _post(server, bob, "/api/v1/rollouts/R-AGENT/cancel").status_code == 200
    wait_until(
        lambda: [u["state"] for u in _timeline(server, tid)] == [*waiting, "canceled"],
        30,
        "the agent dropped the withdrawn directive",
    )
    wait_until(
        lambda: _rollout(server, "R-AGENT")["counts"] == {"canceled": 1}, 10, "counted canceled"
    )
    assert not (tmp_path / "terminal" / "slots" / "current").exists()
    assert runtime.updates is not None
    assert runtime.updates.stats.handled == 1


def _publish_release(server: Server, world: Any) -> None:
    artifact = world.artifact("kiosk-app-1.bin")
    world.sign("acme", artifact, release_manifest(1))
    with UpdateClient(server.base_url, token(server, Role.VENDOR, vendor="acme")) as acme:
        acme.upload_artifact("acme", artifact.name, artifact)
        acme.publish_role("acme", world.role_file("acme").read_bytes())


@pytest.fixture
def ticked_server(
    database_url: str, private_server: ServerFactory, world: Any, tmp_path: Path
) -> Server:
    """The pinned directive key and a rollout tick that never comes by itself: the test ticks."""
    server = _start(private_server, world, tmp_path, database_url, SERVER_KEY, tick_s=3600)
    _publish_release(server, world)
    return server


def test_statuses_sent_between_two_ticks_each_reach_the_planner(
    ticked_server: Server, private_terminals: TerminalFactory
) -> None:
    # Found by bench/rollout.py: a tick reads only each terminal's latest status, and
    # downloading -> succeeded is no transition, so a fast terminal stayed "downloading".
    server = ticked_server
    t = private_terminals("T-RO-F", hall="Hall R")
    inbox = CmdInbox(t)
    t.report()
    wait_until(lambda: server.fleet.get(t.id), 10, "the terminal")
    alice = token(server, Role.OPERATOR, name="alice")
    bob = token(server, Role.OPERATOR, name="bob")
    assert _create(server, alice, "R-FAST", phases=[{"size": 100}]).status_code == 201
    assert _post(server, bob, "/api/v1/rollouts/R-FAST/approve").status_code == 200
    assert server.rollouts.tick() == 1  # selects the terminal and notifies it
    wait_until(lambda: inbox.count() == 1, 10, "the directive")
    directive = _unverified(inbox.payloads[0])

    def stored() -> int:
        return len(timeline(server.storage.engine, t.id, 10))

    _status(t, directive, "downloading")
    wait_until(lambda: stored() == 1, 10, "downloading stored")
    assert server.rollouts.tick() == 1
    assert _rollout(server, "R-FAST")["counts"] == {"downloading": 1}
    for state in ("downloaded", "installing", "health_check", "succeeded"):
        _status(t, directive, state)
    wait_until(lambda: stored() == 5, 10, "the other four stored")
    assert server.rollouts.tick() == 1
    shown = _rollout(server, "R-FAST")
    assert (shown["status"], shown["counts"]) == ("completed", {"succeeded": 1})


def _unverified(payload: bytes) -> Directive:
    """The directive inside an envelope, unchecked (the directive tests check signatures)."""
    body = base64.b64decode(json.loads(payload)["payload"])
    return Directive.model_validate_json(body)


def _put(server: Server, secret: str, path: str, body: dict[str, Any]) -> Any:
    return httpx.put(
        server.base_url + path, json=body, headers=bearer(secret), timeout=HTTP_TIMEOUT_S
    )


def _tag(server: Server, secret: str, terminal_id: str, *tags: str) -> Any:
    return _put(server, secret, f"/api/v1/registry/{terminal_id}/tags", {"tags": list(tags)})


@pytest.mark.parametrize("with_registry", [True])
def test_a_tag_selector_notifies_only_the_tagged_terminals_and_a_terminal_tagged_later_joins(
    server: Server, updater: Updater, private_terminals: TerminalFactory
) -> None:
    alice = token(server, Role.OPERATOR, name="alice")
    bob = token(server, Role.OPERATOR, name="bob")
    members = []
    for tid in ("T-TAG-1", "T-TAG-2", "T-TAG-3"):
        registered = _post(
            server, alice, f"/api/v1/registry/{tid}/enrollment-tokens",
            {"hall": "Hall R", "region": "North", "model": "KX-200"},
        )  # fmt: skip
        assert registered.status_code == 201, registered.text
        t = private_terminals(tid, hall="Hall R")
        members.append((t, CmdInbox(t)))
        t.report()
    wait_until(lambda: all(server.fleet.get(t.id) for t, _ in members), 10, "the fleet")
    for tid in ("T-TAG-1", "T-TAG-2"):
        assert _tag(server, alice, tid, "pilot", "lobby").json()["tags"] == ["lobby", "pilot"]
    assert _tag(server, alice, "T-TAG-3", "not a tag").status_code == 400
    assert _tag(server, alice, "T-NOT-REGISTERED", "pilot").status_code == 404
    shown = api(server, "/api/v1/registry/T-TAG-1").json()
    assert shown["tags"] == ["lobby", "pilot"]
    add_user(server, "vera", Role.VIEWER)
    console = _httpx_login(server, "vera")
    try:
        page = console.get(f"{CONSOLE_PREFIX}/terminals/T-TAG-1")
    finally:
        console.close()
    assert page.status_code == 200, page.text
    assert '<dd id="terminal-tags">lobby, pilot</dd>' in page.text
    tagged = server.access_store.audit(AuditFilter(target="T-TAG-1"), limit=20).items
    assert {(e.action, e.detail.get("tags")) for e in tagged} >= {("terminal.tag", "lobby,pilot")}

    assert _create(server, alice, "new").status_code == 422  # the console's route word
    created = _create(
        server, alice, "R-TAG", selector={"hall": "Hall R", "tags": ["pilot"]},
        phases=[{"size": 100, "unit": "percent"}],
    )  # fmt: skip
    assert created.status_code == 201, created.text
    assert _post(server, bob, "/api/v1/rollouts/R-TAG/approve").status_code == 200
    (one, one_inbox), (two, two_inbox), (three, three_inbox) = members
    wait_until(lambda: one_inbox.count() == 1 and two_inbox.count() == 1, 10, "the tagged")
    for t, inbox in ((one, one_inbox), (two, two_inbox)):
        assert _verified(updater, t, inbox.payloads[0]).rollout_id == "R-TAG"
    assert _rollout(server, "R-TAG")["counts"] == {"notified": 2}  # the untagged not selected
    assert three_inbox.count() == 0

    assert _tag(server, alice, "T-TAG-3", "pilot").status_code == 200
    wait_until(lambda: three_inbox.count() == 1, 10, "the terminal tagged later")
    assert _verified(updater, three, three_inbox.payloads[0]).rollout_id == "R-TAG"
    assert _rollout(server, "R-TAG")["counts"] == {"notified": 3}


def test_a_current_version_selector_skips_a_terminal_on_another_version(
    server: Server, updater: Updater, private_terminals: TerminalFactory
) -> None:
    alice = token(server, Role.OPERATOR, name="alice")
    bob = token(server, Role.OPERATOR, name="bob")
    versions = {"T-VER-1": "1.0.0", "T-VER-2": "0.9.0", "T-VER-3": "1.0.0"}
    members = {}
    for tid, version in versions.items():
        t = private_terminals(tid, hall="Hall V")
        members[tid] = (t, CmdInbox(t))
        # T-VER-3 runs 1.0.0 of another package: it does not run the release's package
        t.report(software={"kiosk-app" if tid != "T-VER-3" else "other-app": version})
    wait_until(lambda: all(server.fleet.get(tid) for tid in versions), 10, "the fleet")
    created = _create(
        server, alice, "R-VER", selector={"hall": "Hall V", "current_version": "1.0.0"},
        phases=[{"size": 100, "unit": "percent"}],
    )  # fmt: skip
    assert created.status_code == 201, created.text
    assert _post(server, bob, "/api/v1/rollouts/R-VER/approve").status_code == 200
    t1, inbox1 = members["T-VER-1"]
    wait_until(lambda: inbox1.count() == 1, 10, "the terminal on 1.0.0")
    assert _verified(updater, t1, inbox1.payloads[0]).target.path == TARGET
    assert _rollout(server, "R-VER")["counts"] == {"notified": 1}
    assert [members[tid][1].count() for tid in ("T-VER-2", "T-VER-3")] == [0, 0]
