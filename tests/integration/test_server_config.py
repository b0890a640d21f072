"""Settings parsing, and the ``kioskfleet server --env-file`` process from start to SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from kioskfleet.local_broker import LocalBroker, free_port
from server.config import Settings
from server.main import run_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KIOSKFLEET_") and not name.startswith("KIOSKFLEET_TEST"):
            monkeypatch.delenv(name)


def test_defaults_are_loopback_sqlite_and_a_stable_client_id() -> None:
    s = Settings()
    assert s.database_url == "sqlite:///var/kioskfleet.db"
    assert (s.broker.host, s.broker.port, s.broker.tls) == ("127.0.0.1", 1883, False)
    assert (s.http_host, s.http_port) == ("127.0.0.1", 8080)
    assert s.mqtt_client_id.startswith("kioskfleet-server-")
    assert s.mqtt_client_id == Settings().mqtt_client_id
    assert (s.shared_subscription, s.max_payload_bytes, s.offline_after_missed_reports) == (
        False,
        65536,
        3,
    )


def test_postgresql_urls_are_rewritten_to_psycopg() -> None:
    assert (
        Settings(database_url="postgresql://u@db/kf").database_url == "postgresql+psycopg://u@db/kf"
    )
    assert (
        Settings(database_url="postgres://u@db/kf").database_url == "postgresql+psycopg://u@db/kf"
    )


def test_mqtts_defaults_to_port_8883() -> None:
    b = Settings(broker_url="mqtts://broker.example").broker
    assert (b.host, b.port, b.tls) == ("broker.example", 8883, True)


@pytest.mark.parametrize(
    "values",
    [
        {"broker_url": "http://x:1883"},
        {"broker_url": "mqtt://"},
        {"broker_url": "mqtt://x:99999"},
        {"database_url": "kioskfleet.db"},
        {"broker_cert_file": "/nonexistent/cert.pem", "broker_key_file": "/nonexistent/k.pem"},
        {"broker_cert_file": "/etc/hostname"},
        {"offline_after_missed_reports": 0},
        {"api_page_limit_default": 500, "api_page_limit_max": 100},
    ],
)
def test_unworkable_settings_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(**values)


def test_env_file_and_environment_both_feed_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / "server.env"
    env.write_text("KIOSKFLEET_HTTP_PORT=9999\nKIOSKFLEET_SHARED_SUBSCRIPTION=true\n")
    monkeypatch.setenv("KIOSKFLEET_OFFLINE_AFTER_MISSED_REPORTS", "5")
    s = Settings.from_env(env)
    assert (s.http_port, s.shared_subscription, s.offline_after_missed_reports) == (9999, True, 5)


def test_run_server_refuses_a_missing_env_file_or_bad_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_server(tmp_path / "missing.env") == 2
    bad = tmp_path / "bad.env"
    bad.write_text("KIOSKFLEET_BROKER_URL=ftp://nope\n")
    assert run_server(bad) == 2


def test_run_server_refuses_a_misspelt_setting_and_says_which_was_meant(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    typo = tmp_path / "typo.env"
    typo.write_text("KIOSKFLEET_DB_FLUSH_INTERVAL=5\n")
    assert run_server(typo) == 2
    assert "did you mean KIOSKFLEET_DB_FLUSH_INTERVAL_S?" in caplog.text


def test_cli_server_serves_until_sigterm_and_exits_cleanly(
    broker: LocalBroker, tmp_path: Path
) -> None:
    port = free_port()
    env_file = tmp_path / "server.env"
    env_file.write_text(
        f"KIOSKFLEET_BROKER_URL={broker.url}\n"
        f"KIOSKFLEET_HTTP_PORT={port}\n"
        f"KIOSKFLEET_DATABASE_URL=sqlite:///{tmp_path}/kf.db\n"
        "KIOSKFLEET_MQTT_CLIENT_ID=kf-cli-test\n"
        "KIOSKFLEET_MQTT_SESSION_EXPIRY_S=0\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "kioskfleet.cli", "server", "--env-file", str(env_file)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out.decode()
        assert b"received SIGTERM" in out
        assert (tmp_path / "kf.db").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
