"""One real agent's footprint: RSS and CPU of ``kioskfleet agent`` over ``--duration`` seconds.

Prints figures; never a pass/fail timing test. In this process: a private mosquitto
with the project's config (``kioskfleet.local_broker.LocalBroker``) and a ``kioskfleet
server`` subprocess on SQLite (``kioskfleet.server_process.ServerProcess``), so the
agent's messages are ingested and confirmed (``kf.committed``) as in the field. The agent
is the real ``kioskfleet agent --config agent.toml`` process with the shipped defaults
(``agent.example.toml``: a report every 60 s, probes read every 5 s, keepalive 30 s, the
durable outbox with ``synchronous = "full"``) and a KF-300's five peripherals as
scenario probes (``type = "simulated"``, real-time incidents), the only difference from a
terminal's config.

Read from ``/proc/<pid>``: VmRSS every second (max, mean, last) and utime + stime over
the whole run and after the first ``--warmup`` seconds, as % of one core. Targets
(issue 13): RSS < 40 MB, CPU < 1 % of a core. Beside it, what the interpreter alone and
the agent's imports alone take (``python -c pass``, ``python -c "import agent.main"``),
the agent's RSS split into its own heap and mapped files (``smaps_rollup``) and, by
tracemalloc, which packages' imports allocate the Python heap: where the resident memory
goes when the target is missed.

    .venv/bin/python bench/agent_footprint.py                 # 600 s
    .venv/bin/python bench/agent_footprint.py --quick --json f.json   # 20 s
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kioskfleet.local_broker import LocalBroker  # noqa: E402 - after sys.path
from kioskfleet.server_process import KIOSKFLEET, ServerProcess  # noqa: E402

TERMINAL = "FOOT-00001"
PROBES = ("receipt_printer", "a4_printer", "id_card_reader", "qr_scanner", "cash_acceptor")
RSS_TARGET_MB = 40.0
CPU_TARGET_PERCENT = 1.0
_TICKS = os.sysconf("SC_CLK_TCK")


def agent_toml(path: Path, broker: LocalBroker, outbox: Path) -> Path:
    lines = [
        f'terminal_id = "{TERMINAL}"',
        'hall = "hall-01"',
        'region = "region-1"',
        'model = "KF-300"',
        f'broker_url = "{broker.url}"',
        "[outbox]",
        f'path = "{outbox}"',
    ]
    for name in PROBES:
        lines += ["[[probes]]", 'type = "simulated"', f'name = "{name}"', f'scenario = "{name}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory_split_mb(pid: int) -> dict[str, float]:
    """``/proc/<pid>/smaps_rollup``: how much of the RSS is the process's own heap
    (Anonymous) and how much mapped files (the interpreter, C extensions, shared
    libraries: file-backed pages another Python process on the terminal would share)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        fields[name] = int(value.split()[0]) / 1024
    return {
        "rss_mb": fields.get("Rss", 0.0),
        "anonymous_mb": fields.get("Anonymous", 0.0),
        "file_backed_mb": fields.get("Rss", 0.0) - fields.get("Anonymous", 0.0),
        "pss_mb": fields.get("Pss", 0.0),
    }


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def baseline_rss_mb(code: str) -> float:
    """VmRSS of a fresh interpreter after running ``code`` (the import cost)."""
    probe = f"{code}\nimport pathlib\nprint(pathlib.Path('/proc/self/status').read_text())"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


_IMPORT_PROFILE = """
import json, tracemalloc
tracemalloc.start(100)
import agent.main
def owner(traceback):
    for frame in reversed(traceback):  # the most recent frame of a package's own code
        path = frame.filename
        if "site-packages/" in path:
            return path.split("site-packages/")[-1].split("/")[0].removesuffix(".py")
        if path.startswith(ROOT):
            return path[len(ROOT):].lstrip("/").split("/")[0] + " (this project)"
    return "the standard library"
sizes = {}
for stat in tracemalloc.take_snapshot().statistics("traceback"):
    top = owner(stat.traceback)
    sizes[top] = sizes.get(top, 0) + stat.size
print(json.dumps(sorted(sizes.items(), key=lambda kv: -kv[1])[:10]))
"""


def import_profile() -> list[tuple[str, float]]:
    """The ten packages whose import of ``agent.main`` allocates most Python memory (MB,
    tracemalloc: the objects of module code, classes and schemas, not C libraries)."""
    out = subprocess.run(
        [sys.executable, "-c", f"ROOT = {str(ROOT)!r}\n{_IMPORT_PROFILE}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout
    return [(name, size / 2**20) for name, size in json.loads(out.splitlines()[-1])]


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with LocalBroker(work / "mosquitto") as broker:
        server = ServerProcess(
            work / "server",
            database_url=f"sqlite:///{work}/server.db",
            broker_url=broker.url,
            mqtt_client_id="kf-footprint-server",
        ).start()
        config = agent_toml(work / "agent.toml", broker, work / "outbox.sqlite")
        log = (work / "agent.log").open("wb")
        proc = subprocess.Popen(
            [KIOSKFLEET, "--log-level", "WARNING", "agent", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            began = time.monotonic()
            samples: list[float] = []
            warm_cpu = warm_at = None
            while (elapsed := time.monotonic() - began) < args.duration:
                if proc.poll() is not None:
                    raise SystemExit(f"the agent exited: {(work / 'agent.log').read_text()}")
                samples.append(rss_mb(proc.pid))
                if warm_cpu is None and elapsed >= args.warmup:
                    warm_cpu, warm_at = cpu_s(proc.pid), time.monotonic()
                time.sleep(1.0)
            total_cpu, wall = cpu_s(proc.pid), time.monotonic() - began
            split = memory_split_mb(proc.pid)
            ended = time.monotonic()
            terminal = server.get(f"/api/v1/terminals/{TERMINAL}").json()
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
            server.terminate()
    steady = (
        100.0 * (total_cpu - warm_cpu) / (ended - warm_at)
        if warm_cpu is not None and warm_at is not None and ended > warm_at
        else 0.0
    )
    result = {
        "duration_s": wall,
        "rss_mb_max": max(samples),
        "rss_mb_mean": sum(samples) / len(samples),
        "rss_mb_last": samples[-1],
        "cpu_s": total_cpu,
        "cpu_percent": 100.0 * total_cpu / wall,
        "cpu_percent_after_warmup": steady,
        "warmup_s": args.warmup,
        "samples": len(samples),
        "rss_target_mb": RSS_TARGET_MB,
        "cpu_target_percent": CPU_TARGET_PERCENT,
        "server_saw": {
            "state": terminal.get("state"),
            "peripherals": len(terminal.get("peripherals", [])),
            "reports_received": (terminal.get("delivery") or {}).get("reports_received"),
        },
        "profile": {
            "memory_split_at_end": split,
            "python_alone_rss_mb": baseline_rss_mb("pass"),
            "agent_imports_rss_mb": baseline_rss_mb("import agent.main"),
            "import_python_mb_by_package": import_profile(),
        },
    }
    result["rss_met"] = result["rss_mb_max"] < RSS_TARGET_MB
    result["cpu_met"] = result["cpu_percent_after_warmup"] < CPU_TARGET_PERCENT
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--warmup", type=float, default=30.0, help="excluded from the steady CPU")
    parser.add_argument("--quick", action="store_true", help="20 s, 5 s warm-up")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup = 20.0, 5.0
    with tempfile.TemporaryDirectory(prefix="kf-footprint-") as tmp:
        result = measure(args, Path(tmp))
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
