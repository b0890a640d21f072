"""A whole server (database, writer, API, sweep) over the in-memory message source: no broker.

What the source delivers is applied, committed, and only then acknowledged, in
receive order; readiness and the offline sweep follow the source's connection.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from protocol.codec import encode
from protocol.topics import Channel, topic
from server.config import Settings
from server.errors import BrokerError
from server.in_memory_source import InMemorySource
from server.main import Server
from tests.integration.conftest import api, wait_until
from tests.support.fleet_messages import report

pytestmark = pytest.mark.integration


@contextmanager
def _running(tmp_path: Path, **overrides: Any) -> Iterator[tuple[Server, InMemorySource]]:
    built: list[InMemorySource] = []
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path}/kf.db",
        "http_port": 0,
        "db_flush_interval_s": 0.1,
        "offline_check_interval_s": 0.2,
    }
    server = Server(
        Settings(**{**values, **overrides}),
        CollectorRegistry(),
        source=InMemorySource.factory(built),
    )
    server.start()
    try:
        yield server, built[0]
    finally:
        server.stop()


def _deliver_report(source: InMemorySource, tid: str, seq: int) -> tuple[int, int]:
    message = source.deliver(topic(tid, Channel.REPORT), encode(report(tid, seq)))
    assert message is not None
    assert message.delivery is not None
    return message.delivery


def test_delivered_reports_are_stored_then_acknowledged_in_receive_order(
    tmp_path: Path,
) -> None:
    with _running(tmp_path) as (server, source):
        deliveries = [_deliver_report(source, "T-1", 1), _deliver_report(source, "T-2", 1)]
        duplicate = _deliver_report(source, "T-1", 1)
        wait_until(lambda: len(source.acked) == 3, 5, "three acknowledgements")
        assert source.acked == [*deliveries, duplicate]
        assert {v.id for v in server.storage.load_fleet()} == {"T-1", "T-2"}
        assert api(server, "/api/v1/terminals/T-1").json()["delivery"]["last_seq"] == 1


def test_readiness_follows_the_source_connection_and_a_lost_connection_acks_nothing(
    tmp_path: Path,
) -> None:
    with _running(tmp_path, db_flush_interval_s=3600) as (server, source):
        assert api(server, "/readyz").status_code == 200
        assert server.listening_since() == source.connected_since
        delivery = _deliver_report(source, "T-1", 1)
        source.connection_lost()  # before the commit: the broker will redeliver it
        ready = api(server, "/readyz")
        assert (ready.status_code, ready.json()["reasons"]) == (503, ["broker: not connected"])
        assert server.listening_since() is None
        assert server.writer.flush()
        assert [v.id for v in server.storage.load_fleet()] == ["T-1"]
        assert delivery not in source.acked
        assert source.acked == []
        source.connect()
        assert api(server, "/readyz").status_code == 200


def test_a_source_that_cannot_start_stops_the_server_start(tmp_path: Path) -> None:
    built: list[InMemorySource] = []

    def failing(on_message: object, *, on_connection_change: object) -> InMemorySource:
        del on_message, on_connection_change
        source = InMemorySource(lambda _m: None)
        source.start_error = BrokerError("TLS setup failed: no such file")
        built.append(source)
        return source

    settings = Settings(database_url=f"sqlite:///{tmp_path}/kf.db", http_port=0)
    server = Server(settings, CollectorRegistry(), source=failing)
    try:
        with pytest.raises(BrokerError, match="TLS setup failed"):
            server.start()
    finally:
        server.stop()
    assert built[0].stopped


def test_an_idle_keep_alive_connection_is_closed_after_the_configured_timeout(
    tmp_path: Path,
) -> None:
    with _running(tmp_path, http_keepalive_timeout_s=1) as (server, _source):
        host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: kf\r\nConnection: keep-alive\r\n\r\n")
            response = b""
            while not response.endswith(b'{"status":"alive"}'):
                chunk = conn.recv(4096)
                assert chunk, response
                response += chunk
            assert response.startswith(b"HTTP/1.1 200")
            answered = time.monotonic()
            assert conn.recv(4096) == b""  # the server closed the idle connection
            idle = time.monotonic() - answered
    assert 0.5 < idle < 5


def _terminals_gauge(server: Server) -> float:
    """kioskfleet_terminals summed over its statuses, for the hall the builders use."""
    return sum(
        s.value
        for family in server.registry.collect()
        for s in family.samples
        if s.name == "kioskfleet_terminals" and s.labels["hall"] == "Hall A"
    )


def test_a_decommissioned_terminal_leaves_the_fleet_the_gauges_and_its_row_but_not_its_history(
    tmp_path: Path,
) -> None:
    printer_out = [{"name": "printer", "kind": "receipt_printer", "condition": "paper_out"}]
    with _running(tmp_path) as (server, source):
        for tid in ("T-GONE", "T-STAYS"):
            source.deliver(topic(tid, Channel.REPORT), encode(report(tid, 1)))
            source.deliver(
                topic(tid, Channel.REPORT), encode(report(tid, 2, peripherals=printer_out))
            )
        wait_until(lambda: len(server.storage.load_fleet()) == 2, 5, "both stored")
        before = _terminals_gauge(server)
        history = server.storage.history("T-GONE", 10)
        assert history  # paper_out was a transition

        removed = server.decommission("T-GONE")

        assert removed is not None
        assert removed.id == "T-GONE"
        assert source.cleared == [topic("T-GONE", Channel.STATE)]
        assert api(server, "/api/v1/terminals/T-GONE").status_code == 404
        listed = api(server, "/api/v1/terminals").json()["items"]
        assert [t["id"] for t in listed] == ["T-STAYS"]
        assert (before, _terminals_gauge(server)) == (2.0, 1.0)
        problems = {
            s.labels["terminal"]
            for family in server.registry.collect()
            for s in family.samples
            if "terminal" in s.labels
        }
        assert problems == {"T-STAYS"}
        wait_until(
            lambda: [v.id for v in server.storage.load_fleet()] == ["T-STAYS"], 5, "row deleted"
        )
        assert server.storage.history("T-GONE", 10) == history  # the history stays
        assert server.decommission("T-NEVER-SEEN") is None

    with _running(tmp_path) as (server, _source):  # a restart does not bring it back
        assert [t["id"] for t in api(server, "/api/v1/terminals").json()["items"]] == ["T-STAYS"]


def test_decommission_changes_nothing_while_the_broker_is_away(tmp_path: Path) -> None:
    with _running(tmp_path) as (server, source):
        source.deliver(topic("T-1", Channel.REPORT), encode(report("T-1", 1)))
        source.connection_lost()
        with pytest.raises(BrokerError, match="not connected"):
            server.decommission("T-1")
        assert api(server, "/api/v1/terminals/T-1").status_code == 200
        assert source.cleared == []
