"""The probe reader: slow probes are read in a worker thread, the agent reads their last result."""

from __future__ import annotations

import threading

import pytest

from agent.probe_reader import ProbeReader
from protocol.messages import PeripheralCondition, PeripheralKind, PeripheralStatus
from tests.support.waiting import wait_until


class GatedProbe:
    """A printer whose read blocks while its gate is closed, as an IPP printer that times out."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()  # a read is blocked at the gate
        self.condition = PeripheralCondition.OK
        self.error: Exception | None = None
        self.reads = 0

    @property
    def name(self) -> str:
        return "a4_printer"

    @property
    def kind(self) -> PeripheralKind:
        return PeripheralKind.A4_PRINTER

    def read(self) -> PeripheralStatus:
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait()
            self.waiting.clear()
        self.reads += 1
        if self.error is not None:
            raise self.error
        return PeripheralStatus(name=self.name, kind=self.kind, condition=self.condition)


@pytest.fixture
def probe() -> GatedProbe:
    return GatedProbe()


def test_start_reads_every_probe_once_before_returning(probe: GatedProbe) -> None:
    reader = ProbeReader([probe], interval_s=60.0)
    (cached,) = reader.probes
    with pytest.raises(RuntimeError, match="not read yet"):
        cached.read()
    reader.start()
    try:
        assert probe.reads == 1
        assert (cached.name, cached.kind) == ("a4_printer", PeripheralKind.A4_PRINTER)
        assert cached.read().condition is PeripheralCondition.OK
    finally:
        reader.stop()


def test_the_cached_read_answers_while_the_real_probe_is_blocked(probe: GatedProbe) -> None:
    reader = ProbeReader([probe], interval_s=0.01)
    reader.start()
    try:
        probe.condition = PeripheralCondition.JAM
        probe.gate.clear()
        assert probe.waiting.wait(5), "the worker never reached the blocked read"
        answers: list[PeripheralStatus] = []
        asker = threading.Thread(target=lambda: answers.append(reader.probes[0].read()))
        asker.start()
        asker.join(5)
        assert not asker.is_alive(), "the cached read waited for the device"
        assert answers[0].condition is PeripheralCondition.OK  # the last completed read
        assert probe.waiting.is_set()  # the device is still not answering
    finally:
        probe.gate.set()
        reader.stop()


def test_a_change_seen_in_the_background_is_announced_once(probe: GatedProbe) -> None:
    changes: list[PeripheralCondition] = []
    reader = ProbeReader(
        [probe],
        interval_s=0.01,
        on_change=lambda: changes.append(reader.probes[0].read().condition),
    )
    reader.start()
    try:
        reads = probe.reads
        wait_until(lambda: probe.reads >= reads + 3, 5, "a few unchanged reads")
        assert changes == []
        probe.condition = PeripheralCondition.PAPER_OUT
        wait_until(lambda: changes, 5, "the change callback")
        reads = probe.reads
        wait_until(lambda: probe.reads >= reads + 3, 5, "a few more reads")
        assert changes == [PeripheralCondition.PAPER_OUT]
    finally:
        reader.stop()


def test_what_the_probe_raised_is_raised_again_without_a_growing_traceback(
    probe: GatedProbe,
) -> None:
    probe.error = OSError("printer unplugged")
    reader = ProbeReader([probe], interval_s=60.0)
    reader.start()
    try:
        depths = []
        for _ in range(3):
            with pytest.raises(OSError, match="printer unplugged") as info:
                reader.probes[0].read()
            tb, depth = info.value.__traceback__, 0
            while tb is not None:
                depth, tb = depth + 1, tb.tb_next
            depths.append(depth)
        assert depths[0] == depths[1] == depths[2]
    finally:
        reader.stop()


def test_a_failing_change_callback_does_not_stop_the_worker(probe: GatedProbe) -> None:
    def fail() -> None:
        raise RuntimeError("loop gone")

    reader = ProbeReader([probe], interval_s=0.01, on_change=fail)
    reader.start()
    try:
        probe.condition = PeripheralCondition.JAM
        reads = probe.reads
        wait_until(lambda: probe.reads >= reads + 5, 5, "reads after the failing callback")
        assert reader.probes[0].read().condition is PeripheralCondition.JAM
    finally:
        reader.stop()


def test_stop_ends_the_worker_thread(probe: GatedProbe) -> None:
    reader = ProbeReader([probe], interval_s=0.01, name="probe-reader-under-test")
    reader.start()
    reader.stop()
    assert all(t.name != "probe-reader-under-test" for t in threading.enumerate())


def test_a_non_positive_interval_is_refused(probe: GatedProbe) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        ProbeReader([probe], interval_s=0.0)
