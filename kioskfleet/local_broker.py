"""Start a private mosquitto with the project's own config (tests, benchmarks, demo).

Runs ``mosquitto -c <generated.conf>`` where the generated file is
``broker/mosquitto.conf`` plus a loopback listener on the chosen port and a
persistence directory of its own (``workdir``). It never touches the system
broker's configuration or its database.

Besides start and stop, ``LocalBroker`` can inflict the faults the reliability
tests need, always on the same port and the same persistence directory, so
clients reconnect to the "same" broker:

- ``terminate()``: SIGTERM; mosquitto writes its in-memory database (sessions,
  subscriptions, queued and retained messages) before it exits;
- ``kill()``: SIGKILL; what changed since the last autosave is lost;
- ``restart(graceful=True)``: terminate (or kill) and start again;
- ``pause()`` / ``resume()``: SIGSTOP / SIGCONT, a frozen broker: TCP
  connections stay open and new ones are even accepted by the kernel, but
  nothing is read or answered (no CONNACK, no PUBACK).

Two modes, one project config. Plain (the default): an anonymous loopback
listener. Identity (``identity=BrokerIdentity(...)``): the listener
``kioskfleet broker-config`` generates (TLS, client certificates, CRL, the ACL,
``kioskfleet/broker_config.py``), so tests run against what a deployment runs;
``reload()`` (SIGHUP) makes it re-read the CRL after a revocation.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Final

from kioskfleet.broker_config import BrokerIdentity, write_broker_config
from kioskfleet.shipped_files import shipped_file

__all__ = ["LocalBroker", "LocalBrokerError", "free_port", "project_broker_conf"]


_TERMINATE_TIMEOUT_S = 30.0  # a large queue takes a while to save on SIGTERM


class LocalBrokerError(RuntimeError):
    """mosquitto is missing, did not start, or is not running when a fault needs it."""


# Below Linux's ephemeral range (32768-60999 by default): a port the kernel hands out for
# bind(0) is also one it may give an outgoing connection before our child binds it, which
# happened under the parallel test suite (a nats-server route port "already in use").
_QUIET_PORTS: Final = range(20000, 32768)
_random = random.SystemRandom()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, outside the ephemeral range when
    one of a few random picks there is free (else the kernel's choice)."""
    for _ in range(50):
        port = _random.choice(_QUIET_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def project_broker_conf() -> Path:
    """``broker/mosquitto.conf``, from the checkout or the installed package."""
    return shipped_file("mosquitto.conf")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _binary() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise LocalBrokerError("mosquitto is not installed (apt-get install mosquitto)")
    return binary


class LocalBroker:
    """A mosquitto process on 127.0.0.1:``port`` that can be stopped, killed, frozen and restarted.

    The port and the persistence directory (``workdir``) stay the same for the
    object's lifetime: a restart brings back what mosquitto had saved there.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra_conf: str = "",
        overrides: dict[str, str] | None = None,
        identity: BrokerIdentity | None = None,
        own_process_group: bool = False,
    ) -> None:
        """``overrides`` replaces options of the project config (e.g. a queue limit for a benchmark);
        ``identity`` switches to the generated TLS listener and ACL. ``own_process_group``
        keeps a terminal's Ctrl-C (sent to the whole foreground group) from reaching
        mosquitto: the demo still needs it to clean up after Ctrl-C, then stops it."""
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.overrides = overrides or {}
        self.identity = identity
        self.own_process_group = own_process_group
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"
        self.paused = False

    @property
    def url(self) -> str:
        scheme = "mqtt" if self.identity is None else "mqtts"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def persistence_file(self) -> Path:
        """Where mosquitto saves its database (``persistence_location`` + ``mosquitto.db``)."""
        return self.workdir / "mosquitto.db"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The mosquitto process id. Raises LocalBrokerError if it is not running."""
        if self.proc is None or self.proc.poll() is not None:
            raise LocalBrokerError("mosquitto is not running")
        return self.proc.pid

    def _write_conf(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        project = [
            line
            for line in project_broker_conf().read_text().splitlines()
            if line.split(" ", 1)[0] not in self.overrides
        ]
        base = "\n".join(project) + "".join(
            f"\n{key} {value}" for key, value in self.overrides.items()
        )
        harness = (
            "\n# added for this process\n"
            + f"persistence_location {self.workdir}/\n"
            + f"log_dest file {self.log_path}\n"
            + "log_type error\nlog_type warning\nlog_type notice\n"
            # As root, mosquitto drops to the `mosquitto` user, which cannot write
            # into a private (0700) work directory; keep it as the invoking user.
            + ("user root\n" if os.geteuid() == 0 else "")
            + self.extra_conf
        )
        if self.identity is not None:
            conf, _acl = write_broker_config(
                self.workdir,
                base_conf=base,
                port=self.port,
                host="127.0.0.1",
                identity=self.identity,
                extra=harness,
            )
            return conf
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\n" + base + harness)
        return conf

    def start(self, timeout: float = 10.0) -> LocalBroker:
        """Start mosquitto (loading its saved database, if any) and wait until it accepts connections.

        Raises LocalBrokerError if it is already running, exits, or does not listen within ``timeout``.
        """
        if self.running:
            raise LocalBrokerError("mosquitto is already running")
        conf = self._write_conf()
        self.proc = subprocess.Popen(  # noqa: S603 - fixed binary, generated config
            [_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            process_group=0 if self.own_process_group else None,
        )
        self.paused = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.proc = None
                raise LocalBrokerError(f"mosquitto exited: {err.strip()}")
            if _port_open(self.port):
                return self
            time.sleep(0.02)
        self.kill()
        raise LocalBrokerError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def terminate(self, timeout: float = _TERMINATE_TIMEOUT_S) -> None:
        """SIGTERM and wait: mosquitto saves its database, then exits. SIGKILL after ``timeout``.

        A paused broker is resumed first (a stopped process cannot act on SIGTERM).
        """
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if self.paused:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reap()

    def stop(self) -> None:
        """Stop for good at the end of a test or demo (the same as ``terminate``)."""
        self.terminate()

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without saving, sending wills or closing sessions.

        The persistence directory is kept; a later ``start`` loads the last autosave.
        """
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # works on a stopped (paused) process too
            self.proc.wait()
        self._reap()

    def restart(self, *, graceful: bool = True, down_s: float = 0.0) -> LocalBroker:
        """Terminate (``graceful``) or kill the broker, wait ``down_s``, start it on the same port.

        Raises LocalBrokerError if it does not come back.
        """
        if graceful:
            self.terminate()
        else:
            self.kill()
        if down_s > 0:
            time.sleep(down_s)
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: freeze the broker. Raises LocalBrokerError if it is not running."""
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT: let a paused broker run again. Raises LocalBrokerError if it is not running."""
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its configuration, the CRL and the ACL file.

        Open connections stay open, a revoked certificate's included (docs/security.md).
        Raises LocalBrokerError if it is not running.
        """
        os.kill(self.pid, signal.SIGHUP)

    def saved_at(self) -> float | None:
        """Modification time of the persistence file (``None`` before the first save).

        mosquitto writes ``mosquitto.db.new`` and renames it, so each save moves this.
        """
        try:
            return self.persistence_file.stat().st_mtime
        except FileNotFoundError:
            return None

    def wait_saved(self, after: float, timeout: float = 30.0) -> float:
        """Wait until the database was saved later than ``after`` (an mtime, e.g. ``time.time()``).

        Returns the new mtime. Raises LocalBrokerError after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            saved = self.saved_at()
            if saved is not None and saved > after:
                return saved
            time.sleep(0.05)
        raise LocalBrokerError(f"mosquitto did not save its database within {timeout}s")

    def _reap(self) -> None:
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        self.paused = False

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
