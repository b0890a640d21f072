"""The port the server receives the terminals' messages through, and the rule every source keeps.

``MessageSource`` is what the server needs of "an MQTT source": ``start``
receiving (connecting, subscribing and reconnecting happen in the background),
hand each message to the handler it was built with as a frozen
``InboundMessage``, ``ack`` deliveries once what they changed is committed,
``pause`` intake for a graceful stop, ``stop``, and say whether it is
``connected`` and since when (``connected_since``: the offline sweep holds no
silence from before it against a terminal). ``SourceFactory`` builds one
around the server's handlers; ``Server(settings, source=...)`` takes it.

Two implementations: ``server.mqtt_source.MqttSource`` (paho, the only server
module that imports it) and ``server.in_memory_source.InMemorySource``, the
fake that tests drive by hand (connect, lose the connection, deliver, read the
acknowledgements in order).

``DeliveryGate`` is the acknowledgement rule both share: a packet id means
something only on the connection that delivered it (after a reconnect the
broker redelivers what was not acknowledged and reuses ids), so a delivery of an
earlier connection is never acknowledged on a later one. The connection number
changes when a connection ends and again before the next begins, under the
same lock ``acknowledge`` holds, so an acknowledgement queued late cannot go out
on the next connection. Pure: no I/O, no library import.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Protocol, TypeAlias

from server.inbound import Delivery, InboundMessage

__all__ = [
    "ConnectionHandler",
    "DeliveryGate",
    "MessageHandler",
    "MessageSource",
    "SourceFactory",
]

MessageHandler: TypeAlias = Callable[[InboundMessage], object]
"""Called once per message, on the source's thread; must be quick and must not raise."""

ConnectionHandler: TypeAlias = Callable[[bool], None]
"""Called with True when the source is connected and subscribed, False when that ends."""


class MessageSource(Protocol):
    """Where the server's inbound messages come from (see the module docstring)."""

    @property
    def connected(self) -> bool:
        """True while connected and subscribed."""
        ...

    @property
    def connected_since(self) -> datetime | None:
        """When the current connection was established (UTC); None while disconnected."""
        ...

    def start(self) -> None:
        """Begin receiving; connecting happens in the background. Raises BrokerError if the
        source cannot even start."""
        ...

    def ack(self, deliveries: Iterable[Delivery]) -> int:
        """Acknowledge these deliveries in the order given, skipping those of an earlier
        connection and QoS 0 ones; thread-safe. Returns how many were acknowledged."""
        ...

    def pause(self) -> None:
        """Stop passing messages on; those that arrive now are not acknowledged either."""
        ...

    def clear_retained(self, topic: str) -> bool:
        """Publish an empty retained message on ``topic`` so that the broker forgets what it
        kept there (a decommissioned terminal's ``state``). False when not connected:
        nothing was sent."""
        ...

    def publish(self, topic: str, payload: bytes) -> bool:
        """Publish ``payload`` on ``topic`` with QoS 1, not retained (a signed directive on a
        terminal's ``cmd``). False when not connected or the client refused it: nothing was
        sent, the caller retries later."""
        ...

    def publish_volatile(self, topic: str, payload: bytes) -> bool:
        """Publish ``payload`` on ``topic`` at QoS 0 (a ``kf.committed``: the next one, or the
        agent's re-send, covers a lost one). False when not connected: nothing was sent."""
        ...

    def publish_window(self) -> int:
        """How many more ``publish_volatile`` go out now without queueing behind others in
        the client (those not yet written to the socket hold the room); 0 while
        disconnected."""
        ...

    def set_publish_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever a publish is done (written, or acknowledged), on the
        source's thread: it must be quick and must not raise."""
        ...

    def stop(self) -> None:
        """Pause, let the queued acknowledgements out (bounded wait), disconnect, stop."""
        ...


class SourceFactory(Protocol):
    """Builds a source around the server's message and connection handlers."""

    def __call__(
        self, on_message: MessageHandler, *, on_connection_change: ConnectionHandler
    ) -> MessageSource: ...


class DeliveryGate:
    """Numbers a source's connections and acknowledges only deliveries of the current one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection = 0

    @property
    def connection(self) -> int:
        """The number to stamp on what the current connection delivers."""
        return self._connection

    def new_connection(self) -> None:
        """Void the acknowledgements of the connection that ended (or never was)."""
        with self._lock:
            self._connection += 1

    def acknowledge(self, deliveries: Iterable[Delivery], send: Callable[[int], bool]) -> int:
        """Call ``send(packet_id)`` for each delivery of the current connection, in order
        (never for packet id 0, a QoS 0 message); returns how many ``send`` accepted."""
        sent = 0
        with self._lock:  # the connection cannot change while these are queued
            current = self._connection
            for connection, mid in deliveries:
                if connection == current and mid and send(mid):
                    sent += 1
        return sent
