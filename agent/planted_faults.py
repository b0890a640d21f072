"""Faults a simulation plants on purpose: a peripheral held in a condition, a terminal cut off.

``kioskfleet simulate --plant ID:PROBE:CONDITION`` holds one simulated peripheral in
``CONDITION`` from the start until the simulation stops (the scenario's own incidents
come and go within seconds at a high ``--fault-rate``; a planted one lasts, so its
alert fires). ``--plant-outage ID:SECONDS`` drops the terminal's MQTT connection
without DISCONNECT once it has been connected and ``SECONDS`` have passed since the
start, and never reconnects it: the broker publishes its will, and the server sees a
terminal that vanished (``TerminalOffline``). ``make demo`` plants both
(kioskfleet/demo_faults.py).

Pure: parsing and the data only; the simulator (agent/simulator.py) applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import PeripheralCondition
from protocol.topics import is_valid_terminal_id

__all__ = ["PlantedFault", "PlantedOutage"]


def _terminal(text: str, what: str) -> str:
    if not is_valid_terminal_id(text):
        raise ValueError(f"{what}: {text!r} is not a terminal id")
    return text


@dataclass(frozen=True, slots=True)
class PlantedFault:
    """Terminal ``terminal_id``'s probe ``probe`` reports ``condition`` for the whole run."""

    terminal_id: str
    probe: str
    condition: PeripheralCondition

    @classmethod
    def parse(cls, text: str) -> PlantedFault:
        """``ID:PROBE:CONDITION``. Raises ValueError naming what is wrong."""
        parts = text.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"planted fault {text!r}: use ID:PROBE:CONDITION")
        terminal_id, probe, condition = parts
        try:
            cond = PeripheralCondition(condition)
        except ValueError:
            raise ValueError(f"planted fault {text!r}: no condition {condition!r}") from None
        return cls(_terminal(terminal_id, "planted fault"), probe, cond)

    def __str__(self) -> str:
        return f"{self.terminal_id}:{self.probe}:{self.condition.value}"


@dataclass(frozen=True, slots=True)
class PlantedOutage:
    """Terminal ``terminal_id`` loses its connection for good ``after_s`` into the run
    (once it has been connected)."""

    terminal_id: str
    after_s: float

    @classmethod
    def parse(cls, text: str) -> PlantedOutage:
        """``ID:SECONDS``. Raises ValueError naming what is wrong."""
        terminal_id, sep, seconds = text.rpartition(":")
        try:
            after = float(seconds)
        except ValueError:
            after = -1.0
        if not sep or not 0 <= after <= 86400:
            raise ValueError(f"planted outage {text!r}: use ID:SECONDS (0 to 86400)")
        return cls(_terminal(terminal_id, "planted outage"), after)

    def __str__(self) -> str:
        return f"{self.terminal_id}:{self.after_s:g}"
