"""Scrape cost of /metrics at fleet scale: the fleet collector against per-terminal gauges.

Prints figures; never a pass/fail timing test. Each variant runs in its own
freshly spawned process (so one's memory never counts against the other), and
both build the same fleet: ``--terminals`` terminals in ``--halls`` halls over
``--regions`` regions, each reporting a receipt printer, an ID card reader and a
QR scanner, with ``--problem-ratio`` of them in trouble (``--offline-share`` of
those offline through their will, default half; the rest with a peripheral problem:
paper out, jam, reader fault with a vendor code, paper low, unknown). Every message
goes through ``protocol.codec.decode`` and ``FleetState.apply``, as in the server.

  A. collector: ``FleetCollector`` over the fleet state on a fresh registry (what
     the server does): fleet gauges by hall, per-terminal series only for problems,
     a hall with too many offline terminals as one ``kioskfleet_hall_unreachable``
     series, one with too many peripheral problems as
     ``kioskfleet_hall_peripheral_problems_withheld`` per family, and
     ``gc.collect(); gc.freeze()`` after the fleet is built (what ``Server.start``
     does after loading it);
  U. uncapped (the mass-outage baseline): the same collector with no per-hall
     budget (every offline terminal and every peripheral problem exported, as before
     issue 13) and no ``gc.freeze()``;
  B. naive baseline: the same fleet state plus five ``Gauge(...).labels(terminal,
     hall, region)`` series per terminal (online, last seen, state since, report
     interval, peripherals ok), kept up to date as an exporter would.

For each: time to build the fleet (decode + apply), time to build the metrics,
RSS added by the metrics, peak RSS, then the scrape's text (``server.exposition``, what
``/metrics`` writes) ``--runs`` times (median, p95, max, CPU median), series and bytes of
one scrape, and prometheus_client's ``generate_latest()`` of the same registry as
many times (the baseline: the same bytes, written sample by sample), and how many full
(generation 2) garbage collections fell into the timed scrapes: with 100 000
terminals in memory one takes about a second, and it explains a p95 or max far
above the median. For A also ``FleetState.summary()``
alone, and the time it held the fleet's lock (``FleetSummary.lock_held_s``, what
``kioskfleet_fleet_lock_held_seconds`` observes), i.e. ingest blocked, per scrape;
and for every variant one forced full collection (``gc.collect()``) after the scrapes:
the longest pause the collector can cause in that process.

    .venv/bin/python bench/scrape.py                      # 100 000 terminals, 1 % problems
    .venv/bin/python bench/scrape.py --problem-ratio 0.5 --offline-share 1 \
        --variants collector,uncapped                     # a mass outage (docs/benchmarks.md)
    .venv/bin/python bench/scrape.py --problem-ratio 0.5 --offline-share 0 \
        --variants collector,uncapped                     # a mass peripheral outage
    .venv/bin/python bench/scrape.py --terminals 10000 --naive-runs 5
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry, Gauge, generate_latest  # noqa: E402 - after sys.path

from protocol.codec import decode  # noqa: E402 - after sys.path
from protocol.topics import Channel, topic  # noqa: E402 - after sys.path
from server.exposition import exposition  # noqa: E402 - after sys.path
from server.fleet_collector import FleetCollector, LabelBudget  # noqa: E402 - after sys.path
from server.fleet_state import FleetState  # noqa: E402 - after sys.path
from server.fleet_views import FleetSummary, TerminalFilter  # noqa: E402 - after sys.path

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
_PROBLEMS = (  # (peripheral name, kind, condition, fault code), cycled over problem terminals
    ("printer", "receipt_printer", "paper_out", None),
    ("printer", "receipt_printer", "jam", None),
    ("idcard", "id_card_reader", "fault", "E-0x6F00"),
    ("printer", "receipt_printer", "paper_low", None),
    ("qr", "qr_scanner", "unknown", None),
)


@dataclass(frozen=True)
class FleetShape:
    terminals: int
    halls: int
    regions: int
    problem_ratio: float
    offline_share: float = 0.5  # of the problem terminals, those offline (the rest faulty)

    @property
    def problems(self) -> int:
        return round(self.terminals * self.problem_ratio)


@dataclass
class Result:
    variant: str
    terminals: int
    problem_terminals: int
    fleet_build_s: float = 0.0  # decode + apply of every message
    apply_s: float = 0.0  # of which FleetState.apply
    metrics_build_s: float = 0.0
    rss_fleet_mb: float = 0.0  # after the fleet is built
    rss_metrics_mb: float = 0.0  # added by building the metrics
    peak_rss_mb: float = 0.0  # ru_maxrss at the end (includes scraping)
    scrape_median_ms: float = 0.0
    scrape_p95_ms: float = 0.0
    scrape_cpu_median_ms: float = 0.0  # process CPU time: less sensitive to a busy machine
    scrape_max_ms: float = 0.0
    gc_full_collections: int = 0  # generation-2 collections that ran during the timed scrapes
    gc_full_ms: float = 0.0  # and the time they took (they scan the whole fleet's objects)
    summary_median_ms: float | None = None  # collector only: FleetState.summary() call
    lock_held_median_ms: float | None = None  # collector only: the fleet lock held per scrape
    lock_held_max_ms: float | None = None
    gc_forced_full_ms: float = 0.0  # one gc.collect() after the scrapes
    series: int = 0
    bytes: int = 0
    scrape_runs: list[float] = field(default_factory=list)
    generate_latest_median_ms: float = 0.0  # the same registry through prometheus_client


def _rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _messages(shape: FleetShape) -> Iterator[tuple[str, bytes]]:
    """(topic, payload) of every message: a report per terminal, then the wills."""
    # Problem terminals spread evenly over the fleet; offline_share of them go offline
    # (spread evenly among them), the others get a peripheral problem from _PROBLEMS in turn.
    step = shape.terminals / shape.problems if shape.problems else 0.0
    problem_index = {round(j * step): j for j in range(shape.problems)}
    offline_every = shape.offline_share
    wills = []
    for i in range(shape.terminals):
        hall = i * shape.halls // shape.terminals  # consecutive ids share a hall, so the
        # evenly spread problem terminals are spread evenly over the halls too
        region = hall % shape.regions
        tid = f"KF-{i:06d}"
        peripherals: list[dict[str, str]] = [
            {"name": "printer", "kind": "receipt_printer", "condition": "ok"},
            {"name": "idcard", "kind": "id_card_reader", "condition": "ok"},
            {"name": "qr", "kind": "qr_scanner", "condition": "ok"},
        ]
        j = problem_index.get(i)
        goes_offline = j is not None and int((j + 1) * offline_every) > int(j * offline_every)
        if goes_offline:
            wills.append(tid)
        elif j is not None:
            name, _kind, condition, code = _PROBLEMS[j % len(_PROBLEMS)]
            for p in peripherals:
                if p["name"] == name:
                    p["condition"] = condition
                    if code:
                        p["fault_code"] = code
        body = {
            "hall": f"hall-{region:02d}-{hall:03d}",
            "region": f"region-{region:02d}",
            "model": "KF-300",
            "agent_version": "1.4.2",
            "uptime_s": 3600.0,
            "report_interval_s": 60.0,
            "peripherals": peripherals,
            "software": {"kiosk-app": f"3.{i % 3}.0"},
        }
        yield topic(tid, Channel.REPORT), _envelope("kf.report", tid, 1, T0, body)
    later = T0 + timedelta(minutes=5)
    for tid in wills:
        body = {"state": "offline", "reason": "connection_lost"}
        yield topic(tid, Channel.STATE), _envelope("kf.state", tid, 1, later, body)


def _envelope(schema: str, tid: str, seq: int, sent_at: datetime, body: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "schema": schema,
            "version": 1,
            "terminal_id": tid,
            "boot_id": "boot-00000001",
            "seq": seq,
            "sent_at": sent_at.isoformat(),
            "body": body,
        }
    ).encode()


def _build_fleet(shape: FleetShape, result: Result) -> FleetState:
    fleet = FleetState()
    received = T0 + timedelta(seconds=1)
    started = time.perf_counter()
    applying = 0.0
    for topic_name, payload in _messages(shape):
        message = decode(topic_name, payload)
        t = time.perf_counter()
        fleet.apply(message, received)
        applying += time.perf_counter() - t
    result.fleet_build_s = time.perf_counter() - started
    result.apply_s = applying
    result.problem_terminals = len(fleet.problem_terminals())
    return fleet


def _naive_gauges(fleet: FleetState, registry: CollectorRegistry) -> None:
    """Five per-terminal series for every terminal, as an exporter updating gauges would hold."""
    labels = ["terminal", "hall", "region"]
    online = Gauge("naive_terminal_online", "1 if online.", labels, registry=registry)
    last_seen = Gauge(
        "naive_terminal_last_seen_timestamp_seconds", "Last message.", labels, registry=registry
    )
    since = Gauge(
        "naive_terminal_state_since_timestamp_seconds", "State since.", labels, registry=registry
    )
    interval = Gauge(
        "naive_terminal_report_interval_seconds", "Report interval.", labels, registry=registry
    )
    ok = Gauge("naive_terminal_peripherals_ok", "Peripherals ok.", labels, registry=registry)
    for v in fleet.query(TerminalFilter(), limit=max(1, len(fleet))).items:
        key = (v.id, v.hall or "unknown", v.region or "unknown")
        online.labels(*key).set(1 if v.online else 0)
        last_seen.labels(*key).set(v.last_seen.timestamp())
        since.labels(*key).set(v.state_since.timestamp())
        interval.labels(*key).set(v.report_interval_s or 0)
        ok.labels(*key).set(sum(1 for p in v.peripherals if not p.is_problem))


def _time_scrapes(
    registry: CollectorRegistry,
    runs: int,
    result: Result,
    extra: Callable[[], FleetSummary] | None,
) -> None:
    text = exposition(registry)  # warm-up, and the figures of one scrape
    if text != generate_latest(registry):
        raise RuntimeError("server.exposition wrote other bytes than generate_latest")
    result.bytes = len(text)
    result.series = sum(1 for line in text.split(b"\n") if line and not line.startswith(b"#"))
    durations = []
    cpu = []
    full_gc: list[float] = []
    gc_started = 0.0

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        nonlocal gc_started
        if info["generation"] == 2:
            if phase == "start":
                gc_started = time.perf_counter()
            else:
                full_gc.append(time.perf_counter() - gc_started)

    gc.callbacks.append(on_gc)
    try:
        for _ in range(runs):
            started, started_cpu = time.perf_counter(), time.process_time()
            exposition(registry)
            durations.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
    finally:
        gc.callbacks.remove(on_gc)
    result.scrape_cpu_median_ms = statistics.median(cpu) * 1000
    result.scrape_max_ms = max(durations) * 1000
    result.gc_full_collections = len(full_gc)
    result.gc_full_ms = sum(full_gc) * 1000
    result.scrape_runs = [round(d * 1000, 2) for d in durations]
    result.scrape_median_ms = statistics.median(durations) * 1000
    result.scrape_p95_ms = _percentile(durations, 0.95) * 1000
    baseline = []
    for _ in range(runs):
        started = time.perf_counter()
        generate_latest(registry)
        baseline.append(time.perf_counter() - started)
    result.generate_latest_median_ms = statistics.median(baseline) * 1000
    if extra is not None:
        summaries, held = [], []
        for _ in range(runs):
            started = time.perf_counter()
            held.append(extra().lock_held_s)
            summaries.append(time.perf_counter() - started)
        result.summary_median_ms = statistics.median(summaries) * 1000
        result.lock_held_median_ms = statistics.median(held) * 1000
        result.lock_held_max_ms = max(held) * 1000
    started = time.perf_counter()
    gc.collect()
    result.gc_forced_full_ms = (time.perf_counter() - started) * 1000


def run_variant(variant: str, shape: FleetShape, runs: int) -> dict[str, Any]:
    """One variant, measured in the calling process (meant to be a fresh one)."""
    result = Result(variant=variant, terminals=shape.terminals, problem_terminals=0)
    fleet = _build_fleet(shape, result)
    result.rss_fleet_mb = _rss_mb()
    registry = CollectorRegistry()
    started = time.perf_counter()
    extra: Callable[[], FleetSummary] | None = None
    if variant == "collector":
        gc.collect()
        gc.freeze()  # as Server.start after loading the fleet
        budget = LabelBudget()
        registry.register(FleetCollector(fleet, budget))
        limit, faulted = (
            budget.offline_terminals_per_hall,
            budget.peripheral_problem_terminals_per_hall,
        )
        extra = lambda: fleet.summary(offline_per_hall=limit, faulted_per_hall=faulted)  # noqa: E731 - one line
    elif variant == "uncapped":
        registry.register(
            FleetCollector(
                fleet,
                LabelBudget(
                    offline_terminals_per_hall=10**9,
                    unreachable_share=2.0,
                    peripheral_problem_terminals_per_hall=10**9,
                ),
            )
        )
        extra = fleet.summary
    else:
        _naive_gauges(fleet, registry)
    result.metrics_build_s = time.perf_counter() - started
    result.rss_metrics_mb = _rss_mb() - result.rss_fleet_mb
    _time_scrapes(registry, runs, result, extra)
    result.peak_rss_mb = _peak_rss_mb()
    return asdict(result)


def _in_fresh_process(variant: str, shape: FleetShape, runs: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        out: dict[str, Any] = pool.apply(run_variant, (variant, shape, runs))
    return out


def _print(results: list[dict[str, Any]]) -> None:
    rows = [
        ("terminals", "terminals", "{:,}"),
        ("problem terminals", "problem_terminals", "{:,}"),
        ("fleet build (decode+apply) s", "fleet_build_s", "{:.2f}"),
        ("  of which FleetState.apply s", "apply_s", "{:.2f}"),
        ("metrics build s", "metrics_build_s", "{:.3f}"),
        ("RSS after fleet build MB", "rss_fleet_mb", "{:.0f}"),
        ("RSS added by metrics MB", "rss_metrics_mb", "{:.0f}"),
        ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
        ("series per scrape", "series", "{:,}"),
        ("bytes per scrape", "bytes", "{:,}"),
        ("scrape median ms", "scrape_median_ms", "{:.1f}"),
        ("scrape p95 ms", "scrape_p95_ms", "{:.1f}"),
        ("scrape CPU median ms", "scrape_cpu_median_ms", "{:.1f}"),
        ("scrape max ms", "scrape_max_ms", "{:.1f}"),
        ("  generate_latest median ms", "generate_latest_median_ms", "{:.1f}"),
        ("full GCs during scrapes", "gc_full_collections", "{:d}"),
        ("  their total ms", "gc_full_ms", "{:.0f}"),
        ("FleetState.summary median ms", "summary_median_ms", "{:.1f}"),
        ("fleet lock held median ms", "lock_held_median_ms", "{:.2f}"),
        ("fleet lock held max ms", "lock_held_max_ms", "{:.2f}"),
        ("forced full GC ms", "gc_forced_full_ms", "{:.0f}"),
    ]
    header = f"{'':34}" + "".join(f"{r['variant']:>16}" for r in results)
    print(header)
    for label, key, fmt in rows:
        cells = "".join(
            f"{(fmt.format(r[key]) if r[key] is not None else '-'):>16}" for r in results
        )
        print(f"{label:34}{cells}")
    first = results[0]
    for other in results[1:]:
        if first["variant"] == "collector" and first["scrape_median_ms"]:
            ratio = other["scrape_median_ms"] / first["scrape_median_ms"]
            print(f"\n{other['variant']} / collector scrape time: {ratio:.0f}x", end="")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terminals", type=int, default=100_000)
    parser.add_argument("--halls", type=int, default=200)
    parser.add_argument("--regions", type=int, default=10)
    parser.add_argument("--problem-ratio", type=float, default=0.01)
    parser.add_argument(
        "--offline-share", type=float, default=0.5, help="of the problems, offline (0-1)"
    )
    parser.add_argument("--runs", type=int, default=30, help="scrapes of the collector")
    parser.add_argument("--naive-runs", type=int, default=5, help="scrapes of the baseline")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument(
        "--variants", default="collector,naive", help="comma-separated: collector,uncapped,naive"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    shape = FleetShape(
        args.terminals, args.halls, args.regions, args.problem_ratio, args.offline_share
    )
    print(
        f"fleet: {shape.terminals:,} terminals, {shape.halls} halls, {shape.regions} regions, "
        f"{shape.problem_ratio:.1%} with a problem ({shape.offline_share:.0%} of them offline);"
        f" python {sys.version.split()[0]}, "
        f"{psutil.cpu_count()} CPUs, load {psutil.getloadavg()[0]:.2f}\n",
        flush=True,
    )
    variants = [v for v in args.variants.split(",") if v and not (args.skip_naive and v == "naive")]
    results = [
        _in_fresh_process(v, shape, args.naive_runs if v == "naive" else args.runs)
        for v in variants
    ]
    _print(results)
    if args.json is not None:
        args.json.write_text(json.dumps({"shape": asdict(shape), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
