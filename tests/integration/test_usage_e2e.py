"""Citizen transactions end to end: the kiosk application's documented client on the real
agent's kiosk socket -> ``kf.usage`` through the agent's outbox and a real mosquitto -> the
server's ``usage_event`` table, once each, and its metrics by hall and service; also after
an agent restart with a backlog. Personal-data-shaped input is refused at both ends, with a
clear error, counted and logged without its value.

The agent is the production ``AgentRuntime`` with ``[updates]`` enabled (the kiosk socket
belongs to the updater's runtime today, docs/kiosk-app.md).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import AgentConfig
from agent.main import AgentRuntime
from kioskfleet.local_broker import LocalBroker
from protocol.topics import Channel, topic
from server.main import Server
from server.records import UsageRecord
from server.usage_store import usage_events
from tests.integration import test_agent_mqtt, test_agent_updater
from tests.integration.conftest import TerminalFactory, admin_token, bearer, metric
from tests.integration.test_agent_mqtt import start_agent
from tests.integration.test_agent_update_e2e import _updating_config
from tests.support.tuf_world import TufWorld
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

world = test_agent_updater.world
server = test_agent_updater.server
runtimes = test_agent_mqtt.runtimes

ROOT = Path(__file__).resolve().parents[2]
_EXAMPLE = re.compile(r"<!-- example-transaction -->\s*```python\n(?P<code>.*?)```", re.DOTALL)
CATALOGUE = {
    "services": [
        {"code": "tax.invoice.print", "needs": ["printer"]},
        {"code": "police.residence_permit.renew", "needs": ["identity_reader"]},
    ]
}


def _socket(runtime: AgentRuntime) -> Path:
    return runtime.config.updates.kiosk_socket


def _run_example(path: Path, where: Path) -> subprocess.CompletedProcess[str]:
    """The documented transaction client (docs/kiosk-app.md), as the application runs it."""
    match = _EXAMPLE.search((ROOT / "docs" / "kiosk-app.md").read_text(encoding="utf-8"))
    assert match is not None, "docs/kiosk-app.md has no example-transaction block"
    script = where / "report_transaction.py"
    script.write_text(match["code"], encoding="utf-8")
    wait_until(path.exists, 10, "the kiosk socket")
    return subprocess.run(
        [sys.executable, str(script), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _line(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        with sock.makefile("rwb") as f:
            f.write(json.dumps(request).encode() + b"\n")
            f.flush()
            answer: dict[str, Any] = json.loads(f.readline())
            return answer


def _stored(server: Server, tid: str) -> list[UsageRecord]:
    return usage_events(server.storage.engine, tid, 100)


def _set_catalogue(server: Server) -> None:
    response = httpx.put(
        server.base_url + "/api/v1/services",
        json=CATALOGUE,
        headers=bearer(admin_token(server)),
        timeout=5,
    )
    assert response.status_code == 200, response.text


def _config(broker: LocalBroker, server: Server, world: TufWorld, where: Path) -> AgentConfig:
    return _updating_config(broker, server, world, where)  # no probes, updates on


EXPECTED = [
    ("tax.invoice.print", "completed", None, 2),
    ("tax.invoice.print", "failed", "printer", 0),
    ("police.residence_permit.renew", "abandoned", None, 0),
]


def _shape(rows: list[UsageRecord]) -> list[tuple[str, str, str | None, int]]:
    return [(r.service, r.outcome, r.cause, r.pages) for r in sorted(rows, key=lambda r: r.seq)]


def test_transactions_from_the_documented_client_arrive_once_with_their_metrics(
    broker: LocalBroker,
    server: Server,
    world: TufWorld,
    tmp_path: Path,
    runtimes: list[AgentRuntime],
) -> None:
    _set_catalogue(server)
    runtime = start_agent(runtimes, _config(broker, server, world, tmp_path / "terminal"))
    tid = runtime.config.terminal_id

    done = _run_example(_socket(runtime), tmp_path)
    assert done.returncode == 0, done.stderr

    wait_until(lambda: len(_stored(server, tid)) >= 3, 20, "three rows in usage_event")
    rows = _stored(server, tid)
    assert _shape(rows) == EXPECTED
    assert len({(r.boot_id, r.seq) for r in rows}) == 3
    assert {r.boot_id for r in rows} == {runtime.sender.boot_id}
    where = {"region": "region-1", "hall": "hall-01"}
    name = "kioskfleet_usage_transactions_total"
    assert metric(server, name, **where, service="tax.invoice.print", outcome="completed") == 1
    assert metric(server, name, **where, service="tax.invoice.print", outcome="failed") == 1
    assert metric(server, name, **where, service="police.residence_permit.renew", outcome="abandoned") == 1  # fmt: skip
    assert metric(server, "kioskfleet_ingest_messages_total", channel="usage") == 3
    assert runtime.updates is not None
    assert runtime.updates.kiosk_counters()["transactions"] == 3


def test_a_backlog_of_transactions_survives_an_agent_restart_and_arrives_once(
    broker: LocalBroker,
    server: Server,
    world: TufWorld,
    tmp_path: Path,
    runtimes: list[AgentRuntime],
) -> None:
    config = _config(broker, server, world, tmp_path / "terminal")
    tid = config.terminal_id
    unreachable = config.model_copy(update={"broker_url": "mqtt://127.0.0.1:9"})
    offline = AgentRuntime(unreachable)
    offline.start()
    try:
        done = _run_example(_socket(offline), tmp_path)
        assert done.returncode == 0, done.stderr
        wait_until(
            lambda: offline.outbox.stats(tid).generated.get(Channel.USAGE, 0) == 3,
            10,
            "three transactions in the outbox",
        )
    finally:
        offline.stop()
        offline.close()

    restarted = start_agent(runtimes, config)  # same outbox, same stream
    wait_until(lambda: len(_stored(server, tid)) >= 3, 20, "the backlog in usage_event")
    wait_until(lambda: restarted.outbox.stats(tid).pending == 0, 10, "the outbox drained")
    rows = _stored(server, tid)
    assert _shape(rows) == EXPECTED
    assert len({(r.boot_id, r.seq) for r in rows}) == 3
    assert metric(server, "kioskfleet_ingest_messages_total", channel="usage") == 3


def test_personal_data_shaped_input_is_refused_at_the_socket_and_at_the_server(
    broker: LocalBroker,
    server: Server,
    world: TufWorld,
    tmp_path: Path,
    runtimes: list[AgentRuntime],
    terminals: TerminalFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = start_agent(runtimes, _config(broker, server, world, tmp_path / "terminal"))
    path = _socket(runtime)
    wait_until(path.exists, 10, "the kiosk socket")
    base = {"request": "transaction", "service": "tax.invoice.print", "outcome": "completed"}
    with caplog.at_level(logging.WARNING, logger="agent.kiosk_interface"):
        named = _line(path, {**base, "duration_s": 3.0, "citizen_name": "Jane Doe"})
        free = _line(path, {**base, "duration_s": 3.0, "service": "Jane Doe 110101199003071234"})
    assert (named["ok"], named["error"]) == (False, "bad_request")
    assert "citizen_name" in named["message"]  # the field is named ...
    assert (free["ok"], free["error"]) == (False, "bad_request")
    assert "service" in free["message"]
    for text in (named["message"], free["message"], caplog.text):
        assert "Jane Doe" not in text  # ... never the value
        assert "110101199003071234" not in text
    assert "bad_request" in caplog.text
    assert runtime.updates is not None
    counters = runtime.updates.kiosk_counters()
    assert (counters["rejected_bad_request"], counters["transactions"]) == (2, 0)

    forger = terminals()  # a device that skips the agent: the server refuses it too
    payload = {
        "schema": "kf.usage",
        "version": 1,
        "terminal_id": forger.id,
        "boot_id": "forged-0001",
        "seq": 1,
        "sent_at": "2026-12-04T09:00:00Z",
        "body": {
            **{k: base[k] for k in ("service", "outcome")},
            "duration_s": 1.0,
            "name": "Jane Doe",
        },
    }
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="server.ingest"):
        forger.publish_raw(topic(forger.id, Channel.USAGE), json.dumps(payload).encode())
        wait_until(
            lambda: metric(server, "kioskfleet_usage_refused_total", reason="invalid") == 1,
            10,
            "the server's refusal",
        )
    assert _stored(server, forger.id) == []
    assert "body.name: Extra inputs are not permitted" in caplog.text  # logged, clearly ...
    assert "Jane Doe" not in caplog.text  # ... without the value
