"""A server process stopped mid-stream loses nothing and counts nothing twice.

A real ``kioskfleet server`` subprocess (SQLite, its own mosquitto, a persistent
session under a fixed client id) receives reports and events from raw MQTT
publishers. It is stopped mid-stream, by SIGTERM (graceful: stop intake, flush,
acknowledge, DISCONNECT) or by SIGKILL (nothing acknowledged was uncommitted),
then restarted; the broker redelivers what was not acknowledged. At the end
every terminal's persisted counters and stored events equal exactly what was
published: no message lost, none counted twice, no gap.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kioskfleet.local_broker import LocalBroker
from tests.integration.conftest import RawTerminal, TerminalFactory, periph, unique, wait_until
from tests.integration.server_process import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TERMINALS = 4
MESSAGES_PER_TERMINAL = 60  # every 5th an event, the rest reports


@pytest.fixture
def server_process(
    private_broker: LocalBroker, tmp_path: Path, database_url: str
) -> Iterator[ServerProcess]:
    """A ``kioskfleet server`` subprocess, on SQLite and on PostgreSQL."""
    process = ServerProcess(private_broker, tmp_path, database_url)
    try:
        yield process
    finally:
        process.stop()


def _publish_stream(terminal: RawTerminal, published: dict[str, list[int]]) -> None:
    jam = periph("printer", "receipt_printer", "jam")
    ok = periph("printer", "receipt_printer")
    for i in range(1, MESSAGES_PER_TERMINAL + 1):
        if i % 5 == 0:
            terminal.event(jam if i % 10 == 0 else ok, None)
            published["events"].append(i)
        else:
            terminal.report(interval=30)
            published["reports"].append(i)


def _run(
    sig: signal.Signals,
    server: ServerProcess,
    terminals: TerminalFactory,
) -> int:
    """Stream, signal, restart, check every terminal exactly; returns the messages accounted."""
    server.start()
    fleet = [terminals(unique("SD")) for _ in range(TERMINALS)]
    published: dict[str, dict[str, list[int]]] = {
        t.id: {"reports": [], "events": []} for t in fleet
    }
    threads = [threading.Thread(target=_publish_stream, args=(t, published[t.id])) for t in fleet]
    for th in threads:
        th.start()
    wait_until(
        lambda: sum(len(p["reports"]) for p in published.values()) >= TERMINALS * 15,
        30,
        "the stream to be under way",
    )
    code = server.signal(sig)
    if sig is signal.SIGTERM:
        assert code == 0, server.log.read_text()[-2000:]
    server.start()
    for th in threads:
        th.join(120)

    def accounted(tid: str) -> dict[str, Any] | None:
        body = server.get(f"/api/v1/terminals/{tid}")
        delivery = body.get("delivery")
        want = (len(published[tid]["reports"]), len(published[tid]["events"]))
        got = (
            None
            if delivery is None
            else (
                delivery["reports_received"],
                delivery["events_received"],
            )
        )
        return delivery if got == want else None

    for t in fleet:
        delivery = wait_until(functools.partial(accounted, t.id), 60, f"{t.id} fully accounted")
        assert delivery["seq_gaps"] == 0
        assert delivery["last_seq"] == MESSAGES_PER_TERMINAL
        want = published[t.id]["events"]

        def stored(tid: str = t.id, want: list[int] = want) -> list[int] | None:
            items = server.get(f"/api/v1/terminals/{tid}/events", limit=1000)["items"]
            seqs = sorted(e["seq"] for e in items)
            return seqs if len(seqs) >= len(want) else None  # rows land with the next flush

        assert wait_until(stored, 30, f"{t.id}'s events to be stored") == want
    # And the database holds it: after a graceful stop, a third start reads the same counts.
    assert server.signal(signal.SIGTERM) == 0
    server.start()
    total = 0
    for t in fleet:
        delivery = server.get(f"/api/v1/terminals/{t.id}")["delivery"]
        assert (delivery["reports_received"], delivery["events_received"]) == (
            len(published[t.id]["reports"]),
            len(published[t.id]["events"]),
        )
        total += delivery["reports_received"] + delivery["events_received"]
    return total


def test_sigterm_mid_stream_then_restart_accounts_every_message_exactly_once(
    server_process: ServerProcess, private_terminals: TerminalFactory
) -> None:
    assert _run(signal.SIGTERM, server_process, private_terminals) == (
        TERMINALS * MESSAGES_PER_TERMINAL
    )


def test_sigkill_mid_stream_then_restart_loses_nothing_acknowledged_and_counts_nothing_twice(
    server_process: ServerProcess, private_terminals: TerminalFactory
) -> None:
    assert _run(signal.SIGKILL, server_process, private_terminals) == (
        TERMINALS * MESSAGES_PER_TERMINAL
    )
