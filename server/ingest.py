"""The ingest: what happens to one inbound MQTT message, from bytes to fleet state.

The ingest gate (``server.ingest_gate``: an enrolled, active id within its
message budget; judged on the topic alone) → ``decode`` (the protocol's single gate) → ``FleetState.apply`` → queue the
changes, the event or update-status row (``kf.update``: also noted in the
``UpdateTally``) and the message's broker delivery for the batched
database writer (which acknowledges the delivery once the changes are
committed) → metrics. A message that is not applied (rejected, duplicate,
stale, refused by a rule such as ``seq_jump``) is handed to the writer's ``settle``: acknowledged with the next flush,
after everything received before it. With an ``owner`` (``ingest_ownership = "partition"``,
``server.ownership``) a message of a terminal this replica does not write is applied to the
fleet state all the same (the whole view) and then only settled: the owner writes and
confirms it (``kioskfleet_ingest_not_owned_total``). A gap fill (``Outcome.filled``: a late message
inside an open sequence gap) is stored like any message of its kind and counted
(``kioskfleet_ingest_gap_fills_total``), except an update status a later one already
followed (``Outcome.superseded``): it is neither stored nor tallied, since the newest
``update_status`` row is the terminal's current update state. It runs on the MQTT
adapter's network thread for every message, so it stays lean: no database I/O,
no per-message logging, no lock held beyond the fleet state's own.

It must never raise: a rejected message is counted
(``kioskfleet_ingest_rejected_total{reason}``) and logged at most once per
reason per interval; an unexpected exception is counted as reason
``internal`` and logged with its traceback (also rate-limited).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from enum import StrEnum
from typing import Final, Protocol

from protocol.codec import decode
from protocol.errors import ProtocolError, TopicError
from protocol.messages import (
    EventMessage,
    Message,
    ReportMessage,
    StateMessage,
    UpdateMessage,
    UsageMessage,
)
from protocol.topics import Channel, parse_topic
from server.fleet_collector import UNKNOWN_LABEL
from server.fleet_state import FleetState
from server.fleet_views import CONNECTIVITY, Transition, Verdict
from server.inbound import Delivery, InboundMessage
from server.ingest_gate import IngestGate
from server.log_throttle import ThrottledLog
from server.metrics import INTERNAL_REASON, ServerMetrics
from server.paper_tracker import PaperTracker
from server.records import EventRecord, UpdateRecord, UsageRecord
from server.service_catalogue import OTHER_SERVICE
from server.update_tally import UpdateTally
from server.usage_metrics import UsageMetrics

__all__ = ["Ingest", "IngestResult", "OwnerGate", "WriteSink"]

log = logging.getLogger(__name__)

_CHANNEL_OF: Final = {
    StateMessage: Channel.STATE,
    ReportMessage: Channel.REPORT,
    EventMessage: Channel.EVENT,
    UpdateMessage: Channel.UPDATE,
    UsageMessage: Channel.USAGE,
}
_MAX_LOGGED_TEXT: Final = 300


class WriteSink(Protocol):
    """Where the ingest hands what must be persisted (the batched writer, or a fake)."""

    def record(
        self,
        terminal_id: str,
        *,
        peripherals_changed: bool = False,
        transitions: Sequence[Transition] = (),
        event: EventRecord | None = None,
        update: UpdateRecord | None = None,
        usage: UsageRecord | None = None,
        delivery: Delivery | None = None,
        position_only: bool = False,
    ) -> None:
        """Mark ``terminal_id`` for writing, queue its transitions, event and update status,
        and acknowledge ``delivery`` once they are committed. ``position_only``: only the
        row's ``POSITION_FIELDS`` changed (``Outcome.position_only``). Must be cheap."""
        ...

    def settle(self, delivery: Delivery | None, *, terminal_id: str | None = None) -> None:
        """Acknowledge a message that changed nothing (after what was received before it);
        with ``terminal_id`` (a duplicate) also confirm that terminal's committed position."""
        ...

    def applying(self) -> AbstractContextManager[object]:
        """Held while the fleet state is changed and the change recorded (see WriteBehind)."""
        ...


class OwnerGate(Protocol):
    """Whether this replica writes a terminal (``server.ownership.Ownership``). Asked while
    holding the writer's ``applying()``."""

    def writes(self, terminal_id: str) -> bool: ...


class IngestResult(StrEnum):
    ACCEPTED = "accepted"
    NOT_OWNED = "not_owned"  # applied to the fleet state; another replica writes it
    CLEARED = "cleared"
    DUPLICATE = "duplicate"
    STALE = "stale"
    REJECTED = "rejected"
    INTERNAL_ERROR = "internal_error"


class Ingest:
    """Applies inbound messages to the fleet state. Call ``handle`` from one thread."""

    def __init__(
        self,
        fleet: FleetState,
        sink: WriteSink,
        metrics: ServerMetrics,
        *,
        max_payload_bytes: int,
        throttled_log: ThrottledLog | None = None,
        gate: IngestGate | None = None,
        update_tally: UpdateTally | None = None,
        usage_metrics: UsageMetrics | None = None,
        service_label: Callable[[str], str] = lambda _code: OTHER_SERVICE,
        paper: PaperTracker | None = None,
        owner: OwnerGate | None = None,
    ) -> None:
        """``usage_metrics`` counts transactions (``service_label``: the code's label,
        ``ServiceStore.label``) and refusals on the usage channel; ``paper`` is told the
        pages printed and the printers' condition changes (the paper forecasts)."""
        self._paper = paper
        self._owner = owner
        self._usage_metrics = usage_metrics
        self._service_label = service_label
        self._fleet = fleet
        self._update_tally = update_tally
        self._gate = gate
        self._sink = sink
        self._metrics = metrics
        self._max_bytes = max_payload_bytes
        self._log = throttled_log or ThrottledLog(log)
        self._duplicate_of: str | None = None  # the terminal of the last duplicate handled
        # Bound children once: labels() costs a lock and a dict lookup per call.
        self._accepted = {
            kind: metrics.ingest_messages.labels(channel.value)
            for kind, channel in _CHANNEL_OF.items()
        }
        self._offline = {
            reason: metrics.offline_detected.labels(reason)
            for reason in ("will", "shutdown", "timeout")
        }

    def handle(self, inbound: InboundMessage) -> IngestResult:
        """Process one message. Never raises."""
        try:
            result = self._handle(inbound)
        except Exception:  # noqa: BLE001 - the server must survive any input
            result = IngestResult.INTERNAL_ERROR
            self._metrics.ingest_rejected.labels(INTERNAL_REASON).inc()
            self._log.log(
                logging.ERROR,
                INTERNAL_REASON,
                "ingest failed on topic %r: internal error",
                _clip(inbound.topic),
                exc_info=True,
            )
        if result is IngestResult.DUPLICATE:
            # An agent re-sending what it has no kf.committed for: confirm again.
            self._sink.settle(inbound.delivery, terminal_id=self._duplicate_of)
        elif result is not IngestResult.ACCEPTED:
            self._sink.settle(inbound.delivery)
        return result

    def _handle(self, inbound: InboundMessage) -> IngestResult:
        try:
            parsed = parse_topic(inbound.topic)  # once: decode takes it as it is
            terminal_id, channel = parsed
            if not inbound.payload and channel is Channel.STATE:
                self._metrics.state_cleared.inc()  # the server cleared it (decommission)
                return IngestResult.CLEARED
            if self._gate is not None:  # before decoding: a refused id costs almost nothing
                refused = self._gate.admit(terminal_id)
                if refused is not None:
                    return self._reject(inbound, refused, f"terminal {terminal_id!r} refused")
            message = decode(
                inbound.topic, inbound.payload, max_bytes=self._max_bytes, parsed=parsed
            )
        except ProtocolError as exc:
            return self._reject(inbound, exc.reason, exc.message)

        with self._sink.applying():  # no flush copies the state before it is recorded
            return self._apply(message, inbound)

    def _reject(self, inbound: InboundMessage, reason: str, message: str) -> IngestResult:
        self._metrics.ingest_rejected.labels(reason).inc()
        if self._usage_metrics is not None and _channel(inbound.topic) is Channel.USAGE:
            self._usage_metrics.refused.labels(reason).inc()
        self._log.warning(
            reason,
            "rejected message on topic %r: %s: %s",
            _clip(inbound.topic),
            reason,
            _clip(message),
        )
        return IngestResult.REJECTED

    def _apply(self, message: Message, inbound: InboundMessage) -> IngestResult:
        writes = self._owner is None or self._owner.writes(message.terminal_id)
        outcome = self._fleet.apply(message, inbound.received_at, retained=inbound.retained)
        if outcome.verdict is Verdict.REFUSED:
            reason = outcome.reason or "refused"
            return self._reject(inbound, reason, f"seq {message.seq} refused by the rules")
        if outcome.verdict is not Verdict.ACCEPTED:
            # Retained re-deliveries (every re-subscribe) are expected, not duplicates.
            if not inbound.retained:
                self._metrics.ingest_duplicates.inc()
            self._duplicate_of = message.terminal_id if writes and not inbound.retained else None
            return (
                IngestResult.DUPLICATE
                if outcome.verdict is Verdict.DUPLICATE
                else IngestResult.STALE
            )

        event = None
        if isinstance(message, EventMessage):
            event = EventRecord(
                terminal_id=message.terminal_id,
                boot_id=message.boot_id,
                seq=message.seq,
                type=message.body.type,
                sent_at=message.sent_at,
                received_at=inbound.received_at,
                body=message.body.model_dump(mode="json"),
            )
        update = None
        if isinstance(message, UpdateMessage) and not outcome.superseded:
            update = _update_record(message, inbound)
            if self._update_tally is not None:
                self._update_tally.note(update.terminal_id, update.state)
        usage = None
        if isinstance(message, UsageMessage):
            usage = self._usage(message, inbound)
        self._accepted[type(message)].inc()
        if outcome.missing:
            self._metrics.ingest_seq_gaps.inc(outcome.missing)
        if outcome.filled:
            self._metrics.ingest_gap_fills.inc()
        if not inbound.retained:
            delay = (inbound.received_at - message.sent_at).total_seconds()
            self._metrics.ingest_delay.observe(delay if delay > 0 else 0.0)
        for t in outcome.transitions:
            if t.kind == CONNECTIVITY and t.from_state == "online" and t.reason in self._offline:
                self._offline[t.reason].inc()  # a first sighting offline is no detection
            elif self._paper is not None:
                self._paper.note_transition(t)
        if self._paper is not None and usage is not None:
            self._paper.note_usage(usage.terminal_id, usage.occurred_at, usage.pages)
        if not writes:  # the owner writes and confirms it; handle() settles the delivery
            self._metrics.ingest_not_owned.inc()
            return IngestResult.NOT_OWNED
        # Last: once recorded, the delivery is the writer's to acknowledge.
        self._sink.record(
            message.terminal_id,
            peripherals_changed=outcome.peripherals_changed,
            transitions=outcome.transitions,
            event=event,
            update=update,
            usage=usage,
            delivery=inbound.delivery,
            position_only=outcome.position_only,
        )
        return IngestResult.ACCEPTED

    def _usage(self, message: UsageMessage, inbound: InboundMessage) -> UsageRecord:
        body = message.body
        if self._usage_metrics is not None:
            view = self._fleet.get(message.terminal_id)
            self._usage_metrics.transactions.labels(
                (view.region if view else None) or UNKNOWN_LABEL,
                (view.hall if view else None) or UNKNOWN_LABEL,
                self._service_label(body.service),
                body.outcome.value,
            ).inc()
        return UsageRecord(
            terminal_id=message.terminal_id,
            boot_id=message.boot_id,
            seq=message.seq,
            service=body.service,
            outcome=body.outcome.value,
            cause=None if body.cause is None else body.cause.value,
            duration_s=body.duration_s,
            pages=body.pages,
            occurred_at=message.sent_at,
            received_at=inbound.received_at,
        )


def _channel(topic: str) -> Channel | None:
    try:
        return parse_topic(topic)[1]
    except TopicError:
        return None


def _update_record(message: UpdateMessage, inbound: InboundMessage) -> UpdateRecord:
    body = message.body
    return UpdateRecord(
        terminal_id=message.terminal_id,
        boot_id=message.boot_id,
        seq=message.seq,
        rollout_id=body.rollout_id,
        directive_seq=body.directive_seq,
        attempt=body.attempt,
        state=body.state.value,
        reason=None if body.reason is None else str(body.reason.value),
        detail=body.detail,
        occurred_at=message.sent_at,
        received_at=inbound.received_at,
    )


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_LOGGED_TEXT else text[:_MAX_LOGGED_TEXT] + "..."
