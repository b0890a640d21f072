"""The in-memory ``MessageSource``: a broker connection that tests drive by hand.

``InMemorySource`` implements ``server.message_source.MessageSource`` without
a network: a test says when the connection comes up (``connect``) or drops
(``connection_lost``), hands in messages (``deliver``, stamped and numbered as
the real adapter does) and reads what the server acknowledged, in order
(``acked``). It keeps the same acknowledgement rule as ``MqttSource`` (the
port's ``DeliveryGate``) and the same pause and stop semantics, so a test of
the server over it proves what the server does with a real broker's
deliveries. ``InMemorySource.factory(sources)`` is a ``SourceFactory`` that
remembers what it built, for ``Server(settings, source=...)``.

Unlike the real adapter it calls the message handler on the caller's thread
and lets the handler's exceptions propagate (a test should see them). It never
opens a socket and never imports paho.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from server.errors import BrokerError
from server.inbound import Delivery, InboundMessage
from server.message_source import (
    ConnectionHandler,
    DeliveryGate,
    MessageHandler,
    SourceFactory,
)

__all__ = ["InMemorySource"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class InMemorySource:
    """A ``MessageSource`` whose connection and deliveries a test controls."""

    def __init__(
        self,
        on_message: MessageHandler,
        *,
        on_connection_change: ConnectionHandler | None = None,
        connect_on_start: bool = True,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        """``connect_on_start``: ``start()`` also brings the connection up (as a reachable
        broker would); False leaves it to the test's ``connect()``."""
        self._on_message = on_message
        self._on_connection_change = on_connection_change
        self._connect_on_start = connect_on_start
        self._publish_listener: Callable[[], None] | None = None
        self._clock = clock
        self._gate = DeliveryGate()
        self._lock = threading.Lock()  # guards acked and the packet-id counter
        self._connected_since: datetime | None = None
        self._next_mid = 0
        self.acked: list[Delivery] = []
        """Every acknowledgement sent, in the order sent."""
        self.start_error: BrokerError | None = None
        """Raised by ``start()`` when set (a source that cannot start: bad TLS files, ...)."""
        self.started = False
        self.paused = False
        self.stopped = False
        self.cleared: list[str] = []
        """Every topic whose retained message the server cleared, in order."""
        self.published: list[tuple[str, bytes]] = []
        """Every (topic, payload) the server published, in order."""

    @classmethod
    def factory(
        cls, built: list[InMemorySource], *, connect_on_start: bool = True
    ) -> SourceFactory:
        """A ``SourceFactory`` that builds an ``InMemorySource`` and appends it to ``built``."""

        def build(
            on_message: MessageHandler, *, on_connection_change: ConnectionHandler
        ) -> InMemorySource:
            source = cls(
                on_message,
                on_connection_change=on_connection_change,
                connect_on_start=connect_on_start,
            )
            built.append(source)
            return source

        return build

    # --- the port -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected_since is not None

    @property
    def connected_since(self) -> datetime | None:
        return self._connected_since

    def start(self) -> None:
        """Raises ``start_error`` if set, BrokerError if already started."""
        if self.start_error is not None:
            raise self.start_error
        if self.started:
            raise BrokerError("the in-memory source is already started")
        self.started = True
        if self._connect_on_start:
            self.connect()

    def ack(self, deliveries: Iterable[Delivery]) -> int:
        return self._gate.acknowledge(deliveries, self._record_ack)

    def pause(self) -> None:
        self.paused = True

    def clear_retained(self, topic: str) -> bool:
        if not self.connected:
            return False
        self.cleared.append(topic)
        return True

    def publish(self, topic: str, payload: bytes) -> bool:
        if not self.connected:
            return False
        self.published.append((topic, payload))
        return True

    def publish_volatile(self, topic: str, payload: bytes) -> bool:
        return self.publish(topic, payload)  # recorded alike: the QoS does not matter here

    def publish_window(self) -> int:
        """Unbounded while connected: a publish here is done at once."""
        return 1_000_000 if self.connected else 0

    def set_publish_listener(self, listener: Callable[[], None]) -> None:
        self._publish_listener = listener  # never called: no publish waits here

    def stop(self) -> None:
        self.paused = True
        self.stopped = True
        if self.connected:
            self.connection_lost()

    # --- what a test does -----------------------------------------------------------------

    def connect(self) -> None:
        """The connection comes up (and is subscribed): a new connection number."""
        self._gate.new_connection()
        with self._lock:
            self._next_mid = 0
        self._set_connected(True)

    def connection_lost(self) -> None:
        """The connection drops: what it delivered can no longer be acknowledged."""
        self._gate.new_connection()
        self._set_connected(False)

    def deliver(
        self,
        topic: str,
        payload: bytes,
        *,
        retained: bool = False,
        qos: int = 1,
        mid: int | None = None,
    ) -> InboundMessage | None:
        """Hand one message to the handler as the broker would; returns it, or None when
        paused (then nothing is passed on, as with the real adapter).

        ``mid``: the packet id (default: the next of this connection, from 1); QoS 0 has
        none. Raises RuntimeError while not connected (no broker delivers then).
        """
        if not self.connected:
            raise RuntimeError("the in-memory source is not connected")
        if self.paused:
            return None
        if qos == 0:
            mid = 0
        elif mid is None:
            with self._lock:
                self._next_mid = self._next_mid % 65535 + 1
                mid = self._next_mid
        message = InboundMessage(
            topic,
            payload,
            retained,
            self._clock(),
            mid=mid,
            connection=self._gate.connection,
        )
        self._on_message(message)
        return message

    # --- internals ------------------------------------------------------------------------

    def _record_ack(self, mid: int) -> bool:
        with self._lock:
            self.acked.append((self._gate.connection, mid))
        return True

    def _set_connected(self, up: bool) -> None:
        was = self.connected
        self._connected_since = self._clock() if up else None
        if was != up and self._on_connection_change is not None:
            self._on_connection_change(up)
