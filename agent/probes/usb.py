"""The USB presence probe: is a device with this vendor:product id plugged in?

For peripherals that have no status protocol (QR scanners, HID ID-card
readers), presence on the bus is all we can know: present → ``ok``, absent
→ ``disconnected``. The source is sysfs (default ``/sys/bus/usb/devices``):
each device directory holds ``idVendor``, ``idProduct`` and, when the device
has one, ``serial``. Interface directories (``1-1:1.0``) and anything
unreadable are skipped.

``scan_usb_devices`` does the file reading and raises ``UsbScanError`` when
the root itself is missing or unreadable; ``usb_presence`` is the pure
decision. The probe only reads files; it must never write to sysfs (no
``authorized``, no ``power/*``) and never open the device.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.errors import ProbeError
from agent.probes.base import Verdict, VerdictProbe
from protocol.messages import PeripheralCondition, PeripheralKind
from protocol.taxonomy import allowed_conditions

__all__ = [
    "DEFAULT_SYSFS_ROOT",
    "UsbDevice",
    "UsbPresenceProbe",
    "UsbScanError",
    "normalise_usb_id",
    "scan_usb_devices",
    "usb_presence",
]

DEFAULT_SYSFS_ROOT: Final = Path("/sys/bus/usb/devices")
_USB_ID: Final = re.compile(r"^[0-9a-fA-F]{4}$")


class UsbScanError(ProbeError, OSError):
    """The sysfs root could not be listed. ``path`` is the root."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot scan {path}: {reason}")
        self.path = path


@dataclass(frozen=True, slots=True)
class UsbDevice:
    """One USB device as sysfs shows it; ids are 4 lowercase hex digits."""

    bus_path: str
    vendor_id: str
    product_id: str
    serial: str | None = None


def normalise_usb_id(value: str) -> str:
    """``"04B8"`` → ``"04b8"``. Raises ``ValueError`` if it is not 4 hex digits."""
    text = value.strip()
    if not _USB_ID.match(text):
        raise ValueError(f"not a 4-hex-digit USB id: {value!r}")
    return text.lower()


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def scan_usb_devices(root: Path = DEFAULT_SYSFS_ROOT) -> list[UsbDevice]:
    """Every device directory under ``root`` with readable, well-formed ids.

    Raises ``UsbScanError`` if ``root`` cannot be listed.
    """
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        raise UsbScanError(root, exc.strerror or str(exc)) from exc
    devices: list[UsbDevice] = []
    for entry in entries:
        if ":" in entry.name:  # an interface, not a device
            continue
        vendor, product = _read(entry / "idVendor"), _read(entry / "idProduct")
        if vendor is None or product is None:
            continue
        try:
            vendor, product = normalise_usb_id(vendor), normalise_usb_id(product)
        except ValueError:
            continue
        devices.append(UsbDevice(entry.name, vendor, product, _read(entry / "serial") or None))
    return devices


def usb_presence(
    devices: Iterable[UsbDevice], vendor_id: str, product_id: str, serial: str | None = None
) -> Verdict:
    """``ok`` if a device matches vendor:product (and ``serial`` when given), else ``disconnected``.

    Ids are compared case-insensitively, the serial exactly. Raises
    ``ValueError`` for ids that are not 4 hex digits; otherwise pure.
    """
    vendor, product = normalise_usb_id(vendor_id), normalise_usb_id(product_id)
    wanted = f"{vendor}:{product}" + (f" serial {serial}" if serial is not None else "")
    matches = [
        d
        for d in devices
        if d.vendor_id == vendor
        and d.product_id == product
        and (serial is None or d.serial == serial)
    ]
    if not matches:
        return PeripheralCondition.DISCONNECTED, "usb-absent", f"no USB device {wanted}"
    where = ", ".join(d.bus_path for d in matches)
    count = f"{len(matches)} devices" if len(matches) > 1 else "device"
    return PeripheralCondition.OK, None, f"{wanted}: {count} at {where}"


class UsbPresenceProbe(VerdictProbe):
    """Reports a reader or scanner present (``ok``) or absent (``disconnected``).

    Raises ``ValueError`` at construction for a kind that cannot be
    ``disconnected`` (printers: presence alone says nothing about them) or
    malformed ids.
    """

    def __init__(
        self,
        name: str,
        kind: PeripheralKind,
        vendor_id: str,
        product_id: str,
        *,
        serial: str | None = None,
        sysfs_root: Path = DEFAULT_SYSFS_ROOT,
    ) -> None:
        if PeripheralCondition.DISCONNECTED not in allowed_conditions(kind):
            raise ValueError(
                f"USB presence cannot tell a {kind.value}'s condition (it is never"
                " 'disconnected'); use its own probe (ipp or escpos for printers)"
            )
        super().__init__(name, kind)
        self._vendor_id = normalise_usb_id(vendor_id)
        self._product_id = normalise_usb_id(product_id)
        self._serial = serial
        self._root = Path(sysfs_root)

    def _verdict(self) -> Verdict:
        try:
            devices = scan_usb_devices(self._root)
        except UsbScanError as exc:
            return PeripheralCondition.UNKNOWN, "sysfs-unreadable", str(exc)
        return usb_presence(devices, self._vendor_id, self._product_id, self._serial)
