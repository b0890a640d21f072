"""The ESC/POS receipt-printer probe: real-time status over ``DLE EOT n``.

``DLE EOT n`` (0x10 0x04 n) makes an ESC/POS printer answer one status byte
at once, even while offline. Two pure functions decode the answers:

* ``parse_dle_eot(n, status)``: one byte → the set of ``EscPosFlag`` it
  carries, after checking the fixed bits every answer has (bit 1 and bit 4
  on, bits 0 and 7 off: ``status & 0x93 == 0x12``). Anything else raises
  ``EscPosStatusError``.
* ``escpos_condition(status_by_n)``: the answers to n=1..4 → the normalised
  printer condition (table and precedence in ``docs/probes.md``).

``EscPosProbe`` opens the device file (``/dev/ttyS*``, ``/dev/ttyUSB*``,
``/dev/usb/lp0``), puts a serial port into raw mode at the configured baud,
sends the four queries and waits for each byte with ``poll`` under one
deadline. A missing device or a silent printer is ``offline``; the probe
never raises for device problems and never blocks past its timeout. It must
never send anything but ``DLE EOT`` (it cannot print, cut or open a drawer).
"""

from __future__ import annotations

import errno
import os
import select
import termios
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from agent.errors import ProbeError
from agent.probes.base import Verdict, VerdictProbe
from protocol.messages import PeripheralCondition, PeripheralKind
from protocol.taxonomy import FAMILIES, Family

__all__ = [
    "BAUD_RATES",
    "EscPosFlag",
    "EscPosProbe",
    "EscPosStatusError",
    "dle_eot",
    "escpos_condition",
    "parse_dle_eot",
]

DLE: Final = 0x10
EOT: Final = 0x04
STATUS_KINDS: Final = (1, 2, 3, 4)

_FIXED_MASK: Final = 0x93  # bits 0, 1, 4, 7
_FIXED_VALUE: Final = 0x12  # bits 1 and 4 on, 0 and 7 off

BAUD_RATES: Final[Mapping[int, int]] = {
    1200: termios.B1200,
    2400: termios.B2400,
    4800: termios.B4800,
    9600: termios.B9600,
    19200: termios.B19200,
    38400: termios.B38400,
    57600: termios.B57600,
    115200: termios.B115200,
}
"""Serial speeds the probe can set (the ones ESC/POS printers offer)."""


class EscPosFlag(StrEnum):
    """One bit of a DLE EOT answer that is set (Epson ESC/POS command reference)."""

    # n=1 printer status
    DRAWER_PIN3_HIGH = "drawer-pin3-high"  # bit 2
    OFFLINE = "offline"  # bit 3
    WAITING_ONLINE_RECOVERY = "waiting-online-recovery"  # bit 5
    FEED_BUTTON_PRESSED = "feed-button-pressed"  # bit 6
    # n=2 offline cause
    COVER_OPEN = "cover-open"  # bit 2
    FEEDING_BY_BUTTON = "feeding-by-button"  # bit 3
    STOPPED_BY_PAPER_END = "stopped-by-paper-end"  # bit 5
    ERROR = "error"  # bit 6
    # n=3 error cause
    MECHANICAL_ERROR = "mechanical-error"  # bit 2 (impact models; undefined on TM-T88)
    AUTOCUTTER_ERROR = "autocutter-error"  # bit 3
    UNRECOVERABLE_ERROR = "unrecoverable-error"  # bit 5
    AUTO_RECOVERABLE_ERROR = "auto-recoverable-error"  # bit 6
    # n=4 roll paper sensor
    PAPER_NEAR_END = "paper-near-end"  # bits 2-3
    PAPER_END = "paper-end"  # bits 5-6


_BITS: Final[Mapping[int, tuple[tuple[int, EscPosFlag], ...]]] = {
    1: (
        (0x04, EscPosFlag.DRAWER_PIN3_HIGH),
        (0x08, EscPosFlag.OFFLINE),
        (0x20, EscPosFlag.WAITING_ONLINE_RECOVERY),
        (0x40, EscPosFlag.FEED_BUTTON_PRESSED),
    ),
    2: (
        (0x04, EscPosFlag.COVER_OPEN),
        (0x08, EscPosFlag.FEEDING_BY_BUTTON),
        (0x20, EscPosFlag.STOPPED_BY_PAPER_END),
        (0x40, EscPosFlag.ERROR),
    ),
    3: (
        (0x04, EscPosFlag.MECHANICAL_ERROR),
        (0x08, EscPosFlag.AUTOCUTTER_ERROR),
        (0x20, EscPosFlag.UNRECOVERABLE_ERROR),
        (0x40, EscPosFlag.AUTO_RECOVERABLE_ERROR),
    ),
    4: (
        (0x0C, EscPosFlag.PAPER_NEAR_END),
        (0x60, EscPosFlag.PAPER_END),
    ),
}


class EscPosStatusError(ProbeError, ValueError):
    """A byte that is not a valid answer to ``DLE EOT n``. Carries ``n`` and ``status``."""

    def __init__(self, n: int, status: int, message: str) -> None:
        super().__init__(f"DLE EOT {n}: {message}")
        self.n = n
        self.status = status


def dle_eot(n: int) -> bytes:
    """The ``DLE EOT n`` query bytes. Raises ``ValueError`` for n outside 1..4."""
    if n not in STATUS_KINDS:
        raise ValueError(f"DLE EOT n must be 1..4, not {n}")
    return bytes((DLE, EOT, n))


def parse_dle_eot(n: int, status: int) -> frozenset[EscPosFlag]:
    """The flags set in the answer ``status`` to ``DLE EOT n``.

    Raises ``EscPosStatusError`` when ``n`` is not 1..4, ``status`` is not a
    byte, or the fixed bits are wrong (``status & 0x93 != 0x12``).
    """
    if n not in _BITS:
        raise EscPosStatusError(n, status, "n must be 1..4")
    if not 0 <= status <= 0xFF:
        raise EscPosStatusError(n, status, f"{status} is not a byte")
    if status & _FIXED_MASK != _FIXED_VALUE:
        raise EscPosStatusError(n, status, f"0x{status:02x} has wrong fixed bits")
    return frozenset(flag for mask, flag in _BITS[n] if status & mask)


def _raw(status_by_n: Mapping[int, int]) -> str:
    return " ".join(f"{n}=0x{status_by_n[n]:02x}" for n in sorted(status_by_n))


def escpos_condition(status_by_n: Mapping[int, int]) -> Verdict:
    """Map the answers to ``DLE EOT 1..4`` (keyed by n) onto a printer condition.

    Any subset of n may be given; an empty mapping is ``unknown``. The
    offline bit of n=1 is a consequence, not a cause: when n=2..4 name the
    cause (cover open, paper end, a cutter error), the cause is reported.
    ``offline`` remains for an unrecoverable or auto-recoverable error (head
    too hot) and for an offline or error bit that nothing explains. Of several
    causes the first in the printer family's precedence wins; the others go into the
    detail. Raises ``EscPosStatusError`` for an invalid byte; otherwise pure
    and total.
    """
    if not status_by_n:
        return PeripheralCondition.UNKNOWN, "no-status", "no DLE EOT answer to decode"
    flags: set[EscPosFlag] = set()
    for n, status in status_by_n.items():
        flags |= parse_dle_eot(n, status)

    found: list[tuple[PeripheralCondition, EscPosFlag]] = []
    if EscPosFlag.UNRECOVERABLE_ERROR in flags:
        found.append((PeripheralCondition.OFFLINE, EscPosFlag.UNRECOVERABLE_ERROR))
    # Epson also raises the auto-recoverable bit when the cover is opened mid-print.
    if EscPosFlag.AUTO_RECOVERABLE_ERROR in flags and EscPosFlag.COVER_OPEN not in flags:
        found.append((PeripheralCondition.OFFLINE, EscPosFlag.AUTO_RECOVERABLE_ERROR))
    if EscPosFlag.COVER_OPEN in flags:
        found.append((PeripheralCondition.COVER_OPEN, EscPosFlag.COVER_OPEN))
    if EscPosFlag.AUTOCUTTER_ERROR in flags:
        found.append((PeripheralCondition.CUTTER_ERROR, EscPosFlag.AUTOCUTTER_ERROR))
    if EscPosFlag.MECHANICAL_ERROR in flags:
        found.append((PeripheralCondition.JAM, EscPosFlag.MECHANICAL_ERROR))
    if EscPosFlag.PAPER_END in flags:
        found.append((PeripheralCondition.PAPER_OUT, EscPosFlag.PAPER_END))
    elif EscPosFlag.STOPPED_BY_PAPER_END in flags:
        found.append((PeripheralCondition.PAPER_OUT, EscPosFlag.STOPPED_BY_PAPER_END))
    if EscPosFlag.PAPER_NEAR_END in flags:
        found.append((PeripheralCondition.PAPER_LOW, EscPosFlag.PAPER_NEAR_END))
    explained = any(c is not PeripheralCondition.PAPER_LOW for c, _ in found)
    if not explained:
        if EscPosFlag.ERROR in flags:
            found.append((PeripheralCondition.OFFLINE, EscPosFlag.ERROR))
        elif EscPosFlag.OFFLINE in flags:
            found.append((PeripheralCondition.OFFLINE, EscPosFlag.OFFLINE))

    detail = f"DLE EOT {_raw(status_by_n)}"
    if not found:
        return PeripheralCondition.OK, None, detail
    rank = FAMILIES[Family.PRINTER].rank
    condition, flag = min(found, key=lambda item: rank(item[0]))
    others = [f.value for c, f in found if f is not flag]
    if others:
        detail += "; also " + ", ".join(others)
    return condition, flag.value, detail


# ---------------------------------------------------------------- the probe


class _NoAnswerError(Exception):
    """Internal: the printer did not answer one query before the deadline."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.n = n


def _set_raw(fd: int, baud: int) -> None:
    """Raw 8N1 at ``baud`` with no flow control (what ESC/POS serial ports expect)."""
    attrs = termios.tcgetattr(fd)
    iflag, oflag, cflag, lflag, _ispeed, _ospeed, cc = attrs
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
        | termios.IXOFF
        | termios.IXANY
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB | termios.CSTOPB | termios.CRTSCTS)
    cflag |= termios.CS8 | termios.CREAD | termios.CLOCAL
    cc = list(cc)
    cc[termios.VMIN] = 0
    cc[termios.VTIME] = 0
    speed = BAUD_RATES[baud]
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, speed, speed, cc])


def _wait(fd: int, event: int, deadline: float) -> bool:
    poller = select.poll()
    poller.register(fd, event)
    remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
    return bool(poller.poll(remaining_ms))


def _drain(fd: int) -> None:
    """Discard bytes left over from an earlier, late answer."""
    for _ in range(64):
        try:
            if not os.read(fd, 256):
                return
        except BlockingIOError:
            return


def _query(fd: int, n: int, deadline: float) -> int:
    query = dle_eot(n)
    sent = 0
    while sent < len(query):
        if not _wait(fd, select.POLLOUT, deadline):
            raise _NoAnswerError(n)
        try:
            sent += os.write(fd, query[sent:])
        except BlockingIOError:
            continue
    while True:
        if not _wait(fd, select.POLLIN, deadline):
            raise _NoAnswerError(n)
        try:
            answer = os.read(fd, 1)
        except BlockingIOError:
            continue
        if not answer:
            raise OSError(errno.EIO, "device closed")
        return answer[0]


class EscPosProbe(VerdictProbe):
    """Reads one ESC/POS printer on a serial or USB-printer-class device file."""

    def __init__(
        self,
        name: str,
        device: str,
        *,
        baud: int = 9600,
        timeout_s: float = 1.0,
        kind: PeripheralKind = PeripheralKind.RECEIPT_PRINTER,
    ) -> None:
        """Raises ``ValueError`` for an unsupported baud rate or a non-positive timeout."""
        if baud not in BAUD_RATES:
            raise ValueError(f"unsupported baud rate {baud}; use one of {sorted(BAUD_RATES)}")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        super().__init__(name, kind)
        self._device = device
        self._baud = baud
        self._timeout_s = timeout_s

    def _verdict(self) -> Verdict:
        deadline = time.monotonic() + self._timeout_s
        try:
            fd = os.open(self._device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except FileNotFoundError:
            return (
                PeripheralCondition.OFFLINE,
                "device-not-found",
                f"device not found: {self._device}",
            )
        except PermissionError:
            return (
                PeripheralCondition.UNKNOWN,
                "permission-denied",
                f"no permission to open {self._device}",
            )
        except OSError as exc:
            return self._os_error(exc)
        try:
            if os.isatty(fd):
                _set_raw(fd, self._baud)
            _drain(fd)
            answers = {n: _query(fd, n, deadline) for n in STATUS_KINDS}
        except _NoAnswerError as exc:
            return (
                PeripheralCondition.OFFLINE,
                "no-response",
                f"no status response to DLE EOT {exc.n} within {self._timeout_s:g} s",
            )
        except (OSError, termios.error) as exc:
            return self._os_error(exc)
        finally:
            os.close(fd)
        try:
            return escpos_condition(answers)
        except EscPosStatusError as exc:
            return PeripheralCondition.UNKNOWN, "bad-status-byte", str(exc)

    def _os_error(self, exc: OSError | termios.error) -> Verdict:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        name = errno.errorcode.get(code, "error").lower()
        if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            return (
                PeripheralCondition.OFFLINE,
                "device-not-found",
                f"device not found: {self._device}",
            )
        return PeripheralCondition.OFFLINE, f"os-{name}", f"{self._device}: {exc}"
