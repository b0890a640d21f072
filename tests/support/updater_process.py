"""The real agent updater in a process of its own, to be killed with SIGKILL mid-install.

``python -m tests.support.updater_process CONFIG.json`` with ``mode``:

- ``install``: ``agent.updater.Updater`` with the real ``BundleHandler`` handles the
  directive in ``directive``; each reported status is appended to ``reports`` as a JSON
  line. When the status ``pause_at`` is reported, or the bundle handler writes the step
  ``pause_at``, it creates ``marker`` and blocks for good: the test kills it there.
- ``recover``: what the agent does on start (``agent.update_service.recovery_report``,
  then ``Updater.reconcile()``), then prints ``{"report": <UpdateBody or null>, "active": <version or null>}``.

The health command of the release under test may block too (it creates the marker itself):
that is the kill "during the health check".
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from agent.clock import SystemClock
from agent.install import BundleConfig, BundleHandler
from agent.install_gate import InstallGate
from agent.update_service import recovery_report
from agent.updater import Updater, UpdaterConfig
from protocol.update_status import UpdateBody


def _pause(marker: Path) -> None:
    marker.write_text("paused")
    threading.Event().wait()  # until SIGKILL


def main(config: dict[str, Any]) -> None:
    marker = Path(config["marker"])
    pause_at = config.get("pause_at")

    def on_step(step: str) -> None:
        if step == pause_at:
            _pause(marker)

    handler = BundleHandler(
        BundleConfig(root=Path(config["slots"]), restart_argv=("true",), health_interval_s=0.05),
        on_step=on_step,
    )
    reports = Path(config["reports"])

    def report(body: UpdateBody) -> None:
        with reports.open("a", encoding="utf-8") as out:  # closed: on the disk before a kill
            out.write(body.model_dump_json() + "\n")
        if body.state == pause_at:
            _pause(marker)

    updater = Updater(
        UpdaterConfig(
            terminal_id=config["terminal_id"],
            terminal_model=config["model"],
            agent_version="1.4.0",
            metadata_base_url=config["metadata_url"],
            target_base_url=config["targets_url"],
            trusted_root=Path(config["trusted_root"]).read_bytes(),
            work_dir=Path(config["work_dir"]),
            state_file=Path(config["state_file"]),
            poll_s=0.01,
        ),
        handlers={"bundle": handler},
        gate=InstallGate(SystemClock()),
        hall_open=lambda _now: False,
        report=report,
        clock=SystemClock(),
    )
    if config["mode"] == "recover":  # what UpdateService.start does
        recovered = recovery_report(handler)
        updater.reconcile()
        out = {"report": recovered.model_dump(mode="json") if recovered else None}
        print(json.dumps(out | {"active": handler.active_version()}))
        return
    updater.handle(Path(config["directive"]).read_bytes())


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
