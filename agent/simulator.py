"""A fleet simulator: N virtual terminals, each the real ``Agent`` with scenario probes and its own MQTT session.

All terminals of one process share one ``EventLoop`` (selectors, no thread per
terminal); ``processes > 1`` spreads slices of the ids over processes started
with the ``spawn`` method. Terminal ``i`` (1-based) is ``{prefix}-{i:05d}`` in
hall ``hall-{h:02d}`` (round-robin over ``halls``), whose region is
``region-{r}`` (halls round-robin over ``regions``); terminals take the
models of ``agent.probes.simulated.MODELS`` in turn (odd ones ``KF-200``, even
ones ``KF-300``), each with that model's scenario probes. Scenario probes are seeded from ``seed`` and the id, so
a run's incidents are reproducible.

Every terminal's stream messages go through one durable outbox file per
process (``outbox_path``; by default a new file in a temporary directory;
with ``processes > 1`` worker ``n`` uses ``<path>.<n>``), with SQLite
``synchronous=normal`` (survives a killed process, not a power loss).
Restarting a simulation on the same file with the same ids continues each
terminal's stream (same ``boot_id``, next ``seq``) and re-sends what the
broker never acknowledged.

``Simulation`` is the in-process handle used by tests and benchmarks: start it
in a background thread, force a terminal's peripheral into a condition, read
counters, stop it cleanly. ``run_simulation`` is the ``kioskfleet simulate``
command.

With ``enroll_url`` every terminal has its own key and client certificate in
``identity_dir`` (``<id>.key``, ``<id>.pem``), obtained through the agent's own
EST code (``agent.enrollment.enroll_many``) before the first connect, and
connects to an ``mqtts://`` broker with it. ``write_identities`` (``kioskfleet
simulate --keys-only``) makes the keys and ``preauthorize.csv`` for
``kioskfleet terminal preauthorize --from-file``.

With ``updates_server_url`` (off by default) every terminal also runs the real
update path (``agent.update_service.UpdateService``: python-tuf against that
server's repository, directive verification, the ``bundle`` handler into its own
slots under ``work_dir``) and reports what its active slot holds; a planted
fraction of them fails its health check (agent/simulated_updates.py).

This module never decides what a terminal reports (the Agent does) and never
talks MQTT itself (the connections do).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import random
import resource
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from agent.agent import Agent
from agent.clock import Clock, OffsetClock, SystemClock
from agent.commands import route_commands
from agent.config import AgentConfig, EnrollmentConfig, UpdatesConfig, parse_broker_url
from agent.demand import Transaction, demand_plan, generate, monday_of
from agent.enrollment import Terminal, enroll_many, load_or_create_key, public_key_pem
from agent.event_loop import EventLoop, LoopThread
from agent.mqtt_connection import ConnectionSettings, MqttConnection
from agent.outbox import Outbox, OutboxStats
from agent.outbox_sender import OutboxSender, SenderSettings
from agent.planted_faults import PlantedFault, PlantedOutage
from agent.probes.simulated import (
    MODELS,
    Scenario,
    ScenarioPrinter,
    ScenarioProbe,
    build_scenario_probe,
)
from agent.simulated_updates import (
    MAX_UPDATING_TERMINALS,
    terminal_paths,
    terminal_updates_config,
    wrapper_for,
)
from agent.update_service import UpdateService
from protocol.messages import PeripheralCondition
from protocol.topics import is_valid_terminal_id
from protocol.usage import FailureCause, Outcome, UsageBody

__all__ = [
    "MODELS",
    "Simulation",
    "SimulationCounters",
    "SimulationOptions",
    "SimulationTuning",
    "TerminalProfile",
    "raise_open_file_limit",
    "run_simulation",
    "terminal_profiles",
    "write_identities",
]

log = logging.getLogger(__name__)

_MODEL_NAMES = tuple(MODELS)
_FD_HEADROOM = 512
_PROGRESS_EVERY_S = 10.0
MAX_CLOCK_OFFSET_S = 100 * 365 * 86400.0  # an agent refuses a wall clock outside 2000..2200


@dataclass(frozen=True)
class SimulationOptions:
    """What ``kioskfleet simulate`` passes (see kioskfleet/cli.py)."""

    terminals: int = 50
    broker_url: str = "mqtt://127.0.0.1:1883"
    # Failover (the agent's broker_urls): when given, the terminals rotate over these
    # instead, each from its own offset; broker_url is then not used.
    broker_urls: tuple[str, ...] = ()
    halls: int = 3
    regions: int = 1
    seed: int = 1
    report_interval_s: float = 60.0
    fault_rate: float = 1.0
    duration_s: float | None = None
    processes: int = 1
    id_prefix: str = "SIM"
    outbox_path: Path | None = None  # None: a new file in a temporary directory
    # Keep messages until the server's kf.committed (off: PUBACK semantics, for a broker
    # with no server behind it).
    commit_confirmation: bool = True
    enroll_url: str | None = None  # EST base URL: enroll every terminal, then connect with TLS
    ca_file: Path | None = None  # the fleet CA chain (EST server and broker)
    identity_dir: Path | None = None  # keys and certificates, <id>.key / <id>.pem
    enroll_concurrency: int = 8
    updates_server_url: str | None = None  # the server's base URL: terminals take updates
    trusted_root: Path | None = None  # the operator's root.json the terminals ship with
    update_failure_fraction: float = (
        0.0  # planted health-check failures, agent/simulated_updates.py
    )
    work_dir: Path | None = None  # the terminals' update files and slots; None: a temporary one
    planted_faults: tuple[PlantedFault, ...] = ()  # held for the whole run (planted_faults.py)
    planted_outages: tuple[PlantedOutage, ...] = ()  # connections cut for good
    session_expiry_s: int | None = None  # None: the agent's default (a persistent session)
    # Citizen transactions from the seeded demand (agent/demand.py): opening hours, lunch
    # dip, Monday peak, a service mix per hall, an idle terminal and an overloaded hall.
    demand: bool = False
    # The terminals' wall clock runs this many seconds ahead of the real one (negative:
    # behind), at real speed: every sent_at and the demand's "now" (``--start-at``), so a
    # test or a demo can play the demand of an opening hour at any time of day.
    clock_offset_s: float = 0.0

    def check(self) -> None:
        """Raises ValueError naming the first option that cannot work."""
        if self.terminals < 1:
            raise ValueError("terminals must be at least 1")
        if self.halls < 1 or self.regions < 1:
            raise ValueError("halls and regions must be at least 1")
        if not 0 < self.report_interval_s <= 86400:
            raise ValueError("report_interval_s must be in (0, 86400]")
        if self.fault_rate <= 0:
            raise ValueError("fault_rate must be positive")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration_s must be positive")
        if abs(self.clock_offset_s) > MAX_CLOCK_OFFSET_S:
            raise ValueError("clock_offset_s must be within 100 years of the real clock")
        if not 1 <= self.processes <= self.terminals:
            raise ValueError("processes must be between 1 and terminals")
        if not is_valid_terminal_id(f"{self.id_prefix}-{self.terminals:05d}"):
            raise ValueError(f"id_prefix {self.id_prefix!r} does not make valid terminal ids")
        broker = parse_broker_url((self.broker_urls or (self.broker_url,))[0])
        if self.enroll_url is not None and (
            self.ca_file is None or self.identity_dir is None or not broker.tls
        ):
            raise ValueError("enroll_url needs ca_file, identity_dir and an mqtts:// broker")
        if not 0 <= self.update_failure_fraction <= 1:
            raise ValueError("update_failure_fraction must be in [0, 1]")
        if self.updates_server_url is not None:
            if self.trusted_root is None:
                raise ValueError("updates_server_url needs trusted_root")
            if -(-self.terminals // self.processes) > MAX_UPDATING_TERMINALS:
                raise ValueError(
                    f"with updates, at most {MAX_UPDATING_TERMINALS} terminals per process "
                    "(two threads and a socket each): raise processes"
                )


@dataclass(frozen=True)
class SimulationTuning:
    """Knobs beyond the CLI's options, for tests and benchmarks (the CLI sets ``drain_jitter_s``)."""

    probe_interval_s: float | None = None  # default: min(5, report_interval_s / 2)
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    max_connecting: int = 64
    spread_reports: bool = True  # first periodic report at a random offset
    shutdown_timeout_s: float = 10.0
    max_queued_messages: int = 1000
    max_inflight_messages: int = 20
    outbox_synchronous: Literal["full", "normal"] = "normal"
    outbox_max_messages: int = 10_000
    outbox_max_bytes: int = 16 * 2**20
    drain_rate_per_s: float = 20.0
    drain_burst: int = 50
    drain_jitter_s: float = 10.0
    resend_grace_s: float = 1.0
    mqtt_protocol: Literal["5", "3.1.1"] = "5"  # "3.1.1" for nats-server


@dataclass(frozen=True, slots=True)
class TerminalProfile:
    terminal_id: str
    hall: str
    region: str
    model: str
    index: int = 0  # the N of PREFIX-0000N


def terminal_profiles(
    opts: SimulationOptions, indices: range | None = None
) -> list[TerminalProfile]:
    """The identities of terminals ``indices`` (1-based; default all of them)."""
    result = []
    for i in indices if indices is not None else range(1, opts.terminals + 1):
        hall = (i - 1) % opts.halls + 1
        region = (hall - 1) % opts.regions + 1
        result.append(
            TerminalProfile(
                terminal_id=f"{opts.id_prefix}-{i:05d}",
                hall=f"hall-{hall:02d}",
                region=f"region-{region}",
                model=_MODEL_NAMES[(i + 1) % 2],
                index=i,
            )
        )
    return result


@dataclass
class SimulationCounters:
    """Totals over the simulated terminals."""

    terminals: int = 0
    connected: int = 0  # sessions up right now
    connects: int = 0  # CONNACK successes so far
    connect_failures: int = 0
    losses: int = 0
    switches: int = 0  # attempts that went to another broker than the one before
    published: int = 0  # messages handed to MQTT (stream and state)
    acked: int = 0  # PUBACKs received (stream and state)
    dropped: int = 0  # messages the agents could not send (unbuildable, refused)
    reports: int = 0
    events: int = 0
    handed: int = 0  # stream messages the outbox senders handed to MQTT
    stream_acked: int = 0  # PUBACKs for them (their rows removed)
    refused: int = 0  # PUBACKs with a failure code
    outbox_errors: int = 0  # messages the outbox could not store
    backlog: int = 0  # stream messages waiting in the outbox, not handed yet
    confirmed: int = 0  # rows removed by a kf.committed
    unconfirmed: int = 0  # rows handed, waiting for their kf.committed
    refilled: int = 0  # rows handed again (listed missing, or their confirmation timed out)
    confirm_timeouts: int = 0  # times a sender's kf.committed did not come in time
    dropped_reports: int = 0  # reports the outbox dropped for its quota (this run)

    def __add__(self, other: SimulationCounters) -> SimulationCounters:
        return SimulationCounters(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


def raise_open_file_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to ``needed`` (up to the hard limit). Returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed:
        log.warning(
            "open-file limit is %d, %d wanted: some terminals will fail to connect", soft, needed
        )
    return soft


class Simulation:
    """Terminals ``indices`` of ``opts`` in one process and one event loop."""

    def __init__(
        self,
        opts: SimulationOptions,
        *,
        tuning: SimulationTuning | None = None,
        indices: range | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Raises ValueError for options that cannot work."""
        opts.check()
        self.opts = opts
        self.tuning = tuning = tuning or SimulationTuning()
        if clock is None:
            clock = SystemClock()
            if opts.clock_offset_s:
                clock = OffsetClock(clock, opts.clock_offset_s)
        self._clock = clock
        self._profiles = terminal_profiles(opts, indices)
        per_terminal = 2 if opts.updates_server_url is not None else 1  # + the kiosk socket
        raise_open_file_limit(per_terminal * len(self._profiles) + _FD_HEADROOM)
        self.loop = EventLoop(
            max_connecting=tuning.max_connecting, shutdown_timeout_s=tuning.shutdown_timeout_s
        )
        self._probes: dict[str, dict[str, ScenarioProbe]] = {}
        self._agents: list[Agent] = []
        self._connections: list[MqttConnection] = []
        self._senders: dict[str, OutboxSender] = {}
        self._updates: dict[str, UpdateService] = {}
        self._by_id: dict[str, Agent] = {}
        self._connection_by_id: dict[str, MqttConnection] = {}
        self._socket_dir: Path | None = None
        self.work_dir: Path | None = None
        self._dropped_at_start = 0
        self._thread = LoopThread(self.loop, self.run, "kioskfleet-simulation")
        if opts.outbox_path is None:
            self.outbox_path = Path(tempfile.mkdtemp(prefix="kioskfleet-sim-")) / "outbox.sqlite"
        else:
            self.outbox_path = opts.outbox_path
        self.outbox = Outbox(
            self.outbox_path,
            synchronous=tuning.outbox_synchronous,
            max_messages=tuning.outbox_max_messages,
            max_bytes=tuning.outbox_max_bytes,
        )
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        opts, tuning = self.opts, self.tuning
        probe_interval = tuning.probe_interval_s or min(5.0, opts.report_interval_s / 2)
        first = self._profiles[0]
        template = AgentConfig.model_validate(
            {
                "terminal_id": first.terminal_id,
                "hall": first.hall,
                "region": first.region,
                "model": first.model,
                **(
                    {"broker_urls": list(opts.broker_urls)}
                    if opts.broker_urls
                    else {"broker_url": opts.broker_url}
                ),
                "report_interval_s": opts.report_interval_s,
                "probe_interval_s": probe_interval,
                "keepalive_s": tuning.keepalive_s,
                "reconnect_min_s": tuning.reconnect_min_s,
                "reconnect_max_s": tuning.reconnect_max_s,
                "mqtt_protocol": tuning.mqtt_protocol,
                **(
                    {"session_expiry_s": opts.session_expiry_s}
                    if opts.session_expiry_s is not None
                    else {}
                ),
                "limits": {
                    "max_queued_messages": tuning.max_queued_messages,
                    "max_inflight_messages": tuning.max_inflight_messages,
                },
            }
        )
        base_settings = replace(
            ConnectionSettings.from_config(template, quiet=True), tls_ca_file=opts.ca_file
        )
        identities = self._enroll()
        sender_settings = SenderSettings(
            max_inflight=tuning.max_inflight_messages,
            drain_rate_per_s=tuning.drain_rate_per_s,
            drain_burst=tuning.drain_burst,
            drain_jitter_s=tuning.drain_jitter_s,
            max_memory=tuning.max_queued_messages,
            require_commit_confirmation=opts.commit_confirmation,
            resend_grace_s=tuning.resend_grace_s,
        )
        monotonic = self._clock.monotonic
        started = monotonic()
        for profile in self._profiles:
            tid = profile.terminal_id
            rng = random.Random(f"{opts.seed}:{tid}")  # noqa: S311 - simulation dice
            config = template.model_copy(
                update={
                    "terminal_id": tid,
                    "hall": profile.hall,
                    "region": profile.region,
                    "model": profile.model,
                }
            )
            updates = self._update_service(config, profile)
            if updates is not None:
                config = config.model_copy(update={"updates": updates[1]})
            probes = {
                s.value: build_scenario_probe(
                    s,
                    clock=monotonic,
                    seed=f"{opts.seed}:{tid}:{s.value}",
                    fault_rate=opts.fault_rate,
                )
                for s in MODELS[profile.model]
            }
            for planted in opts.planted_faults:
                if planted.terminal_id == tid:
                    if planted.probe not in probes:
                        raise ValueError(
                            f"planted fault {planted}: {tid} ({profile.model}) has no probe "
                            f"{planted.probe!r}, only {', '.join(probes)}"
                        )
                    probes[planted.probe].force(planted.condition)
            key_file, cert_file = identities.get(tid, (None, None))
            connection = MqttConnection(
                replace(
                    base_settings, client_id=tid, tls_key_file=key_file, tls_cert_file=cert_file
                ),
                rng=random.Random(f"{opts.seed}:{tid}:backoff"),  # noqa: S311 - jitter
                monotonic=monotonic,
            )
            sender = OutboxSender(
                self.outbox,
                tid,
                connection,
                sender_settings,
                monotonic=monotonic,
                rng=random.Random(f"{opts.seed}:{tid}:drain"),  # noqa: S311 - jitter
            )
            booted_ago = rng.uniform(60.0, 72 * 3600.0)
            agent = Agent(
                config,
                list(probes.values()),
                sender,
                self._clock,
                sender.boot_id,
                _SimulatedUptime(monotonic, started - booted_ago),
                last_seq=sender.last_seq,
                dropped_reports=sender.dropped_reports,
                software=updates[0].software if updates is not None else None,
            )
            offset = rng.uniform(0, opts.report_interval_s) if tuning.spread_reports else None
            self.loop.add(agent, connection, first_report_in=offset, sender=sender)
            self._senders[tid] = sender
            self._dropped_at_start += sender.stream.dropped_reports
            self._probes[tid] = probes
            self._agents.append(agent)
            self._connections.append(connection)
            self._connection_by_id[tid] = connection
            self._by_id[tid] = agent
            if updates is not None:
                self._updates[tid] = updates[0]
            if updates is not None or opts.commit_confirmation:
                connection.receive_commands(
                    route_commands(
                        sender.on_committed,
                        None if updates is None else updates[0].submit,
                        terminal_id=tid,
                    )
                )

    def _update_service(
        self, config: AgentConfig, profile: TerminalProfile
    ) -> tuple[UpdateService, UpdatesConfig] | None:
        """The real update path of one terminal, or None when the simulation takes no updates.

        Raises UpdateServiceError (unreadable trusted root)."""
        opts = self.opts
        if opts.updates_server_url is None or opts.trusted_root is None:
            return None
        if self.work_dir is None or self._socket_dir is None:
            self.work_dir = opts.work_dir or Path(tempfile.mkdtemp(prefix="kioskfleet-sim-"))
            # AF_UNIX paths are short: the kiosk sockets live in a short temporary directory
            self._socket_dir = Path(tempfile.mkdtemp(prefix="kf-sim-"))
        spec = terminal_updates_config(
            opts.updates_server_url,
            opts.trusted_root,
            terminal_paths(self.work_dir, self._socket_dir, profile.terminal_id),
        )
        tid = profile.terminal_id
        service = UpdateService.from_config(
            config.model_copy(update={"updates": spec}),
            send=lambda body: self.loop.call_soon(lambda: self._by_id[tid].send_update(body)),
            clock=self._clock,
            wrap_handler=wrapper_for(profile.index, opts.update_failure_fraction),
        )
        return service, spec

    def _enroll(self) -> dict[str, tuple[Path, Path]]:
        """Key and certificate files by terminal id; enrolls whoever has no certificate.

        Raises ValueError naming the first terminal that could not enroll."""
        opts = self.opts
        if opts.enroll_url is None or opts.ca_file is None or opts.identity_dir is None:
            return {}
        terminals = [_identity(opts.identity_dir, p.terminal_id) for p in self._profiles]
        failed = enroll_many(
            terminals,
            EnrollmentConfig(url=opts.enroll_url, ca_file=opts.ca_file),
            concurrency=opts.enroll_concurrency,
        )
        if failed:
            tid, exc = next(iter(failed.items()))
            raise ValueError(f"{len(failed)} terminals could not enroll, first {tid}: {exc}")
        return {t.terminal_id: (t.key_file, t.cert_file) for t in terminals}

    # -- running ------------------------------------------------------------------

    @property
    def terminal_ids(self) -> list[str]:
        return [p.terminal_id for p in self._profiles]

    @property
    def profiles(self) -> list[TerminalProfile]:
        return list(self._profiles)

    def run(self, duration_s: float | None = None) -> None:
        """Run in this thread until ``request_stop`` (or ``duration_s``), then stop cleanly."""
        for service in self._updates.values():
            service.start()
        outages = _OutageThread(self.loop, self._planted_outages(), time.monotonic)
        outages.start()
        demand = _DemandThread(self.loop, self._by_id, self._profiles, self.opts, self._clock)
        demand.start()
        try:
            self.loop.run(duration_s)
        finally:
            demand.stop()
            outages.stop()
            for service in self._updates.values():
                service.stop(timeout=1.0)

    def _planted_outages(self) -> list[tuple[PlantedOutage, MqttConnection]]:
        return [
            (outage, self._connection_by_id[outage.terminal_id])
            for outage in self.opts.planted_outages
            if outage.terminal_id in self._connection_by_id
        ]

    def request_stop(self) -> None:
        self.loop.request_stop()

    def start(self) -> None:
        """Run in a background thread (tests, benchmarks)."""
        self._thread.start()

    def stop(self, timeout: float = 30.0, *, hand_stored: bool = False) -> None:
        """Stop cleanly (every terminal publishes offline/shutdown) and wait. Raises TimeoutError.

        ``hand_stored``: the terminals stop reporting first and hand what their outboxes
        hold within the stop's wait (``EventLoop.request_stop``). The outbox stays open
        (``outbox_stats`` still works); ``close`` closes it.
        """
        self._thread.stop(timeout, hand_stored=hand_stored)

    def abort(self, timeout: float = 30.0) -> None:
        """Stop as a crash would: sockets closed without DISCONNECT, no wait for PUBACKs."""
        self._thread.abort(timeout)

    def close(self) -> None:
        """Close the outbox file (after the loop ended) and remove the kiosk sockets' directory."""
        self.outbox.close()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def updates(self, terminal_id: str) -> UpdateService:
        """A terminal's update service. Raises KeyError (unknown id, or updates are off)."""
        return self._updates[terminal_id]

    def outbox_stats(self, terminal_id: str) -> OutboxStats:
        """One terminal's stream as stored in the outbox. Raises KeyError, OutboxError."""
        if terminal_id not in self._senders:
            raise KeyError(terminal_id)
        return self.outbox.stats(terminal_id)

    def sender(self, terminal_id: str) -> OutboxSender:
        """A terminal's outbox sender. Raises KeyError for an unknown id."""
        return self._senders[terminal_id]

    # -- steering -----------------------------------------------------------------

    def probe(self, terminal_id: str, name: str) -> ScenarioProbe:
        """A terminal's scenario probe. Raises KeyError for an unknown id or name."""
        return self._probes[terminal_id][name]

    def force(
        self,
        terminal_id: str,
        name: str,
        condition: PeripheralCondition,
        fault_code: str | None = None,
    ) -> None:
        """Put one peripheral into ``condition`` now; its event goes out without waiting for a tick."""
        self.probe(terminal_id, name).force(condition, fault_code)
        self.loop.check_now(terminal_id)

    def release(self, terminal_id: str, name: str) -> None:
        """Hand the peripheral back to its scenario (and report the change at once)."""
        self.probe(terminal_id, name).release()
        self.loop.check_now(terminal_id)

    def drop(self, terminal_id: str) -> None:
        """Cut one terminal's connection now without DISCONNECT (the broker publishes its
        will); it reconnects after its backoff, as after any loss. Raises KeyError."""
        self.loop.call_soon(self._connection_by_id[terminal_id].abort)

    def refill(self, terminal_id: str, name: str = Scenario.RECEIPT_PRINTER.value) -> None:
        """Staff load paper in a printer now. Raises TypeError if it is not a printer."""
        probe = self.probe(terminal_id, name)
        if not isinstance(probe, ScenarioPrinter):
            raise TypeError(f"{name} is not a printer")
        probe.refill()
        self.loop.check_now(terminal_id)

    def counters(self) -> SimulationCounters:
        """Totals right now (read without locking: each number is exact, the set is not atomic)."""
        c = SimulationCounters(terminals=len(self._profiles))
        for conn in self._connections:
            s = conn.stats
            c.connected += conn.connected
            c.connects += s.connects
            c.connect_failures += s.connect_failures
            c.losses += s.losses
            c.switches += s.switches
            c.published += s.published
            c.acked += s.acked
        for agent in self._agents:
            c.dropped += agent.stats.dropped
            c.reports += agent.stats.reports
            c.events += agent.stats.events
        for sender in self._senders.values():
            st = sender.stats()
            c.handed += st.handed
            c.stream_acked += st.acked
            c.refused += st.refused
            c.outbox_errors += st.outbox_errors
            c.backlog += st.backlog
            c.confirmed += st.confirmed
            c.unconfirmed += st.unconfirmed
            c.refilled += st.refilled
            c.confirm_timeouts += st.confirm_timeouts
            c.dropped_reports += sender.dropped_reports()
        c.dropped_reports -= self._dropped_at_start
        return c

    def sessions(self) -> dict[str, str]:
        """Each connected terminal's broker, as its canonical URL (read without locking)."""
        return {c.settings.client_id: c.broker.url for c in self._connections if c.connected}

    def wait_connected(self, timeout: float) -> bool:
        """Wait until every terminal has a session; False if ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.connected for c in self._connections):
                return True
            time.sleep(0.05)
        return False


class _OutageThread:
    """Cuts the planted outages' connections for good (in the loop's thread) once each
    terminal has been connected and its ``after_s`` has passed."""

    _POLL_S = 0.5

    def __init__(
        self,
        loop: EventLoop,
        outages: list[tuple[PlantedOutage, MqttConnection]],
        monotonic: Any,
    ) -> None:
        self._loop = loop
        self._waiting = list(outages)
        self._monotonic = monotonic
        self._began = monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._waiting:
            self._thread = threading.Thread(target=self._run, name="kf-outages", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while self._waiting and not self._stop.wait(self._POLL_S):
            elapsed = self._monotonic() - self._began
            for item in list(self._waiting):
                outage, connection = item
                if elapsed >= outage.after_s and connection.connected:
                    self._waiting.remove(item)
                    log.info("planted outage: %s loses its connection for good", outage.terminal_id)
                    self._loop.call_soon(connection.close)


class _DemandThread:
    """Sends the seeded demand's transactions (``agent.demand``) as they fall due by the
    terminals' wall clock (``clock``, the agents' own: the real one, or moved by
    ``clock_offset_s``): each one through its terminal's ``Agent.send_usage`` in the loop's
    thread, so its ``sent_at`` is that clock then. The plan covers every terminal of the
    run (``demand_plan``), so a slice in another process draws the same transactions for
    its own terminals."""

    _MAX_SLEEP_S = 1.0

    def __init__(
        self,
        loop: EventLoop,
        agents: dict[str, Agent],
        profiles: list[TerminalProfile],
        opts: SimulationOptions,
        clock: Clock,
    ) -> None:
        self._loop = loop
        self._agents = agents
        self._opts = opts
        self._now = clock.wall
        self._plan = demand_plan(
            [(p.terminal_id, p.hall, p.region) for p in terminal_profiles(opts)]
        )
        self._mine = {p.terminal_id for p in profiles}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._opts.demand:
            self._thread = threading.Thread(target=self._run, name="kf-demand", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        week = monday_of(self._now())
        while not self._stop.is_set():
            now = self._now()
            due = [
                t
                for t in generate(self._plan, week, self._opts.seed + week.toordinal())
                if t.terminal_id in self._mine and t.at >= now
            ]
            for t in due:
                while (wait := (t.at - self._now()).total_seconds()) > 0:
                    if self._stop.wait(min(wait, self._MAX_SLEEP_S)):
                        return
                self._loop.call_soon(functools.partial(self._send, t))
            week += timedelta(days=7)
            while self._now() < week:
                if self._stop.wait(self._MAX_SLEEP_S):
                    return

    def _send(self, t: Transaction) -> None:
        body = UsageBody(
            service=t.service,
            outcome=Outcome(t.outcome),
            cause=None if t.cause is None else FailureCause(t.cause),
            duration_s=t.duration_s,
            pages=t.pages,
        )
        self._agents[t.terminal_id].send_usage(body)


class _SimulatedUptime:
    def __init__(self, monotonic: Any, booted_at: float) -> None:
        self._monotonic = monotonic
        self._booted_at = booted_at

    def __call__(self) -> float:
        return float(self._monotonic() - self._booted_at)


def _identity(directory: Path, terminal_id: str) -> Terminal:
    return Terminal(terminal_id, directory / f"{terminal_id}.key", directory / f"{terminal_id}.pem")


def write_identities(opts: SimulationOptions, directory: Path) -> Path:
    """Make the key of every simulated terminal in ``directory`` (kept if there) and
    ``preauthorize.csv`` (``id,hall,region,model,<id>.pub``) for ``kioskfleet terminal
    preauthorize --from-file``. Returns the CSV's path."""
    lines = []
    for profile in terminal_profiles(opts):
        terminal = _identity(directory, profile.terminal_id)
        key = load_or_create_key(terminal.key_file)
        public = directory / f"{profile.terminal_id}.pub"
        public.write_text(public_key_pem(key), encoding="ascii")
        lines.append(
            f"{profile.terminal_id},{profile.hall},{profile.region},{profile.model},{public.name}"
        )
    csv = directory / "preauthorize.csv"
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv


def _slices(terminals: int, processes: int) -> Iterator[range]:
    size, extra = divmod(terminals, processes)
    start = 1
    for p in range(processes):
        stop = start + size + (1 if p < extra else 0)
        yield range(start, stop)
        start = stop


def _progress(counters: SimulationCounters, elapsed: float) -> str:
    return (
        f"t={elapsed:.0f}s terminals={counters.terminals} connected={counters.connected} "
        f"published={counters.published} acked={counters.acked} reports={counters.reports} "
        f"events={counters.events} dropped={counters.dropped} losses={counters.losses} "
        f"switches={counters.switches} "
        f"backlog={counters.backlog} dropped_reports={counters.dropped_reports} "
        f"outbox_errors={counters.outbox_errors}"
    )


def _worker(
    opts: SimulationOptions,
    tuning: SimulationTuning,
    start: int,
    stop: int,
    stop_event: Any,
    results: Any,
) -> None:
    """One spawned process: terminals ``start..stop-1`` until ``stop_event``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sim = Simulation(opts, tuning=tuning, indices=range(start, stop))

    def wait_for_stop() -> None:
        stop_event.wait()
        sim.request_stop()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    try:
        sim.run()
        results.put(asdict(sim.counters()))
    finally:
        sim.close()


def run_simulation(opts: SimulationOptions, tuning: SimulationTuning | None = None) -> int:
    """``kioskfleet simulate``: run until SIGINT/SIGTERM or ``duration_s``, print totals. Returns the exit code."""
    tuning = tuning or SimulationTuning()
    try:
        opts.check()
    except ValueError as exc:
        print(f"kioskfleet simulate: {exc}")
        return 2
    stop = _StopFlag()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if opts.outbox_path is None:
        base = Path(tempfile.mkdtemp(prefix="kioskfleet-sim-")) / "outbox.sqlite"
        opts = replace(opts, outbox_path=base)
    paths = (
        [opts.outbox_path]
        if opts.processes == 1
        else [_worker_outbox(opts, n) for n in range(opts.processes)]
    )
    print("outbox: " + ", ".join(str(p) for p in paths), flush=True)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    began = time.monotonic()
    try:
        if opts.processes == 1:
            total = _run_in_process(opts, tuning, stop, began)
        else:
            total = _run_spawned(opts, tuning, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("simulation finished: " + _progress(total, time.monotonic() - began), flush=True)
    return 0


class _StopFlag:
    """Set by the SIGINT/SIGTERM handler, polled by the main thread.

    A plain attribute, not a ``threading.Event``: a handler runs between two
    bytecodes of the main thread, and ``Event.set`` would wait forever for the
    lock that ``Event.wait``, interrupted there, still holds.
    """

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


def _worker_outbox(opts: SimulationOptions, n: int) -> Path:
    """Worker ``n``'s outbox file: ``<outbox_path>.<n>``."""
    assert opts.outbox_path is not None
    return opts.outbox_path.with_name(f"{opts.outbox_path.name}.{n}")


def _run_in_process(
    opts: SimulationOptions, tuning: SimulationTuning, stop: _StopFlag, began: float
) -> SimulationCounters:
    sim = Simulation(opts, tuning=tuning)
    try:
        return _drive(sim, opts, stop, began)
    finally:
        sim.close()


def _drive(
    sim: Simulation, opts: SimulationOptions, stop: _StopFlag, began: float
) -> SimulationCounters:
    sim.start()
    deadline = began + opts.duration_s if opts.duration_s is not None else float("inf")
    next_progress = time.monotonic() + _PROGRESS_EVERY_S
    while not stop.is_set() and time.monotonic() < deadline:
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= next_progress:
            log.info("%s", _progress(sim.counters(), time.monotonic() - began))
            next_progress += _PROGRESS_EVERY_S
    sim.stop(timeout=max(60.0, sim.tuning.shutdown_timeout_s * 3))
    return sim.counters()


def _run_spawned(
    opts: SimulationOptions, tuning: SimulationTuning, stop: _StopFlag
) -> SimulationCounters:
    ctx = multiprocessing.get_context("spawn")
    stop_event = ctx.Event()
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=_worker,
            args=(
                replace(opts, outbox_path=_worker_outbox(opts, n)),
                tuning,
                part.start,
                part.stop,
                stop_event,
                results,
            ),
            name=f"kioskfleet-sim-{n}",
        )
        for n, part in enumerate(_slices(opts.terminals, opts.processes))
    ]
    for w in workers:
        w.start()
    deadline = time.monotonic() + opts.duration_s if opts.duration_s is not None else float("inf")
    while not stop.is_set() and time.monotonic() < deadline and any(w.is_alive() for w in workers):
        time.sleep(0.2)
    stop_event.set()
    total = SimulationCounters()
    for _ in workers:
        try:
            total = total + SimulationCounters(**results.get(timeout=120))
        except Exception:  # noqa: BLE001 - a dead worker must not hide the others' totals
            log.error("a simulator process did not report its totals")
            break
    for w in workers:
        w.join(timeout=30)
        if w.is_alive():
            w.terminate()
    return total
