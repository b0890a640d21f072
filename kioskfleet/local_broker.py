"""Start a private mosquitto with the project's own config (tests, benchmarks, demo).

Runs ``mosquitto -c <generated.conf>`` where the generated file is
``broker/mosquitto.conf`` plus a loopback listener on the chosen port. It never
touches the system broker's configuration.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["BrokerError", "LocalBroker", "free_port", "project_broker_conf"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class BrokerError(RuntimeError):
    """mosquitto is missing or did not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def project_broker_conf() -> Path:
    return PROJECT_ROOT / "broker" / "mosquitto.conf"


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class LocalBroker:
    """A mosquitto process on 127.0.0.1:``port`` that can be stopped, killed and restarted."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra_conf: str = "",
        overrides: dict[str, str] | None = None,
    ) -> None:
        """``overrides`` replaces options of the project config (e.g. a queue limit for a benchmark)."""
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.overrides = overrides or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_conf(self) -> Path:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        project = [
            line
            for line in project_broker_conf().read_text().splitlines()
            if line.split(" ", 1)[0] not in self.overrides
        ]
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + "\n".join(project)
            + "".join(f"\n{key} {value}" for key, value in self.overrides.items())
            + "\n# added for this process\n"
            + f"persistence_location {self.workdir}/\n"
            + f"log_dest file {self.log_path}\n"
            + "log_type error\nlog_type warning\nlog_type notice\n"
            # As root, mosquitto drops to the `mosquitto` user, which cannot write
            # into a private (0700) work directory; keep it as the invoking user.
            + ("user root\n" if os.geteuid() == 0 else "")
            + self.extra_conf
        )
        return conf

    def start(self, timeout: float = 10.0) -> LocalBroker:
        """Start mosquitto and wait until it accepts connections.

        Raises BrokerError if it exits or does not listen within ``timeout``.
        """
        conf = self._write_conf()
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(  # noqa: S603 - fixed binary, generated config
            [binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise BrokerError(f"mosquitto exited with {self.proc.returncode}: {err.strip()}")
            if _port_open(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        """Terminate (SIGTERM, then SIGKILL after 5 s) and wait."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without sending wills or closing sessions."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stop()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
