"""``bench/table.py``'s reading of a py-spy profile: the "why" of a missed ingest target."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_table", BENCH / "table.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_table"] = module
    spec.loader.exec_module(module)
    return module


PAHO = "thread (11): paho-mqtt-client-kf;Thread.run (threading.py:982);Client._loop (paho/mqtt/client.py:1667)"
WRITER = "thread (12): kf-db-writer;Thread.run (threading.py:982);WriteBehind.flush (server/write_behind.py:358)"
PROFILE = [
    f"{PAHO};Client._sock_recv (paho/mqtt/client.py:1086) 50",
    f"{PAHO};Ingest.handle (server/ingest.py:166);decode (protocol/codec.py:144);"
    "BaseModel.model_validate_json (pydantic/main.py:847) 20",
    f"{PAHO};Ingest.handle (server/ingest.py:166);FleetState.apply (server/fleet_state.py:1) 10",
    f"{WRITER};DefaultDialect.do_executemany (sqlalchemy/engine/default.py:1189) 15",
    f"{WRITER};ConfirmationMailbox.pump (server/confirmations.py:101) 4",
    f"{WRITER};Client.ack (paho/mqtt/client.py:4164) 1",
    "thread (13): AnyIO worker thread;Thread.run (threading.py:982) 0",
    "thread (14): kf-http;Thread.run (threading.py:982) 0",
    "not a stack line",
]


def test_samples_are_shared_by_thread_and_part_biggest_first(table: ModuleType) -> None:
    total, shares = table.profile_shares(PROFILE)
    assert total == 100
    assert shares == {
        "MQTT thread: paho itself": 0.5,
        "MQTT thread: decode and validation": 0.2,
        "database writer: SQL statements": 0.15,
        "MQTT thread: apply to the fleet state": 0.1,
        "database writer: kf.committed": 0.04,
        "database writer: PUBACKs": 0.01,
        "HTTP, metrics, jobs": 0.0,
    }
    assert next(iter(shares)) == "MQTT thread: paho itself"


def test_a_missed_drain_names_its_profile_and_an_absent_one_says_so(
    table: ModuleType, tmp_path: Path
) -> None:
    drain = {"ratio": 0.3, "cpu_ratio": 0.28}
    data = {
        "summary": {"drain": drain},
        "figures": [{"measurement": "drain", "consumer": "kioskfleet server", "rate": 3000.0}],
    }
    prof = tmp_path / "ingest-sqlite.prof"
    (row,) = table.ingest_rows(data, "SQLite", prof)
    assert row.met is False
    assert row.why == "no profile (py-spy) beside the JSON"
    prof.write_text("\n".join(PROFILE))
    (row,) = table.ingest_rows(data, "SQLite", prof)
    assert "100 samples, ingest-sqlite.prof" in row.why
    assert "MQTT thread: paho itself 50 %" in row.why
    assert "PUBACKs" not in row.why
    drain["ratio"] = 0.6
    (row,) = table.ingest_rows(data, "SQLite", prof)
    assert row.met is True
    assert row.why == ""
