"""The one shape an MQTT message has inside the server, whatever client library delivered it.

A frozen value: the MQTT adapter builds it, the ingest reads it. Never holds a
library object and never does I/O. ``delivery`` names the broker's delivery
so that it can be acknowledged later (``MessageSource.ack``), once what the
message changed is committed to the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

__all__ = ["Delivery", "InboundMessage"]

Delivery: TypeAlias = tuple[int, int]
"""(connection number, packet id) of a QoS 1 delivery: a packet id means something only on
the connection that delivered it (after a reconnect the broker redelivers and reuses ids)."""


@dataclass(frozen=True, slots=True)
class InboundMessage:
    topic: str
    payload: bytes
    retained: bool  # a stored retained message delivered on subscribe, not a live one
    received_at: datetime  # server time (UTC) when the adapter got it
    mid: int = 0  # the delivery's packet id; 0 for QoS 0 (nothing to acknowledge)
    connection: int = 0  # which connection of the adapter delivered it

    @property
    def delivery(self) -> Delivery | None:
        """What to acknowledge for this message; None when there is nothing to acknowledge."""
        return (self.connection, self.mid) if self.mid else None
