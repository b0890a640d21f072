"""The PC/SC probe: reader flag mapping and the probe over the in-memory backend (no pyscard)."""

from __future__ import annotations

import sys

import pytest

from agent.probes.base import Probe
from agent.probes.pcsc import (
    SCARD_STATE_CHANGED,
    SCARD_STATE_EMPTY,
    SCARD_STATE_EXCLUSIVE,
    SCARD_STATE_IGNORE,
    SCARD_STATE_INUSE,
    SCARD_STATE_MUTE,
    SCARD_STATE_PRESENT,
    SCARD_STATE_UNAVAILABLE,
    SCARD_STATE_UNAWARE,
    SCARD_STATE_UNKNOWN,
    SCARD_STATE_UNPOWERED,
    InMemoryPcscBackend,
    PcscError,
    PcscProbe,
    PcscServiceError,
    match_reader,
    reader_condition,
)
from protocol.messages import PeripheralCondition, PeripheralKind

C = PeripheralCondition
READER = "ACS ACR39U ICC Reader 00 00"
SCARD_E_NO_SERVICE = 0x8010001D


def test_flag_values_are_those_of_pcsclite_h() -> None:
    assert [
        SCARD_STATE_UNAWARE,
        SCARD_STATE_IGNORE,
        SCARD_STATE_CHANGED,
        SCARD_STATE_UNKNOWN,
        SCARD_STATE_UNAVAILABLE,
        SCARD_STATE_EMPTY,
        SCARD_STATE_PRESENT,
        SCARD_STATE_EXCLUSIVE,
        SCARD_STATE_INUSE,
        SCARD_STATE_MUTE,
        SCARD_STATE_UNPOWERED,
    ] == [0x0, 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x80, 0x100, 0x200, 0x400]


@pytest.mark.parametrize(
    ("flags", "condition", "fault_code", "detail"),
    [
        (0x0012, C.OK, None, "no card"),  # EMPTY|CHANGED: an idle reader
        (0x0022, C.OK, None, "card present"),
        (0x0122, C.OK, None, "card present; in use"),
        (0x01A2, C.OK, None, "card present; in exclusive use"),
        (
            0x0622,
            C.OK,
            None,
            "card present but mute (the card does not answer; the reader is fine); card unpowered",
        ),
        (
            0x0232,
            C.OK,
            None,
            "card present but mute (the card does not answer; the reader is fine)",
        ),
        (0x0008, C.FAULT, "SCARD_STATE_UNAVAILABLE", "reader present but its state is unavailable"),
        (0x000A, C.FAULT, "SCARD_STATE_UNAVAILABLE", "reader present but its state is unavailable"),
        (0x0006, C.DISCONNECTED, "SCARD_STATE_UNKNOWN", "pcscd does not know the reader"),
        (0x0001, C.DISCONNECTED, "SCARD_STATE_IGNORE", "pcscd ignores the reader"),
        (0x0000, C.UNKNOWN, None, "reader reported no state (0x0000)"),
        (0x0002, C.UNKNOWN, None, "reader reported no state (0x0002)"),
        # pcsc-lite counts card events in the high word: 0x0003_0012 is an idle reader.
        (0x00030012, C.OK, None, "no card"),
    ],
)
def test_reader_flags_map_to_reader_conditions(
    flags: int, condition: C, fault_code: str | None, detail: str
) -> None:
    assert reader_condition(flags) == (condition, fault_code, detail)


def test_reader_is_found_by_case_insensitive_substring_first_in_sorted_order() -> None:
    readers = ["Gemalto PC Twin Reader 00 00", READER, "ACS ACR39U ICC Reader 01 00"]
    assert match_reader(readers, "acr39u") == READER
    assert match_reader(readers, "Twin") == "Gemalto PC Twin Reader 00 00"
    assert match_reader(readers, "Identiv") is None


def test_probe_reports_a_present_idle_reader_as_ok() -> None:
    backend = InMemoryPcscBackend({READER: SCARD_STATE_EMPTY | SCARD_STATE_CHANGED})
    probe = PcscProbe("ic_reader", "ACR39U", backend=backend)
    assert isinstance(probe, Probe)

    status = probe.read()

    assert (status.name, status.kind) == ("ic_reader", PeripheralKind.IC_CARD_READER)
    assert (status.condition, status.fault_code) == (C.OK, None)
    assert status.detail == f"{READER}: no card"


def test_probe_reports_a_mute_card_as_ok_because_the_reader_works() -> None:
    backend = InMemoryPcscBackend({READER: SCARD_STATE_PRESENT | SCARD_STATE_MUTE})
    status = PcscProbe("id_reader", "ACR39U", kind=PeripheralKind.ID_CARD_READER, backend=backend)
    result = status.read()
    assert result.condition is C.OK
    assert result.detail is not None
    assert "mute" in result.detail


def test_probe_reports_an_unavailable_reader_as_fault() -> None:
    backend = InMemoryPcscBackend({READER: SCARD_STATE_UNAVAILABLE})
    status = PcscProbe("ic_reader", "ACR39U", backend=backend).read()
    assert (status.condition, status.fault_code) == (C.FAULT, "SCARD_STATE_UNAVAILABLE")


def test_probe_reports_an_absent_reader_as_disconnected_and_lists_what_is_there() -> None:
    backend = InMemoryPcscBackend({"Gemalto PC Twin Reader 00 00": SCARD_STATE_EMPTY})
    status = PcscProbe("ic_reader", "ACR39U", backend=backend).read()
    assert (status.condition, status.fault_code) == (C.DISCONNECTED, "reader-not-found")
    assert status.detail == "no reader matching 'ACR39U' (readers: Gemalto PC Twin Reader 00 00)"


def test_probe_follows_a_reader_being_unplugged_and_plugged_back() -> None:
    backend = InMemoryPcscBackend({READER: SCARD_STATE_EMPTY})
    probe = PcscProbe("ic_reader", "ACR39U", backend=backend)
    assert probe.read().condition is C.OK
    del backend.flags_by_reader[READER]
    assert probe.read().condition is C.DISCONNECTED
    backend.flags_by_reader[READER] = SCARD_STATE_EMPTY
    assert probe.read().condition is C.OK


def test_probe_reports_pcscd_not_running_as_unknown_with_the_pcsc_code() -> None:
    failure = PcscServiceError("Failed to establish context: Service not available.", -0x7FEFFFE3)
    status = PcscProbe("ic_reader", "ACR39U", backend=InMemoryPcscBackend(failure=failure)).read()
    assert (status.condition, status.fault_code) == (C.UNKNOWN, "0x8010001D")
    assert status.detail == (
        "pcscd not available: Failed to establish context: Service not available."
    )
    assert failure.hresult == SCARD_E_NO_SERVICE  # negative hresults are normalised


def test_probe_reports_any_other_backend_error_as_unknown() -> None:
    backend = InMemoryPcscBackend(failure=PcscError("driver crashed"))
    status = PcscProbe("ic_reader", "ACR39U", backend=backend).read()
    assert (status.condition, status.fault_code, status.detail) == (
        C.UNKNOWN,
        "pcsc-error",
        "driver crashed",
    )


def test_probe_without_pyscard_reports_unknown_pyscard_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "smartcard", None)  # makes `import smartcard` fail
    probe = PcscProbe("ic_reader", "ACR39U")

    first, second = probe.read(), probe.read()

    assert (first.condition, first.fault_code, first.detail) == (
        C.UNKNOWN,
        "pyscard-missing",
        "pyscard not installed",
    )
    assert second == first


def test_probe_refuses_an_empty_reader_name() -> None:
    with pytest.raises(ValueError, match="reader_name_contains"):
        PcscProbe("ic_reader", "")
