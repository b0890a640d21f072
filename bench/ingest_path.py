"""CPU per message of the server's in-process ingest path, without a broker.

Prints figures; never a pass/fail timing test. The server is built as
``kioskfleet server`` builds it (``server.main.Server`` with the real
settings, fleet state, ingest gate, write-behind, storage and metrics), but its
message source is the in-memory one (``server.in_memory_source``): every
report goes through ``Ingest.handle`` exactly as paho's callback hands it over,
and the batched writer is flushed on this thread whenever
``db_flush_max_pending_acks`` deliveries wait (as its thread would be woken),
so the commit, the acknowledgements and the ``kf.committed`` confirmations are
in the figures too. What paho itself costs (receiving, parsing the packet,
sending PUBACK) is not: that is what ``bench/ingest.py`` measures against a
bare subscriber.

``--terminals`` terminals send ``--rounds`` reports each, round-robin (the
drain's shape: one report per terminal per round, nothing changes). The
yardstick, measured in the same run so the ratios survive a noisy machine, is
the standard library's ``json.loads`` of the same payloads (code this project
does not change); ``protocol.codec.decode`` alone is printed beside it.

    PYTHONPATH=$PWD .venv/bin/python bench/ingest_path.py
    PYTHONPATH=$PWD .venv/bin/python bench/ingest_path.py --profile 25
    PYTHONPATH=$PWD .venv/bin/python bench/ingest_path.py \\
        --database-url postgresql://postgres@127.0.0.1:5432/bench_ingest   # an empty database
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from protocol.codec import decode, encode
from protocol.messages import (
    PeripheralCondition,
    PeripheralKind,
    PeripheralStatus,
    ReportBody,
    ReportMessage,
)
from protocol.topics import Channel, topic
from server.config import Settings
from server.in_memory_source import InMemorySource
from server.main import Server

_T0 = datetime(2026, 3, 1, tzinfo=UTC)
_PERIPHERALS = (
    ("receipt_printer", PeripheralKind.RECEIPT_PRINTER),
    ("id_card_reader", PeripheralKind.ID_CARD_READER),
    ("qr_scanner", PeripheralKind.QR_SCANNER),
)


def _payload(tid: str, seq: int) -> tuple[str, bytes]:
    """A report as the agent encodes it (``protocol.codec.encode``)."""
    message = ReportMessage(
        schema="kf.report",
        version=1,
        terminal_id=tid,
        boot_id="boot-aaaa-0001",
        seq=seq,
        sent_at=_T0 + timedelta(seconds=seq),
        body=ReportBody(
            hall="Hall 1",
            region="North",
            model="KF-300",
            agent_version="1.4.2",
            uptime_s=float(seq),
            report_interval_s=10.0,
            peripherals=[
                PeripheralStatus(name=name, kind=kind, condition=PeripheralCondition.OK)
                for name, kind in _PERIPHERALS
            ],
            software={"kiosk-app": "3.1.0", "kioskfleet-agent": "1.4.2"},
        ),
    )
    return topic(tid, Channel.REPORT), encode(message)


def _cpu(run: Callable[[], object]) -> float:
    started = time.process_time()
    run()
    return time.process_time() - started


@dataclass(frozen=True)
class _Run:
    cpu_s: float
    flush_s: float
    accepted: float
    acknowledged: int


def _ingest_once(
    payloads: list[tuple[str, bytes]], database_url: str | None, profiler: cProfile.Profile | None
) -> _Run:
    """One server, an empty fleet, every payload delivered; CPU seconds (and the flushes')."""
    with tempfile.TemporaryDirectory() as tmp:
        built: list[InMemorySource] = []
        server = Server(
            Settings(database_url=database_url or f"sqlite:///{Path(tmp)}/kf.db", http_port=0),
            CollectorRegistry(),
            source=InMemorySource.factory(built),
        )
        server.storage.open()
        with server.storage.engine.begin() as conn:  # a given database: start empty
            conn.execute(sa.text("DELETE FROM peripheral"))
            conn.execute(sa.text("DELETE FROM terminal"))
        source = built[0]
        source.start()
        writer = server.writer
        window = server.settings.db_flush_max_pending_acks
        flush_s = 0.0

        def ingest_all() -> None:
            nonlocal flush_s
            for t, p in payloads:
                source.deliver(t, p)
                if writer.pending_acks() >= window:
                    flush_s += _cpu(writer.flush)
            flush_s += _cpu(writer.flush)

        if profiler is not None:
            profiler.enable()
        cpu_s = _cpu(ingest_all)
        if profiler is not None:
            profiler.disable()
        accepted = sum(
            s.value
            for m in server.metrics.ingest_messages.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
        server.storage.close()
    return _Run(cpu_s, flush_s, accepted, len(source.acked))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terminals", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--database-url", help="default: SQLite in a temporary folder")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile top N")
    args = parser.parse_args()

    payloads = [
        _payload(f"T-{i:05d}", r + 1) for r in range(args.rounds) for i in range(args.terminals)
    ]
    n = len(payloads)

    def decode_all() -> None:
        for t, p in payloads:
            decode(t, p)

    def loads_all() -> None:
        for _, p in payloads:
            json.loads(p)

    decode_s = loads_s = ingest_s = flush_s = float("inf")
    for i in range(args.repeats):  # interleaved, best of each: a shared machine is noisy
        decode_s = min(decode_s, _cpu(decode_all))
        loads_s = min(loads_s, _cpu(loads_all))
        profiler = cProfile.Profile() if args.profile and i == 0 else None
        run = _ingest_once(payloads, args.database_url, profiler)
        ingest_s, flush_s = min((ingest_s, flush_s), (run.cpu_s, run.flush_s))
        if profiler is not None:
            stats = pstats.Stats(profiler)
        if run.accepted != len(payloads) or run.acknowledged != len(payloads):
            raise SystemExit(f"accepted {run.accepted}, acknowledged {run.acknowledged} of {n}")

    per_msg = 1e6 * ingest_s / n
    per_decode = 1e6 * decode_s / n
    where = (args.database_url or "sqlite").split(":")[0]
    print(f"{n} reports from {args.terminals} terminals, database {where}, best of {args.repeats}")
    print("every report accepted and acknowledged")
    print(f"whole path: {per_msg:7.1f} us CPU per message ({n / ingest_s:8.0f} msg/CPU-s)")
    print(f"  of which the writer's flushes: {1e6 * flush_s / n:7.1f} us")
    print(f"decode alone:      {per_decode:7.1f} us")
    print(f"json.loads alone:  {1e6 * loads_s / n:7.1f} us (the yardstick: stdlib, unchanged)")
    print(
        f"whole path / json.loads: {ingest_s / loads_s:.1f}x, decode / json.loads: "
        f"{decode_s / loads_s:.1f}x"
    )
    if args.profile:
        print()
        stats.sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
