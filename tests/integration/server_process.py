"""A real ``kioskfleet server`` subprocess for tests that stop, kill or multiply it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from kioskfleet.local_broker import LocalBroker, free_port
from tests.integration.conftest import admin_token_in, bearer, unique
from tests.support.waiting import wait_until

__all__ = ["ServerProcess"]


class ServerProcess:
    """``kioskfleet server`` on its own port, configured by environment (``env`` adds or
    overrides), logging to ``tmp_path/<name>.log``; ``start`` returns once it is ready."""

    def __init__(
        self,
        broker: LocalBroker,
        tmp_path: Path,
        database_url: str,
        *,
        name: str = "server",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.token = admin_token_in(database_url)
        self.env = {
            **os.environ,
            "KIOSKFLEET_DATABASE_URL": database_url,
            "KIOSKFLEET_BROKER_URL": broker.url,
            "KIOSKFLEET_HTTP_PORT": str(self.port),
            "KIOSKFLEET_MQTT_CLIENT_ID": unique("kf-shutdown-test"),
            "KIOSKFLEET_MQTT_SESSION_EXPIRY_S": "3600",
            "KIOSKFLEET_DB_FLUSH_INTERVAL_S": "0.3",
            "KIOSKFLEET_OFFLINE_CHECK_INTERVAL_S": "0.5",
            **(env or {}),
        }
        self.log = tmp_path / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.log.exists():  # a restart: the old port may since be a client's local port
            self.port = free_port()
            self.env["KIOSKFLEET_HTTP_PORT"] = str(self.port)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kioskfleet.cli", "server"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._ready, 120, "the server process to be ready")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: signal.Signals) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(60)
        self.proc = None
        return code

    def get(self, path: str, **params: Any) -> Any:
        headers = bearer(self.token)
        return httpx.get(self.base + path, params=params, headers=headers, timeout=5).json()

    def metrics(self) -> str:
        """The exposition text of ``/metrics``."""
        headers = bearer(self.token)
        return httpx.get(self.base + "/metrics", headers=headers, timeout=5).text

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
