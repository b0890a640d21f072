"""Facts about the terminal's OS the reports need: uptime and this boot's id.

``read_uptime_s`` reads ``/proc/uptime``; ``read_boot_id`` reads the kernel's
per-boot random UUID. That UUID is not the envelope's ``boot_id`` by itself:
``agent.main.agent_boot_id`` appends a random suffix drawn at every agent
start, because ``seq`` restarts at 1 whenever the agent process restarts,
with or without a reboot, and the server must not take the new messages for
duplicates. Both functions raise ``SystemReadError`` when the file is
missing, unreadable or malformed; they never guess a value and never write
anything.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Final

from agent.errors import ProbeError

__all__ = [
    "BOOT_ID_PATH",
    "UPTIME_PATH",
    "SystemReadError",
    "read_boot_id",
    "read_uptime_s",
]

UPTIME_PATH: Final = "/proc/uptime"
BOOT_ID_PATH: Final = "/proc/sys/kernel/random/boot_id"
# What the envelope accepts for boot_id (protocol.messages._Envelope).
_BOOT_ID: Final = re.compile(r"^[A-Za-z0-9-]{8,64}$")
_MAX_BYTES: Final = 4096


class SystemReadError(ProbeError):
    """An OS fact could not be read. ``path`` is the file that failed."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)


def _read_text(path: str | Path) -> str:
    try:
        with open(path, "rb") as file:
            raw = file.read(_MAX_BYTES)
    except OSError as exc:
        raise SystemReadError(path, exc.strerror or str(exc)) from exc
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise SystemReadError(path, "not ASCII text") from None


def read_uptime_s(path: str | Path = UPTIME_PATH) -> float:
    """Seconds since boot: the first field of ``/proc/uptime``.

    Raises ``SystemReadError`` if the file cannot be read or its first field
    is not a finite, non-negative number.
    """
    fields = _read_text(path).split()
    if not fields:
        raise SystemReadError(path, "empty")
    try:
        value = float(fields[0])
    except ValueError:
        raise SystemReadError(path, f"not a number: {fields[0][:32]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise SystemReadError(path, f"implausible uptime {value}")
    return value


def read_boot_id(path: str | Path = BOOT_ID_PATH) -> str:
    """The kernel's id of this boot (a UUID on Linux): 8..64 letters, digits and dashes.

    Raises ``SystemReadError`` if the file cannot be read or does not hold
    8..64 letters, digits and dashes.
    """
    value = _read_text(path).strip()
    if not _BOOT_ID.match(value):
        raise SystemReadError(path, f"not a boot id: {value[:70]!r}")
    return value
