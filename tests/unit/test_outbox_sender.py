"""The outbox sender with an in-memory outbox, a fake connection and a fake clock: no broker."""

from __future__ import annotations

import logging
import random
import sys
import threading
from collections.abc import Collection
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.agent import OutboundError, OutboundFullError
from agent.clock import FakeClock
from agent.outbox import Outbox, OutboxError
from agent.outbox_sender import OutboxSender, SenderSettings

T = "T-0001"
REPORT = f"kf/v1/terminals/{T}/report"
EVENT = f"kf/v1/terminals/{T}/event"
STATE = f"kf/v1/terminals/{T}/state"


@dataclass
class FakeConnection:
    """Records what is handed; acknowledges only when the test says so."""

    connected: bool = False
    sent: list[tuple[int, str, bytes, bool]] = field(default_factory=list)
    next_mid: int = 0
    forgotten: list[int] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, retain: bool) -> int:
        self.next_mid += 1
        self.sent.append((self.next_mid, topic, payload, retain))
        return self.next_mid

    def forget(self, mids: Collection[int]) -> None:
        self.forgotten.extend(mids)

    def payloads(self) -> list[bytes]:
        return [p for _, t, p, _ in self.sent if not t.endswith("/state")]


class Rig:
    def __init__(self, outbox: Outbox | None = None, **limits: float) -> None:
        values: dict[str, float] = {
            "max_inflight": 5,
            "drain_rate_per_s": 10.0,
            "drain_burst": 20,
            "drain_jitter_s": 0.0,
        }
        values.update(limits)
        self.settings = SenderSettings(**values)  # type: ignore[arg-type]
        self.clock = FakeClock()
        self.conn = FakeConnection()
        self.outbox = outbox or Outbox.in_memory()
        self.sender = OutboxSender(
            self.outbox,
            T,
            self.conn,
            self.settings,
            monotonic=self.clock.monotonic,
            rng=random.Random(7),
        )
        self.seq = self.sender.last_seq

    def say(self, n: int = 1, topic: str = REPORT) -> None:
        for _ in range(n):
            self.seq += 1
            self.sender.publish(topic, b"%d" % self.seq, False, seq=self.seq)

    def connect(self) -> None:
        self.conn.connected = True
        self.sender.on_connected()
        self.sender.pump(self.clock.monotonic())

    def disconnect(self) -> None:
        self.conn.connected = False
        self.sender.on_disconnected()

    def ack_all(self, ok: bool = True) -> None:
        for mid, topic, _, _ in list(self.conn.sent):
            if not topic.endswith("/state"):
                self.sender.on_delivered(mid, ok)

    def advance(self, seconds: float) -> None:
        self.sender.pump(self.clock.advance(seconds))


def test_messages_are_stored_first_and_handed_only_while_connected() -> None:
    rig = Rig()
    rig.say(3)
    assert rig.conn.sent == []
    assert rig.outbox.stats(T).pending == 3
    rig.connect()
    assert rig.conn.payloads() == [b"1", b"2", b"3"]
    rig.ack_all()
    assert rig.outbox.stats(T).pending == 0
    stats = rig.sender.stats()
    assert (stats.handed, stats.acked, stats.backlog, stats.inflight) == (3, 3, 0, 0)


def test_state_messages_go_straight_to_the_connection_and_are_never_stored() -> None:
    rig = Rig()
    rig.sender.publish(STATE, b"online", True)
    assert [(t, r) for _, t, _, r in rig.conn.sent] == [(STATE, True)]
    assert rig.outbox.stats(T).pending == 0
    rig.sender.on_delivered(1, True)  # not one of ours: ignored
    assert rig.sender.stats().acked == 0


def test_at_most_max_inflight_are_handed_until_pubacks_free_the_window() -> None:
    rig = Rig(max_inflight=5)
    rig.connect()
    rig.say(12)
    assert len(rig.conn.sent) == 5
    assert rig.sender.next_due() == float("inf")  # waits for a PUBACK, not for time
    for mid in (1, 2):
        rig.sender.on_delivered(mid, True)
    rig.sender.pump(rig.clock.monotonic())
    assert rig.conn.payloads() == [b"%d" % n for n in range(1, 8)]


def test_a_backlog_drains_at_the_token_bucket_rate_after_the_burst() -> None:
    rig = Rig(max_inflight=1000, drain_rate_per_s=10.0, drain_burst=20)
    rig.say(50)
    rig.connect()
    assert len(rig.conn.sent) == 20  # the burst
    due = rig.sender.next_due()
    assert due == pytest.approx(rig.clock.monotonic() + 0.1)
    rig.advance(1.0)
    assert len(rig.conn.sent) == 30  # 10 per second
    rig.advance(2.0)
    assert len(rig.conn.sent) == 50
    assert rig.conn.payloads() == [b"%d" % n for n in range(1, 51)]


def test_normal_traffic_never_waits_for_the_rate() -> None:
    rig = Rig(drain_rate_per_s=0.1, drain_burst=5, drain_jitter_s=30.0)
    rig.sender.mark_started()
    rig.connect()
    for n in range(1, 6):
        rig.clock.advance(60.0)
        rig.say(1)
        assert len(rig.conn.sent) == n  # handed at once
        rig.ack_all()


def test_a_reconnect_that_finds_a_backlog_waits_a_random_jitter_before_draining() -> None:
    rig = Rig(drain_jitter_s=10.0)
    rig.sender.mark_started()
    rig.connect()
    rig.disconnect()
    rig.say(4)
    start = rig.clock.monotonic()
    rig.connect()
    assert rig.conn.sent == []
    delay = random.Random(7).uniform(0.0, 10.0)  # the rig's rng draws once
    assert rig.sender.next_due() == pytest.approx(start + delay)
    rig.sender.pump(start + delay - 0.01)
    assert rig.conn.sent == []
    rig.clock.advance(delay)
    rig.sender.pump(rig.clock.monotonic())
    assert rig.conn.payloads() == [b"1", b"2", b"3", b"4"]


def test_what_the_agent_says_while_starting_is_no_backlog_but_a_previous_runs_rows_are(
    tmp_path: object,
) -> None:
    outbox = Outbox.in_memory()
    rig = Rig(outbox, drain_jitter_s=10.0)
    rig.say(2)  # boot and a fault present at start
    rig.sender.mark_started()
    rig.connect()
    assert len(rig.conn.sent) == 2  # no jitter
    # The process dies before the PUBACKs: a new sender (next process) finds the rows.
    again = Rig(outbox, drain_jitter_s=10.0)
    again.sender.mark_started()
    again.connect()
    assert again.conn.sent == []  # inherited backlog: jitter first
    assert again.sender.next_due() > again.clock.monotonic()


def test_rows_in_flight_are_not_handed_again_after_a_reconnect_but_after_a_restart_they_are() -> (
    None
):
    outbox = Outbox.in_memory()
    rig = Rig(outbox)
    rig.connect()
    rig.say(3)
    rig.disconnect()  # paho keeps and re-sends these three itself
    rig.connect()
    rig.say(1)
    assert rig.conn.payloads() == [b"1", b"2", b"3", b"4"]
    restarted = Rig(outbox)
    assert restarted.sender.last_seq == 4
    restarted.connect()
    assert restarted.conn.payloads() == [b"1", b"2", b"3", b"4"]  # every unacked row again


def test_a_refused_puback_removes_the_row_and_counts_it(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    rig.connect()
    rig.say(2)
    rig.sender.on_delivered(1, False)
    rig.sender.on_delivered(2, True)
    stats = rig.sender.stats()
    assert (stats.refused, stats.acked) == (1, 1)
    assert rig.outbox.stats(T).pending == 0
    assert any("refused" in r.getMessage() for r in caplog.records)


class BrokenOutbox(Outbox):
    """An outbox whose appends fail as on a full disk."""

    def append(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        raise OutboxError("append", OSError(28, "No space left on device"))


def test_when_the_outbox_cannot_store_messages_they_are_sent_from_memory_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(BrokenOutbox(":memory:"), max_inflight=100)
    with caplog.at_level(logging.ERROR):
        rig.say(3)
        rig.connect()
        rig.say(2)
    assert rig.conn.payloads() == [b"1", b"2", b"3", b"4", b"5"]
    stats = rig.sender.stats()
    assert stats.outbox_errors == 5
    assert sum("No space left" in r.getMessage() for r in caplog.records) == 1  # once per reason
    rig.ack_all()
    assert rig.sender.stats().acked == 5


def test_memory_for_unstorable_messages_is_bounded() -> None:
    rig = Rig(BrokenOutbox(":memory:"), max_memory=3)
    rig.say(3)
    with pytest.raises(OutboundFullError):
        rig.say(1)


def test_the_dropped_report_count_follows_the_quota() -> None:
    rig = Rig(Outbox.in_memory(max_messages=3))
    rig.say(5)
    assert rig.sender.dropped_reports() == 2
    assert rig.outbox.stats(T).dropped_reports == 2


# -- the property: order and exactly-once handing per process run ---------------------

Action = tuple[str, int]
actions = st.lists(
    st.one_of(
        st.tuples(st.just("say"), st.integers(1, 4)),
        st.tuples(st.just("ack"), st.integers(0, 5)),
        st.tuples(st.just("connect"), st.just(0)),
        st.tuples(st.just("disconnect"), st.just(0)),
        st.tuples(st.just("time"), st.integers(0, 3)),
        st.tuples(st.just("restart"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(actions=actions, quota=st.integers(3, 30), inflight=st.integers(1, 6))
def test_rows_are_handed_in_order_and_every_kept_message_exactly_once_per_run(
    actions: list[Action], quota: int, inflight: int
) -> None:
    outbox = Outbox.in_memory(max_messages=quota)
    rig = Rig(outbox, max_inflight=inflight, drain_rate_per_s=2.0, drain_burst=3)
    runs: list[Rig] = [rig]
    for kind, n in actions:
        if kind == "say":
            for _ in range(n):
                rig.say(1, EVENT if (rig.seq + 1) % 2 == 0 else REPORT)  # even seqs are events
        elif kind == "ack":
            unacked = [
                mid for mid, t, _, _ in rig.conn.sent if not t.endswith("/state")
            ]  # paho acks in order; acking a mid twice is ignored
            for mid in unacked[:n]:
                rig.sender.on_delivered(mid, True)
        elif kind == "connect" and not rig.conn.connected:
            rig.connect()
        elif kind == "disconnect" and rig.conn.connected:
            rig.disconnect()
        elif kind == "time":
            rig.advance(float(n))
        elif kind == "restart":
            rig = Rig(outbox, max_inflight=inflight, drain_rate_per_s=2.0, drain_burst=3)
            runs.append(rig)
    # Let the last run drain everything: connected, time passing, PUBACKs coming.
    if not rig.conn.connected:
        rig.connect()
    for _ in range(200):
        rig.advance(1.0)
        rig.ack_all()
        if outbox.stats(T).pending == 0:
            break
    stats = outbox.stats(T)
    assert stats.pending == 0
    for run in runs:
        seqs = [int(p) for p in run.conn.payloads()]
        assert seqs == sorted(seqs), "handed out of order"
        assert len(seqs) == len(set(seqs)), "a row handed twice in one run"
    # Every appended message not dropped for the quota was handed at least once.
    handed = {int(p) for run in runs for p in run.conn.payloads()}
    # ... and nothing handed (the broker may have it) was ever counted as dropped.
    assert len(handed) == stats.reports + stats.events - stats.dropped_reports
    assert stats.last_seq == rig.seq
    assert stats.events == len({s for s in handed if s % 2 == 0})  # no event ever dropped


# -- read from another thread ---------------------------------------------------------


def test_stats_can_be_read_from_another_thread_while_the_loop_hands_and_acks() -> None:
    # The simulator's counters() calls stats() from the main thread while the
    # event loop's thread hands messages and removes acknowledged ones. Before
    # the fix stats() iterated the in-flight dict and raised "dictionary changed
    # size during iteration" (most runs of this test hit it).
    rig = Rig(max_inflight=200, drain_rate_per_s=1e9, drain_burst=100_000)
    rig.sender.mark_started()
    rig.connect()
    failures: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                rig.sender.stats()
            except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
                failures.append(exc)
                return

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    reader = threading.Thread(target=read)
    reader.start()
    try:
        acked = 0
        for _ in range(8000):
            rig.say(1)
            for mid, _, _, _ in rig.conn.sent[acked : len(rig.conn.sent) - 150]:
                rig.sender.on_delivered(mid, True)  # all but the last 150
            acked = max(acked, len(rig.conn.sent) - 150)
            if failures:
                break
    finally:
        done.set()
        reader.join()
        sys.setswitchinterval(previous)
    assert failures == []
    stats = rig.sender.stats()
    assert stats.handed == 8000
    assert stats.inflight == 8000 - stats.acked
    assert stats.backlog == 0


def test_a_message_larger_than_the_server_accepts_is_refused_and_never_stored() -> None:
    rig = Rig(max_message_bytes=100)
    rig.connect()
    with pytest.raises(OutboundError, match="exceeds 100"):
        rig.sender.publish(REPORT, b"x" * 101, False, seq=1)
    rig.say(1)  # a message of normal size goes through
    assert rig.outbox.stats(T).reports == 1
    assert rig.conn.payloads() == [b"1"]


# --- end-to-end confirmation (require_commit_confirmation) ----------------------------------


def _confirming(**limits: float) -> Rig:
    return Rig(None, require_commit_confirmation=True, resend_grace_s=2.0, **limits)


def test_with_confirmations_a_puback_frees_the_window_but_the_row_stays_until_kf_committed() -> (
    None
):
    rig = _confirming()
    rig.connect()
    rig.say(3)  # normal traffic: handed at once
    rig.ack_all()
    assert rig.outbox.stats(T).pending == 3  # the broker has them; the server may not
    stats = rig.sender.stats()
    assert (stats.acked, stats.inflight, stats.unconfirmed, stats.backlog) == (3, 0, 3, 0)
    assert rig.sender.awaiting_confirmation()
    rig.sender.on_committed(rig.sender.boot_id, 2)
    assert [i.seq for i in rig.outbox.peek(T, 0, 10)] == [3]
    assert (rig.sender.stats().confirmed, rig.sender.stats().unconfirmed) == (2, 1)
    rig.sender.on_committed(rig.sender.boot_id, 3)
    assert rig.outbox.stats(T).pending == 0
    assert not rig.sender.awaiting_confirmation()


def test_a_confirmation_for_another_stream_removes_nothing() -> None:
    rig = _confirming()
    rig.connect()
    rig.say(2)
    rig.ack_all()
    rig.sender.on_committed("0ther-b00t-id", 10)
    assert rig.outbox.stats(T).pending == 2


def test_after_a_reconnect_every_unconfirmed_row_is_handed_again_in_seq_order_after_the_grace() -> (
    None
):
    rig = _confirming(max_inflight=3)
    rig.connect()
    rig.say(5)  # 1..3 handed
    rig.ack_all()  # acknowledged by the broker, never confirmed; 4, 5 handed now
    rig.advance(0.0)
    rig.disconnect()
    # paho must not re-send its in-flight copies on its own: they would overtake 1..3
    assert rig.conn.forgotten == [4, 5]
    rig.say(1)  # 6, said while offline
    rig.conn.sent.clear()
    rig.connect()
    assert rig.conn.sent == []  # the grace: queued confirmations arrive first
    rig.advance(1.0)
    assert rig.conn.sent == []
    rig.advance(1.1)
    assert rig.conn.payloads() == [b"1", b"2", b"3"]
    rig.ack_all()
    rig.advance(0.1)
    rig.ack_all()
    rig.advance(0.1)
    assert rig.conn.payloads() == [b"1", b"2", b"3", b"4", b"5", b"6"]


def test_a_confirmation_received_in_the_grace_spares_the_resend() -> None:
    rig = _confirming()
    rig.connect()
    rig.say(4)
    rig.ack_all()
    rig.disconnect()
    rig.conn.sent.clear()
    rig.connect()
    rig.sender.on_committed(rig.sender.boot_id, 3)  # queued by the broker for this session
    rig.advance(2.1)
    assert rig.conn.payloads() == [b"4"]


def _acknowledged(n: int, **limits: float) -> Rig:
    """A confirming sender that handed ``n`` reports, all acknowledged, none confirmed."""
    rig = _confirming(**limits)
    rig.connect()
    rig.say(n)
    rig.ack_all()
    return rig


def test_rows_a_confirmation_lists_missing_stay_and_are_handed_again_before_newer_ones() -> None:
    rig = _acknowledged(3, max_inflight=3)
    rig.say(3)  # 4..6
    rig.ack_all()
    rig.conn.sent.clear()
    # The broker acknowledged 2 and 4..5 and lost them; the server has 1, 3 and 6.
    rig.sender.on_committed(rig.sender.boot_id, 6, [(2, 2), (4, 5)])
    assert [i.seq for i in rig.outbox.peek(T, 0, 10)] == [2, 4, 5]
    rig.say(2)  # 7, 8: the window (3) takes the three re-sends first
    assert rig.conn.payloads() == [b"2", b"4", b"5"]
    rig.ack_all()
    rig.advance(0.1)
    assert rig.conn.payloads() == [b"2", b"4", b"5", b"7", b"8"]
    rig.ack_all()
    rig.sender.on_committed(rig.sender.boot_id, 8)
    assert rig.outbox.stats(T).pending == 0
    assert not rig.sender.awaiting_confirmation()
    stats = rig.sender.stats()
    assert (stats.refilled, stats.confirmed, stats.handed) == (3, 8, 11)


def test_a_gap_listed_again_is_re_sent_only_after_the_refill_retry_interval() -> None:
    rig = _acknowledged(4, refill_retry_s=5.0)
    rig.conn.sent.clear()
    rig.sender.on_committed(rig.sender.boot_id, 4, [(2, 2)])
    rig.advance(0.1)
    assert rig.conn.payloads() == [b"2"]
    rig.ack_all()
    rig.advance(1.0)
    rig.sender.on_committed(rig.sender.boot_id, 4, [(2, 2)])  # sent before the fill arrived
    rig.advance(0.1)
    assert rig.conn.payloads() == [b"2"]
    rig.advance(4.0)
    rig.sender.on_committed(rig.sender.boot_id, 4, [(2, 2)])  # the broker lost it again
    rig.advance(0.1)
    assert rig.conn.payloads() == [b"2", b"2"]
    rig.ack_all()
    rig.sender.on_committed(rig.sender.boot_id, 4)
    assert rig.outbox.stats(T).pending == 0


def test_a_missing_row_the_outbox_no_longer_has_is_not_re_sent() -> None:
    rig = _acknowledged(3)
    rig.sender.on_committed(rig.sender.boot_id, 2)
    rig.conn.sent.clear()
    rig.sender.on_committed(rig.sender.boot_id, 3, [(1, 2)])  # the server misses them
    rig.advance(0.1)
    assert rig.conn.payloads() == []
    assert rig.outbox.stats(T).pending == 0


def test_after_a_reconnect_a_row_listed_missing_is_handed_once_in_the_resend() -> None:
    rig = _acknowledged(4)
    rig.disconnect()
    rig.conn.sent.clear()
    rig.connect()
    rig.sender.on_committed(rig.sender.boot_id, 4, [(2, 3)])  # queued for this session
    rig.advance(2.1)
    assert rig.conn.payloads() == [b"2", b"3"]
    assert rig.sender.stats().refilled == 0  # the resend after the grace covered them


def test_after_stop_a_row_listed_missing_is_still_re_sent_but_nothing_new_is_handed() -> None:
    rig = _acknowledged(3)
    rig.sender.stop()
    rig.say(1)  # 4: stored, never handed
    rig.conn.sent.clear()
    rig.sender.on_committed(rig.sender.boot_id, 3, [(2, 2)])
    committed_at = rig.clock.monotonic()
    assert rig.sender.next_due() < float("inf")
    rig.advance(0.1)
    assert rig.conn.payloads() == [b"2"]
    rig.ack_all()
    rig.advance(0.1)
    assert rig.conn.payloads() == [b"2"]
    # nothing more to hand: only the stop's confirmation timeout for row 2 is still due
    assert rig.sender.next_due() == pytest.approx(committed_at + 2.0)


@pytest.mark.parametrize("hand_stored", [False, True])
def test_a_draining_stop_hands_what_is_stored_and_nothing_said_after_it(hand_stored: bool) -> None:
    rig = _confirming()
    rig.connect()
    rig.conn.connected = False  # the session drops: rows 1..3 are stored, not handed
    rig.sender.on_disconnected()
    rig.say(3)
    rig.sender.stop(hand_stored=hand_stored)
    rig.connect()
    rig.advance(5.0)  # past the reconnect's grace
    assert rig.conn.payloads() == ([b"1", b"2", b"3"] if hand_stored else [])
    assert rig.sender.may_hold_unhanded() is not hand_stored
    if hand_stored:
        rig.ack_all()
        rig.sender.on_committed(rig.sender.boot_id, 3)
        assert not rig.sender.awaiting_confirmation()
        assert rig.outbox.stats(T).pending == 0


def test_without_confirmations_a_puback_still_removes_the_row() -> None:
    rig = Rig(require_commit_confirmation=False)
    rig.say(2)
    rig.connect()
    rig.ack_all()
    assert rig.outbox.stats(T).pending == 0
    assert not rig.sender.awaiting_confirmation()


def test_when_confirmations_stop_the_quota_still_bounds_the_outbox_and_counts_dropped_reports() -> (
    None
):
    rig = Rig(Outbox.in_memory(max_messages=5), require_commit_confirmation=True)
    rig.connect()
    for _ in range(20):  # a server that never confirms (older than kf.committed)
        rig.say(1)
        rig.ack_all()
    stats = rig.outbox.stats(T)
    assert stats.pending == 5  # the first five, handed and unconfirmed, are kept
    assert stats.dropped_reports == 15  # the newer reports were dropped, as offline
    assert rig.sender.dropped_reports() == 15
    assert rig.conn.payloads() == [b"1", b"2", b"3", b"4", b"5"]


# --- the confirmation timeout: a kf.committed that never comes --------------------------


def _handed_and_acknowledged(n: int, **limits: float) -> Rig:
    """A confirming sender that handed ``n`` reports (all acknowledged by the broker) at
    clock 0, with a 10 s confirmation timeout unless ``limits`` says otherwise."""
    rig = _confirming(**({"confirm_timeout_s": 10.0} | limits))
    rig.connect()
    for _ in range(n):
        rig.say(1)
        rig.ack_all()
        rig.advance(0.0)
    rig.ack_all()
    return rig


def test_a_lost_confirmation_gets_the_oldest_rows_re_sent_after_the_timeout_and_they_confirm() -> (
    None
):
    rig = _handed_and_acknowledged(6, max_inflight=4)
    assert rig.conn.payloads() == [b"%d" % n for n in range(1, 7)]
    rig.conn.sent.clear()
    # The server committed all six; its kf.committed was lost on the way (JetStream).
    rig.advance(9.9)
    assert rig.conn.payloads() == []
    rig.advance(0.2)
    assert rig.conn.payloads() == [b"1", b"2", b"3", b"4"]  # the oldest, one window's worth
    rig.ack_all()
    rig.advance(1.0)
    assert rig.conn.payloads() == [b"1", b"2", b"3", b"4"]  # one pass per timeout
    rig.sender.on_committed(rig.sender.boot_id, 6)  # the server confirms the duplicates again
    assert rig.outbox.stats(T).pending == 0
    assert not rig.sender.awaiting_confirmation()
    stats = rig.sender.stats()
    assert (stats.confirm_timeouts, stats.refilled, stats.handed, stats.confirmed) == (1, 4, 10, 6)
    assert rig.sender.next_due() == float("inf")


def test_no_row_is_re_sent_while_confirmations_keep_covering_rows() -> None:
    rig = _handed_and_acknowledged(1)
    for _ in range(30):  # two minutes: a report every 4 s, the one before it confirmed
        rig.advance(4.0)
        rig.say(1)
        rig.ack_all()
        rig.sender.on_committed(rig.sender.boot_id, rig.seq - 1)
    assert rig.conn.payloads() == [b"%d" % n for n in range(1, 32)]  # each exactly once
    assert rig.sender.stats().confirm_timeouts == 0
    assert rig.sender.stats().unconfirmed == 1


def _resend_times(rig: Rig, until: float) -> list[float]:
    """Follow ``next_due`` up to ``until``; the clock times at which rows were handed."""
    times: list[float] = []
    while (due := rig.sender.next_due()) <= until:
        before = len(rig.conn.sent)
        rig.advance(due - rig.clock.monotonic())
        if len(rig.conn.sent) > before:
            times.append(rig.clock.monotonic())
            rig.ack_all()
    return times


def test_when_nothing_answers_the_re_sends_back_off_doubling_up_to_a_cap() -> None:
    rig = _handed_and_acknowledged(2)
    start = rig.clock.monotonic()
    rig.conn.sent.clear()
    times = _resend_times(rig, start + 1300.0)
    gaps = [b - a for a, b in zip([start, *times], times, strict=False)]
    assert gaps == pytest.approx([10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0])
    assert rig.sender.stats().confirm_timeouts == 8
    assert rig.conn.payloads() == [b"1", b"2"] * 8  # never more than what waits
    # The server answers at last: a confirmation covering a row starts over at 10 s.
    answered = rig.clock.monotonic()
    rig.sender.on_committed(rig.sender.boot_id, 1)
    assert rig.sender.next_due() == pytest.approx(answered + 10.0)
    rig.advance(10.0)
    assert rig.conn.payloads()[-1:] == [b"2"]


def test_a_clean_stop_waits_a_shorter_timeout_and_re_sends_what_is_unconfirmed() -> None:
    rig = _handed_and_acknowledged(2)
    rig.advance(1.0)
    rig.conn.sent.clear()
    rig.sender.stop()
    rig.say(1)  # 3: stored, never handed after the stop
    assert rig.sender.awaiting_confirmation()
    assert rig.sender.next_due() == pytest.approx(rig.clock.monotonic() + 2.0)
    rig.advance(1.9)
    assert rig.conn.payloads() == []
    rig.advance(0.2)
    assert rig.conn.payloads() == [b"1", b"2"]
    rig.ack_all()
    rig.sender.on_committed(rig.sender.boot_id, 2)
    assert not rig.sender.awaiting_confirmation()  # the event loop's stop wait ends here
    assert [i.seq for i in rig.outbox.peek(T, 0, 10)] == [3]  # for the next start
    assert rig.sender.stats().confirm_timeouts == 1


def test_after_a_reconnect_the_timeout_counts_from_the_re_send() -> None:
    rig = _handed_and_acknowledged(2)
    rig.advance(8.0)
    rig.disconnect()
    rig.conn.sent.clear()
    rig.connect()
    rig.advance(2.1)  # the grace: everything unconfirmed handed again
    assert rig.conn.payloads() == [b"1", b"2"]
    rig.ack_all()
    rig.advance(9.8)
    assert rig.conn.payloads() == [b"1", b"2"]  # 19.9 s after the first hand, 9.8 after this
    rig.advance(0.2)
    assert rig.conn.payloads() == [b"1", b"2", b"1", b"2"]
    assert rig.sender.stats().confirm_timeouts == 1
