"""The one shape an MQTT message has inside the server, whatever client library delivered it.

A frozen value: the MQTT adapter builds it, the ingest reads it. Never holds a
library object and never does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["InboundMessage"]


@dataclass(frozen=True, slots=True)
class InboundMessage:
    topic: str
    payload: bytes
    retained: bool  # a stored retained message delivered on subscribe, not a live one
    received_at: datetime  # server time (UTC) when the adapter got it
