"""The USB presence probe against a fake sysfs laid out like /sys/bus/usb/devices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.probes.base import Probe
from agent.probes.usb import (
    UsbDevice,
    UsbPresenceProbe,
    UsbScanError,
    normalise_usb_id,
    scan_usb_devices,
    usb_presence,
)
from protocol.messages import PeripheralCondition, PeripheralKind

C = PeripheralCondition


def _device(root: Path, bus_path: str, vendor: str, product: str, serial: str | None) -> None:
    """A device dir under devices/ and the symlink in bus/usb/devices, as the kernel makes them."""
    real = root / "devices" / "pci0000:00" / "0000:00:14.0" / bus_path
    real.mkdir(parents=True)
    (real / "idVendor").write_text(f"{vendor}\n")
    (real / "idProduct").write_text(f"{product}\n")
    if serial is not None:
        (real / "serial").write_text(f"{serial}\n")
    link = root / "bus" / "usb" / "devices" / bus_path
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(real, link.parent))


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    _device(tmp_path, "usb1", "1d6b", "0002", "0000:00:14.0")  # root hub
    _device(tmp_path, "1-1", "0c2e", "0b61", None)  # Honeywell QR scanner, no serial
    _device(tmp_path, "1-2", "072F", "B100", "A1B2C3D4")  # ACS reader, upper-case ids
    _device(tmp_path, "1-3", "072f", "b100", "E5F6A7B8")  # a second one
    interface = tmp_path / "devices" / "pci0000:00" / "0000:00:14.0" / "1-1" / "1-1:1.0"
    interface.mkdir()
    (interface / "bInterfaceClass").write_text("03\n")
    os.symlink(
        os.path.relpath(interface, tmp_path / "bus/usb/devices"),
        tmp_path / "bus/usb/devices/1-1:1.0",
    )
    broken = tmp_path / "bus" / "usb" / "devices" / "1-9"
    broken.mkdir()
    (broken / "idVendor").write_text("garbage\n")
    (broken / "idProduct").write_text("0001\n")
    return tmp_path / "bus" / "usb" / "devices"


def test_scan_lists_devices_and_skips_interfaces_and_malformed_entries(sysfs: Path) -> None:
    assert scan_usb_devices(sysfs) == [
        UsbDevice("1-1", "0c2e", "0b61", None),
        UsbDevice("1-2", "072f", "b100", "A1B2C3D4"),
        UsbDevice("1-3", "072f", "b100", "E5F6A7B8"),
        UsbDevice("usb1", "1d6b", "0002", "0000:00:14.0"),
    ]


def test_scan_of_a_missing_root_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(UsbScanError) as caught:
        scan_usb_devices(tmp_path / "nope")
    assert caught.value.path == tmp_path / "nope"


def test_presence_matches_ids_case_insensitively_and_serial_exactly() -> None:
    devices = [UsbDevice("1-2", "072f", "b100", "A1B2C3D4")]
    assert usb_presence(devices, "072F", "B100") == (
        C.OK,
        None,
        "072f:b100: device at 1-2",
    )
    assert usb_presence(devices, "072f", "b100", "A1B2C3D4")[0] is C.OK
    assert usb_presence(devices, "072f", "b100", "a1b2c3d4") == (
        C.DISCONNECTED,
        "usb-absent",
        "no USB device 072f:b100 serial a1b2c3d4",
    )
    assert usb_presence([], "072f", "b100")[:2] == (C.DISCONNECTED, "usb-absent")


@pytest.mark.parametrize("value", ["72f", "072g", "0x72f", "", "072f0"])
def test_usb_ids_must_be_four_hex_digits(value: str) -> None:
    with pytest.raises(ValueError, match="4-hex-digit"):
        normalise_usb_id(value)


def test_probe_reports_a_plugged_scanner_ok_and_an_unplugged_one_disconnected(
    sysfs: Path,
) -> None:
    probe = UsbPresenceProbe(
        "qr_scanner", PeripheralKind.QR_SCANNER, "0c2e", "0b61", sysfs_root=sysfs
    )
    assert isinstance(probe, Probe)
    status = probe.read()
    assert (status.name, status.kind, status.condition) == (
        "qr_scanner",
        PeripheralKind.QR_SCANNER,
        C.OK,
    )

    (sysfs / "1-1").unlink()  # unplugged: the kernel removes the entry

    assert probe.read().condition is C.DISCONNECTED


def test_probe_with_serial_picks_one_of_two_identical_readers(sysfs: Path) -> None:
    both = UsbPresenceProbe(
        "id_reader", PeripheralKind.ID_CARD_READER, "072f", "b100", sysfs_root=sysfs
    ).read()
    assert both.detail == "072f:b100: 2 devices at 1-2, 1-3"
    one = UsbPresenceProbe(
        "id_reader",
        PeripheralKind.ID_CARD_READER,
        "072f",
        "b100",
        serial="E5F6A7B8",
        sysfs_root=sysfs,
    ).read()
    assert one.detail == "072f:b100 serial E5F6A7B8: device at 1-3"
    absent = UsbPresenceProbe(
        "id_reader",
        PeripheralKind.ID_CARD_READER,
        "072f",
        "b100",
        serial="00000000",
        sysfs_root=sysfs,
    ).read()
    assert absent.condition is C.DISCONNECTED


def test_probe_without_sysfs_reports_unknown(tmp_path: Path) -> None:
    status = UsbPresenceProbe(
        "qr_scanner", PeripheralKind.QR_SCANNER, "0c2e", "0b61", sysfs_root=tmp_path / "nope"
    ).read()
    assert (status.condition, status.fault_code) == (C.UNKNOWN, "sysfs-unreadable")


def test_probe_refuses_printer_kinds() -> None:
    with pytest.raises(ValueError, match="printer"):
        UsbPresenceProbe("p", PeripheralKind.RECEIPT_PRINTER, "04b8", "0202")
