"""``bench/rollout.py --quick`` runs one whole rollout and its counts are exact.

The benchmark's own mosquitto, server and responder process, as ``docs/benchmarks.md``
runs them, with 500 terminals: every terminal registered by its report, one directive
signed and received per terminal, five statuses ingested per terminal, the rollout
completed with every terminal succeeded and nothing rejected. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_the_rollout_bench_in_quick_mode_reaches_every_terminal_exactly_once(
    tmp_path: Path,
) -> None:
    out = tmp_path / "rollout.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rollout.py"), "--quick", "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["terminals"] == 500
    assert (figures["status"], figures["counts"]) == ("completed", {"succeeded": 500})
    assert figures["directives_signed"] == figures["directives_received"] == 500
    assert figures["statuses_ingested"] == 5 * 500
    assert figures["anomalies"] == {"server_disconnects": []}
