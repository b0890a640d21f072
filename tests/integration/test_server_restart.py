"""Restarts and outages: the fleet survives a restart, the broker queues while the server is
away, a broken database or broker makes the server not ready until it recovers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kioskfleet.local_broker import LocalBroker
from tests.integration.conftest import (
    ServerFactory,
    TerminalFactory,
    api,
    metric,
    periph,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_restarted_server_keeps_the_fleet_history_and_dedup_position(
    private_server: ServerFactory, private_terminals: TerminalFactory, database_url: str
) -> None:
    first = private_server(database_url=database_url)
    t = private_terminals()
    t.report([periph("printer", "receipt_printer", "jam", fault_code="J1")])
    last = t.report([periph("printer", "receipt_printer", "jam", fault_code="J1")])
    url = f"/api/v1/terminals/{t.id}"
    wait_until(lambda: api(first, url).status_code == 200, what="ingested")
    before = api(first, url).json()
    first.stop()

    second = private_server(database_url=database_url)
    after = api(second, url).json()
    assert {k: v for k, v in after.items() if k != "transitions"} == {
        k: v for k, v in before.items() if k != "transitions"
    }
    assert [tr["to_state"] for tr in after["transitions"]] == ["jam", "online"]
    t.publish(last)  # already applied before the restart
    wait_until(
        lambda: metric(second, "kioskfleet_ingest_duplicates_total") == 1,
        what="the re-sent report to count as a duplicate",
    )


def test_broker_queues_reports_while_the_server_is_away(
    private_server: ServerFactory, private_terminals: TerminalFactory
) -> None:
    client_id = unique("kf-persistent")
    server = private_server(mqtt_client_id=client_id, mqtt_session_expiry_s=300)
    server.stop()
    t = private_terminals()
    for _ in range(5):
        t.report()
    server = private_server(mqtt_client_id=client_id, mqtt_session_expiry_s=300)
    body = wait_until(
        lambda: (r := api(server, f"/api/v1/terminals/{t.id}")).status_code == 200 and r.json(),
        what="the queued reports",
    )
    view = server.fleet.get(t.id)
    assert view is not None
    assert view.last_seq == 5
    assert body["state"] == "online"
    assert metric(server, "kioskfleet_ingest_messages_total", channel="report") == 5


def test_mqtt_311_server_ingests_reports_and_wills_and_keeps_its_session(
    private_server: ServerFactory, private_terminals: TerminalFactory
) -> None:
    # On its own broker: a 3.1.1 session outlives the test (no expiry under our control).
    client_id = unique("kf-311")
    server = private_server(mqtt_protocol="3.1.1", mqtt_client_id=client_id)
    t = private_terminals(with_will=True)
    t.online()
    t.report()
    wait_until(lambda: api(server, f"/api/v1/terminals/{t.id}").status_code == 200)
    server.stop()
    t.vanish()  # the will is queued in the server's session meanwhile
    server = private_server(mqtt_protocol="3.1.1", mqtt_client_id=client_id)
    body = wait_until(
        lambda: (r := api(server, f"/api/v1/terminals/{t.id}").json())["state"] == "offline" and r,
        what="offline by will after the restart",
    )
    assert body["offline_reason"] == "will"


def test_database_write_failure_makes_the_server_not_ready_until_a_flush_succeeds(
    private_server: ServerFactory, private_terminals: TerminalFactory, tmp_path: Path
) -> None:
    db = tmp_path / "locked.db"
    server = private_server(database_url=f"sqlite:///{db}", sqlite_busy_timeout_s=0.05)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        t = private_terminals()
        t.report()
        ready = wait_until(
            lambda: (r := api(server, "/readyz")).status_code == 503 and r.json(),
            what="not ready",
        )
        assert any("database writes failing" in reason for reason in ready["reasons"])
        assert metric(server, "kioskfleet_db_errors_total") >= 1
        assert api(server, "/healthz").status_code == 200
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    wait_until(lambda: api(server, "/readyz").status_code == 200, what="ready again")
    with sqlite3.connect(db) as check:
        rows = check.execute("SELECT id FROM terminal").fetchall()
    assert rows == [(t.id,)]


def test_broker_outage_makes_the_server_not_ready_and_it_reconnects(
    private_server: ServerFactory, private_broker: LocalBroker
) -> None:
    server = private_server(mqtt_reconnect_min_s=1, mqtt_reconnect_max_s=1)
    private_broker.kill()
    body = wait_until(
        lambda: (r := api(server, "/readyz")).status_code == 503 and r.json(),
        what="not ready without a broker",
    )
    assert "broker: not connected" in body["reasons"]
    assert metric(server, "kioskfleet_broker_connected") == 0
    private_broker.start()
    wait_until(lambda: api(server, "/readyz").status_code == 200, 10, "reconnected")
    assert metric(server, "kioskfleet_broker_connected") == 1
