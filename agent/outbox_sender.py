"""Between the Agent and its MQTT connection: store first, then send at a bounded pace.

``OutboxSender`` implements the Agent's ``Outbound`` port. A stream message
(report, event, update: it carries a ``seq``) is appended to the ``Outbox``
first and handed to the connection only while the session is up, oldest
first, with at most ``max_inflight`` handed and not yet acknowledged, at the
pace of a token bucket (``drain_rate_per_s``, ``drain_burst``). After a
(re)connect that finds a backlog it waits a random ``uniform(0,
drain_jitter_s)`` before draining, so a whole hall coming back does not flood
the server; normal traffic (a report a minute) never waits. A PUBACK removes
the row (``on_delivered``); a PUBACK with a failure code removes it too, and
counts and logs it (``refused``). paho re-sends its own in-flight messages
after a reconnect, so a row is never handed twice in one process; after a
process restart every remaining row is sent again (the server deduplicates by
``(terminal, boot_id, seq)``).

Retained ``state`` messages (presence, not history) go straight to the
connection. If the outbox cannot store a message (``OutboxError``: disk full,
I/O error), the message is still sent from memory (not durable, bounded by
``max_memory``), ``outbox_errors`` counts it and each distinct reason is
logged once; the sender never raises for it.

End-to-end confirmation (``require_commit_confirmation``, on in the agent's
config by default): a PUBACK only frees the in-flight window and the row stays
("sent, unconfirmed") until the server's ``kf.committed`` on this terminal's
``cmd`` (``on_committed``) names this stream's ``boot_id`` and a seq at or above
the row's: a broker that acknowledged and then lost a message (mosquitto killed
between autosaves, a JetStream leader change) cannot lose it for good. When the
session drops, the rows paho still holds are taken back from it
(``DeliveryConnection.forget``) and the cursor rewinds to the oldest row still
stored: after the reconnect, after ``resend_grace_s`` (plus the drain jitter) in
which the confirmations the broker queued for this session arrive, everything
unconfirmed is handed again in seq order, before anything newer, so the server
(which applies a stream strictly in seq order) never sees a later seq first and
counts the lost ones as gaps. Re-sent messages it already has are duplicates it
acknowledges and confirms again. A clean stop waits (bounded) for the
confirmations of what was handed.

Gap refills: a ``kf.committed`` may list ``missing`` ranges below its seq (a
broker acknowledged them and lost them, the session never dropped). Those rows
stay (``Outbox.remove_through`` keeps them) and the ones already handed in this
session are handed again at once, in seq order, ahead of anything newer, within
the window and the token bucket: one of the two cases where a row is handed twice
in one process. Confirmations list a gap until its fill is committed, so a refill
pass starts at most every ``refill_retry_s`` (a re-send the broker lost again is
re-sent by a later pass), also during a clean stop's wait for confirmations. A
missing row the outbox no longer has (dropped for its quota) is not re-sent; the
server forgets that gap after its window.

Confirmation timeout, the other case: a ``kf.committed`` can itself be lost (a
JetStream leader change loses QoS 1 messages both ways), and a terminal that says
nothing newer would then keep its rows forever. When rows handed in this session
have waited ``confirm_timeout_s`` with no ``kf.committed`` covering any of them,
the oldest ``max_inflight`` of them are handed again in seq order (a pass like a
refill, within the window and the token bucket); the server answers what it
already has as a duplicate by confirming again, and applies what it never got.
Each further timeout without progress waits twice as long (up to
``_MAX_CONFIRM_WAIT_S``), so a server that is down is not flooded; a
confirmation that covers a row starts over at ``confirm_timeout_s``. During a
clean stop's wait the timeout is at most ``_STOP_CONFIRM_TIMEOUT_S`` (that wait
is short). ``confirm_timeouts`` counts the timeouts, ``refilled`` the rows both
kinds of pass handed again.

The event loop drives it: ``next_due()`` says when ``pump(now)`` has work,
``on_connected``/``on_disconnected`` come from the session. This module never
imports paho or sqlite3 and never decides what a terminal says.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from agent.agent import OutboundError, OutboundFullError
from agent.outbox import Outbox, OutboxError, OutboxStats
from protocol.codec import DEFAULT_MAX_PAYLOAD_BYTES
from protocol.errors import TopicError
from protocol.topics import parse_topic

__all__ = ["DeliveryConnection", "OutboxSender", "SenderSettings", "SenderStats"]

log = logging.getLogger(__name__)

_RETRY_S: Final = 1.0  # after the outbox or the connection refused, try again this much later
_MAX_CONFIRM_WAIT_S: Final = 300.0  # the confirmation timeout's back-off stops doubling here
_STOP_CONFIRM_TIMEOUT_S: Final = 2.0  # the confirmation timeout while a clean stop waits


class DeliveryConnection(Protocol):
    """What the sender needs of the MQTT connection (``MqttConnection`` is the real one)."""

    @property
    def connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, retain: bool) -> int:
        """Send at QoS 1 (or queue); returns the message id its ``on_delivered`` will name.

        Raises OutboundError when it cannot accept the message.
        """
        ...

    def forget(self, mids: Collection[int]) -> None:
        """Drop these unacknowledged messages: never re-send them after a reconnect."""
        ...


@dataclass(frozen=True, slots=True)
class SenderSettings:
    """The sender's limits (from ``AgentConfig.outbox`` and ``limits.max_inflight_messages``)."""

    max_inflight: int = 20
    drain_rate_per_s: float = 20.0
    drain_burst: int = 50
    drain_jitter_s: float = 10.0
    max_memory: int = 1000  # messages kept in memory when the outbox cannot store them
    # The agent passes its config's limits.max_message_bytes (what the server accepts);
    # anything larger would only be refused there, or break the connection at the broker's
    # size limit on every resend.
    max_message_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    # Keep a row until kf.committed covers it (the agent's config turns it on by default;
    # off, a PUBACK removes the row: the behaviour before confirmations existed).
    require_commit_confirmation: bool = False
    resend_grace_s: float = 1.0  # after a reconnect, wait this long before re-sending
    # re-send the rows a kf.committed lists missing at most this often (one pass each)
    refill_retry_s: float = 5.0
    # no kf.committed progress for this long: re-send the oldest unconfirmed rows
    confirm_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if min(self.max_inflight, self.drain_burst, self.max_memory, self.max_message_bytes) < 1:
            raise ValueError(
                "max_inflight, drain_burst, max_memory and max_message_bytes must be at least 1"
            )
        if (
            not self.drain_rate_per_s > 0
            or not self.confirm_timeout_s > 0
            or min(self.drain_jitter_s, self.resend_grace_s, self.refill_retry_s) < 0
        ):
            raise ValueError(
                "drain_rate_per_s and confirm_timeout_s must be positive, drain_jitter_s,"
                " resend_grace_s and refill_retry_s not negative"
            )


@dataclass(frozen=True, slots=True)
class SenderStats:
    """What the sender did since it was created, and what waits now."""

    handed: int  # stream messages handed to the connection
    acked: int  # PUBACKs with a success code for them
    refused: int  # PUBACKs with a failure code (the row is removed, the message lost)
    outbox_errors: int  # messages the outbox could not store (sent from memory instead)
    backlog: int  # stream messages stored or in memory and not handed yet
    inflight: int  # handed, PUBACK not yet received
    confirmed: int = 0  # rows removed because a kf.committed covered them
    unconfirmed: int = 0  # rows handed in this session, no kf.committed covers them yet
    refilled: int = 0  # rows handed again: listed missing, or their confirmation timed out
    confirm_timeouts: int = 0  # times no kf.committed came in time (each one re-send pass)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A message waiting in memory because the outbox could not store it."""

    seq: int
    topic: str
    payload: bytes


class OutboxSender:
    """One terminal's outbound side with a durable outbox; see the module docstring."""

    def __init__(
        self,
        outbox: Outbox,
        terminal_id: str,
        connection: DeliveryConnection,
        settings: SenderSettings | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        """Creates the terminal's stream if missing. Raises OutboxError if it cannot be read."""
        self._outbox = outbox
        self._terminal_id = terminal_id
        self._connection = connection
        self._settings = settings = settings or SenderSettings()
        self._monotonic = monotonic
        self._rng = rng or random.Random()  # noqa: S311 - drain jitter, not cryptography
        self.stream: OutboxStats = outbox.stream(terminal_id)
        self._cursor = 0  # the last outbox row id handed in this process
        self._marked = 0  # the highest row id recorded as handed (Outbox.mark_handed)
        self._memory: deque[_Pending] = deque()
        self._inflight: dict[int, int | None] = {}  # mid -> row id (None: from memory)
        self._rows_inflight = 0  # entries of _inflight with a row id (read by stats())
        self._tokens = float(settings.drain_burst)
        self._tokens_at = monotonic()
        self._drain_not_before = -math.inf
        self._retry_at = -math.inf
        self._maybe_waiting = True  # rows may wait behind the cursor (cleared by a short peek)
        self._inherited = self.stream.pending > 0  # rows left by an earlier process
        self._last_appended = 0  # the last row id this sender stored
        self._startup_through: int | None = None  # the last row the agent's start produced
        self._first_connect = True
        self._connected = False
        self._stopped = False
        self._dropped_reports = self.stream.dropped_reports
        self._last_error: str | None = None
        self._handed = 0
        self._acked = 0
        self._refused = 0
        self._outbox_errors = 0
        self._sent: dict[int, int] = {}  # row id -> seq: handed, not yet confirmed
        self._rows_sent = 0  # len(self._sent), for stats() from another thread
        self._confirmed = 0
        # A refill pass: rows with a seq at or below _refill_through and an id above
        # _refill_after (and at or below the cursor) are handed again before anything new.
        self._refilling = False
        self._refill_after = 0
        self._refill_through = 0
        self._refill_not_before = -math.inf
        self._refill_count = 0
        # The confirmation timeout: when the rows in _sent have waited too long (set when
        # _sent fills from empty, moved on each kf.committed that covers a row and on each
        # timeout), and the current wait (doubles while nothing answers).
        self._confirm_deadline = math.inf
        self._confirm_wait = settings.confirm_timeout_s
        self._confirm_timeouts = 0
        self._hand_stored = False  # a draining stop (``stop(hand_stored=True)``)

    # -- what the Agent calls (the Outbound port) ----------------------------------

    @property
    def boot_id(self) -> str:
        """The stream id the Agent must put in its envelopes."""
        return self.stream.boot_id

    @property
    def last_seq(self) -> int:
        """The last seq stored when this sender was created (the Agent continues after it)."""
        return self.stream.last_seq

    def dropped_reports(self) -> int:
        """Reports the outbox dropped for its quota since the stream began (cumulative)."""
        return self._dropped_reports

    def publish(self, topic: str, payload: bytes, retain: bool, *, seq: int | None = None) -> None:
        """Store a stream message (``seq`` given) and send what may be sent; ``state`` goes direct.

        Raises OutboundError for a message larger than ``max_message_bytes`` (never
        stored: it could only block the queue), for a state message the connection
        refuses, or a stream message that could not be stored and finds memory full
        (OutboundFullError): the Agent counts it as dropped.
        """
        if len(payload) > self._settings.max_message_bytes:
            raise OutboundError(
                f"message of {len(payload)} bytes exceeds {self._settings.max_message_bytes}",
                topic=topic,
            )
        if seq is None:
            self._connection.publish(topic, payload, retain)
            return
        try:
            _, channel = parse_topic(topic)
        except TopicError as exc:
            raise OutboundError(f"not a terminal topic: {exc}", topic=topic) from None
        try:
            result = self._outbox.append(
                self._terminal_id, channel, seq, topic, payload, handed_through=self._cursor
            )
        except (OutboxError, ValueError) as exc:
            self._outbox_failed(exc)
            if len(self._memory) >= self._settings.max_memory:
                raise OutboundFullError(self._settings.max_memory, topic=topic) from None
            self._memory.append(_Pending(seq, topic, payload))
        else:
            if result.dropped_ids:
                self._dropped_reports += len(result.dropped_ids)
            if result.id is not None:
                self._last_appended = result.id
            self._maybe_waiting = True
        self.pump(self._monotonic())

    # -- what the session and the loop call ----------------------------------------

    def mark_started(self) -> None:
        """The agent has said what it says at start (boot, faults present): not a backlog.

        The event loop calls it right after ``Agent.start``. Until then, and
        without it, everything stored before the first connect counts.
        """
        self._startup_through = self._last_appended

    def on_connected(self) -> None:
        """The session is up: start draining, after a random delay if a backlog waits.

        A backlog is anything waiting before the session came up: rows left by
        an earlier process, what was said while disconnected; on the first
        connect not what the agent said while starting (``mark_started``).
        """
        now = self._monotonic()
        self._connected = True
        if self._first_connect:
            self._first_connect = False
            fresh = self._last_appended > (self._startup_through or 0)
            backlog = self._inherited or bool(self._memory) or fresh
        else:
            backlog = bool(self._memory) or self._waiting_rows()
        grace = self._settings.resend_grace_s if self._confirming else 0.0
        if backlog and (self._settings.drain_jitter_s > 0 or grace > 0):
            delay = grace + self._rng.uniform(0.0, self._settings.drain_jitter_s)
            self._drain_not_before = now + delay
            log.info(
                "%s: backlog waiting in the outbox; draining in %.1f s",
                self._terminal_id,
                delay,
            )
        else:
            self._drain_not_before = -math.inf

    def on_disconnected(self) -> None:
        """The session is gone: hand nothing more.

        Without confirmations paho keeps and re-sends what it has. With them, the
        rows it holds are taken back and everything stored is handed again, in seq
        order, after the reconnect (see the module docstring)."""
        self._connected = False
        if not self._confirming:
            return
        rows = [mid for mid, row_id in self._inflight.items() if row_id is not None]
        self._connection.forget(rows)
        for mid in rows:
            del self._inflight[mid]
        self._rows_inflight = 0
        self._sent.clear()
        self._rows_sent = 0
        self._cursor = 0
        self._maybe_waiting = True
        self._refilling = False  # everything stored is handed again anyway

    def on_committed(self, boot_id: str, seq: int, missing: Sequence[tuple[int, int]] = ()) -> None:
        """The server committed this stream up to ``seq`` except the ``missing`` ranges
        ``(first, last)``: remove the rows it covers, keep and re-send the missing ones.

        A confirmation for another stream (an older boot_id) is ignored."""
        if boot_id != self.stream.boot_id:
            return
        try:
            removed = self._outbox.remove_through(self._terminal_id, seq, keep=missing)
        except OutboxError as exc:  # the rows stay; the next confirmation covers them
            self._outbox_failed(exc)
            return
        self._confirmed += removed
        covered = [
            r
            for r, row_seq in self._sent.items()
            if row_seq <= seq and not any(first <= row_seq <= last for first, last in missing)
        ]
        for row_id in covered:
            del self._sent[row_id]
        self._rows_sent = len(self._sent)
        if covered:  # progress: the timeout starts over
            self._confirm_wait = self._base_confirm_wait()
            self._confirm_deadline = self._monotonic() + self._confirm_wait
        if missing and self._confirming:
            self._start_refill(min(seq, missing[-1][1]))

    def awaiting_confirmation(self) -> bool:
        """True while rows handed in this session wait for their kf.committed."""
        return self._confirming and bool(self._sent)

    def may_hold_unhanded(self) -> bool:
        """True while rows may be stored that were not handed in this session (cheap: a
        flag the next ``pump`` clears when the outbox has none)."""
        return self._maybe_waiting or bool(self._memory)

    @property
    def _confirming(self) -> bool:
        return self._settings.require_commit_confirmation

    def on_delivered(self, mid: int, ok: bool) -> None:
        """A PUBACK for message ``mid``: remove its row (also when ``ok`` is false, counted)."""
        if mid not in self._inflight:
            return  # a state message, or nothing of ours
        row_id = self._inflight.pop(mid)
        if row_id is not None:
            self._rows_inflight -= 1
        if ok:
            self._acked += 1
            if self._confirming:
                return  # the row stays until kf.committed covers it
        else:
            self._refused += 1
            log.warning(
                "%s: the broker refused stream message (row %s); it is removed and lost",
                self._terminal_id,
                row_id,
            )
        if row_id is not None:
            if self._sent.pop(row_id, None) is not None:
                self._rows_sent = len(self._sent)
            try:
                self._outbox.remove(self._terminal_id, [row_id])
            except OutboxError as exc:  # the row stays and is sent again after a restart
                self._outbox_failed(exc)

    def stop(self, *, hand_stored: bool = False) -> None:
        """Hand nothing new (a clean stop waits only for what was handed); rows a
        confirmation lists missing or whose confirmation times out (sooner now) were
        handed, and are still re-sent meanwhile.

        ``hand_stored``: a draining stop, called after the agent stopped saying things:
        what is stored is still handed (at the usual window and rate), so the stop's
        bounded wait can end with an empty outbox (``may_hold_unhanded``)."""
        self._stopped = True
        self._hand_stored = hand_stored
        self._confirm_wait = min(self._confirm_wait, self._base_confirm_wait())
        self._confirm_deadline = min(self._confirm_deadline, self._monotonic() + self._confirm_wait)

    def next_due(self) -> float:
        """When ``pump`` next has work (monotonic seconds); infinity if it must wait for an event."""
        if not self._connected or not self._connection.connected:
            return math.inf
        confirm_due = self._confirm_deadline if self._sent else math.inf
        return max(min(self._hand_due(), confirm_due), self._monotonic())

    def _hand_due(self) -> float:
        """When the window, the rate and the jitter let ``pump`` hand a row."""
        if self._stopped and not self._refilling and not self._hand_stored:
            return math.inf
        if not self._memory and not self._maybe_waiting and not self._refilling:
            return math.inf
        if len(self._inflight) >= self._settings.max_inflight:
            return math.inf  # a PUBACK frees the window
        now = self._monotonic()
        due = max(self._drain_not_before, self._retry_at)
        tokens = self._refilled(now)
        if tokens < 1.0:
            due = max(due, now + (1.0 - tokens) / self._settings.drain_rate_per_s)
        return max(due, now)

    def pump(self, now: float) -> None:
        """Hand what the window, the rate and the jitter allow, oldest first (after a
        confirmation timeout, the oldest unconfirmed rows again first)."""
        if not self._connected or not self._connection.connected:
            return
        if self._sent and now >= self._confirm_deadline:
            self._confirm_timed_out(now)
        if self._stopped and not self._refilling and not self._hand_stored:
            return
        if now < self._drain_not_before or now < self._retry_at:
            return
        self._tokens = self._refilled(now)
        self._tokens_at = now
        room = min(self._settings.max_inflight - len(self._inflight), int(self._tokens))
        if room > 0 and self._refilling:
            room -= self._refill(now, room)
        if room <= 0 or (self._stopped and not self._hand_stored):
            return
        rows = []
        if self._maybe_waiting:
            try:
                rows = self._outbox.peek(self._terminal_id, self._cursor, room)
            except OutboxError as exc:
                self._outbox_failed(exc)
                self._retry_at = now + _RETRY_S
                return
            if len(rows) < room:
                self._maybe_waiting = False
        memory = list(self._memory)[:room]
        candidates: list[tuple[int, int | None, str, bytes]] = [
            (r.seq, r.id, r.topic, r.payload) for r in rows
        ] + [(m.seq, None, m.topic, m.payload) for m in memory]
        if memory:
            candidates.sort(key=lambda c: c[0])
        row_ids = [c[1] for c in candidates[:room] if c[1] is not None]
        if row_ids and max(row_ids) > self._marked:
            try:  # before the hand-over: a row the broker may have is never dropped later
                self._outbox.mark_handed(self._terminal_id, max(row_ids))
                self._marked = max(row_ids)
            except OutboxError as exc:
                self._outbox_failed(exc)
        for seq, row_id, topic, payload in candidates[:room]:
            mid = self._hand(topic, payload, now)
            if mid is None:
                self._maybe_waiting = True
                return
            if row_id is None:
                self._memory.popleft()
                self._inflight[mid] = None
            else:
                self._cursor = row_id
                self._handed_row(mid, row_id, seq, now)
        if len(candidates) > room:
            self._maybe_waiting = True

    def stats(self) -> SenderStats:
        """Counters and the current backlog (one read of the outbox's stream row).

        Safe to call from another thread while the loop drives the sender (the
        simulator's ``counters``): it reads plain counters, never iterates the
        loop's containers.
        """
        try:
            pending = self._outbox.stats(self._terminal_id).pending
        except (OutboxError, KeyError):
            pending = 0
        rows_inflight = self._rows_sent if self._confirming else self._rows_inflight
        return SenderStats(
            handed=self._handed,
            acked=self._acked,
            refused=self._refused,
            outbox_errors=self._outbox_errors,
            backlog=max(0, pending - rows_inflight) + len(self._memory),
            inflight=len(self._inflight),
            confirmed=self._confirmed,
            unconfirmed=self._rows_sent,
            refilled=self._refill_count,
            confirm_timeouts=self._confirm_timeouts,
        )

    # -- internals ---------------------------------------------------------------

    def _start_refill(self, through_seq: int) -> None:
        """Hand the kept rows up to ``through_seq`` again, unless a pass started lately."""
        now = self._monotonic()
        if now < self._refill_not_before:
            return
        self._refill_not_before = now + self._settings.refill_retry_s
        self._begin_pass(through_seq)

    def _confirm_timed_out(self, now: float) -> None:
        """No kf.committed covered a row for the current wait: hand the oldest
        ``max_inflight`` unconfirmed rows again, and wait twice as long for the next time."""
        oldest = heapq.nsmallest(self._settings.max_inflight, self._sent.values())
        self._confirm_timeouts += 1
        log.info(
            "%s: no kf.committed for %.0f s; re-sending %d unconfirmed row(s) from seq %d",
            self._terminal_id,
            self._confirm_wait,
            len(oldest),
            oldest[0],
        )
        self._begin_pass(oldest[-1])
        cap = max(self._base_confirm_wait(), _MAX_CONFIRM_WAIT_S)
        self._confirm_wait = min(2.0 * self._confirm_wait, cap)
        self._confirm_deadline = now + self._confirm_wait

    def _begin_pass(self, through_seq: int) -> None:
        """Hand the rows of this session with a seq up to ``through_seq`` again, in seq
        order, from the oldest (a pass already running is widened, never narrowed)."""
        if self._refilling:
            through_seq = max(through_seq, self._refill_through)
        self._refilling = True
        self._refill_after = 0
        self._refill_through = through_seq

    def _base_confirm_wait(self) -> float:
        timeout = self._settings.confirm_timeout_s
        return min(timeout, _STOP_CONFIRM_TIMEOUT_S) if self._stopped else timeout

    def _refill(self, now: float, room: int) -> int:
        """Hand up to ``room`` rows of the refill pass (rows already handed in this
        session: the ones above the cursor are handed in order anyway); how many."""
        try:
            rows = self._outbox.peek(
                self._terminal_id,
                self._refill_after,
                room,
                through_id=self._cursor,
                through_seq=self._refill_through,
            )
        except OutboxError as exc:
            self._outbox_failed(exc)
            self._retry_at = now + _RETRY_S
            return room
        if len(rows) < room:
            self._refilling = False
        for row in rows:
            mid = self._hand(row.topic, row.payload, now)
            if mid is None:
                self._refilling = True
                return room
            self._refill_after = row.id
            self._handed_row(mid, row.id, row.seq, now)
            self._refill_count += 1
        return len(rows)

    def _hand(self, topic: str, payload: bytes, now: float) -> int | None:
        """Publish one stream message and spend a token; its mid, or None if the connection
        refused it (logged once per reason; the pump retries in ``_RETRY_S``)."""
        try:
            mid = self._connection.publish(topic, payload, False)
        except OutboundError as exc:
            if self._last_error != str(exc):
                log.warning("%s: connection refused a message: %s", self._terminal_id, exc)
                self._last_error = str(exc)
            self._retry_at = now + _RETRY_S
            return None
        self._tokens -= 1.0
        self._handed += 1
        return mid

    def _handed_row(self, mid: int, row_id: int, seq: int, now: float) -> None:
        self._inflight[mid] = row_id
        self._rows_inflight += 1
        if self._confirming:
            if not self._sent:  # the first row to wait for a confirmation: the timeout starts
                self._confirm_wait = self._base_confirm_wait()
                self._confirm_deadline = now + self._confirm_wait
            self._sent[row_id] = seq
            self._rows_sent = len(self._sent)

    def _refilled(self, now: float) -> float:
        elapsed = max(0.0, now - self._tokens_at)
        return min(
            float(self._settings.drain_burst),
            self._tokens + elapsed * self._settings.drain_rate_per_s,
        )

    def _waiting_rows(self) -> bool:
        try:
            waiting = bool(self._outbox.peek(self._terminal_id, self._cursor, 1))
        except OutboxError as exc:
            self._outbox_failed(exc)
            return False
        self._maybe_waiting = waiting
        return waiting

    def _outbox_failed(self, exc: Exception) -> None:
        self._outbox_errors += 1
        reason = str(exc)
        if self._last_error != reason:
            self._last_error = reason
            log.error(
                "%s: %s; messages are sent from memory and are not durable until it works again",
                self._terminal_id,
                reason,
            )
