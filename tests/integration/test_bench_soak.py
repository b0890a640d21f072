"""``bench/soak.py --quick``, ``bench/agent_footprint.py --quick`` and ``bench/table.py``.

The benchmarks' own mosquitto, server and simulator processes, as ``docs/benchmarks.md``
runs them, small: 200 real agents for 30 s with the fault mix, then the reconnect storm,
then the exact accounting; one real ``kioskfleet agent`` for 20 s. The tests assert on
what the JSON holds (exact counts, every figure present and positive), never a timing;
the table must carry every figure and say which scripts did not run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _bench(script: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    database = "sqlite" if os.environ.get("KIOSKFLEET_SKIP_POSTGRES") == "1" else "postgresql"
    _bench("soak.py", "--database", database, "--json", str(out / "soak.json"))
    _bench("agent_footprint.py", "--json", str(out / "agent_footprint.json"))
    return out


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_the_quick_soak_accounts_for_every_message_of_every_agent_exactly(
    bench_out: Path,
) -> None:
    acc = _load(bench_out / "soak.json")["accounting"]
    assert acc["exact"] is True
    assert acc["terminals"] == acc["terminals_in_database"] == 200
    assert acc["lost"] == acc["outbox_pending"] == acc["server_seq_gaps"] == 0
    assert acc["server_reports"] == acc["outbox_reports"] - acc["outbox_dropped_reports"] > 0
    # boot events, the fault mix, the visibility probes and the storm's paper_out
    assert acc["server_events"] == acc["server_event_rows"] == acc["outbox_events"] >= 2 * 200


def test_the_quick_soak_forces_its_fault_mix_and_measures_each_figure(bench_out: Path) -> None:
    soak = _load(bench_out / "soak.json")["soak"]
    assert sum(soak["faults_forced"].values()) > 0
    assert soak["connections_dropped"] >= 200 * 0.01
    visible = soak["visible_api_s"]["n"]
    assert visible > 0
    assert soak["visible_metrics_s"]["n"] == visible
    assert soak["visible_api_s"]["p50"] > 0
    assert soak["visible_metrics_s"]["p99"] >= soak["visible_metrics_s"]["p50"] > 0
    assert soak["samples"] > 0
    assert soak["scrape_s"]["n"] == soak["samples"]
    assert soak["scrape_bytes_max"] > 0
    for query in ("offline", "hall", "online_hall_jam", "faulty_region"):
        assert soak["api_list_s"][query]["n"] == soak["samples"]
        assert soak["api_list_s"][query]["p50"] > 0
    for process in ("server", "broker", "simulators"):
        assert soak["usage"][process]["rss_mb_max"] > 0
        assert soak["usage"][process]["cpu_percent_max"] > 0


def test_the_quick_storm_gives_every_agent_a_backlog_and_waits_for_the_fleet_to_be_right(
    bench_out: Path,
) -> None:
    storm = _load(bench_out / "soak.json")["storm"]
    assert storm["terminals"] == 200
    assert storm["backlog"] >= 200  # one paper_out event each, at least
    assert storm["connected_s"] > 0
    assert storm["fleet_right_s"] == max(storm["api_right_s"], storm["drained_s"]) > 0


def test_the_quick_footprint_measures_a_real_agent_the_server_saw(bench_out: Path) -> None:
    f = _load(bench_out / "agent_footprint.json")
    assert f["samples"] >= 10
    assert f["rss_mb_max"] >= f["rss_mb_mean"] > 0
    assert f["cpu_s"] > 0
    assert f["server_saw"] == {"state": "online", "peripherals": 5, "reports_received": 1}
    assert f["rss_met"] == (f["rss_mb_max"] < 40)
    assert f["cpu_met"] == (f["cpu_percent_after_warmup"] < 1)
    profile = f["profile"]
    assert profile["agent_imports_rss_mb"] > profile["python_alone_rss_mb"] > 0
    assert {name for name, _ in profile["import_python_mb_by_package"]} >= {"pydantic"}


def test_the_table_appends_one_section_with_every_figure_and_the_scripts_that_did_not_run(
    bench_out: Path, tmp_path: Path
) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")
    table = [sys.executable, str(ROOT / "bench" / "table.py"), "--from", str(bench_out)]
    for _ in range(2):
        done = subprocess.run(
            [*table, "--output", str(doc)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n")
    assert text.count("\n## `make bench` runs\n") == 1
    assert text.count("### `make bench`, ") == 2
    section = text.rsplit("### `make bench`, ", 1)[1]
    assert "cores" in section
    assert "mosquitto" in section
    assert "PostgreSQL" in section
    for row in (
        "fault → visible in the API",
        "fault → visible in /metrics",
        "soak, 200 agents",
        "nothing lost, exact counts",
        "reconnect storm: 200 agents",
        "one agent, 0 min: RSS max",
    ):
        assert row in section
    assert "| 0 lost, exact | met |" in section
    for missing in (
        "ingest-sqlite.json",
        "ingest-postgresql.json",
        "scrape-mass-outage.json",
        "rollout.json",
    ):
        assert f"not run (no {missing})" in section
