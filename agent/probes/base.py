"""The probe port, and the few pieces every probe shares.

A probe answers "what is this peripheral's normalised condition now?" and
nothing else. It never raises for a device problem: a missing device file, a
refused IPP request or an unplugged reader is itself a condition
(``disconnected``, ``offline``, ``unknown``) with the reason in ``detail``.
Probes must be cheap enough to run every few seconds and must not block for
longer than their configured timeout.

Shared here so that each probe does not restate them: ``Verdict`` (what a
probe's pure mapping returns), ``status_from_verdict`` (a verdict → the wire's
``PeripheralStatus``, with the detail clipped to what the wire allows),
``NamedProbe`` (the ``name`` and
``kind`` every probe carries) and ``VerdictProbe``, the base of the hardware
probes (``_verdict()`` to implement). This module never touches a device.
"""

from __future__ import annotations

import re
from typing import Final, Protocol, runtime_checkable

from protocol.messages import PeripheralCondition, PeripheralKind, PeripheralStatus

__all__ = [
    "DETAIL_MAX",
    "NamedProbe",
    "Probe",
    "Verdict",
    "VerdictProbe",
    "clip",
    "status_from_verdict",
]

DETAIL_MAX: Final = 256
"""The longest ``PeripheralStatus.detail`` the wire accepts."""

Verdict = tuple[PeripheralCondition, str | None, str | None]
"""(condition, vendor fault code, human detail), as a probe's pure mapping returns it.

Which condition wins when a device reports several, and which one means
"absent", is the peripheral family's (``protocol.taxonomy``), never the probe's."""


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


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def clip(text: str, limit: int) -> str:
    """``text`` on one printable line, at most ``limit`` characters (else its start and ``…``).

    Devices say what they like (a printer's state message may hold newlines);
    the wire refuses control characters, so they become single spaces here.
    """
    text = _CONTROL.sub(" ", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_from_verdict(name: str, kind: PeripheralKind, verdict: Verdict) -> PeripheralStatus:
    """The wire status for ``verdict``; a detail longer than ``DETAIL_MAX`` is clipped with ``…``.

    An empty detail becomes none. Raises ``pydantic.ValidationError`` (a
    ``ValueError``) if the condition does not apply to ``kind`` or the name or
    fault code is not valid on the wire.
    """
    condition, fault_code, detail = verdict
    return PeripheralStatus(
        name=name,
        kind=kind,
        condition=condition,
        fault_code=clip(fault_code, 64) if fault_code else None,
        detail=clip(detail, DETAIL_MAX) if detail else None,
    )


class NamedProbe:
    """The ``name`` and ``kind`` half of the ``Probe`` port; subclasses add ``read``."""

    def __init__(self, name: str, kind: PeripheralKind) -> None:
        self._name = name
        self._kind = kind

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> PeripheralKind:
        return self._kind


class VerdictProbe(NamedProbe):
    """A probe whose ``read`` is ``_verdict()`` turned into a status; subclasses implement ``_verdict``."""

    def read(self) -> PeripheralStatus:
        """The peripheral's condition now. Never raises for device faults."""
        return status_from_verdict(self._name, self._kind, self._verdict())

    def _verdict(self) -> Verdict:
        """What the device says, mapped; must not raise for device faults."""
        raise NotImplementedError
