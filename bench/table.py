"""The one table of a ``make bench`` run: every script's JSON -> docs/benchmarks.md.

Reads the files ``make bench`` writes into one directory (a missing one is a row that
says "not run"), and appends ONE section to ``docs/benchmarks.md`` (or ``--output``):
the date, the machine (cores, RAM, kernel, load), the versions (Python, mosquitto,
PostgreSQL, the key packages), then each figure beside its target and whether it was
met. A missed target's row says why, from the run's own profile where the script
records one (the agent's import profile) or pointing at the section that holds it.

    ingest-sqlite.json, ingest-postgresql.json   bench/ingest.py --database ...
      (and .prof beside each: --profile)         the drain's py-spy profile, for "why"
    scrape-mass-outage.json                      bench/scrape.py --problem-ratio 0.5 --offline-share 1
    rollout.json                                 bench/rollout.py
    soak.json                                    bench/soak.py (the soak and the storm)
    agent_footprint.json                         bench/agent_footprint.py

    .venv/bin/python bench/table.py --from /tmp/kf-bench-out      # append to docs/benchmarks.md
    .venv/bin/python bench/table.py --from DIR --output -         # print only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kioskfleet.scratch_database import default_admin_url  # noqa: E402 - after sys.path

PACKAGES = ("paho-mqtt", "fastapi", "uvicorn", "sqlalchemy", "psycopg", "pydantic")
Json = dict[str, Any]


@dataclass(frozen=True)
class Row:
    measurement: str
    figure: str
    target: str = "-"
    met: bool | None = None  # None: no target
    why: str = ""

    def cells(self) -> str:
        verdict = {None: "-", True: "met", False: "**missed**"}[self.met]
        return f"| {self.measurement} | {self.figure} | {self.target} | {verdict} | {self.why} |"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def _s(seconds: float | None) -> str:
    return "not within the timeout" if seconds is None else f"{seconds:.0f} s"


def _q(q: Json) -> str:
    return f"{_ms(q['p50'])} / {_ms(q['p99'])} (n={q['n']})"


# Where a sample of the draining server goes: (its thread's part, the first rule a frame of
# its stack matches). Thread names as the server gives them (server/write_behind.py,
# server/main.py) or as paho and AnyIO do.
_MQTT, _WRITER, _OTHERS = "MQTT thread", "database writer", "HTTP, metrics, jobs"
_THREADS = (("paho-mqtt-client", _MQTT), ("kf-db-writer", _WRITER))
_PARTS = (
    ("ConfirmationMailbox.", "kf.committed"),
    ("decode (protocol/codec.py", "decode and validation"),
    ("Ingest.handle (", "apply to the fleet state"),
    ("Client.ack (", "PUBACKs"),
    ("DefaultDialect.do_execute", "SQL statements"),
)


def profile_shares(lines: Iterable[str]) -> tuple[int, dict[str, float]]:
    """Share of the samples by thread and part, from py-spy's collapsed stacks (``thread
    (tid): name;frame;frame... count``), biggest first: ``"MQTT thread: decode and
    validation" -> 0.12``. Samples of the MQTT thread that match no part are paho's own
    work ("paho itself"); other threads are summed as "HTTP, metrics, jobs"."""
    counts: dict[str, int] = {}
    total = 0
    for line in lines:
        stack, _, n = line.rstrip("\n").rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        thread = next((t for needle, t in _THREADS if needle in frames[0]), _OTHERS)
        key = thread
        if thread != _OTHERS:
            part = next(
                (name for needle, name in _PARTS if any(f.startswith(needle) for f in frames[1:])),
                "paho itself" if thread == _MQTT else "the rest",
            )
            key = f"{thread}: {part}"
        counts[key] = counts.get(key, 0) + int(n)
        total += int(n)
    shares = {k: v / total for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
    return total, shares


def _profile_why(path: Path) -> str:
    if not path.exists():
        return "no profile (py-spy) beside the JSON"
    total, shares = profile_shares(path.read_text().splitlines())
    if not total:
        return "the profile holds no sample"
    parts = ", ".join(f"{k} {100 * v:.0f} %" for k, v in shares.items() if v >= 0.02)
    return (
        f"one process, one GIL: its threads together near one core; where the samples went"
        f" (py-spy, {total} samples, {path.name}): {parts}"
    )


def ingest_rows(data: Json, database: str, profile: Path | None = None) -> list[Row]:
    rows = []
    live, drain = data["summary"].get("live"), data["summary"].get("drain")
    figures = {(f["measurement"], f["consumer"]): f for f in data["figures"]}
    if live:
        rows.append(
            Row(
                f"ingest live on {database}: server / bare subscriber",
                f"{live['ratio']:.2f}",
                "≥ 0.95 (keeps up)",
                live["ratio"] >= 0.95,
                "" if live["ratio"] >= 0.95 else "see Ingest throughput (where a message goes)",
            )
        )
    if drain:
        rate = figures[("drain", "kioskfleet server")]["rate"]
        ratio = drain["ratio"]
        why = ""
        if ratio < 0.5:
            why = (
                _profile_why(profile)
                if profile is not None
                else "profile: docs/benchmarks.md, 'One server, faster: second pass'"
            )
        by_cpu = drain.get("cpu_ratio")
        cpu = "" if by_cpu is None else f", {by_cpu:.2f}x by CPU a message"
        rows.append(
            Row(
                f"ingest drain on {database}: server / bare subscriber",
                f"{ratio:.2f}x ({rate:.0f}/s{cpu})",
                "≥ 0.5x the bare subscriber (issue 13; stretch 0.8x)",
                ratio >= 0.5,
                why,
            )
        )
    return rows


def scrape_rows(data: Json) -> list[Row]:
    collector = next(r for r in data["results"] if r["variant"] == "collector")
    shape = data["shape"]
    name = f"mass-outage scrape ({shape['terminals']:,} terminals, {shape['problem_ratio']:.0%} offline)"
    median, lock, gc_ms = (
        collector["scrape_median_ms"],
        collector["lock_held_max_ms"],
        collector["gc_forced_full_ms"],
    )
    return [
        Row(f"{name}: median / p95", f"{median:.1f} / {collector['scrape_p95_ms']:.1f} ms",
            "≤ 50 ms", median <= 50),
        Row(f"{name}: fleet lock held, max", f"{lock:.2f} ms", "≤ 5 ms", lock <= 5),
        Row(f"{name}: forced full GC", f"{gc_ms:.0f} ms", "≤ 100 ms", gc_ms <= 100),
    ]  # fmt: skip


def rollout_rows(data: Json) -> list[Row]:
    n, counts = data["terminals"], data.get("counts", {})
    done = data["status"] == "completed" and counts.get("succeeded") == n
    return [
        Row(
            f"one rollout to {n:,} terminals",
            f"{data['status']} in {data['total_s']:.1f} s, {counts.get('succeeded', 0):,} succeeded",
            "completed, every terminal succeeded",
            done,
        )
    ]


def soak_rows(data: Json) -> list[Row]:
    soak, storm, acc = data["soak"], data.get("storm"), data.get("accounting")
    n, minutes = int(data["args"]["terminals"]), soak["duration_s"] / 60
    usage = soak["usage"]
    head = f"soak, {n:,} agents, {minutes:.0f} min ({data['database']})"
    lists = "; ".join(f"{k} {_q(v)}" for k, v in soak["api_list_s"].items())
    forced = sum(soak["faults_forced"].values())
    connected = (
        f"{n:,} in {data['connect_s']:.0f} s"
        if data["connect_s"] is not None
        else f"{data['connected_at_start']:,} of {n:,} after {data['args']['connect_timeout']} s"
    )
    return [
        Row("fault → visible in the API, p50 / p99", _q(soak["visible_api_s"]),
            "every fault seen", soak["visible_missed"] == 0,
            f"{soak['visible_missed']} not seen within 30 s (which ones and why: the soak's section)" if soak["visible_missed"] else ""),
        Row("fault → visible in /metrics, p50 / p99", _q(soak["visible_metrics_s"])),
        Row(f"{head}: connected before the soak", f"{connected}; "
            f"{forced:,} faults forced, {soak['connections_dropped']:,} connections cut",
            f"all {n:,}", data["connect_s"] is not None,
            "" if data["connect_s"] is not None else "agents CPU-starved: see the soak's section"),
        _accounting_row(head, n, acc),
        Row(f"{head}: server RSS max, CPU mean / max",
            f"{usage['server']['rss_mb_max']:.0f} MB, {usage['server']['cpu_percent_mean']:.0f} / "
            f"{usage['server']['cpu_percent_max']:.0f} % of a core"),
        Row(f"{head}: broker RSS max, CPU mean / max",
            f"{usage['broker']['rss_mb_max']:.0f} MB, {usage['broker']['cpu_percent_mean']:.0f} / "
            f"{usage['broker']['cpu_percent_max']:.0f} % of a core"),
        Row(f"{head}: simulators RSS, CPU mean",
            f"{usage['simulators']['rss_mb_max']:.0f} MB, "
            f"{usage['simulators']['cpu_percent_mean']:.0f} % of a core"),
        Row(f"{head}: /metrics scrape p50 / p99", _q(soak["scrape_s"]), "≤ 50 ms (p50)",
            soak["scrape_s"]["p50"] <= 0.05,
            "" if soak["scrape_s"]["p50"] <= 0.05 else
            f"{soak['scrape_bytes_max'] / 2**20:.1f} MB a scrape ({int(data['args']['halls']):,}"
            " halls) of Python text, on 2 cores shared with the agents and the visibility"
            " probe's own scrapes; ~50 ms alone ('The server writes its own exposition')"),
        Row(f"{head}: API list with filters p50 / p99", lists),
        _storm_row(n, storm),
    ]  # fmt: skip


def _accounting_row(head: str, n: int, acc: Json | None) -> Row:
    name = f"{head}: nothing lost, exact counts"
    if acc is None:
        return Row(name, "not reached (the run was stopped before it)", "0 lost, exact", False)
    exact = acc["exact"] and acc["lost"] == 0 and acc["terminals_in_database"] == n
    return Row(
        name,
        f"{acc['server_reports']:,} reports + {acc['server_events']:,} events stored; "
        f"outboxes {acc['outbox_reports']:,} + {acc['outbox_events']:,}; {acc['lost']} lost, "
        f"{acc['outbox_pending']} pending",
        "0 lost, exact",
        exact,
        "" if exact else (acc.get("differences") or "")[:200],
    )


def _storm_row(n: int, storm: Json | None) -> Row:
    if storm is None:
        return Row(f"reconnect storm: {n:,} agents", "not reached")
    return Row(
        f"reconnect storm: {n:,} agents with {storm['backlog']:,} messages waiting, "
        f"broker away {storm['down_s']:.0f} s",
        f"all connected {_s(storm['connected_s'])}, API right {_s(storm['api_right_s'])},"
        f" backlog handed {_s(storm['drained_s'])} after the broker's start",
    )


def footprint_rows(data: Json) -> list[Row]:
    profile = data["profile"]
    top = ", ".join(f"{name} {mb:.1f}" for name, mb in profile["import_python_mb_by_package"][:5])
    split = profile.get("memory_split_at_end", {})
    mapped = (
        f"; at the end {split['anonymous_mb']:.0f} MB own heap, {split['file_backed_mb']:.0f} MB"
        " mapped files (interpreter, C extensions)"
        if split
        else ""
    )
    why_rss = (
        f"imports alone {profile['agent_imports_rss_mb']:.0f} MB (python alone "
        f"{profile['python_alone_rss_mb']:.0f} MB){mapped}; Python heap of the imports, MB: {top}"
    )
    minutes = data["duration_s"] / 60
    return [
        Row(f"one agent, {minutes:.0f} min: RSS max (mean)",
            f"{data['rss_mb_max']:.1f} MB ({data['rss_mb_mean']:.1f})",
            f"< {data['rss_target_mb']:.0f} MB", data["rss_met"],
            "" if data["rss_met"] else why_rss),
        Row(f"one agent, {minutes:.0f} min: CPU after {data['warmup_s']:.0f} s (whole run)",
            f"{data['cpu_percent_after_warmup']:.2f} % ({data['cpu_percent']:.2f} %) of a core",
            f"< {data['cpu_target_percent']:.0f} %", data["cpu_met"]),
    ]  # fmt: skip


# (file, its rows from the JSON and the directory, what it measures)
SOURCES: tuple[tuple[str, Callable[[Json, Path], list[Row]], str], ...] = (
    (
        "ingest-sqlite.json",
        lambda d, o: ingest_rows(d, "SQLite", o / "ingest-sqlite.prof"),
        "ingest on SQLite",
    ),
    (
        "ingest-postgresql.json",
        lambda d, o: ingest_rows(d, "PostgreSQL", o / "ingest-postgresql.prof"),
        "ingest on PostgreSQL",
    ),
    ("soak.json", lambda d, _o: soak_rows(d), "fault → visible, soak, reconnect storm"),
    ("scrape-mass-outage.json", lambda d, _o: scrape_rows(d), "mass-outage scrape"),
    ("rollout.json", lambda d, _o: rollout_rows(d), "one rollout to 10 000 terminals"),
    ("agent_footprint.json", lambda d, _o: footprint_rows(d), "one agent's footprint"),
)


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _postgres_version() -> str:
    try:
        import psycopg

        admin = default_admin_url().replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(admin, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]).split()[0] if row else "?"
    except Exception:  # noqa: BLE001 - a table without the version is still a table
        return "unreachable"


def machine() -> tuple[str, str]:
    meminfo = Path("/proc/meminfo").read_text().split()
    ram = int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20
    load = os.getloadavg()
    box = (
        f"{os.cpu_count()} cores, {ram:.0f} GiB RAM, Linux {platform.release()}, "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} when the table was made"
    )
    mosquitto = (_run("mosquitto", "-h").splitlines() or ["?"])[0].replace("mosquitto version ", "")
    packages = ", ".join(f"{p} {metadata.version(p)}" for p in PACKAGES)
    versions = (
        f"Python {platform.python_version()}, mosquitto {mosquitto or '?'}, "
        f"PostgreSQL {_postgres_version()}, {packages}"
    )
    return box, versions


def table(directory: Path, now: datetime) -> str:
    rows: list[Row] = []
    for name, make, what in SOURCES:
        path = directory / name
        if not path.exists():
            rows.append(Row(what, f"not run (no {name})"))
            continue
        rows += make(json.loads(path.read_text()), directory)
    box, versions = machine()
    missed = sum(1 for r in rows if r.met is False)
    lines = [
        f"### `make bench`, {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {box}. Versions: {versions}. "
        f"{missed} target(s) missed. Each script's own section above says how it measures.",
        "",
        "| measurement | figure | target | | why (when missed) |",
        "|---|---|---|---|---|",
        *(r.cells() for r in rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--from", dest="directory", type=Path, required=True)
    parser.add_argument(
        "--output", default=str(ROOT / "docs" / "benchmarks.md"), help="appended to; - prints"
    )
    args = parser.parse_args(argv)
    text = table(args.directory, datetime.now(UTC))
    if args.output == "-":
        print(text, end="")
        return 0
    out = Path(args.output)
    existing = out.read_text() if out.exists() else ""
    if "\n## `make bench` runs\n" not in existing:
        text = (
            "\n## `make bench` runs\n\n"
            "Each `make bench` appends one table here (`bench/table.py`), newest last.\n\n" + text
        )
    with out.open("a") as f:
        f.write(("\n" if existing and not existing.endswith("\n\n") else "") + text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
