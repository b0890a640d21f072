"""server.confirmations: the newest kf.committed per terminal, sent as the window allows."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from protocol.committed import decode_committed
from protocol.topics import parse_topic
from server.confirmations import ConfirmationMailbox, ConfirmationMetrics

BOOT = "boot-0001"


class FakeSource:
    """A source with an in-flight window: ``publish`` takes room, ``puback`` frees it."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.connected = True
        self.in_flight = 0
        self.sent: list[tuple[str, int]] = []  # (terminal id, seq)
        self.during_publish: Callable[[], None] | None = None

    def publish(self, topic: str, payload: bytes) -> bool:
        if not self.connected:
            return False
        terminal_id, _ = parse_topic(topic)
        self.sent.append((terminal_id, decode_committed(payload).seq))
        self.in_flight += 1
        if self.during_publish is not None:
            self.during_publish()
        return True

    def room(self) -> int:
        return max(0, self.window - self.in_flight) if self.connected else 0

    def puback(self, n: int = 1) -> None:
        self.in_flight = max(0, self.in_flight - n)


def mailbox(source: FakeSource) -> tuple[ConfirmationMailbox, ConfirmationMetrics]:
    metrics = ConfirmationMetrics(CollectorRegistry())
    return ConfirmationMailbox(source.publish, source.room, metrics), metrics


def test_a_newer_confirmation_replaces_the_waiting_one_and_only_it_is_sent() -> None:
    source = FakeSource(window=0)
    box, metrics = mailbox(source)
    box.offer([("T-1", BOOT, 5, ())])
    box.offer([("T-1", BOOT, 9, ())])
    assert len(box) == 1
    assert source.sent == []
    source.window = 5
    box.pump()
    assert source.sent == [("T-1", 9)]
    assert len(box) == 0
    assert metrics.coalesced._value.get() == 1
    assert metrics.sent._value.get() == 1


def test_the_oldest_waiting_go_first_and_the_window_bounds_what_is_in_flight() -> None:
    source = FakeSource(window=2)
    box, _ = mailbox(source)
    box.offer([("T-1", BOOT, 1, ()), ("T-2", BOOT, 1, ()), ("T-3", BOOT, 1, ())])
    assert source.sent == [("T-1", 1), ("T-2", 1)]
    box.offer([("T-1", BOOT, 2, ())])  # behind T-3, which waited longer
    assert len(box) == 2
    assert source.in_flight == 2
    source.puback()
    box.pump()
    assert source.sent[-1] == ("T-3", 1)
    source.puback(2)
    box.pump()
    assert source.sent[-1] == ("T-1", 2)
    assert len(box) == 0


def test_what_a_disconnected_source_refuses_waits_for_the_reconnect() -> None:
    source = FakeSource(window=10)
    source.connected = False
    box, metrics = mailbox(source)
    box.offer([("T-1", BOOT, 3, ()), ("T-2", BOOT, 4, ())])
    assert source.sent == []
    assert len(box) == 2
    assert metrics.waiting._value.get() == 2
    source.connected = True
    box.pump()
    assert sorted(source.sent) == [("T-1", 3), ("T-2", 4)]
    assert metrics.waiting._value.get() == 0


def test_a_refused_one_goes_back_but_never_over_a_newer_one() -> None:
    source = FakeSource(window=10)
    box, _ = mailbox(source)
    refused: list[str] = []

    def publish(topic: str, payload: bytes) -> bool:
        if not refused:  # the first publish is refused, and meanwhile a newer one arrives
            refused.append(topic)
            box.offer([("T-1", BOOT, 8, ())])
            return False
        return source.publish(topic, payload)

    box._publish = publish
    box.offer([("T-1", BOOT, 7, ())])
    assert len(box) == 1  # the newer one (8) waits; the refused 7 did not come back over it
    box.pump()
    assert source.sent == [("T-1", 8)]


def test_a_pump_asked_for_during_a_publish_runs_in_the_pump_already_running() -> None:
    # paho calls the listener (pump) from its PUBACK callback, possibly while this thread
    # is inside a publish: the inner pump must not publish itself, the outer runs again.
    source = FakeSource(window=1)
    box, _ = mailbox(source)

    def ack_and_pump() -> None:
        source.puback()
        box.pump()

    source.during_publish = ack_and_pump
    box.offer([("T-1", BOOT, 1, ()), ("T-2", BOOT, 1, ()), ("T-3", BOOT, 1, ())])
    assert source.sent == [("T-1", 1), ("T-2", 1), ("T-3", 1)]
    assert len(box) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("offer"), st.integers(0, 4)),
            st.tuples(st.just("ack"), st.integers(1, 3)),
            st.tuples(st.just("link"), st.booleans()),
        ),
        max_size=60,
    )
)
def test_each_terminal_ends_with_its_newest_confirmation_and_waiting_is_bounded(
    steps: list[tuple[str, int | bool]],
) -> None:
    source = FakeSource(window=2)
    box, _ = mailbox(source)
    newest: dict[str, int] = {}
    seq = 0
    for kind, value in steps:
        if kind == "offer":
            seq += 1
            tid = f"T-{value}"
            newest[tid] = seq
            box.offer([(tid, BOOT, seq, ())])
        elif kind == "ack":
            source.puback(int(value))
            box.pump()
        else:
            source.connected = bool(value)
            box.pump()
        assert len(box) <= 5  # one per terminal at most
        assert source.in_flight <= source.window
    source.connected, source.window = True, 1000
    box.pump()
    last_sent: dict[str, int] = {}
    for tid, s in source.sent:
        assert s > last_sent.get(tid, 0)  # never an older one after a newer
        last_sent[tid] = s
    assert last_sent == newest
