"""Scenario e: the database fails for a while under a live fleet, then recovers.

SQLite on a small tmpfs that fills up (a ballast file takes the last byte; it
needs root to mount, as CI runs; skipped otherwise), and PostgreSQL whose
connections are cut by a proxy for a while. Meanwhile the server keeps its
in-memory fleet (the API answers with every terminal), says it is not ready
(``/readyz`` 503 naming the database), keeps the messages it could not commit
unacknowledged (the broker holds the backlog), retries, and once the database
is back commits everything: the exact count check holds with zero gaps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from kioskfleet.local_broker import LocalBroker
from kioskfleet.server_process import ServerProcess
from kioskfleet.stream_accounting import wait_for_exact_accounting
from tests.integration.conftest import wait_until
from tests.integration.faults.conftest import (
    Fleets,
    ServerStarter,
    drain_and_stop,
    fill_disk,
    force_events,
    wait_connected,
)
from tests.integration.faults.proxy import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TERMINALS = 20
RETRY = {"db_retry_max_s": 1, "db_connect_timeout_s": 2, "db_statement_timeout_s": 5}


def _not_ready_because_of_the_database(server: ServerProcess) -> list[str]:
    response = server.get("/readyz")
    if response.status_code != 503:
        return []
    reasons = response.json().get("reasons", [])
    return [str(r) for r in reasons if "database" in str(r)]


def _outage(server: ServerProcess, sim: Any) -> list[str]:
    """While the database is down: not ready with a reason, API still serving the fleet."""
    reasons: list[str] = wait_until(
        lambda: _not_ready_because_of_the_database(server), 20, "/readyz to blame the database"
    )
    force_events(sim, 5)
    listing = server.get("/api/v1/terminals", limit=1000)
    assert listing.status_code == 200
    assert listing.json()["total"] == TERMINALS
    assert server.get("/healthz").status_code == 200
    time.sleep(1.5)  # messages keep arriving; none of them can be committed
    still = _not_ready_because_of_the_database(server)
    assert still, "the server became ready while its database was still failing"
    return reasons


def test_sqlite_disk_full_makes_the_server_not_ready_then_it_recovers_losing_nothing(
    private_broker: LocalBroker,
    server_process: ServerStarter,
    fleets: Fleets,
    small_tmpfs: Path,
) -> None:
    database_url = f"sqlite:///{small_tmpfs}/kioskfleet.db"
    server = server_process(database_url, **RETRY)
    sim = fleets.start(private_broker.url, TERMINALS, prefix="DISK")
    wait_connected(sim)
    time.sleep(1.0)

    ballast = fill_disk(small_tmpfs)
    reasons = _outage(server, sim)
    assert any("full" in r for r in reasons), reasons  # the operator is told why
    ballast.unlink()
    wait_until(lambda: server.get("/readyz").status_code == 200, 30, "ready again")
    time.sleep(0.5)

    outboxes = drain_and_stop(sim)
    wait_for_exact_accounting(database_url, outboxes)


def test_postgresql_connection_drop_makes_the_server_not_ready_then_it_recovers_losing_nothing(
    postgres_url: str,
    private_broker: LocalBroker,
    server_process: ServerStarter,
    fleets: Fleets,
    fault_proxy: Callable[[int], FaultProxy],
) -> None:
    direct = make_url(postgres_url)
    proxy = fault_proxy(direct.port or 5432)
    through_proxy = direct.set(host="127.0.0.1", port=proxy.port)
    server = server_process(through_proxy.render_as_string(hide_password=False), **RETRY)
    sim = fleets.start(private_broker.url, TERMINALS, prefix="PGDROP")
    wait_connected(sim)
    time.sleep(1.0)
    # The operator's console has been reading the fleet: its token was verified by the
    # database, and stays accepted through the outage (server/tokens.py, OUTAGE_GRACE).
    assert server.get("/api/v1/halls").status_code == 200

    proxy.cut()
    reasons = _outage(server, sim)
    assert any("connection" in r for r in reasons), reasons  # the operator is told why
    proxy.restore()
    wait_until(lambda: server.get("/readyz").status_code == 200, 30, "ready again")
    time.sleep(0.5)

    outboxes = drain_and_stop(sim)
    wait_for_exact_accounting(postgres_url, outboxes)
