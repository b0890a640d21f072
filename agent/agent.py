"""The agent core: what a terminal says, and when. Pure logic, no sockets, no sleeping.

``Agent`` reads its probes when asked (``tick(now)``), turns condition changes
into ``peripheral_changed`` events, sends the full report every
``report_interval_s`` (connected or not: while offline the reports wait in the
outbox) and once more on every connect, and builds the retained
``online``/``offline`` state messages. It owns the stream's ``seq``: reports
and events take the next number, continuing after ``last_seq`` (what the
durable outbox stored before this process started); state messages carry the
last number assigned and take none. Every report carries ``dropped_reports``,
read from an injected provider (the outbox's cumulative count).

Everything leaves through the ``Outbound`` port as ``(topic, payload,
retain, seq)``, always QoS 1; ``seq`` is None for ``state`` messages. The
``OutboxSender`` (agent/outbox_sender.py) is the real port: it stores stream
messages first and forwards them to the MQTT connection. The connection
itself also implements the port (an agent without an outbox).
``RecordingOutbound`` is the fake for tests. What it reads of the settings is
the ``AgentProfile`` protocol (``agent.config.AgentConfig`` is one): the core
imports neither pydantic-settings nor any probe adapter
(tests/unit/test_import_hygiene.py).

Time comes in as ``now`` (monotonic seconds) and from the injected ``Clock``
(for ``sent_at``). A message that cannot be built (a wall clock outside the
years the wire accepts, 2000..2200, as on a kiosk whose RTC lost its time
before NTP corrects it) is dropped, counted and logged, and takes no ``seq``.
This module never does I/O itself, never raises because a probe misbehaved or
the clock is wrong, and never waits for the network.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from agent.clock import Clock
from agent.errors import AgentError
from agent.probes.base import Probe, Verdict, status_from_verdict
from protocol.codec import encode
from protocol.messages import (
    BootEvent,
    EventMessage,
    Message,
    PeripheralChangedEvent,
    PeripheralCondition,
    PeripheralStatus,
    ReportBody,
    ReportMessage,
    StateBody,
    StateMessage,
    TerminalState,
)
from protocol.topics import Channel, topic
from protocol.update_status import UpdateBody, UpdateMessage
from protocol.usage import UsageBody, UsageMessage

__all__ = [
    "Agent",
    "AgentProfile",
    "AgentStats",
    "Outbound",
    "OutboundError",
    "OutboundFullError",
    "Published",
    "RecordingOutbound",
]

log = logging.getLogger(__name__)

_MAX_PROBES: Final = 32
_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_BOOT_ID_RE: Final = re.compile(r"^[A-Za-z0-9-]{8,64}$")  # the envelope's boot_id
_MAX_UPTIME: Final = 10 * 365 * 86400.0

_StateReason = Literal["connect", "shutdown", "connection_lost"]


class OutboundError(AgentError):
    """The outbound side refused a message; the agent counts it as dropped.

    A branch of ``agent.errors.AgentError``::

        OutboundError          (base: the message was not accepted)
        └── OutboundFullError  (the bounded queue of unsent messages is full)
    """

    def __init__(self, message: str, *, topic: str | None = None) -> None:
        super().__init__(message)
        self.topic = topic


class OutboundFullError(OutboundError):
    """The queue of messages waiting for the broker is at its limit."""

    def __init__(self, limit: int, *, topic: str | None = None) -> None:
        super().__init__(f"outbound queue full ({limit} messages)", topic=topic)
        self.limit = limit


class AgentProfile(Protocol):
    """What the core reads of the agent's settings: who the terminal is, how often it speaks.

    ``agent.config.AgentConfig`` is the real one; the core never imports it (nor
    pydantic-settings, nor the probe factory behind it).
    """

    @property
    def terminal_id(self) -> str: ...
    @property
    def hall(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def agent_version(self) -> str: ...
    @property
    def report_interval_s(self) -> float: ...
    @property
    def probe_interval_s(self) -> float: ...


class Outbound(Protocol):
    """Where the agent's messages go. Always QoS 1; ``retain`` only for ``state``.

    ``seq`` is the stream seq of a report, event or update (None for ``state``).
    ``publish`` must not block: it accepts the message (storing it, sending it
    now or queueing it until the broker is reachable) or raises OutboundError.
    Its return value is ignored.
    """

    def publish(
        self, topic: str, payload: bytes, retain: bool, *, seq: int | None = None
    ) -> object: ...


@dataclass(frozen=True, slots=True)
class Published:
    """One message handed to the outbound port."""

    topic: str
    payload: bytes
    retain: bool
    seq: int | None = None


class RecordingOutbound:
    """The fake port: remembers every message; can be told to refuse."""

    def __init__(self) -> None:
        self.published: list[Published] = []
        self.refuse: OutboundError | None = None

    def publish(self, topic: str, payload: bytes, retain: bool, *, seq: int | None = None) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.published.append(Published(topic, payload, retain, seq))

    def on(self, channel: Channel) -> list[Published]:
        """The messages sent on ``channel`` (by topic suffix), in order."""
        suffix = "/" + channel.value
        return [p for p in self.published if p.topic.endswith(suffix)]


@dataclass(slots=True)
class AgentStats:
    """What the agent has done since it started (read by the simulator and logs)."""

    reports: int = 0
    events: int = 0
    states: int = 0
    dropped: int = 0
    probe_errors: int = 0
    last_drop: str | None = field(default=None, repr=False)


class Agent:
    """One terminal's reporting logic. Drive it with ``start``, ``tick`` and the connection hooks."""

    def __init__(
        self,
        config: AgentProfile,
        probes: Sequence[Probe],
        outbound: Outbound,
        clock: Clock,
        boot_id: str,
        uptime: Callable[[], float],
        *,
        last_seq: int = 0,
        dropped_reports: Callable[[], int] | None = None,
        software: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        """``boot_id`` and ``last_seq`` name the stream to continue (the outbox's).

        ``software`` returns the installed packages and versions each report carries
        (the updater's wiring reads the active slot; empty without one).

        ``dropped_reports`` returns the cumulative number of reports the outbox
        dropped (0 without one). Raises ValueError for invalid, repeated or too
        many probe names, a negative ``last_seq``, or a ``boot_id`` the envelope
        would refuse (it must be 8..64 letters, digits and dashes).
        """
        if not _BOOT_ID_RE.match(boot_id):
            raise ValueError(f"invalid boot id {boot_id!r}")
        if last_seq < 0:
            raise ValueError(f"invalid last seq {last_seq}")
        names = [p.name for p in probes]
        if len(names) > _MAX_PROBES:
            raise ValueError(f"at most {_MAX_PROBES} probes per terminal")
        if len(set(names)) != len(names):
            raise ValueError(f"probe names must be unique: {names}")
        for name in names:
            if not _NAME_RE.match(name):
                raise ValueError(f"invalid probe name {name!r}")
        self._config = config
        self._probes = list(probes)
        self._outbound = outbound
        self._clock = clock
        self._boot_id = boot_id
        self._uptime = uptime
        self._terminal_id = config.terminal_id
        self._state_topic = topic(config.terminal_id, Channel.STATE)
        self._report_topic = topic(config.terminal_id, Channel.REPORT)
        self._event_topic = topic(config.terminal_id, Channel.EVENT)
        self._seq = last_seq
        self._dropped_reports = dropped_reports or _none_dropped
        self._software = software or dict
        self._update_topic = topic(config.terminal_id, Channel.UPDATE)
        self._usage_topic = topic(config.terminal_id, Channel.USAGE)
        self._statuses: dict[str, PeripheralStatus] = {}
        self._probe_failures: dict[str, str] = {}
        self._connected = False
        self._started = False
        self._stopped = False
        self._next_probe = math.inf
        self._next_report = math.inf
        self.stats = AgentStats()

    # -- what the loop and the connection call ---------------------------------

    @property
    def terminal_id(self) -> str:
        return self._terminal_id

    @property
    def seq(self) -> int:
        """The last sequence number assigned (``last_seq`` before the first report or event)."""
        return self._seq

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def next_due(self) -> float:
        """When ``tick`` next has work (monotonic seconds); infinity once stopped."""
        if self._stopped or not self._started:
            return math.inf
        return min(self._next_probe, self._next_report)

    def start(self, now: float, *, first_report_in: float | None = None) -> float:
        """Read every probe, send the ``boot`` event, and schedule the work. Returns ``next_due``.

        Peripherals already in a problem condition get a ``peripheral_changed``
        event with ``previous`` null. The first periodic report comes after
        ``first_report_in`` seconds (default: one report interval; a simulator
        passes a random offset to spread its terminals' reports).
        """
        if self._started:
            return self.next_due
        self._started = True
        self._read_probes(announce=False)
        self._send_event(
            BootEvent(
                type="boot",
                uptime_s=self._uptime_s(),
                agent_version=self._config.agent_version,
            )
        )
        for status in self._statuses.values():
            if status.condition is not PeripheralCondition.OK:
                self._send_event(
                    PeripheralChangedEvent(
                        type="peripheral_changed", peripheral=status, previous=None
                    )
                )
        interval = self._config.report_interval_s
        offset = interval if first_report_in is None else max(0.0, first_report_in)
        self._next_probe = now + self._config.probe_interval_s
        self._next_report = now + offset
        return self.next_due

    def tick(self, now: float) -> float:
        """Do whatever is due at ``now``: read probes, send a report. Returns ``next_due``.

        Reports are produced on schedule whether connected or not (offline,
        they wait in the outbox and drain in order after the reconnect).
        """
        if self._stopped or not self._started:
            return self.next_due
        if now >= self._next_probe:
            self._read_probes(announce=True)
            self._next_probe = _next_slot(self._next_probe, self._config.probe_interval_s, now)
        if now >= self._next_report:
            self._send_report()
            self._next_report = _next_slot(self._next_report, self._config.report_interval_s, now)
        return self.next_due

    def check_now(self) -> None:
        """Read every probe at once (outside the schedule) and announce changes."""
        if self._started and not self._stopped:
            self._read_probes(announce=True)

    def on_connected(self) -> None:
        """The broker accepted the session: send retained ``online`` and a full report."""
        if self._stopped:
            return
        if not self._started:
            self._read_probes(announce=False)
        self._connected = True
        self._send_state(TerminalState.ONLINE, "connect")
        self._send_report()

    def send_update(self, body: UpdateBody) -> None:
        """Send one updater status as a ``kf.update`` on the stream (call in the loop's thread)."""
        self._send_on_stream(
            lambda seq: UpdateMessage(schema="kf.update", body=body, **self._envelope(seq)),
            self._update_topic,
            "update",
        )

    def send_usage(self, body: UsageBody) -> bool:
        """Send one citizen transaction as a ``kf.usage`` on the stream (call in the loop's
        thread); like update statuses it is never dropped from the outbox. True once it is
        in the outbox; False if it could not be built or stored (logged)."""
        return self._send_on_stream(
            lambda seq: UsageMessage(schema="kf.usage", body=body, **self._envelope(seq)),
            self._usage_topic,
            "usage",
        )

    def on_disconnected(self) -> None:
        """The connection is gone (reports go on; the outbox keeps them)."""
        self._connected = False

    def will_message(self) -> bytes:
        """The retained ``offline``/``connection_lost`` state to register as the MQTT will.

        Raises ValueError if it cannot be built (the wall clock is outside 2000..2200).
        """
        return encode(self._state_message(TerminalState.OFFLINE, "connection_lost"))

    def shutdown_message(self) -> bytes:
        """The retained ``offline``/``shutdown`` state for a clean stop.

        Raises ValueError if it cannot be built (the wall clock is outside 2000..2200).
        """
        return encode(self._state_message(TerminalState.OFFLINE, "shutdown"))

    def stop(self) -> None:
        """Publish the ``shutdown`` state and stop ticking. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._send_state(TerminalState.OFFLINE, "shutdown")

    @property
    def state_topic(self) -> str:
        return self._state_topic

    def peripherals(self) -> list[PeripheralStatus]:
        """The last status read from each probe, in probe order."""
        return list(self._statuses.values())

    # -- internals ---------------------------------------------------------------

    def _read_probes(self, *, announce: bool) -> None:
        for probe in self._probes:
            status = self._read_one(probe)
            previous = self._statuses.get(probe.name)
            self._statuses[probe.name] = status
            if not announce or previous is None:
                continue
            if previous.condition is status.condition and previous.fault_code == status.fault_code:
                continue
            self._send_event(
                PeripheralChangedEvent(
                    type="peripheral_changed", peripheral=status, previous=previous.condition
                )
            )

    def _read_one(self, probe: Probe) -> PeripheralStatus:
        try:
            status = probe.read()
            if not isinstance(status, PeripheralStatus):
                raise TypeError(f"read() returned {type(status).__name__}, not PeripheralStatus")
            if status.name != probe.name or status.kind is not probe.kind:
                # Validated again: the status's condition may not fit the probe's kind.
                verdict: Verdict = (status.condition, status.fault_code, status.detail)
                status = status_from_verdict(probe.name, probe.kind, verdict)
        except Exception as exc:  # noqa: BLE001 - a broken probe must never stop the agent
            self.stats.probe_errors += 1
            text = f"probe error: {type(exc).__name__}: {exc}"
            if self._probe_failures.get(probe.name) != text:
                log.warning("%s: probe %s failed: %s", self._terminal_id, probe.name, text)
                self._probe_failures[probe.name] = text
            return status_from_verdict(
                probe.name, probe.kind, (PeripheralCondition.UNKNOWN, None, text)
            )
        self._probe_failures.pop(probe.name, None)
        return status

    def _uptime_s(self) -> float:
        try:
            value = float(self._uptime())
        except Exception:  # noqa: BLE001 - uptime is informative; a failure must not stop a report
            return 0.0
        if not math.isfinite(value):
            return 0.0
        return min(max(value, 0.0), _MAX_UPTIME)

    def _send_event(self, body: BootEvent | PeripheralChangedEvent) -> None:
        if self._send_on_stream(
            lambda seq: EventMessage(schema="kf.event", body=body, **self._envelope(seq)),
            self._event_topic,
            body.type,
        ):
            self.stats.events += 1

    def _send_report(self) -> None:
        if self._send_on_stream(self._report_message, self._report_topic, "report"):
            self.stats.reports += 1

    def _envelope(self, seq: int) -> dict[str, Any]:
        """The fields every stream message of this terminal carries."""
        return {
            "version": 1,
            "terminal_id": self._terminal_id,
            "boot_id": self._boot_id,
            "seq": seq,
            "sent_at": self._clock.wall(),
        }

    def _send_on_stream(self, build: Callable[[int], Message], topic_name: str, what: str) -> bool:
        """Build the stream's next message with ``build(seq)``, take the seq, publish it.
        False if it could not be built (the clock is out of range: logged) or not published."""
        seq = self._seq + 1
        try:
            message = build(seq)
        except ValueError as exc:  # pydantic's ValidationError: the clock is out of range
            self._unbuildable(what, exc)
            return False
        self._seq = seq
        return self._publish(topic_name, encode(message), retain=False, what=what, seq=seq)

    def _report_message(self, seq: int) -> ReportMessage:
        config = self._config
        return ReportMessage(
            schema="kf.report",
            **self._envelope(seq),
            body=ReportBody(
                hall=config.hall,
                region=config.region,
                model=config.model,
                agent_version=config.agent_version,
                uptime_s=self._uptime_s(),
                report_interval_s=config.report_interval_s,
                peripherals=list(self._statuses.values()),
                dropped_reports=self._dropped_count(),
                software=self._software(),
            ),
        )

    def _dropped_count(self) -> int:
        try:
            value = int(self._dropped_reports())
        except Exception:  # noqa: BLE001 - a failing counter must not stop a report
            return 0
        return min(max(value, 0), 2**53)

    def _state_message(self, state: TerminalState, reason: _StateReason) -> StateMessage:
        config = self._config
        return StateMessage(
            schema="kf.state",
            **self._envelope(self._seq),
            body=StateBody(
                state=state,
                reason=reason,
                hall=config.hall,
                region=config.region,
                model=config.model,
            ),
        )

    def _send_state(self, state: TerminalState, reason: _StateReason) -> None:
        what = f"{state.value}/{reason}"
        try:
            message = self._state_message(state, reason)
        except ValueError as exc:  # pydantic's ValidationError: the clock is out of range
            self._unbuildable(what, exc)
            return
        if self._publish(self._state_topic, encode(message), retain=True, what=what):
            self.stats.states += 1

    def _unbuildable(self, what: str, exc: ValueError) -> None:
        """A message could not be built: count it as dropped and log each new reason once."""
        self.stats.dropped += 1
        reason = "cannot be built: " + " ".join(str(exc).split())
        if self.stats.last_drop != reason:
            log.warning("%s: %s message dropped: %s", self._terminal_id, what, reason)
            self.stats.last_drop = reason

    def _publish(
        self, topic_name: str, payload: bytes, *, retain: bool, what: str, seq: int | None = None
    ) -> bool:
        try:
            self._outbound.publish(topic_name, payload, retain, seq=seq)
        except OutboundError as exc:
            self.stats.dropped += 1
            if self.stats.last_drop != str(exc):
                log.warning("%s: %s message dropped: %s", self._terminal_id, what, exc)
                self.stats.last_drop = str(exc)
            return False
        return True


def _none_dropped() -> int:
    return 0


def _next_slot(previous: float, interval: float, now: float) -> float:
    """The next point on the ``previous + k * interval`` grid after ``now``."""
    nxt = previous + interval
    if nxt <= now:
        nxt = now + interval
    return nxt
