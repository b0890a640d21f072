"""The real terminal agent: wire config, probes, clock, Agent, MQTT connection and loop, then run.

``run_agent(config_path)`` is what ``kioskfleet agent --config agent.toml``
calls: it runs until SIGINT or SIGTERM and then stops cleanly (retained
``offline``/``shutdown``). ``AgentRuntime`` is the same assembly as an object,
so tests can run a real agent in a thread, reach its connection and stop it.
The probes are read by a ``ProbeReader`` in a thread of their own: a device
that takes its whole timeout to answer never stalls the MQTT session.

Stream messages go through the durable outbox (``[outbox] path``): the
envelope's ``boot_id`` and the next ``seq`` come from it, so an agent restart
continues the same stream and re-sends what the broker never acknowledged.
If the outbox cannot be opened at all (unwritable disk), the agent logs an
error and runs with an in-memory outbox: a fresh random stream, not durable.

Nothing here decides what is reported; this module only builds and starts.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from agent.agent import Agent
from agent.clock import Clock, SystemClock
from agent.commands import route_commands
from agent.config import AgentConfig, AgentConfigError, load_agent_config
from agent.errors import AgentError
from agent.event_loop import EventLoop, LoopThread
from agent.mqtt_connection import ConnectionSettings, MqttConnection
from agent.outbox import Outbox, OutboxError
from agent.outbox_sender import OutboxSender, SenderSettings
from agent.probe_census import ProbePlace, log_census
from agent.probe_reader import ProbeReader
from agent.probes.base import Probe
from agent.probes.factory import build_probes, probe_device
from agent.probes.system import SystemReadError, read_uptime_s
from protocol.update_status import UpdateBody
from protocol.usage import UsageBody

if TYPE_CHECKING:  # imported where they are used: a terminal without them loads neither
    from agent.enrollment import Terminal  # cryptography
    from agent.update_service import UpdateService  # TUF, urllib3, cryptography

__all__ = ["AgentRuntime", "enrolling_terminal", "open_outbox", "run_agent", "sender_settings"]

log = logging.getLogger(__name__)

EXIT_OK = 0
_USAGE_WAIT_S = 5.0  # a kiosk transaction waits this long for the loop to store it
EXIT_SETUP = 1
EXIT_CONFIG = 2


def open_outbox(config: AgentConfig) -> Outbox:
    """The outbox ``config.outbox`` names; an in-memory one (logged as an error) if it cannot open."""
    spec = config.outbox
    try:
        return Outbox(
            spec.path,
            synchronous=spec.synchronous,
            max_messages=spec.max_messages,
            max_bytes=spec.max_bytes,
        )
    except OutboxError as exc:
        log.error(
            "%s; running with an in-memory outbox: nothing queued survives a restart, "
            "and the stream starts anew",
            exc,
        )
        return Outbox.in_memory(max_messages=spec.max_messages, max_bytes=spec.max_bytes)


def sender_settings(config: AgentConfig) -> SenderSettings:
    """The sender's limits from the agent's config."""
    spec = config.outbox
    return SenderSettings(
        max_inflight=config.limits.max_inflight_messages,
        drain_rate_per_s=spec.drain_rate_per_s,
        drain_burst=spec.drain_burst,
        drain_jitter_s=spec.drain_jitter_s,
        max_memory=config.limits.max_queued_messages,
        max_message_bytes=config.limits.max_message_bytes,
        require_commit_confirmation=spec.require_commit_confirmation,
        resend_grace_s=spec.resend_grace_s,
        confirm_timeout_s=spec.confirm_timeout_s,
    )


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
        outbox: Outbox | None = None,
        connection: MqttConnection | None = None,
    ) -> None:
        """``outbox`` defaults to the one ``config.outbox`` names (see ``open_outbox``);
        ``connection`` to an ``MqttConnection`` with the config's settings.

        Raises ValueError for bad probe specs, ConnectionSetupError for unusable
        TLS files, OutboxError if the outbox cannot be read, UpdateServiceError if updates
        are enabled and the trusted root is unreadable.
        """
        self.config = config
        self.connection = connection or MqttConnection(ConnectionSettings.from_config(config))
        self.outbox = outbox if outbox is not None else open_outbox(config)
        self.sender = OutboxSender(
            self.outbox, config.terminal_id, self.connection, sender_settings(config)
        )
        self.updates: UpdateService | None = None
        if config.updates.enabled:  # statuses go to the agent in the loop's thread
            from agent.update_service import UpdateService

            self.updates = UpdateService.from_config(
                config,
                send=self._send_update,
                clock=clock or SystemClock(),
                restart_agent=self._restart_for_new_agent,
                is_up=lambda: self.connection.connected,
                on_transaction=self._send_usage,
            )
        if config.updates.enabled or config.outbox.require_commit_confirmation:
            self.connection.receive_commands(
                route_commands(
                    self.sender.on_committed,
                    None if self.updates is None else self.updates.submit,
                    terminal_id=config.terminal_id,
                )
            )
        if probes is None:
            probes = build_probes(config.probes)
            self.probe_places = [
                ProbePlace(spec.name, probe.kind, spec.type, probe_device(spec))
                for spec, probe in zip(config.probes, probes, strict=True)
            ]
        else:
            self.probe_places = [
                ProbePlace(p.name, p.kind, type(p).__name__, "(given in code)") for p in probes
            ]
        self.probe_reader = ProbeReader(
            probes,
            config.probe_interval_s,
            on_change=lambda: self.loop.check_now(config.terminal_id),
        )
        self.agent = Agent(
            config,
            self.probe_reader.probes,
            self.sender,
            clock or SystemClock(),
            self.sender.boot_id,
            _Uptime(),
            last_seq=self.sender.last_seq,
            dropped_reports=self.sender.dropped_reports,
            software=self.updates.software if self.updates is not None else None,
        )
        self.loop = EventLoop(max_connecting=1, shutdown_timeout_s=config.limits.shutdown_timeout_s)
        self.loop.add(self.agent, self.connection, sender=self.sender)
        self._thread = LoopThread(self.loop, self.run, "kioskfleet-agent")

    def run(self, duration_s: float | None = None) -> None:
        """Run in this thread until ``stop``/``request_stop`` (or ``duration_s``), then stop cleanly."""
        stream = self.sender.stream
        log.info(
            "agent %s (version %s) reporting to %s every %.0f s; outbox %s, stream %s from seq %d, "
            "%d message(s) waiting",
            self.config.terminal_id,
            self.config.agent_version,
            ", ".join(b.url for b in self.config.brokers),
            self.config.report_interval_s,
            self.outbox.path,
            stream.boot_id,
            stream.last_seq + 1,
            stream.pending,
        )
        if self.updates is not None:
            self.updates.start()
        self.probe_reader.start()  # reads every probe once, here
        log_census(
            self.config.terminal_id,
            self.probe_places,
            {p.name: self.probe_reader.last_result(p.name) for p in self.probe_places},
        )
        try:
            self.loop.run(duration_s)
        finally:
            self.probe_reader.stop()
            if self.updates is not None:
                self.updates.stop()

    def _send_update(self, body: UpdateBody) -> None:
        """From the updater's worker: the agent sends it, in the loop's thread."""
        self.loop.call_soon(lambda: self.agent.send_update(body))

    def _send_usage(self, body: UsageBody) -> bool:
        """From a kiosk connection's thread: the agent sends it (``kf.usage``) in the loop's,
        and this waits (at most ``_USAGE_WAIT_S``) until it is in the outbox: the kiosk's
        ``ok`` then means the transaction survives a crash. False if it is not."""
        stored = threading.Event()
        result = [False]

        def send() -> None:
            result[0] = self.agent.send_usage(body)
            stored.set()

        self.loop.call_soon(send)
        return stored.wait(_USAGE_WAIT_S) and result[0]

    def _restart_for_new_agent(self) -> None:
        """After the agent staged a release of itself: stop cleanly, after the statuses
        already handed to the loop (the launcher then starts the new agent)."""
        log.info("a new agent release is staged; stopping for the launcher")
        self.loop.call_soon(self.loop.request_stop)

    def request_stop(self) -> None:
        """Ask the loop to stop cleanly (thread- and signal-safe)."""
        self.loop.request_stop()

    def start(self) -> None:
        """Run in a background thread."""
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop cleanly and wait for the background thread. Raises TimeoutError if it hangs.

        Waits up to ``limits.shutdown_timeout_s`` for the PUBACKs of what is in
        flight; unacknowledged rows stay in the outbox for the next start.
        """
        self._thread.stop(timeout)

    def abort(self, timeout: float = 15.0) -> None:
        """Stop as a crash would (no offline state, no DISCONNECT, no wait for PUBACKs).

        The outbox keeps whatever was not acknowledged. Raises TimeoutError if the loop hangs.
        """
        self._thread.abort(timeout)

    def close(self) -> None:
        """Close the outbox (after the loop ended)."""
        self.outbox.close()


def enrolling_terminal(config: AgentConfig) -> Terminal:
    """Who enrolls, and where the MQTT connection will read the key and certificate."""
    from agent.enrollment import Terminal

    if config.tls_key_file is None or config.tls_cert_file is None:
        raise ValueError("enrollment needs tls_key_file and tls_cert_file")
    return Terminal(config.terminal_id, config.tls_key_file, config.tls_cert_file)


def run_agent(config_path: Path | None) -> int:
    """Load the config, run the agent until SIGINT/SIGTERM, stop cleanly. Returns the exit code."""
    try:
        config = load_agent_config(config_path)
    except AgentConfigError as exc:
        print(f"kioskfleet agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    renewal = None
    if config.enrollment is not None:  # a certificate before the first connect
        from agent.enrollment import EnrollmentError, RenewalThread, ensure_certificate

        terminal = enrolling_terminal(config)
        try:
            ensure_certificate(terminal, config.enrollment)
        except EnrollmentError as exc:
            print(f"kioskfleet agent: cannot enroll: {exc}", file=sys.stderr)
            return EXIT_SETUP
        renewal = RenewalThread(terminal, config.enrollment)
    try:
        runtime = AgentRuntime(config)
    except (ValueError, AgentError) as exc:  # ConnectionSetupError, OutboxError, UpdateServiceError
        print(f"kioskfleet agent: cannot start: {exc}", file=sys.stderr)
        return EXIT_SETUP

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        runtime.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    if renewal is not None:
        renewal.start()
    try:
        runtime.run()
    finally:
        if renewal is not None:
            renewal.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        runtime.close()
    log.info("agent %s stopped", config.terminal_id)
    return EXIT_OK
