"""The wire messages: one envelope, typed bodies, and the normalised peripheral states.

Agent, server and tests import these models; nothing else defines the wire.
Which conditions fit which kind of peripheral is ``protocol.taxonomy``'s table;
``PeripheralKind`` and ``PeripheralCondition`` are re-exported from there.
Every message is a JSON object::

    {"schema": "kf.report", "version": 1, "terminal_id": "T-0001",
     "boot_id": "9f0c...", "seq": 42, "sent_at": "2026-11-27T02:26:32.1Z",
     "body": {...}}

Unknown fields are an error (``extra="forbid"``); scalar types are strict
(``"1"`` is not an int). A newer schema version is a new model registered in
``SCHEMAS``, never silent acceptance. This module never does I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from protocol.taxonomy import PeripheralCondition, PeripheralKind, allowed_conditions
from protocol.topics import TERMINAL_ID_PATTERN, Channel

__all__ = [
    "SCHEMAS",
    "SCHEMA_CHANNEL",
    "BootEvent",
    "EventBody",
    "EventMessage",
    "Message",
    "PeripheralChangedEvent",
    "PeripheralCondition",
    "PeripheralKind",
    "PeripheralStatus",
    "ReportBody",
    "ReportMessage",
    "StateBody",
    "StateMessage",
    "TerminalState",
    "UpdateMessage",
    "UsageMessage",
    "is_problem",
]


def is_problem(condition: PeripheralCondition) -> bool:
    """True for every condition an operator should look at (all but ``ok``)."""
    return condition is not PeripheralCondition.OK


class TerminalState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)

# Strict JSON mode accepts only RFC 3339 strings here (never bare numbers).
Timestamp = AwareDatetime
# StringConstraints, not Field(): these types are also used inside dict/list type
# arguments, where pydantic ignores Field() constraints.
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
Label = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._:-]*$"),
]
# Device-supplied text never carries control characters (NUL breaks PostgreSQL text
# columns; newlines and escapes forge log lines and label values).
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Text = Annotated[str, StringConstraints(max_length=256, pattern=_PRINTABLE)]
Version = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_PRINTABLE)]
FaultCode = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_PRINTABLE)]
AgentVersion = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=_PRINTABLE)]
Seconds = Annotated[float, Field(ge=0, le=10 * 365 * 86400, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class PeripheralStatus(_Strict):
    """One peripheral's normalised condition at one moment."""

    name: Name
    kind: PeripheralKind
    condition: PeripheralCondition
    fault_code: FaultCode | None = None
    detail: Text | None = None

    @model_validator(mode="after")
    def _condition_fits_kind(self) -> PeripheralStatus:
        if self.condition not in allowed_conditions(self.kind):
            raise ValueError(
                f"condition {self.condition.value!r} does not apply to {self.kind.value}"
            )
        return self


class StateBody(_Strict):
    """Retained presence: ``online`` on connect, ``offline`` as the will or on shutdown."""

    state: TerminalState
    reason: Literal["connect", "shutdown", "connection_lost"]
    hall: Label | None = None
    region: Label | None = None
    model: Label | None = None


class ReportBody(_Strict):
    """The full periodic health report (the heartbeat)."""

    hall: Label
    region: Label
    model: Label
    agent_version: AgentVersion
    uptime_s: Seconds
    report_interval_s: Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False)]
    peripherals: Annotated[list[PeripheralStatus], Field(max_length=32)]
    software: Annotated[dict[Name, Version], Field(max_length=32)] = {}
    # Periodic reports the agent's outbox dropped (oldest first, when full) since
    # this boot_id's stream began: cumulative, so a lost report does not lose the count.
    dropped_reports: Annotated[int, Field(ge=0, le=2**53)] = 0

    @model_validator(mode="after")
    def _unique_peripheral_names(self) -> ReportBody:
        names = [p.name for p in self.peripherals]
        if len(names) != len(set(names)):
            raise ValueError("peripheral names must be unique")
        return self


class PeripheralChangedEvent(_Strict):
    """A peripheral's condition changed (a fault raised or cleared)."""

    type: Literal["peripheral_changed"]
    peripheral: PeripheralStatus
    previous: PeripheralCondition | None = None


class BootEvent(_Strict):
    """The agent started (after a terminal boot or an agent restart)."""

    type: Literal["boot"]
    uptime_s: Seconds
    agent_version: AgentVersion


EventBody = Annotated[PeripheralChangedEvent | BootEvent, Field(discriminator="type")]


class _Envelope(_Strict):
    version: Literal[1]
    terminal_id: Annotated[str, Field(pattern=TERMINAL_ID_PATTERN)]
    boot_id: Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]
    seq: Annotated[int, Field(ge=0, le=2**53)]
    sent_at: Timestamp

    @model_validator(mode="after")
    def _plausible_time(self) -> _Envelope:
        if not _EARLIEST <= self.sent_at <= _LATEST:
            raise ValueError("sent_at is outside 2000..2200")
        return self


class StateMessage(_Envelope):
    """``seq`` is the last stream seq the agent had assigned when it built this."""

    schema_: Literal["kf.state"] = Field(alias="schema")
    body: StateBody


class ReportMessage(_Envelope):
    schema_: Literal["kf.report"] = Field(alias="schema")
    body: ReportBody


class EventMessage(_Envelope):
    schema_: Literal["kf.event"] = Field(alias="schema")
    body: EventBody


# The update channel's message lives in its own module, which builds on the envelope
# above; imported here, after everything it uses is defined (protocol/__init__ and
# protocol.codec import this module first).
from protocol.update_status import (  # noqa: E402 - needs _Envelope and Text defined first
    UPDATE_SCHEMA_CHANNEL,
    UPDATE_SCHEMAS,
    UpdateMessage,
)
from protocol.usage import (  # noqa: E402 - needs _Envelope defined first
    USAGE_SCHEMA_CHANNEL,
    USAGE_SCHEMAS,
    UsageMessage,
)

Message = StateMessage | ReportMessage | EventMessage | UpdateMessage | UsageMessage

SCHEMAS: Final[dict[tuple[str, int], type[Message]]] = {
    ("kf.state", 1): StateMessage,
    ("kf.report", 1): ReportMessage,
    ("kf.event", 1): EventMessage,
    **UPDATE_SCHEMAS,
    **USAGE_SCHEMAS,
}

SCHEMA_CHANNEL: Final[dict[str, Channel]] = {
    "kf.state": Channel.STATE,
    "kf.report": Channel.REPORT,
    "kf.event": Channel.EVENT,
    **UPDATE_SCHEMA_CHANNEL,
    **USAGE_SCHEMA_CHANNEL,
}
