"""Cost of the agent's durable outbox: appends/s and removes/s, one commit each.

Prints figures; never a pass/fail timing test. One ``Outbox`` file holds
``--terminals`` streams (as in the simulator: one file per process); messages
are appended round-robin over them (330-byte payloads, a KF-300 report), then
removed one by one, as PUBACKs would remove them. Both ``synchronous`` levels
are measured in the same run: ``normal`` (the simulator: survives a process
kill) and ``full`` (a real terminal: survives a power cut).

    .venv/bin/python bench/outbox.py
    .venv/bin/python bench/outbox.py --terminals 100 --messages 5000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Literal

from agent.outbox import Outbox
from protocol.topics import Channel

_PAYLOAD = b"x" * 330


def measure(sync: Literal["full", "normal"], terminals: int, messages: int, folder: Path) -> None:
    outbox = Outbox(folder / f"outbox-{sync}.sqlite", synchronous=sync)
    ids = [f"SIM-{i:05d}" for i in range(1, terminals + 1)]
    started = time.perf_counter()
    for tid in ids:
        outbox.stream(tid)
    streams = time.perf_counter() - started
    rows: list[tuple[str, int]] = []
    started = time.perf_counter()
    for i in range(messages):
        tid = ids[i % len(ids)]
        row = outbox.append(tid, Channel.REPORT, i // len(ids) + 1, "t", _PAYLOAD).id
        if row is not None:
            rows.append((tid, row))
    append_rate = messages / (time.perf_counter() - started)
    started = time.perf_counter()
    for tid, row in rows:
        outbox.remove(tid, [row])
    remove_rate = len(rows) / (time.perf_counter() - started)
    outbox.close()
    print(
        f"synchronous={sync:6}  {terminals} streams created in {streams:.2f} s  "
        f"append {append_rate:,.0f}/s  remove {remove_rate:,.0f}/s  ({messages} messages)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument(
        "--dir", type=Path, default=None, help="folder for the files (default: the temp dir)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        measure("normal", args.terminals, args.messages, Path(folder))
        measure("full", args.terminals, max(1, args.messages // 10), Path(folder))


if __name__ == "__main__":
    main()
