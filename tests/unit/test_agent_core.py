"""The agent core with fake probes, a fake outbound port and a fake clock: no network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.agent import Agent, OutboundFullError, Published, RecordingOutbound
from agent.clock import FakeClock, OffsetClock
from agent.config import AgentConfig
from protocol.codec import decode
from protocol.messages import (
    EventMessage,
    Message,
    PeripheralCondition,
    PeripheralKind,
    PeripheralStatus,
    ReportMessage,
    StateMessage,
)
from protocol.topics import Channel


class FakeProbe:
    """Reports whatever the test sets; can be told to raise."""

    def __init__(self, name: str, kind: PeripheralKind) -> None:
        self._name = name
        self._kind = kind
        self.condition = PeripheralCondition.OK
        self.fault_code: str | None = None
        self.detail: str | None = None
        self.error: Exception | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> PeripheralKind:
        return self._kind

    def read(self) -> PeripheralStatus:
        if self.error is not None:
            raise self.error
        return PeripheralStatus(
            name=self._name,
            kind=self._kind,
            condition=self.condition,
            fault_code=self.fault_code,
            detail=self.detail,
        )


def make_config(**overrides: object) -> AgentConfig:
    values: dict[str, object] = {
        "terminal_id": "T-0001",
        "hall": "hall-01",
        "region": "region-1",
        "model": "KF-200",
        "report_interval_s": 60.0,
        "probe_interval_s": 5.0,
    }
    values.update(overrides)
    return AgentConfig.model_validate(values)


class Rig:
    def __init__(self, **config: object) -> None:
        self.clock = FakeClock()
        self.printer = FakeProbe("receipt_printer", PeripheralKind.RECEIPT_PRINTER)
        self.reader = FakeProbe("id_card_reader", PeripheralKind.ID_CARD_READER)
        self.out = RecordingOutbound()
        self.agent = Agent(
            make_config(**config),
            [self.printer, self.reader],
            self.out,
            self.clock,
            "0f0e0d0c-boot",
            lambda: 123.0,
        )

    def run_until(self, seconds: float, step: float = 1.0) -> None:
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end:
            self.agent.tick(self.clock.advance(step))

    def decoded(self, channel: Channel | None = None) -> list[Message]:
        sent = self.out.published if channel is None else self.out.on(channel)
        return [decode(p.topic, p.payload) for p in sent]


def events(rig: Rig) -> list[EventMessage]:
    return [m for m in rig.decoded(Channel.EVENT) if isinstance(m, EventMessage)]


def reports(rig: Rig) -> list[ReportMessage]:
    return [m for m in rig.decoded(Channel.REPORT) if isinstance(m, ReportMessage)]


def test_start_sends_a_boot_event_with_seq_1() -> None:
    rig = Rig()
    rig.agent.start(rig.clock.monotonic())
    (boot,) = events(rig)
    assert boot.seq == 1
    assert boot.body.type == "boot"
    assert boot.boot_id == "0f0e0d0c-boot"
    assert rig.out.published[0].retain is False


def test_seq_increases_by_one_across_reports_and_events() -> None:
    rig = Rig(report_interval_s=10.0, probe_interval_s=1.0)
    rig.agent.start(rig.clock.monotonic())
    rig.agent.on_connected()
    for step in range(60):
        rig.printer.condition = PeripheralCondition.JAM if step % 7 == 3 else PeripheralCondition.OK
        rig.agent.tick(rig.clock.advance(1.0))
    seqs = [m.seq for m in rig.decoded() if not isinstance(m, StateMessage)]
    assert len(seqs) > 10
    assert seqs == list(range(1, len(seqs) + 1))


def test_state_messages_carry_the_last_seq_and_consume_none() -> None:
    rig = Rig()
    rig.agent.start(rig.clock.monotonic())  # boot = 1
    rig.agent.on_connected()  # online carries 1, report = 2
    online, report = rig.decoded()[1:3]
    assert isinstance(online, StateMessage)
    assert online.seq == 1
    assert online.body.state.value == "online"
    assert online.body.reason == "connect"
    assert online.body.hall == "hall-01"
    assert online.body.model == "KF-200"
    assert isinstance(report, ReportMessage)
    assert report.seq == 2
    assert rig.out.on(Channel.STATE)[0].retain is True


def test_events_are_sent_only_when_a_condition_changes() -> None:
    rig = Rig(probe_interval_s=1.0)
    rig.agent.start(rig.clock.monotonic())
    rig.run_until(5)
    assert [e.body.type for e in events(rig)] == ["boot"]

    rig.printer.condition = PeripheralCondition.PAPER_LOW
    rig.printer.detail = "10% left"
    rig.run_until(5)
    rig.printer.detail = "8% left"  # detail alone is not a change
    rig.run_until(5)
    rig.printer.condition = PeripheralCondition.OK
    rig.run_until(5)

    changes = [e.body for e in events(rig) if e.body.type == "peripheral_changed"]
    assert [(c.peripheral.condition, c.previous) for c in changes] == [
        (PeripheralCondition.PAPER_LOW, PeripheralCondition.OK),
        (PeripheralCondition.OK, PeripheralCondition.PAPER_LOW),
    ]


def test_a_new_fault_code_is_a_change_even_with_the_same_condition() -> None:
    rig = Rig(probe_interval_s=1.0)
    rig.agent.start(rig.clock.monotonic())
    rig.reader.condition = PeripheralCondition.FAULT
    rig.reader.fault_code = "E17"
    rig.run_until(2)
    rig.reader.fault_code = "E21"
    rig.run_until(2)
    codes = [
        e.body.peripheral.fault_code for e in events(rig) if e.body.type == "peripheral_changed"
    ]
    assert codes == ["E17", "E21"]


def test_a_problem_present_at_start_is_announced_with_no_previous_condition() -> None:
    rig = Rig()
    rig.printer.condition = PeripheralCondition.PAPER_OUT
    rig.agent.start(rig.clock.monotonic())
    boot, change = events(rig)
    assert boot.body.type == "boot"
    assert change.body.type == "peripheral_changed"
    assert change.body.previous is None
    assert change.body.peripheral.condition is PeripheralCondition.PAPER_OUT


def test_a_report_goes_out_every_interval_while_connected() -> None:
    rig = Rig(report_interval_s=10.0, probe_interval_s=1.0)
    rig.agent.start(rig.clock.monotonic(), first_report_in=3.0)
    rig.agent.on_connected()  # connect report at t=0
    rig.run_until(33)  # periodic ones at 3, 13, 23, 33
    sent_offsets = [
        round((r.sent_at - reports(rig)[0].sent_at).total_seconds()) for r in reports(rig)
    ]
    assert sent_offsets == [0, 3, 13, 23, 33]
    body = reports(rig)[-1].body
    assert [p.name for p in body.peripherals] == ["receipt_printer", "id_card_reader"]
    assert body.uptime_s == 123.0
    assert body.report_interval_s == 10.0


def test_periodic_reports_go_on_while_disconnected_and_connect_adds_one() -> None:
    rig = Rig(report_interval_s=10.0)
    rig.agent.start(rig.clock.monotonic())
    rig.run_until(35)  # never connected: reports at 10, 20, 30 still go to the outbound port
    assert len(reports(rig)) == 3
    rig.agent.on_connected()  # + the connect report
    rig.run_until(10)  # + 40
    assert len(reports(rig)) == 5
    rig.agent.on_disconnected()
    rig.run_until(30)  # + 50, 60, 70
    assert len(reports(rig)) == 8
    seqs = [m.seq for m in rig.decoded() if not isinstance(m, StateMessage)]
    assert seqs == list(range(1, 10))  # boot + 8 reports, no gap


def test_stream_messages_carry_their_seq_to_the_port_and_state_messages_none() -> None:
    rig = Rig()
    rig.agent.start(rig.clock.monotonic())
    rig.agent.on_connected()
    assert [(p.topic.rsplit("/", 1)[1], p.seq) for p in rig.out.published] == [
        ("event", 1),
        ("state", None),
        ("report", 2),
    ]


def test_the_agent_continues_the_stream_it_is_given_after_last_seq() -> None:
    out = RecordingOutbound()
    clock = FakeClock()
    agent = Agent(make_config(), [], out, clock, "5f1c7a3e-stream", lambda: 1.0, last_seq=41)
    assert agent.seq == 41
    assert decode(agent.state_topic, agent.will_message()).seq == 41
    agent.start(clock.monotonic())
    agent.on_connected()
    sent = [decode(p.topic, p.payload) for p in out.published]
    assert [(m.boot_id, m.seq) for m in sent] == [("5f1c7a3e-stream", s) for s in (42, 42, 43)]


def test_every_report_carries_the_cumulative_dropped_reports_from_the_provider() -> None:
    dropped = [0]
    out = RecordingOutbound()
    clock = FakeClock()
    agent = Agent(
        make_config(report_interval_s=10.0),
        [],
        out,
        clock,
        "5f1c7a3e-stream",
        lambda: 1.0,
        dropped_reports=lambda: dropped[0],
    )
    agent.start(clock.monotonic())
    agent.tick(clock.advance(10.0))
    dropped[0] = 7
    agent.tick(clock.advance(10.0))
    body = [m.body for m in (decode(p.topic, p.payload) for p in out.on(Channel.REPORT))]
    assert [b.dropped_reports for b in body] == [0, 7]  # type: ignore[union-attr]


def test_a_failing_dropped_reports_provider_does_not_stop_the_report() -> None:
    def broken() -> int:
        raise OSError("disk gone")

    out = RecordingOutbound()
    clock = FakeClock()
    agent = Agent(make_config(), [], out, clock, "5f1c7a3e-stream", float, dropped_reports=broken)
    agent.on_connected()
    (report,) = [decode(p.topic, p.payload) for p in out.on(Channel.REPORT)]
    assert report.body.dropped_reports == 0  # type: ignore[union-attr]


def test_a_negative_last_seq_is_refused() -> None:
    with pytest.raises(ValueError, match="last seq"):
        Agent(make_config(), [], RecordingOutbound(), FakeClock(), "boot-0001", float, last_seq=-1)


def test_every_connect_sends_online_and_a_full_report_again() -> None:
    rig = Rig()
    rig.agent.start(rig.clock.monotonic())
    for _ in range(3):
        rig.agent.on_connected()
        rig.agent.on_disconnected()
    states = [m for m in rig.decoded(Channel.STATE) if isinstance(m, StateMessage)]
    assert [s.body.reason for s in states] == ["connect"] * 3
    assert len(reports(rig)) == 3


def test_a_probe_that_raises_becomes_unknown_and_the_agent_keeps_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(probe_interval_s=1.0)
    rig.agent.start(rig.clock.monotonic())
    rig.agent.on_connected()
    rig.printer.error = RuntimeError("serial port vanished")
    rig.run_until(3)
    (change,) = [e.body for e in events(rig) if e.body.type == "peripheral_changed"]
    assert change.peripheral.condition is PeripheralCondition.UNKNOWN
    assert "serial port vanished" in (change.peripheral.detail or "")
    assert rig.agent.stats.probe_errors == 3
    assert sum("serial port vanished" in r.getMessage() for r in caplog.records) == 1
    rig.printer.error = None
    rig.run_until(1)
    assert rig.agent.peripherals()[0].condition is PeripheralCondition.OK


def test_a_probe_returning_garbage_is_unknown_too() -> None:
    rig = Rig(probe_interval_s=1.0)
    rig.printer.read = lambda: "ok"  # type: ignore[assignment,return-value]
    rig.agent.start(rig.clock.monotonic())
    assert rig.agent.peripherals()[0].condition is PeripheralCondition.UNKNOWN


def test_will_and_shutdown_are_retained_offline_states_with_their_reasons() -> None:
    rig = Rig()
    rig.agent.start(rig.clock.monotonic())
    topic = rig.agent.state_topic
    will = decode(topic, rig.agent.will_message())
    assert isinstance(will, StateMessage)
    assert (will.body.state.value, will.body.reason, will.seq) == ("offline", "connection_lost", 1)
    rig.agent.stop()
    last = rig.out.published[-1]
    assert last.topic == topic
    assert last.retain is True
    stopped = decode(last.topic, last.payload)
    assert isinstance(stopped, StateMessage)
    assert stopped.body.reason == "shutdown"
    before = len(rig.out.published)
    rig.run_until(120)
    rig.agent.on_connected()
    assert len(rig.out.published) == before  # nothing after a stop


def test_a_full_outbound_queue_drops_the_message_and_counts_it() -> None:
    rig = Rig()
    rig.out.refuse = OutboundFullError(10)
    rig.agent.start(rig.clock.monotonic())
    assert rig.agent.stats.dropped == 1
    rig.out.refuse = None
    rig.agent.on_connected()
    assert isinstance(rig.out.published[0], Published)
    assert [m.seq for m in rig.decoded(Channel.REPORT)] == [2]  # the lost boot keeps its number


def test_repeated_probe_names_are_refused() -> None:
    probe = FakeProbe("receipt_printer", PeripheralKind.RECEIPT_PRINTER)
    with pytest.raises(ValueError, match="unique"):
        Agent(make_config(), [probe, probe], RecordingOutbound(), FakeClock(), "boot-0001", float)


class SettableWallClock(FakeClock):
    """A fake clock whose wall time can be set wrong and corrected, as NTP does after boot."""

    def __init__(self, wall: datetime) -> None:
        super().__init__()
        self.wall_now = wall

    def wall(self) -> datetime:
        return self.wall_now


def test_a_wall_clock_before_2000_drops_messages_instead_of_raising_and_takes_no_seq() -> None:
    clock = SettableWallClock(datetime(1970, 1, 1, 0, 5, tzinfo=UTC))  # RTC lost, no NTP yet
    out = RecordingOutbound()
    printer = FakeProbe("receipt_printer", PeripheralKind.RECEIPT_PRINTER)
    agent = Agent(make_config(), [printer], out, clock, "0f0e0d0c-boot", lambda: 5.0)
    agent.start(clock.monotonic())  # the boot event cannot be built
    agent.on_connected()  # nor the online state, nor the report
    printer.condition = PeripheralCondition.JAM
    agent.tick(clock.advance(5.0))  # nor the event
    assert out.published == []
    assert agent.stats.dropped == 4
    assert agent.seq == 0
    with pytest.raises(ValueError, match="2000"):
        agent.will_message()

    clock.wall_now = datetime(2026, 3, 1, tzinfo=UTC)  # NTP corrected the clock
    agent.on_connected()
    sent = [decode(p.topic, p.payload) for p in out.published]
    assert [type(m) for m in sent] == [StateMessage, ReportMessage]
    assert [m.seq for m in sent] == [0, 1]  # the dropped messages left no gap
    assert decode(agent.state_topic, agent.will_message()).seq == 1


def test_a_wall_clock_after_2200_does_not_stop_a_clean_shutdown() -> None:
    clock = SettableWallClock(datetime(2026, 3, 1, tzinfo=UTC))
    out = RecordingOutbound()
    agent = Agent(make_config(), [], out, clock, "0f0e0d0c-boot", lambda: 5.0)
    agent.start(clock.monotonic())
    clock.wall_now += timedelta(days=365 * 200)
    agent.stop()
    assert agent.stats.dropped == 1
    assert len(out.published) == 1  # only the boot event


def test_an_offset_clock_moves_the_wall_time_only_and_runs_at_the_other_clocks_speed() -> None:
    base = FakeClock(start=50.0, wall_start=datetime(2026, 12, 6, 20, tzinfo=UTC))
    moved = OffsetClock(base, -6 * 86400 + 3600.0)
    assert moved.wall() == datetime(2026, 11, 30, 21, tzinfo=UTC)
    assert moved.monotonic() == 50.0
    base.advance(90.0)
    assert moved.wall() == datetime(2026, 11, 30, 21, 1, 30, tzinfo=UTC)
    assert moved.monotonic() == 140.0


def test_a_status_relabelled_for_its_probe_is_validated_against_the_probes_kind() -> None:
    rig = Rig()
    # A reader probe that hands back a printer's status: paper_out is no reader condition.
    rig.reader.read = lambda: PeripheralStatus(  # type: ignore[method-assign]
        name="some_printer", kind=PeripheralKind.A4_PRINTER, condition=PeripheralCondition.PAPER_OUT
    )
    rig.agent.start(rig.clock.monotonic())
    rig.agent.on_connected()
    reader = rig.agent.peripherals()[1]
    assert (reader.name, reader.kind) == ("id_card_reader", PeripheralKind.ID_CARD_READER)
    assert reader.condition is PeripheralCondition.UNKNOWN
    assert "paper_out" in (reader.detail or "")
    (report,) = reports(rig)  # decodes: the report on the wire is valid
    assert report.body.peripherals[1] == reader


def test_a_status_from_a_probe_with_another_name_is_relabelled_with_the_probes_name() -> None:
    rig = Rig()
    rig.printer.read = lambda: PeripheralStatus(  # type: ignore[method-assign]
        name="printer0", kind=PeripheralKind.RECEIPT_PRINTER, condition=PeripheralCondition.JAM
    )
    rig.agent.start(rig.clock.monotonic())
    printer = rig.agent.peripherals()[0]
    assert (printer.name, printer.condition) == ("receipt_printer", PeripheralCondition.JAM)


def test_a_long_probe_error_is_clipped_to_the_wire_limit() -> None:
    rig = Rig()
    rig.printer.error = OSError("x" * 1000)
    rig.agent.start(rig.clock.monotonic())
    detail = rig.agent.peripherals()[0].detail or ""
    assert len(detail) == 256
    assert detail.startswith("probe error: OSError: xxx")
    assert detail.endswith("…")


@pytest.mark.parametrize("boot_id", ["", "short", "has space-0001", "x" * 65, "äöü-12345"])
def test_a_boot_id_the_envelope_would_refuse_is_refused_at_construction(boot_id: str) -> None:
    with pytest.raises(ValueError, match="boot id"):
        Agent(make_config(), [], RecordingOutbound(), FakeClock(), boot_id, float)
