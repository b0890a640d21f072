"""``kioskfleet server`` as a subprocess that a test or a benchmark can SIGKILL, SIGTERM and
start again (the fault tests, ``bench/soak.py``).

Settings go in as ``KIOSKFLEET_*`` environment variables (the first start's
bootstrap admin token is written to ``<workdir>/admin.token`` and sent by
``get``); the same object
restarts the server with the same settings (the same MQTT client id, hence the
same persistent session at the broker, and the same database). Its log goes to
``<workdir>/server-<n>.log``, one file per start, quoted in failure messages.
It never touches a server it did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kioskfleet.local_broker import free_port

__all__ = ["KIOSKFLEET", "ServerProcess", "ServerProcessError"]

KIOSKFLEET = str(Path(sys.executable).parent / "kioskfleet")


class ServerProcessError(RuntimeError):
    """The server subprocess exited or did not become ready; carries the log's tail."""


class ServerProcess:
    """One server's settings and its current process (``start``, ``kill``, ``terminate``)."""

    def __init__(self, workdir: Path, **settings: Any) -> None:
        """``settings``: Settings field names (``database_url``, ``broker_url``, ...)."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.settings = {
            "http_host": "127.0.0.1",
            "http_port": self.port,
            "mqtt_keepalive_s": 5,
            "mqtt_reconnect_min_s": 1,
            "mqtt_reconnect_max_s": 1,
            "db_flush_interval_s": 0.1,
            "offline_check_interval_s": 0.5,
            "reject_log_interval_s": 10,
            # the first start writes its bootstrap admin token here; ``get`` sends it
            "bootstrap_token_file": workdir / "admin.token",
            **settings,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = workdir / "server-0.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database_url(self) -> str:
        return str(self.settings["database_url"])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, ready_timeout: float = 120.0, wait_ready: bool = True) -> ServerProcess:
        """Start the process; wait for ``/readyz`` 200 (or only ``/healthz`` if not ``wait_ready``).

        Raises ServerProcessError if it exits or does not answer in time.
        """
        if self.running:
            raise ServerProcessError("the server is already running")
        env = {**os.environ}
        env.update(
            {f"KIOSKFLEET_{key.upper()}": str(value) for key, value in self.settings.items()}
        )
        self.starts += 1
        self.log_path = self.workdir / f"server-{self.starts}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own executable, fixed arguments
                [KIOSKFLEET, "--log-level", "WARNING", "server"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        path = "/readyz" if wait_ready else "/healthz"
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerProcessError(
                    f"the server exited with {self.proc.returncode}: {self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + path, timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise ServerProcessError(f"the server did not answer {path} in time: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: nothing is flushed, nothing acknowledged afterwards."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``). Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        return code

    def get(self, path: str, **params: Any) -> httpx.Response:
        """GET with the admin token the server's first start made (``bootstrap_token_file``)."""
        token = Path(self.settings["bootstrap_token_file"]).read_text(encoding="utf-8").strip()
        return httpx.get(
            self.base_url + path,
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )

    def metric(self, name: str, **labels: str) -> float:
        """One sample from ``/metrics`` (0 if absent)."""
        text = self.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"
