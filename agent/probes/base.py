"""The probe port: one narrow interface every peripheral reader implements.

A probe answers "what is this peripheral's normalised condition now?" and
nothing else. It never raises for a device problem: a missing device file, a
refused IPP request or an unplugged reader is itself a condition
(``disconnected``, ``offline``, ``unknown``) with the reason in ``detail``.
Probes must be cheap enough to run every few seconds and must not block for
longer than their configured timeout.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from protocol.messages import PeripheralKind, PeripheralStatus

__all__ = ["Probe"]


@runtime_checkable
class Probe(Protocol):
    """Reads one peripheral."""

    @property
    def name(self) -> str:
        """Unique within the terminal, e.g. ``receipt_printer``; used as the wire name."""
        ...

    @property
    def kind(self) -> PeripheralKind: ...

    def read(self) -> PeripheralStatus:
        """The peripheral's condition now. Never raises for device faults."""
        ...
