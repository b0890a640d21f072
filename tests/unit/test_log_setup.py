"""Logs: quiet by default (the scheduler's every-job lines only with --verbose) and a JSON
format for collectors in which every line parses as one object."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from kioskfleet.log_setup import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    scheduler_level = logging.getLogger("apscheduler").level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(scheduler_level)


def _run_one_scheduler_job() -> None:
    """A real APScheduler running one job to its end (it logs 'Running job ...')."""
    done = threading.Event()
    scheduler = BackgroundScheduler()
    # an interval job (as the server's): a one-shot job races its own removal with shutdown
    scheduler.add_job(done.set, "interval", hours=1, next_run_time=datetime.now(UTC))
    scheduler.start()
    try:
        assert done.wait(30)
    finally:
        scheduler.shutdown(wait=True)


def test_the_schedulers_job_lines_are_hidden_by_default_and_shown_with_verbose() -> None:
    quiet = io.StringIO()
    configure_logging("INFO", stream=quiet)
    _run_one_scheduler_job()
    assert "Running job" not in quiet.getvalue()
    logging.getLogger("server.main").info("API listening")
    assert "API listening" in quiet.getvalue()

    loud = io.StringIO()
    configure_logging("INFO", verbose=True, stream=loud)
    _run_one_scheduler_job()
    assert "Running job" in loud.getvalue()


def test_every_json_line_is_one_object_with_time_level_logger_and_message() -> None:
    out = io.StringIO()
    configure_logging("DEBUG", "json", stream=out)
    log = logging.getLogger("server.ingest")
    log.info("two\nlines, %s and ünïcode", "args")
    try:
        raise ValueError("broken")
    except ValueError:
        log.exception("it failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "two\nlines, args and ünïcode"
    assert (first["level"], first["logger"]) == ("INFO", "server.ingest")
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR"
    assert "ValueError: broken" in second["exception"]


def test_configuring_twice_does_not_double_lines() -> None:
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    configure_logging("INFO", stream=out)
    logging.getLogger("x").warning("once")
    assert out.getvalue().count("once") == 1


def test_an_unknown_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="level"):
        configure_logging("LOUD")
    with pytest.raises(ValueError, match="format"):
        configure_logging("INFO", "xml")  # type: ignore[arg-type]


def test_the_kioskfleet_command_logs_json_lines_from_the_environment_setting(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "KIOSKFLEET_LOG_FORMAT": "json",
        "KIOSKFLEET_DATABASE_URL": f"sqlite:///{tmp_path}/kf.db",
    }
    done = subprocess.run(
        [sys.executable, "-m", "kioskfleet.cli", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert any("newest schema" in entry["message"] for entry in entries)
