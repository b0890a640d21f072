"""The ESC/POS probe: DLE EOT status parsing and a printer played over a real pseudo-terminal."""

from __future__ import annotations

import os
import select
import termios
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.probes.base import Probe
from agent.probes.escpos import (
    EscPosFlag,
    EscPosProbe,
    EscPosStatusError,
    dle_eot,
    escpos_condition,
    parse_dle_eot,
)
from protocol.messages import PeripheralCondition, PeripheralKind, PeripheralStatus

C = PeripheralCondition
F = EscPosFlag

# Status bytes as Epson's ESC/POS reference (TM-T88 series) lists them.
ALL_OK = {1: 0x12, 2: 0x12, 3: 0x12, 4: 0x12}


@pytest.mark.parametrize(
    ("n", "status", "flags"),
    [
        (1, 0x12, set()),  # online, drawer pin low
        (1, 0x16, {F.DRAWER_PIN3_HIGH}),
        (1, 0x1A, {F.OFFLINE}),
        (1, 0x3A, {F.OFFLINE, F.WAITING_ONLINE_RECOVERY}),
        (1, 0x52, {F.FEED_BUTTON_PRESSED}),
        (2, 0x12, set()),
        (2, 0x16, {F.COVER_OPEN}),
        (2, 0x1A, {F.FEEDING_BY_BUTTON}),
        (2, 0x32, {F.STOPPED_BY_PAPER_END}),
        (2, 0x52, {F.ERROR}),
        (2, 0x76, {F.COVER_OPEN, F.STOPPED_BY_PAPER_END, F.ERROR}),
        (3, 0x12, set()),
        (3, 0x16, {F.MECHANICAL_ERROR}),
        (3, 0x1A, {F.AUTOCUTTER_ERROR}),
        (3, 0x32, {F.UNRECOVERABLE_ERROR}),
        (3, 0x52, {F.AUTO_RECOVERABLE_ERROR}),
        (4, 0x12, set()),  # paper adequate, paper present
        (4, 0x1E, {F.PAPER_NEAR_END}),
        (4, 0x72, {F.PAPER_END}),
        (4, 0x7E, {F.PAPER_NEAR_END, F.PAPER_END}),
    ],
)
def test_dle_eot_status_bytes_parse_into_their_flags(
    n: int, status: int, flags: set[EscPosFlag]
) -> None:
    assert parse_dle_eot(n, status) == flags


@pytest.mark.parametrize("status", [0x00, 0xFF, 0x13, 0x92, 0x10, 0x02, 0x93, -1, 256])
def test_bytes_with_wrong_fixed_bits_are_a_typed_protocol_error(status: int) -> None:
    with pytest.raises(EscPosStatusError) as caught:
        parse_dle_eot(1, status)
    assert (caught.value.n, caught.value.status) == (1, status)


@given(n=st.integers(-2, 7), status=st.integers(-300, 600))
def test_every_value_either_parses_or_raises_the_typed_error(n: int, status: int) -> None:
    valid = n in (1, 2, 3, 4) and 0 <= status <= 0xFF and status & 0x93 == 0x12
    try:
        flags = parse_dle_eot(n, status)
    except EscPosStatusError:
        assert not valid
    else:
        assert valid
        assert all(isinstance(flag, EscPosFlag) for flag in flags)


@pytest.mark.parametrize(
    ("answers", "condition", "fault_code"),
    [
        (ALL_OK, C.OK, None),
        ({**ALL_OK, 4: 0x1E}, C.PAPER_LOW, "paper-near-end"),
        ({1: 0x1A, 2: 0x32, 3: 0x12, 4: 0x72}, C.PAPER_OUT, "paper-end"),
        ({1: 0x1A, 2: 0x32, 3: 0x12, 4: 0x12}, C.PAPER_OUT, "stopped-by-paper-end"),
        ({1: 0x1A, 2: 0x16, 3: 0x12, 4: 0x12}, C.COVER_OPEN, "cover-open"),
        ({1: 0x1A, 2: 0x52, 3: 0x1A, 4: 0x12}, C.CUTTER_ERROR, "autocutter-error"),
        ({1: 0x1A, 2: 0x52, 3: 0x16, 4: 0x12}, C.JAM, "mechanical-error"),
        ({1: 0x1A, 2: 0x52, 3: 0x32, 4: 0x12}, C.OFFLINE, "unrecoverable-error"),
        ({1: 0x1A, 2: 0x52, 3: 0x52, 4: 0x12}, C.OFFLINE, "auto-recoverable-error"),
        # Epson raises the auto-recoverable bit when the cover opens mid-print.
        ({1: 0x1A, 2: 0x56, 3: 0x52, 4: 0x12}, C.COVER_OPEN, "cover-open"),
        ({1: 0x1A, 2: 0x12, 3: 0x12, 4: 0x12}, C.OFFLINE, "offline"),
        ({1: 0x1A, 2: 0x52, 3: 0x12, 4: 0x12}, C.OFFLINE, "error"),
        ({1: 0x1A, 2: 0x12, 3: 0x12, 4: 0x1E}, C.OFFLINE, "offline"),  # near-end never stops
        ({1: 0x16, 2: 0x12, 3: 0x12, 4: 0x12}, C.OK, None),  # drawer open is not a fault
        ({}, C.UNKNOWN, "no-status"),
    ],
)
def test_status_answers_map_to_normalised_printer_conditions(
    answers: Mapping[int, int], condition: C, fault_code: str | None
) -> None:
    assert escpos_condition(answers)[:2] == (condition, fault_code)


def test_most_severe_cause_wins_and_the_others_are_in_the_detail() -> None:
    answers = {1: 0x1A, 2: 0x76, 3: 0x1A, 4: 0x7E}  # cover, paper end, cutter, near end
    condition, fault_code, detail = escpos_condition(answers)
    assert (condition, fault_code) == (C.COVER_OPEN, "cover-open")
    assert detail == (
        "DLE EOT 1=0x1a 2=0x76 3=0x1a 4=0x7e; also autocutter-error, paper-end, paper-near-end"
    )
    assert escpos_condition({**answers, 2: 0x72})[0] is C.CUTTER_ERROR
    assert escpos_condition({**answers, 2: 0x72, 3: 0x16})[0] is C.JAM


def test_an_invalid_byte_among_the_answers_is_a_typed_error() -> None:
    with pytest.raises(EscPosStatusError):
        escpos_condition({**ALL_OK, 3: 0xFF})


valid_byte = st.integers(0, 0xFF).map(lambda b: (b & ~0x93) | 0x12)


@given(st.fixed_dictionaries({n: valid_byte for n in (1, 2, 3, 4)}))
def test_any_valid_answers_yield_a_condition_a_receipt_printer_may_report(
    answers: dict[int, int],
) -> None:
    condition, fault_code, detail = escpos_condition(answers)
    status = PeripheralStatus(
        name="receipt",
        kind=PeripheralKind.RECEIPT_PRINTER,
        condition=condition,
        fault_code=fault_code,
        detail=detail,
    )
    assert (status.condition is C.OK) == (fault_code is None)


def test_dle_eot_query_bytes_are_0x10_0x04_n() -> None:
    assert [dle_eot(n) for n in (1, 2, 3, 4)] == [bytes([0x10, 0x04, n]) for n in (1, 2, 3, 4)]
    with pytest.raises(ValueError, match=r"1\.\.4"):
        dle_eot(5)


# ------------------------------------------------------------ a printer on a pseudo-terminal


@dataclass
class PtyPrinter:
    """Plays an ESC/POS printer on the master side of a pty; the probe opens ``path``."""

    path: str
    slave_fd: int
    answer: Callable[[int], bytes] = lambda n: b""
    received: bytearray = field(default_factory=bytearray)


@pytest.fixture
def pty_printer() -> Iterator[PtyPrinter]:
    master, slave = os.openpty()
    printer = PtyPrinter(path=os.ttyname(slave), slave_fd=slave)
    stop = threading.Event()

    def play() -> None:
        pending = b""
        while not stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.02)
            if not ready:
                continue
            try:
                chunk = os.read(master, 64)
            except OSError:
                return
            printer.received += chunk
            pending += chunk
            while len(pending) >= 3 and pending[:2] == b"\x10\x04":
                reply = printer.answer(pending[2])
                if reply:
                    os.write(master, reply)
                pending = pending[3:]

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    try:
        yield printer
    finally:
        stop.set()
        thread.join(timeout=5)
        os.close(master)
        os.close(slave)


QUERIES = b"\x10\x04\x01\x10\x04\x02\x10\x04\x03\x10\x04\x04"


def test_probe_queries_a_healthy_printer_over_serial_and_reports_ok(
    pty_printer: PtyPrinter,
) -> None:
    pty_printer.answer = lambda n: bytes([ALL_OK[n]])
    probe = EscPosProbe("receipt", pty_printer.path, baud=19200, timeout_s=2)
    assert isinstance(probe, Probe)

    status = probe.read()

    assert (status.name, status.kind) == ("receipt", PeripheralKind.RECEIPT_PRINTER)
    assert (status.condition, status.fault_code) == (C.OK, None)
    assert status.detail == "DLE EOT 1=0x12 2=0x12 3=0x12 4=0x12"
    assert bytes(pty_printer.received) == QUERIES  # nothing but the four status queries
    attrs = termios.tcgetattr(pty_printer.slave_fd)
    assert attrs[4] == attrs[5] == termios.B19200  # raw mode at the configured baud
    assert not attrs[3] & (termios.ICANON | termios.ECHO)


def test_probe_reports_paper_out_and_cover_open_from_the_printer(pty_printer: PtyPrinter) -> None:
    probe = EscPosProbe("receipt", pty_printer.path, timeout_s=2)
    pty_printer.answer = lambda n: bytes([{1: 0x1A, 2: 0x32, 3: 0x12, 4: 0x72}[n]])
    assert probe.read().condition is C.PAPER_OUT
    pty_printer.answer = lambda n: bytes([{1: 0x1A, 2: 0x16, 3: 0x12, 4: 0x12}[n]])
    assert probe.read().condition is C.COVER_OPEN


def test_probe_reports_a_printer_that_never_answers_as_offline(pty_printer: PtyPrinter) -> None:
    status = EscPosProbe("receipt", pty_printer.path, timeout_s=0.3).read()
    assert (status.condition, status.fault_code) == (C.OFFLINE, "no-response")
    assert status.detail == "no status response to DLE EOT 1 within 0.3 s"


def test_probe_reports_a_printer_that_stops_answering_midway_as_offline(
    pty_printer: PtyPrinter,
) -> None:
    pty_printer.answer = lambda n: bytes([0x12]) if n < 3 else b""
    status = EscPosProbe("receipt", pty_printer.path, timeout_s=0.3).read()
    assert (status.condition, status.fault_code) == (C.OFFLINE, "no-response")
    assert status.detail is not None
    assert "DLE EOT 3" in status.detail


def test_probe_reports_a_garbage_status_byte_as_unknown(pty_printer: PtyPrinter) -> None:
    pty_printer.answer = lambda n: b"\xff"
    status = EscPosProbe("receipt", pty_printer.path, timeout_s=1).read()
    assert (status.condition, status.fault_code) == (C.UNKNOWN, "bad-status-byte")


def test_probe_discards_a_stale_late_answer_before_querying(pty_printer: PtyPrinter) -> None:
    # The 4th answer comes with an extra 0x1a (offline) the probe does not read.
    pty_printer.answer = lambda n: b"\x12\x1a" if n == 4 else b"\x12"
    probe = EscPosProbe("receipt", pty_printer.path, timeout_s=2)
    assert probe.read().condition is C.OK
    pty_printer.answer = lambda n: bytes([ALL_OK[n]])

    status = probe.read()  # must not take the stale 0x1a for the answer to DLE EOT 1

    assert (status.condition, status.fault_code) == (C.OK, None)


def test_probe_reports_a_missing_device_as_offline(tmp_path: Path) -> None:
    missing = tmp_path / "ttyUSB7"
    status = EscPosProbe("receipt", str(missing)).read()
    assert (status.condition, status.fault_code) == (C.OFFLINE, "device-not-found")
    assert status.detail == f"device not found: {missing}"


def test_probe_refuses_an_unsupported_baud_rate() -> None:
    with pytest.raises(ValueError, match="baud"):
        EscPosProbe("receipt", "/dev/ttyS0", baud=12345)
