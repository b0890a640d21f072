"""Backtest of the paper forecast (``server.paper_forecast``) against simulated ground truth.

Simulates ``--printers`` printers (seeded, ``--seed``) for ``--days`` days: each is in a
hall open 08:00-18:00 UTC every day (``--weekends-closed``: Monday to Friday), prints transactions of 1-4 pages at its own rate
(5-40 transactions an open hour, shaped by a morning and an afternoon peak, times a
day-to-day factor), starts at a random paper level, reports ``paper_low`` when the paper
left falls under its own reserve (8-12 % of the roll, unknown to the forecast, which
assumes ``--low-share``) and ``paper_out`` at zero, and is refilled 10-90 minutes after
running out. Every hour, for each printer not out of paper, the forecast made from the
history so far (exactly what the server's tracker is fed: pages per transaction and the
printer's condition changes) is compared with the simulated time of its next
``paper_out``. Prints the median absolute ETA error in % of the true time left, for
printers with at least a day of history (the target: under 15 %) and, for information,
with less; and how often the true time fell inside the forecast's interval.

    PYTHONPATH=$PWD .venv/bin/python bench/paper_forecast.py               # 100 printers, 10 days
    PYTHONPATH=$PWD .venv/bin/python bench/paper_forecast.py --quick       # 10 printers, 4 days
    PYTHONPATH=$PWD .venv/bin/python bench/paper_forecast.py --json out.json  # figures as JSON

Deterministic for a given seed: the figures are the same on every machine.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from protocol.taxonomy import PeripheralCondition
from server.paper_forecast import PrinterHistory, forecast

__all__ = ["Backtest", "main", "run"]

TARGET_PCT: Final = 15.0
START: Final = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday, 00:00 UTC
OPENS_H: Final = 8
CLOSES_H: Final = 18
MODELS: Final = {"KF-R200": 600, "KF-A4": 500}  # model -> pages per roll (the setting)
_SHAPE: Final = {
    8: 0.6,
    9: 1.0,
    10: 1.4,
    11: 1.3,
    12: 0.7,
    13: 0.8,
    14: 1.3,
    15: 1.2,
    16: 1.0,
    17: 0.7,
}
_C = PeripheralCondition


@dataclass(frozen=True, slots=True)
class Sample:
    printer: int
    history_h: float
    error_pct: float
    inside: bool


@dataclass(frozen=True, slots=True)
class Backtest:
    samples: tuple[Sample, ...]
    paper_outs: int
    no_forecast: int  # samples where the forecast gave nothing (level not known yet)

    def day_plus(self) -> list[Sample]:
        return [s for s in self.samples if s.history_h >= 24]

    def under_day(self) -> list[Sample]:
        return [s for s in self.samples if s.history_h < 24]


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method; means here stay below ~60
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _transactions(
    rng: random.Random, days: int, *, weekends_closed: bool
) -> list[tuple[datetime, int]]:
    """(time, pages) of one printer's transactions over ``days`` days, in time order."""
    per_hour = rng.uniform(5, 40) / 4  # transactions are 1-4 pages: 2.5 on average
    out = []
    for day in range(days):
        factor = rng.lognormvariate(0, 0.15)
        if weekends_closed and (START + timedelta(days=day)).weekday() >= 5:
            continue
        for hour, shape in _SHAPE.items():
            begin = START + timedelta(days=day, hours=hour)
            for _ in range(_poisson(rng, per_hour * shape * factor)):
                out.append((begin + timedelta(seconds=rng.uniform(0, 3600)), rng.randint(1, 4)))
    out.sort()
    return out


def _simulate_one(
    index: int, rng: random.Random, days: int, low_share: float, weekends_closed: bool
) -> tuple[list[Sample], int, int]:
    model = rng.choice(sorted(MODELS))
    roll = MODELS[model]
    reserve = round(roll * rng.uniform(0.08, 0.12))
    left = rng.randint(reserve + 1, roll)
    condition = _C.OK
    refill_at: datetime | None = None
    # ground truth first: every transaction's effect, every condition change
    changes: list[tuple[datetime, PeripheralCondition]] = []
    printed: list[tuple[datetime, int]] = []
    for at, pages in _transactions(rng, days, weekends_closed=weekends_closed):
        if refill_at is not None and at >= refill_at:
            changes.append((refill_at, _C.OK))
            condition, left, refill_at = _C.OK, roll, None
        if condition is _C.PAPER_OUT:
            continue  # the transaction fails for want of paper: nothing printed
        used = min(pages, left)
        left -= used
        printed.append((at, used))
        if left == 0:
            changes.append((at, _C.PAPER_OUT))
            condition = _C.PAPER_OUT
            refill_at = at + timedelta(minutes=rng.uniform(10, 90))
        elif left <= reserve and condition is _C.OK:
            changes.append((at, _C.PAPER_LOW))
            condition = _C.PAPER_LOW
    outs = [at for at, c in changes if c is _C.PAPER_OUT]
    # then the replay: feed the history hour by hour, forecast on the hour
    history = PrinterHistory(first_seen=START)
    history.note_condition(START, _C.OK)
    samples: list[Sample] = []
    none = 0
    p = c = 0
    for hour in range(1, days * 24):
        now = START + timedelta(hours=hour)
        while p < len(printed) or c < len(changes):
            next_p = printed[p][0] if p < len(printed) else None
            next_c = changes[c][0] if c < len(changes) else None
            if next_p is not None and next_p < now and (next_c is None or next_p <= next_c):
                history.note_pages(*printed[p])
                p += 1
            elif next_c is not None and next_c < now:
                history.note_condition(*changes[c])
                c += 1
            else:
                break
        if history.condition is _C.PAPER_OUT:
            continue
        truth = next((at for at in outs if at > now), None)
        if truth is None:
            continue  # the simulation ends before this roll does: no ground truth
        got = forecast(history, now, roll_pages=roll, low_share=low_share)
        if got is None or got.eta_s is None:
            none += 1
            continue
        true_s = (truth - now).total_seconds()
        low = got.eta_low_s if got.eta_low_s is not None else got.eta_s
        high = got.eta_high_s if got.eta_high_s is not None else math.inf
        samples.append(
            Sample(
                index, got.history_h, abs(got.eta_s - true_s) / true_s * 100, low <= true_s <= high
            )
        )
    return samples, len(outs), none


def run(
    *, printers: int, days: int, seed: int, low_share: float = 0.1, weekends_closed: bool = False
) -> Backtest:
    """The backtest's samples for ``printers`` simulated printers over ``days`` days."""
    rng = random.Random(seed)
    samples: list[Sample] = []
    outs = none = 0
    for i in range(printers):
        got, n_outs, n_none = _simulate_one(
            i, random.Random(rng.getrandbits(64)), days, low_share, weekends_closed
        )
        samples.extend(got)
        outs += n_outs
        none += n_none
    return Backtest(tuple(samples), outs, none)


def _line(name: str, samples: list[Sample]) -> str:
    if not samples:
        return f"{name}: no samples"
    median = statistics.median(s.error_pct for s in samples)
    inside = sum(s.inside for s in samples) / len(samples) * 100
    printers = len({s.printer for s in samples})
    return (
        f"{name}: {len(samples)} forecasts of {printers} printers, median absolute ETA error"
        f" {median:.1f} %, true time inside the interval {inside:.0f} %"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--printers", type=int, default=100)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--low-share", type=float, default=0.1)
    parser.add_argument(
        "--weekends-closed", action="store_true", help="halls closed on Saturday and Sunday"
    )
    parser.add_argument("--quick", action="store_true", help="10 printers, 4 days")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    printers, days = (10, 4) if args.quick else (args.printers, args.days)
    result = run(
        printers=printers,
        days=days,
        seed=args.seed,
        low_share=args.low_share,
        weekends_closed=args.weekends_closed,
    )
    print(
        f"{printers} printers, {days} days, seed {args.seed}: {result.paper_outs} paper_outs,"
        f" {len(result.samples)} forecasts compared, {result.no_forecast} hours without one"
    )
    day_plus = result.day_plus()
    print(_line(">= 1 day of history", day_plus))
    print(_line("< 1 day of history", result.under_day()))
    if day_plus:
        median = statistics.median(s.error_pct for s in day_plus)
        verdict = "meets" if median < TARGET_PCT else "misses"
        print(f"target: median under {TARGET_PCT:.0f} % for >= 1 day of history: {verdict} it")
    if args.json is not None:
        args.json.write_text(json.dumps(_figures(result, printers, days)), encoding="utf-8")


def _figures(result: Backtest, printers: int, days: int) -> dict[str, object]:
    def group(samples: list[Sample]) -> dict[str, object]:
        return {
            "forecasts": len(samples),
            "printers": len({s.printer for s in samples}),
            "median_error_pct": statistics.median(s.error_pct for s in samples)
            if samples
            else None,
            "inside_interval": sum(s.inside for s in samples),
        }

    return {
        "printers": printers,
        "days": days,
        "paper_outs": result.paper_outs,
        "forecasts": len(result.samples),
        "no_forecast": result.no_forecast,
        "day_plus": group(result.day_plus()),
        "under_day": group(result.under_day()),
    }


if __name__ == "__main__":
    main()
