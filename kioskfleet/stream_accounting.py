"""The exact count check every fault test and the soak benchmark end with: the agents'
outboxes against the server's database.

Both sides are durable records: the agent's outbox (``OutboxStats``: every
stream message it ever numbered, the reports it dropped for its quota, what is
still pending) and the server's tables (``terminal`` counters, ``event`` rows).
For each terminal, once everything is delivered:

    server.boot_id          == outbox.boot_id
    server.last_seq         == outbox.last_seq
    server.reports_received == outbox.reports - outbox.dropped_reports
    server.events_received  == outbox.events == event rows == distinct event seqs
    server.seq_gaps         == outbox.dropped_reports
    outbox.pending          == 0

``server.seq_gaps`` counts the numbers still missing: a message that arrived late
and filled a gap (re-sent on a ``kf.committed`` that listed it missing) is taken
off it and counted in ``reports_received``/``events_received``, so the same
check holds with fills (the metrics ``kioskfleet_ingest_seq_gaps_total`` minus
``kioskfleet_ingest_gap_fills_total`` give the fleet-wide figure).

With ``allow_losses`` (only where a broker SIGKILL makes a loss possible: it
forgets what it acknowledged since its last autosave), the server may have
counted more gaps than the deliberate drops, and exactly those are missing:

    lost = server.seq_gaps - outbox.dropped_reports >= 0
    (outbox.reports - dropped - server.reports_received)
        + (outbox.events - server.events_received) == lost

Several replicas that each receive every message (nats-server) are held to the same
exact check once one replica writes each terminal (``ingest_ownership = "partition"``,
docs/scale-out.md); before, each wrote the row from its own view and only a weaker check
held.

This module reads; it never changes either side. A mismatch that outlasts the timeout, or
a match that changes afterwards, raises ``AccountingError`` (an ``AssertionError``: a failed
test under pytest, a failed run in ``bench/soak.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from agent.outbox import OutboxStats

__all__ = [
    "AccountingError",
    "StoredStream",
    "mismatches",
    "read_stored",
    "wait_for_exact_accounting",
]


class AccountingError(AssertionError):
    """The server's database and the outboxes still differ (or changed after matching)."""


@dataclass(frozen=True)
class StoredStream:
    """What the server's database holds about one terminal's stream."""

    boot_id: str | None
    last_seq: int | None
    reports_received: int
    events_received: int
    seq_gaps: int
    dropped_reports: int
    event_rows: int
    event_seqs: int


def read_stored(database_url: str, terminal_ids: Iterable[str]) -> dict[str, StoredStream]:
    """The server's record of ``terminal_ids`` (absent terminals are left out)."""
    ids = list(terminal_ids)
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT id, boot_id, last_seq, reports_received, events_received, seq_gaps,"
                    " dropped_reports FROM terminal WHERE id IN :ids"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"ids": ids},
            ).all()
            events = {
                (tid, boot): (n, distinct)
                for tid, boot, n, distinct in conn.execute(
                    sa.text(
                        "SELECT terminal_id, boot_id, count(*), count(DISTINCT seq) FROM event"
                        " WHERE terminal_id IN :ids GROUP BY terminal_id, boot_id"
                    ).bindparams(sa.bindparam("ids", expanding=True)),
                    {"ids": ids},
                ).all()
            }
    finally:
        engine.dispose()
    rows_per_terminal: dict[str, int] = {}  # every stream's rows (one pass: 19 000 terminals)
    for (tid, _boot), (n, _distinct) in events.items():
        rows_per_terminal[tid] = rows_per_terminal.get(tid, 0) + n
    result = {}
    for tid, boot, last_seq, reports, events_received, gaps, dropped in rows:
        n, distinct = events.get((tid, boot), (0, 0))
        all_boots = rows_per_terminal.get(tid, 0)
        result[tid] = StoredStream(
            boot_id=boot,
            last_seq=last_seq,
            reports_received=reports,
            events_received=events_received,
            seq_gaps=gaps,
            dropped_reports=dropped,
            event_rows=all_boots,
            event_seqs=distinct if all_boots == n else -1,  # rows of another stream: a mismatch
        )
    return result


def mismatches(
    tid: str,
    outbox: OutboxStats,
    stored: StoredStream | None,
    *,
    allow_losses: bool = False,
    check_reported_drops: bool = True,
    allow_unconfirmed: bool = False,
) -> tuple[list[str], int]:
    """What differs for one terminal, and how many messages were lost (server-counted gaps).

    ``allow_unconfirmed``: rows may stay in the outbox when the server holds the whole
    stream (same last seq, every other check exact): their kf.committed never reached the
    agent (nats-server 2.9 can stop delivering ``cmd`` to sessions restored on a restarted
    node); a restarted agent re-sends them and the server drops them as duplicates."""
    if stored is None:
        return [f"{tid}: no terminal row"], 0
    problems = []

    def expect(what: str, got: object, want: object) -> None:
        if got != want:
            problems.append(f"{tid}: {what} is {got}, expected {want}")

    if not (allow_unconfirmed and stored.last_seq == outbox.last_seq):
        expect("outbox.pending", outbox.pending, 0)
    expect("outbox.updates (no update schema yet)", outbox.updates, 0)
    expect("boot_id", stored.boot_id, outbox.boot_id)
    expect("last_seq", stored.last_seq, outbox.last_seq)
    expect("event rows", stored.event_rows, stored.events_received)
    expect("distinct event seqs", stored.event_seqs, stored.events_received)
    if check_reported_drops:
        expect("dropped_reports reported", stored.dropped_reports, outbox.dropped_reports)
    lost = stored.seq_gaps - outbox.dropped_reports
    if not allow_losses or lost <= 0:
        expect("seq_gaps", stored.seq_gaps, outbox.dropped_reports)
        expect("reports_received", stored.reports_received, outbox.reports - outbox.dropped_reports)
        expect("events_received", stored.events_received, outbox.events)
        return problems, 0
    missing_reports = outbox.reports - outbox.dropped_reports - stored.reports_received
    missing_events = outbox.events - stored.events_received
    if missing_reports < 0 or missing_events < 0 or missing_reports + missing_events != lost:
        problems.append(
            f"{tid}: {lost} server-counted gaps beyond the {outbox.dropped_reports} drops, but"
            f" {missing_reports} reports and {missing_events} events are missing"
        )
    return problems, lost


def wait_for_exact_accounting(
    database_url: str,
    outboxes: Mapping[str, OutboxStats],
    *,
    allow_losses: bool = False,
    check_reported_drops: bool = True,
    allow_unconfirmed: bool = False,
    timeout: float = 120.0,  # a bound: 100 outboxes drained in 30 s were too slow on a loaded machine
    settle_s: float = 1.0,
) -> dict[str, int]:
    """Poll the server's database until every terminal's record matches its outbox, then check
    that it stays so for ``settle_s`` (nothing counted late, twice). Raises AccountingError
    with the differences after ``timeout``. Returns the server-counted losses per terminal
    (all 0 unless ``allow_losses``)."""

    def check(stored: Mapping[str, StoredStream]) -> Iterator[tuple[str, list[str], int]]:
        for tid, stats in outboxes.items():
            found, lost = mismatches(
                tid,
                stats,
                stored.get(tid),
                allow_losses=allow_losses,
                check_reported_drops=check_reported_drops,
                allow_unconfirmed=allow_unconfirmed,
            )
            yield tid, found, lost

    return _wait_stable(database_url, outboxes, check, timeout=timeout, settle_s=settle_s)


Check = Callable[[Mapping[str, StoredStream]], Iterable[tuple[str, list[str], int]]]


def _wait_stable(
    database_url: str,
    outboxes: Mapping[str, OutboxStats],
    check: Check,
    *,
    timeout: float,
    settle_s: float,
) -> dict[str, int]:
    """Poll until ``check`` finds no problem, and still none ``settle_s`` later; raises
    AccountingError after ``timeout``. Returns ``check``'s count per terminal."""
    deadline = time.monotonic() + timeout
    confirmed_at: float | None = None
    while True:
        stored = read_stored(database_url, outboxes)
        problems: list[str] = []
        counts: dict[str, int] = {}
        for tid, found, n in check(stored):
            problems += found
            counts[tid] = n
        now = time.monotonic()
        if not problems:
            if confirmed_at is None:
                confirmed_at = now
            elif now - confirmed_at >= settle_s:
                return counts
        elif confirmed_at is not None:
            raise AccountingError(
                "the accounting matched, then changed: " + "; ".join(problems[:10])
            )
        elif now > deadline:
            raise AccountingError(
                f"{len(problems)} accounting differences after {timeout}s: "
                + "; ".join(problems[:10])
            )
        time.sleep(0.2)
