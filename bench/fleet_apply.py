"""Cost of applying one decoded message to the fleet state, against decoding it, in one run.

Prints figures; never a pass/fail timing test. ``--terminals`` terminals send
``--rounds`` reports each, round-robin, in two streams: ``heartbeat`` (nothing
changes: the common case) and ``changing`` (a printer flips between ok and
paper_low every report: a transition and tally work each time). The baseline
is ``protocol.codec.decode`` of the same payloads, measured in the same run, so
the ratio survives a noisy machine. Uses only ``FleetState.apply`` and
``decode``, so the same script measures older commits too (check one out in a
worktree and run it with ``PYTHONPATH=<worktree>``).

    .venv/bin/python bench/fleet_apply.py
    .venv/bin/python bench/fleet_apply.py --terminals 5000 --rounds 20
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from protocol.codec import decode
from protocol.messages import Message
from protocol.topics import Channel, topic
from server.fleet_state import FleetState

_T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _payload(tid: str, seq: int, printer: str) -> tuple[str, bytes]:
    body = {
        "hall": "Hall 1",
        "region": "North",
        "model": "KF-300",
        "agent_version": "1.0.0",
        "uptime_s": 1.0,
        "report_interval_s": 10.0,
        "peripherals": [
            {"name": "receipt_printer", "kind": "receipt_printer", "condition": printer},
            {"name": "id_card_reader", "kind": "id_card_reader", "condition": "ok"},
            {"name": "qr_scanner", "kind": "qr_scanner", "condition": "ok"},
        ],
        "software": {"kiosk-app": "3.1"},
    }
    raw = {
        "schema": "kf.report",
        "version": 1,
        "terminal_id": tid,
        "boot_id": "boot-aaaa",
        "seq": seq,
        "sent_at": _T0.isoformat(),
        "body": body,
    }
    return topic(tid, Channel.REPORT), json.dumps(raw).encode()


def _best(repeats: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terminals", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()

    for label, conditions in (("heartbeat", ["ok"]), ("changing", ["ok", "paper_low"])):
        payloads = [
            _payload(f"T-{i:05d}", r + 1, conditions[r % len(conditions)])
            for r in range(args.rounds)
            for i in range(args.terminals)
        ]
        messages: list[Message] = [decode(t, p) for t, p in payloads]

        def decode_all(payloads: list[tuple[str, bytes]] = payloads) -> float:
            started = time.perf_counter()
            for t, p in payloads:
                decode(t, p)
            return time.perf_counter() - started

        def apply_all(messages: list[Message] = messages) -> float:
            fleet = FleetState()
            started = time.perf_counter()
            for k, m in enumerate(messages):
                fleet.apply(m, _T0 + timedelta(microseconds=k))
            return time.perf_counter() - started

        n = len(messages)
        decode_us = _best(args.repeats, decode_all) / n * 1e6
        apply_us = _best(args.repeats, apply_all) / n * 1e6
        print(
            f"{label:>9}: apply {apply_us:6.2f} us/message, decode {decode_us:6.2f} us/message"
            f" (baseline), apply/decode {apply_us / decode_us:.2f}  [{n} messages]"
        )


if __name__ == "__main__":
    main()
