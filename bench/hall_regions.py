"""The analytics gauges' region labels at 100 000 terminals: a walk over every terminal's
view (how the server found them until 2026-12-07, the baseline) against the fleet
state's hall tallies (``FleetState.hall_regions``, what a scrape of the lease holder now
calls). Both run on the same fleet in this process, and their mappings are checked equal
first. The fleet is ``bench/scrape.py``'s mass outage.

    .venv/bin/python bench/hall_regions.py
    .venv/bin/python bench/hall_regions.py --terminals 5000 --halls 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scrape import FleetShape, Result, _build_fleet  # noqa: E402 - bench/ is on sys.path

from server.fleet_state import FleetState  # noqa: E402
from server.fleet_views import TerminalFilter  # noqa: E402

UNKNOWN = "unknown"


def by_walk(fleet: FleetState) -> dict[str, str]:
    """The baseline: every terminal's view, page by page."""
    out: dict[str, str] = {}
    cursor: str | None = None
    while True:
        page = fleet.query(TerminalFilter(), limit=5000, cursor=cursor)
        out.update((v.hall or UNKNOWN, v.region or UNKNOWN) for v in page.items)
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


def by_tallies(fleet: FleetState) -> dict[str, str]:
    return {h or UNKNOWN: r or UNKNOWN for h, r in fleet.hall_regions().items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--terminals", type=int, default=100_000)
    parser.add_argument("--halls", type=int, default=200)
    parser.add_argument("--regions", type=int, default=10)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    shape = FleetShape(args.terminals, args.halls, args.regions, 0.5, 1.0)
    fleet = _build_fleet(shape, Result("hall_regions", args.terminals, 0))
    if by_walk(fleet) != by_tallies(fleet):
        print("the two mappings differ", file=sys.stderr)
        return 1
    print(f"{args.terminals:,} terminals in {args.halls} halls; {args.runs} calls each")
    ways: tuple[tuple[str, Callable[[FleetState], dict[str, str]]], ...] = (
        ("walk over every view (before)", by_walk),
        ("hall tallies (now)", by_tallies),
    )
    for name, way in ways:
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            way(fleet)
            times.append(time.perf_counter() - t0)
        print(
            f"{name:32} median {1e3 * statistics.median(times):9.2f} ms,"
            f" max {1e3 * max(times):9.2f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
