"""The real terminal agent: wire config, probes, clock, Agent, MQTT connection and loop, then run.

``run_agent(config_path)`` is what ``kioskfleet agent --config agent.toml``
calls: it runs until SIGINT or SIGTERM and then stops cleanly (retained
``offline``/``shutdown``). ``AgentRuntime`` is the same assembly as an object,
so tests can run a real agent in a thread, reach its connection and stop it.
The probes are read by a ``ProbeReader`` in a thread of their own: a device
that takes its whole timeout to answer never stalls the MQTT session.

The envelope's ``boot_id`` is the kernel's boot id plus a random suffix drawn
at every agent start: ``seq`` restarts at 1 whenever the agent process
restarts, so the id must change with it or the server would take the new
messages for duplicates of the old ones.

Nothing here decides what is reported; this module only builds and starts.
"""

from __future__ import annotations

import logging
import secrets
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from agent.agent import Agent
from agent.clock import Clock, SystemClock
from agent.config import AgentConfig, AgentConfigError, load_agent_config
from agent.event_loop import EventLoop
from agent.mqtt_connection import ConnectionSettings, ConnectionSetupError, MqttConnection
from agent.probe_reader import ProbeReader
from agent.probes.base import Probe
from agent.probes.factory import build_probes
from agent.probes.system import SystemReadError, read_boot_id, read_uptime_s

__all__ = ["AgentRuntime", "agent_boot_id", "run_agent"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_SETUP = 1
EXIT_CONFIG = 2


def agent_boot_id() -> str:
    """The kernel's boot id (a random UUID if unreadable) plus a per-start random suffix."""
    try:
        kernel = read_boot_id()
    except SystemReadError as exc:
        log.warning("no kernel boot id (%s); using a random one", exc)
        kernel = secrets.token_hex(16)
    return f"{kernel[:55]}-{secrets.token_hex(4)}"


class _Uptime:
    """Seconds since the terminal booted; since the agent started if /proc is unreadable."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._warned = False

    def __call__(self) -> float:
        try:
            return read_uptime_s()
        except SystemReadError as exc:
            if not self._warned:
                log.warning("uptime unavailable (%s); reporting agent uptime", exc)
                self._warned = True
            return time.monotonic() - self._started


class AgentRuntime:
    """One real agent, assembled from its config; ``run`` blocks, ``start``/``stop`` use a thread."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        probes: Sequence[Probe] | None = None,
        clock: Clock | None = None,
        boot_id: str | None = None,
    ) -> None:
        """Raises ValueError for bad probe specs or boot id, ConnectionSetupError for unusable TLS files."""
        self.config = config
        self.connection = MqttConnection(ConnectionSettings.from_config(config))
        self.probe_reader = ProbeReader(
            build_probes(config.probes) if probes is None else probes,
            config.probe_interval_s,
            on_change=lambda: self.loop.check_now(config.terminal_id),
        )
        self.agent = Agent(
            config,
            self.probe_reader.probes,
            self.connection,
            clock or SystemClock(),
            boot_id or agent_boot_id(),
            _Uptime(),
        )
        self.loop = EventLoop(max_connecting=1, shutdown_timeout_s=config.limits.shutdown_timeout_s)
        self.loop.add(self.agent, self.connection)
        self._thread: threading.Thread | None = None

    def run(self, duration_s: float | None = None) -> None:
        """Run in this thread until ``stop``/``request_stop`` (or ``duration_s``), then stop cleanly."""
        log.info(
            "agent %s (version %s) reporting to %s every %.0f s",
            self.config.terminal_id,
            self.config.agent_version,
            self.config.broker_url,
            self.config.report_interval_s,
        )
        self.probe_reader.start()
        try:
            self.loop.run(duration_s)
        finally:
            self.probe_reader.stop()

    def request_stop(self) -> None:
        """Ask the loop to stop cleanly (thread- and signal-safe)."""
        self.loop.request_stop()

    def start(self) -> None:
        """Run in a background thread."""
        self._thread = threading.Thread(target=self.run, name="kioskfleet-agent", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop cleanly and wait for the background thread. Raises TimeoutError if it hangs."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError("the agent loop did not stop in time")


def run_agent(config_path: Path | None) -> int:
    """Load the config, run the agent until SIGINT/SIGTERM, stop cleanly. Returns the exit code."""
    try:
        config = load_agent_config(config_path)
    except AgentConfigError as exc:
        print(f"kioskfleet agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        runtime = AgentRuntime(config)
    except (ValueError, ConnectionSetupError) as exc:
        print(f"kioskfleet agent: cannot start: {exc}", file=sys.stderr)
        return EXIT_SETUP

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        runtime.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        runtime.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("agent %s stopped", config.terminal_id)
    return EXIT_OK
