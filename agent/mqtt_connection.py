"""The agent's MQTT adapter: the only agent module that imports paho.

``MqttConnection`` keeps one terminal's MQTT v5 session with the broker:
client id = terminal id, ``clean_start=False`` with a Session Expiry Interval
(a persistent session; with ``protocol="3.1.1"``, for a broker without MQTT 5
such as nats-server, ``clean_session=False`` and the broker's own expiry), QoS 1 for everything, and the retained ``offline``
state registered as the will before every connection attempt. It implements
the agent's ``Outbound`` port (``publish``, which returns paho's message id)
and tells a ``SessionListener`` (the Agent, or the outbox sender in front of
it) when the session comes up or goes away, and a delivery callback
``delivered(mid, ok)`` when a PUBACK arrives (``ok`` false for a failure
reason code), so the outbox removes exactly the acknowledged row.

It never runs a thread and never blocks on the network except for the TCP
(and TLS) connect itself, which is bounded by ``connect_timeout_s``. An
external selector loop drives it through ``fileno()``, ``wants_write()``,
``on_readable()``, ``on_writable()``, ``service(now)`` (keepalive, CONNACK
timeout) and ``connect(now)`` (when ``connect_due(now)`` and the loop has a
free attempt slot). paho's socket open/close callbacks are forwarded to a
``SocketWatcher`` so the loop (un)registers a socket before it is closed.

With several brokers (``ConnectionSettings.brokers``, from ``broker_urls``) a
failed attempt or a lost session sends the next attempt to the next broker,
round robin from the terminal's own offset (``agent.broker_rotation``: a short
jittered hop within a round); after a full round, and always with one broker,
reconnects back off exponentially with full jitter between
``reconnect_min_s`` and ``reconnect_max_s``; a connection that stayed up for
``stable_connection_s`` resets the backoff. Each move to another broker is
logged and counted (``stats.switches``). The session on the new broker is its
own (separate brokers share none; a cluster's nodes may): the listener hears
``on_disconnected`` and ``on_connected`` as after any reconnect, and the outbox
sender re-sends what is unconfirmed. paho error and reason codes become
the exceptions below (kept in ``stats.last_error`` and logged); nothing
paho-typed leaves this module. Errors (a branch of ``agent.errors.AgentError``)::

    MqttConnectionError            (base)
    ├── ConnectionSetupError       the settings cannot work (TLS files unreadable), or the
    │                              will cannot be built for an attempt (clock out of range)
    ├── BrokerUnreachableError     TCP/TLS connect failed (refused, timeout, DNS, handshake)
    ├── ConnectRefusedError        CONNACK with a failure reason code (carries it)
    ├── ConnectTimeoutError        no CONNACK within connect_timeout_s
    ├── SubscribeRefusedError      SUBACK refused the ``cmd`` subscription (carries the code):
    │                              the session is dropped and made again, since without it no
    │                              ``kf.committed`` arrives (nats-server refuses one when it
    │                              cannot create the JetStream consumer in time)
    └── ConnectionLostError        an established session dropped (carries the reason)

``publish`` raises the port's ``OutboundFullError`` when the in-memory queue
(``max_queued_messages``) is full, and ``OutboundError`` for a message paho
refuses or a topic that is not this terminal's own (``kf/v1/terminals/{client
id}/...``): a connection never speaks for another terminal.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import socket
import ssl
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.agent import OutboundError, OutboundFullError
from agent.broker_rotation import MAX_BROKERS, Retry, Rotation, retry_delay
from agent.config import AgentConfig
from agent.errors import AgentError
from protocol.broker_url import BrokerAddress
from protocol.errors import TopicError
from protocol.topics import Channel, parse_topic, topic

__all__ = [
    "BrokerUnreachableError",
    "ConnectRefusedError",
    "ConnectTimeoutError",
    "ConnectionLostError",
    "ConnectionSettings",
    "ConnectionSetupError",
    "ConnectionState",
    "ConnectionStats",
    "MqttConnection",
    "MqttConnectionError",
    "SessionListener",
    "SocketWatcher",
    "SubscribeRefusedError",
]

log = logging.getLogger(__name__)


class MqttConnectionError(AgentError):
    """Something went wrong between this terminal and the broker."""


class ConnectionSetupError(MqttConnectionError):
    """The connection settings cannot work (an unreadable TLS file), or the will cannot be built."""


class BrokerUnreachableError(MqttConnectionError):
    """The TCP or TLS connection to the broker could not be made."""

    def __init__(self, host: str, port: int, cause: str) -> None:
        super().__init__(f"cannot reach broker {host}:{port}: {cause}")
        self.host = host
        self.port = port
        self.cause = cause


class ConnectRefusedError(MqttConnectionError):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(self, reason_code: int, reason: str) -> None:
        super().__init__(f"broker refused the connection: {reason} (0x{reason_code:02x})")
        self.reason_code = reason_code
        self.reason = reason


class ConnectTimeoutError(MqttConnectionError):
    """No CONNACK arrived in time."""


class SubscribeRefusedError(MqttConnectionError):
    """The broker's SUBACK refused this terminal's ``cmd`` subscription."""

    def __init__(self, reason_code: int, reason: str) -> None:
        super().__init__(f"broker refused the cmd subscription: {reason} (0x{reason_code:02x})")
        self.reason_code = reason_code
        self.reason = reason


class ConnectionLostError(MqttConnectionError):
    """An established session went away."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"connection lost: {reason}")
        self.reason = reason


class ConnectionState(Enum):
    IDLE = "idle"  # not started
    WAITING = "waiting"  # next attempt scheduled
    CONNECTING = "connecting"  # CONNECT sent, waiting for CONNACK
    CONNECTED = "connected"
    CLOSING = "closing"  # DISCONNECT sent
    CLOSED = "closed"  # stopped for good


class SessionListener(Protocol):
    """Who the connection reports to (the Agent)."""

    def on_connected(self) -> None: ...

    def on_disconnected(self) -> None: ...

    def will_message(self) -> bytes:
        """The will's payload; raises ValueError if it cannot be built now."""
        ...


class SocketWatcher(Protocol):
    """The event loop's side: told when a socket appears and just before it is closed."""

    def socket_opened(self, fd: int) -> None: ...

    def socket_closed(self, fd: int) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """What one connection needs; built from ``AgentConfig`` by ``from_config``.

    ``brokers``: 1 to 16 addresses of one scheme (the TLS files apply to all), in the
    order the rotation walks them. Raises ValueError otherwise."""

    client_id: str
    brokers: tuple[BrokerAddress, ...]
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 86400
    protocol: Literal["5", "3.1.1"] = "5"
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    stable_connection_s: float = 30.0
    connect_timeout_s: float = 10.0
    max_queued_messages: int = 1000
    max_inflight_messages: int = 20
    quiet: bool = False  # log connects and losses at DEBUG (simulator with thousands of them)

    def __post_init__(self) -> None:
        if not 1 <= len(self.brokers) <= MAX_BROKERS:
            raise ValueError(f"brokers must hold 1 to {MAX_BROKERS} addresses")
        if len({b.tls for b in self.brokers}) != 1:
            raise ValueError("brokers must all be mqtt:// or all mqtts://")

    @property
    def tls(self) -> bool:
        return self.brokers[0].tls

    @classmethod
    def from_config(cls, config: AgentConfig, *, quiet: bool = False) -> ConnectionSettings:
        limits = config.limits
        return cls(
            client_id=config.terminal_id,
            brokers=config.brokers,
            tls_ca_file=config.tls_ca_file,
            tls_cert_file=config.tls_cert_file,
            tls_key_file=config.tls_key_file,
            keepalive_s=config.keepalive_s,
            session_expiry_s=config.session_expiry_s,
            protocol=config.mqtt_protocol,
            reconnect_min_s=config.reconnect_min_s,
            reconnect_max_s=config.reconnect_max_s,
            stable_connection_s=limits.stable_connection_s,
            connect_timeout_s=limits.connect_timeout_s,
            max_queued_messages=limits.max_queued_messages,
            max_inflight_messages=limits.max_inflight_messages,
            quiet=quiet,
        )

    @property
    def service_period_s(self) -> float:
        """How often ``service`` must run while a socket is open (keepalive pings)."""
        return max(0.05, min(self.keepalive_s / 4, 5.0))


@dataclass(slots=True)
class ConnectionStats:
    """Counters since the connection was created."""

    published: int = 0  # messages accepted by publish()
    acked: int = 0  # PUBACKs with a success code
    ack_failures: int = 0  # PUBACKs with a failure code (the broker refused the message)
    forgotten: int = 0  # unacknowledged messages dropped by forget(): no PUBACK will come
    connects: int = 0  # sessions established (CONNACK success)
    connect_failures: int = 0  # attempts that did not end in a session
    losses: int = 0  # established sessions that dropped
    switches: int = 0  # attempts that went to another broker than the one before (failover)
    session_present: bool = False  # the last CONNACK said the broker still had our session
    last_error: MqttConnectionError | None = None


class _NoListener:
    def on_connected(self) -> None:
        return None

    def on_disconnected(self) -> None:
        return None

    def will_message(self) -> bytes:
        return b""


class MqttConnection:
    """One terminal's MQTT session, driven by an external selector loop."""

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Raises ConnectionSetupError if TLS is asked for and the files cannot be loaded."""
        self._settings = settings
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not cryptography
        self._monotonic = monotonic
        self._listener: SessionListener = _NoListener()
        self._watcher: SocketWatcher | None = None
        self._will_topic = topic(settings.client_id, Channel.STATE)
        self._cmd_topic = topic(settings.client_id, Channel.CMD)
        self.stats = ConnectionStats()
        self._state = ConnectionState.IDLE
        self._next_attempt = math.inf
        self._attempt_started = 0.0
        self._connected_since = 0.0
        self._rotation = Rotation.first(settings.client_id, len(settings.brokers))
        self._last_service = 0.0
        # Set by paho callbacks, acted upon in _settle() once paho has returned.
        self._connack_ok = False
        self._refused: ConnectRefusedError | None = None
        self._sub_refused: SubscribeRefusedError | None = None
        self._closed_by_paho = False
        self._close_reason = ""
        self._drop_error: MqttConnectionError | None = None  # why we dropped the socket ourselves
        self._delivered: Callable[[int, bool], None] | None = None
        self._deliveries: list[tuple[int, bool]] = []
        self._command: Callable[[bytes], None] | None = None
        self._commands: list[bytes] = []
        self._aimed_at: BrokerAddress  # where paho's next reconnect goes (set by _aim)
        self._client = self._make_client()

    def _make_client(self) -> paho.Client:
        s = self._settings
        v5 = s.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else False,
            reconnect_on_failure=False,
        )
        client.connect_timeout = s.connect_timeout_s
        client.max_queued_messages_set(s.max_queued_messages)
        client.max_inflight_messages_set(s.max_inflight_messages)
        if s.tls:
            try:
                client.tls_set(
                    ca_certs=str(s.tls_ca_file) if s.tls_ca_file else None,
                    certfile=str(s.tls_cert_file) if s.tls_cert_file else None,
                    keyfile=str(s.tls_key_file) if s.tls_key_file else None,
                )
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise ConnectionSetupError(f"TLS setup failed: {exc}") from exc
        self._aim(client, self.broker)
        client.on_connect = self._paho_on_connect
        client.on_disconnect = self._paho_on_disconnect
        client.on_publish = self._paho_on_publish
        client.on_message = self._paho_on_message
        client.on_subscribe = self._paho_on_subscribe
        client.on_socket_open = self._paho_on_socket_open
        client.on_socket_close = self._paho_on_socket_close
        return client

    def _aim(self, client: paho.Client, broker: BrokerAddress) -> None:
        """Point paho's next ``reconnect`` at ``broker``. Only while there is no socket; paho
        keeps its queued messages (they go to the new broker)."""
        s = self._settings
        if s.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
            props.SessionExpiryInterval = s.session_expiry_s
            client.connect_async(
                broker.host,
                broker.port,
                keepalive=s.keepalive_s,
                clean_start=False,
                properties=props,
            )
        else:  # a persistent session (clean_session=False above); the broker sets its expiry
            client.connect_async(broker.host, broker.port, keepalive=s.keepalive_s)
        self._aimed_at = broker

    # -- wiring ----------------------------------------------------------------

    def attach(
        self,
        listener: SessionListener,
        watcher: SocketWatcher | None = None,
        delivered: Callable[[int, bool], None] | None = None,
    ) -> None:
        """Set who hears about the session, who (un)registers the socket, and who hears PUBACKs.

        ``delivered(mid, ok)`` is called outside paho's code, once per PUBACK,
        with the id ``publish`` returned.
        """
        self._listener = listener
        self._watcher = watcher
        self._delivered = delivered

    def receive_commands(self, command: Callable[[bytes], None]) -> None:
        """Subscribe (QoS 1) to this terminal's own ``cmd`` topic on every connect; each
        message's payload goes to ``command(payload)``, called outside paho's code in the
        loop's thread. Only the bytes leave this module; the caller verifies them."""
        self._command = command

    @property
    def settings(self) -> ConnectionSettings:
        return self._settings

    @property
    def broker(self) -> BrokerAddress:
        """The broker of the current attempt or session (or of the next attempt)."""
        return self._settings.brokers[self._rotation.index]

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is ConnectionState.CONNECTED

    @property
    def connecting(self) -> bool:
        """True while an attempt holds a socket and waits for CONNACK."""
        return self._state is ConnectionState.CONNECTING

    @property
    def closed(self) -> bool:
        return self._state is ConnectionState.CLOSED

    def start(self, now: float) -> None:
        """Make the first connection attempt due at ``now``."""
        if self._state is ConnectionState.IDLE:
            self._state = ConnectionState.WAITING
            self._next_attempt = now

    # -- the Outbound port -----------------------------------------------------

    def publish(self, topic: str, payload: bytes, retain: bool, *, seq: int | None = None) -> int:
        """Send at QoS 1 now, or queue in memory until the session is back. Returns the message id.

        ``seq`` is accepted for the ``Outbound`` port and not used here.
        Raises OutboundFullError when ``max_queued_messages`` are already
        waiting, OutboundError if paho refuses the message itself or ``topic``
        is not one of this terminal's (its id is not the client id).
        """
        try:
            owner, _ = parse_topic(topic)
        except TopicError as exc:
            raise OutboundError(f"not a terminal topic: {exc}", topic=topic) from None
        if owner != self._settings.client_id:
            raise OutboundError(
                f"{self._settings.client_id} may not publish for {owner}", topic=topic
            )
        try:
            info = self._client.publish(topic, payload, qos=1, retain=retain)
        except ValueError as exc:
            raise OutboundError(str(exc), topic=topic) from None
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise OutboundFullError(self._settings.max_queued_messages, topic=topic)
        # SUCCESS, NO_CONN and CONN_LOST all leave the message queued for (re)sending.
        self.stats.published += 1
        return int(info.mid)

    def forget(self, mids: Collection[int]) -> None:
        """Drop these unacknowledged messages from paho's queue: they are not re-sent after
        the reconnect (the outbox sender hands them again itself, in order). Call it while
        disconnected; other queued messages (retained state) keep their place."""
        wanted = set(mids)
        if not wanted:
            return
        queued = self._client.drop_out_messages()
        kept = [m for m in queued if m.mid not in wanted]
        self.stats.forgotten += len(queued) - len(kept)
        for m in kept:  # re-queued in their order, with new ids nobody tracks
            self._client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)

    def pending_acks(self) -> int:
        """Messages accepted by ``publish`` whose PUBACK has not arrived yet."""
        s = self.stats
        return s.published - s.acked - s.ack_failures - s.forgotten

    # -- selector driving --------------------------------------------------------

    def fileno(self) -> int | None:
        """The socket to watch, or None while there is none."""
        sock = self._client.socket()
        if sock is None:
            return None
        fd = sock.fileno()
        return fd if fd >= 0 else None

    def wants_write(self) -> bool:
        """True while bytes wait to be written (register for EVENT_WRITE)."""
        return self._client.socket() is not None and self._client.want_write()

    def on_readable(self) -> None:
        """The socket is readable: let paho read and handle what arrived."""
        client = self._client
        rc = client.loop_read()
        sock = client.socket()
        # TLS may hold decrypted bytes the selector cannot see.
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and sock is not None and _pending(sock):
            rc = client.loop_read()
            sock = client.socket()
        self._settle(self._monotonic())

    def on_writable(self) -> None:
        """The socket can take bytes: let paho write what it queued."""
        self._client.loop_write()
        self._settle(self._monotonic())

    def service(self, now: float) -> None:
        """Housekeeping: keepalive pings and their timeout, the CONNACK deadline.

        What already arrived is read first: after the loop was busy (a slow
        probe), the broker's PINGRESP may be waiting in the socket, and paho's
        keepalive check would otherwise drop a healthy session.
        """
        self._last_service = now
        if self._client.socket() is not None:
            self._client.loop_read()
        if self._client.socket() is not None:
            self._client.loop_misc()
        if (
            self._state is ConnectionState.CONNECTING
            and now - self._attempt_started >= self._settings.connect_timeout_s
        ):
            self._drop_socket(ConnectTimeoutError("no CONNACK within connect_timeout_s"))
        self._settle(now)

    def connect_due(self, now: float) -> bool:
        """True if a connection attempt should be made now (the loop may delay it for a slot)."""
        return self._state is ConnectionState.WAITING and now >= self._next_attempt

    def next_service_at(self) -> float:
        """When ``service`` (or ``connect``) should next run, in monotonic seconds."""
        state = self._state
        if state is ConnectionState.WAITING:
            return self._next_attempt
        if state is ConnectionState.CONNECTING:
            return min(
                self._attempt_started + self._settings.connect_timeout_s,
                self._last_service + self._settings.service_period_s,
            )
        if state is ConnectionState.CONNECTED:
            return self._last_service + self._settings.service_period_s
        if state is ConnectionState.CLOSING:
            return self._last_service + 0.1
        return math.inf

    def connect(self, now: float) -> None:
        """Open the socket and send CONNECT (blocking for at most ``connect_timeout_s``).

        A failure is recorded in ``stats.last_error`` and schedules the next
        attempt; it never raises.
        """
        if self._state is not ConnectionState.WAITING:
            return
        try:
            will = self._listener.will_message()
        except ValueError as exc:
            self._attempt_failed(now, ConnectionSetupError(f"cannot build the will: {exc}"))
            return
        broker = self.broker
        if broker != self._aimed_at:
            self._aim(self._client, broker)
        self._client.will_set(self._will_topic, will, qos=1, retain=True)
        self._attempt_started = now
        self._last_service = now
        self._state = ConnectionState.CONNECTING
        try:
            rc = self._client.reconnect()
        except (OSError, ValueError) as exc:  # refused, timeout, DNS, TLS handshake/cert
            self._state = ConnectionState.WAITING
            cause = str(exc) or type(exc).__name__
            self._attempt_failed(now, BrokerUnreachableError(broker.host, broker.port, cause))
            return
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            error = BrokerUnreachableError(broker.host, broker.port, paho.error_string(rc))
            self._drop_socket(error)
        self._settle(now)

    def disconnect(self) -> None:
        """End the session cleanly (MQTT DISCONNECT, so the broker drops the will)."""
        if self._state is ConnectionState.CONNECTED:
            self._state = ConnectionState.CLOSING
            self._last_service = self._monotonic()
            self._client.disconnect()
            self._settle(self._monotonic())
        elif self._state is not ConnectionState.CLOSING:
            self.close()

    def abort(self) -> None:
        """Drop the TCP connection abruptly, without DISCONNECT (the broker sends the will).

        The connection then reconnects as after any loss. For tests and for a
        hard stop.
        """
        self._drop_socket(ConnectionLostError("aborted locally"))
        self._settle(self._monotonic())

    def close(self) -> None:
        """Stop for good: drop any socket (without DISCONNECT) and never reconnect."""
        self._state = ConnectionState.CLOSED
        self._drop_socket(None)
        self._settle(self._monotonic())

    # -- paho callbacks: record only, act in _settle -----------------------------

    def _paho_on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            self._refused = ConnectRefusedError(int(reason_code.value), str(reason_code))
        else:
            self._connack_ok = True
            self.stats.session_present = bool(flags.session_present)

    def _paho_on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self._closed_by_paho = True
        self._close_reason = str(reason_code)

    def _paho_on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            self.stats.ack_failures += 1
            log.warning(
                "%s: broker refused message %d: %s", self._settings.client_id, mid, reason_code
            )
        else:
            self.stats.acked += 1
        if self._delivered is not None:
            self._deliveries.append((int(mid), not reason_code.is_failure))

    def _paho_on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        for code in reason_codes:
            if code.is_failure:
                self._sub_refused = SubscribeRefusedError(int(code.value), str(code))

    def _paho_on_message(self, client: paho.Client, userdata: Any, message: Any) -> None:
        if self._command is not None and message.topic == self._cmd_topic:
            self._commands.append(bytes(message.payload))

    def _paho_on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._watcher is not None:
            self._watcher.socket_opened(sock.fileno())

    def _paho_on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._watcher is not None:
            self._watcher.socket_closed(sock.fileno())

    # -- state transitions -------------------------------------------------------

    def _drop_socket(self, error: MqttConnectionError | None) -> None:
        """Shut the socket down and let paho notice (it closes it and tells the watcher)."""
        sock = self._client.socket()
        if sock is None:
            return
        self._drop_error = error
        if isinstance(sock, socket.socket):  # ssl.SSLSocket included
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _ in range(1000):  # read out what is buffered until paho sees the end
            if self._client.socket() is None:
                break
            self._client.loop_read()

    def _settle(self, now: float) -> None:
        """Act on what paho reported during the last call, outside paho's own code."""
        if self._deliveries and self._delivered is not None:
            deliveries, self._deliveries = self._deliveries, []
            for mid, ok in deliveries:
                self._delivered(mid, ok)
        if self._commands and self._command is not None:
            commands, self._commands = self._commands, []
            for payload in commands:
                self._command(payload)
        if self._refused is not None:
            refused, self._refused = self._refused, None
            if self._closed_by_paho:  # paho closed the socket itself (MQTT v5 refusals)
                self._drop_error = refused
            else:
                self._drop_socket(refused)
        if self._sub_refused is not None:
            sub_refused, self._sub_refused = self._sub_refused, None
            if self._state is ConnectionState.CONNECTED:  # reconnect: subscribe again
                self._drop_socket(sub_refused)
        if self._connack_ok:
            self._connack_ok = False
            if self._state is ConnectionState.CONNECTING:
                self._state = ConnectionState.CONNECTED
                self._connected_since = now
                self.stats.connects += 1
                self._log(logging.INFO, "connected to %s", self._where())
                if self._command is not None:
                    self._client.subscribe(self._cmd_topic, qos=1)
                self._listener.on_connected()
        if self._closed_by_paho:
            self._closed_by_paho = False
            cause, self._drop_error = self._drop_error, None
            if self._state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
                self._state = ConnectionState.CLOSED
            elif self._state is ConnectionState.CONNECTED:
                self.stats.losses += 1
                stable = now - self._connected_since >= self._settings.stable_connection_s
                self._state = ConnectionState.WAITING
                self._listener.on_disconnected()
                error = cause or ConnectionLostError(self._close_reason)
                self._retry_later(now, error, stable=stable)
            elif self._state is ConnectionState.CONNECTING:
                self._state = ConnectionState.WAITING
                self.stats.connect_failures += 1
                self._retry_later(now, cause or ConnectionLostError(self._close_reason))

    def _attempt_failed(self, now: float, error: MqttConnectionError) -> None:
        self.stats.connect_failures += 1
        self._retry_later(now, error)

    def _retry_later(self, now: float, error: MqttConnectionError, *, stable: bool = False) -> None:
        """Record ``error`` and schedule the next attempt, at the next broker: a hop within a
        round, exponential backoff with full jitter after a full one (agent.broker_rotation)."""
        s = self._settings
        self.stats.last_error = error
        retry: Retry = self._rotation.failed(stable=stable)
        delay = retry_delay(retry, s.reconnect_min_s, s.reconnect_max_s, self._rng.uniform)
        self._next_attempt = now + delay
        switching = retry.rotation.index != self._rotation.index
        self._rotation = retry.rotation
        if switching:
            self.stats.switches += 1
            self._log(logging.WARNING, "%s; switching to %s in %.1f s", error, self._where(), delay)
        else:
            self._log(logging.WARNING, "%s; retrying in %.1f s", error, delay)

    def _where(self) -> str:
        """The current broker for a log line, with its place in the list when there are several."""
        count = len(self._settings.brokers)
        place = f" (broker {self._rotation.index + 1} of {count})" if count > 1 else ""
        return f"{self.broker.url}{place}"

    def _log(self, level: int, msg: str, *args: object) -> None:
        if self._settings.quiet:
            level = logging.DEBUG
        log.log(level, "%s: " + msg, self._settings.client_id, *args)


def _pending(sock: Any) -> bool:
    """Bytes already decrypted inside a TLS socket (0 for plain TCP)."""
    if isinstance(sock, ssl.SSLSocket):
        return sock.pending() > 0
    return False
