"""Probe specs (the ``[[probes]]`` tables of agent.toml) and building probes from them.

The agent config and this module share these pydantic models: ``ProbeSpec``
is a discriminated union on the field ``type``. Every spec is frozen and
forbids unknown keys, so a typo in agent.toml is an error at startup, not a
silently ignored setting. Building a probe opens nothing: no device, socket
or pyscard import happens until the probe's first ``read``.

Adding a probe type (e.g. the scenario-driven ``simulated`` probes):

1. define a spec model deriving from ``ProbeSpecBase`` with
   ``type: Literal["simulated"] = "simulated"`` and its own fields;
2. add it to ``HardwareProbeSpec``'s union below (or build a wider union
   ``Annotated[HardwareProbeSpec | SimulatedProbeSpec, Field(discriminator="type")]``
   where the config is defined);
3. add a ``case`` for it in ``build_probe``: mypy (strict) reports the
   ``assert_never`` there until every member of the union is handled.

This module must never touch a device or the network itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, assert_never
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.probes.base import Probe
from agent.probes.escpos import BAUD_RATES, EscPosProbe
from agent.probes.ipp import IppProbe
from agent.probes.pcsc import PcscProbe
from agent.probes.simulated import SimulatedProbeSpec
from agent.probes.usb import DEFAULT_SYSFS_ROOT, UsbPresenceProbe, normalise_usb_id
from protocol.messages import Name, PeripheralCondition, PeripheralKind
from protocol.taxonomy import Family, allowed_conditions, family_of

__all__ = [
    "EscPosProbeSpec",
    "HardwareProbeSpec",
    "IppProbeSpec",
    "PcscProbeSpec",
    "ProbeSpec",
    "ProbeSpecBase",
    "UsbProbeSpec",
    "build_probe",
    "build_probes",
    "probe_device",
]

Timeout = Annotated[float, Field(gt=0, le=30, allow_inf_nan=False)]


class ProbeSpecBase(BaseModel):
    """What every probe spec has: a wire name unique within the terminal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name


class IppProbeSpec(ProbeSpecBase):
    """A CUPS queue or IPP printer: ``uri = "ipp://127.0.0.1:631/printers/HP"``."""

    type: Literal["ipp"] = "ipp"
    kind: PeripheralKind = PeripheralKind.A4_PRINTER
    uri: Annotated[str, Field(max_length=1023)]
    timeout_s: Timeout = 3.0
    max_response_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 256 * 1024

    @field_validator("kind")
    @classmethod
    def _printer(cls, value: PeripheralKind) -> PeripheralKind:
        if family_of(value).family is not Family.PRINTER:
            raise ValueError(f"an IPP probe reads a printer, not a {value.value}")
        return value

    @field_validator("uri")
    @classmethod
    def _ipp_uri(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "ipp" or not parts.hostname or not parts.path.strip("/"):
            raise ValueError("uri must look like ipp://host[:port]/printers/<queue>")
        _ = parts.port  # raises ValueError for a port outside 0..65535
        return value


class EscPosProbeSpec(ProbeSpecBase):
    """An ESC/POS receipt printer on a serial port or ``/dev/usb/lp*``."""

    type: Literal["escpos"] = "escpos"
    kind: Literal[PeripheralKind.RECEIPT_PRINTER] = PeripheralKind.RECEIPT_PRINTER
    device: Annotated[str, Field(min_length=2, max_length=255, pattern=r"^/")]
    baud: int = 9600
    timeout_s: Timeout = 1.0

    @field_validator("baud")
    @classmethod
    def _known_baud(cls, value: int) -> int:
        if value not in BAUD_RATES:
            raise ValueError(f"baud must be one of {sorted(BAUD_RATES)}")
        return value


class PcscProbeSpec(ProbeSpecBase):
    """A PC/SC card reader, found by a substring of its pcscd name."""

    type: Literal["pcsc"] = "pcsc"
    kind: Literal[PeripheralKind.ID_CARD_READER, PeripheralKind.IC_CARD_READER]
    reader_name_contains: Annotated[str, Field(min_length=1, max_length=128)]


class UsbProbeSpec(ProbeSpecBase):
    """A peripheral known only by its presence on the USB bus (any kind that can be
    ``disconnected``: readers, scanners, ...)."""

    type: Literal["usb"] = "usb"
    kind: PeripheralKind
    vendor_id: str
    product_id: str
    serial: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    sysfs_root: Path = DEFAULT_SYSFS_ROOT

    @field_validator("kind")
    @classmethod
    def _can_be_absent(cls, value: PeripheralKind) -> PeripheralKind:
        if PeripheralCondition.DISCONNECTED not in allowed_conditions(value):
            raise ValueError(f"USB presence cannot tell a {value.value}'s condition")
        return value

    @field_validator("vendor_id", "product_id")
    @classmethod
    def _usb_id(cls, value: str) -> str:
        return normalise_usb_id(value)


HardwareProbeSpec = IppProbeSpec | EscPosProbeSpec | PcscProbeSpec | UsbProbeSpec
"""The probe specs for real peripherals (the plain union, for widening)."""

ProbeSpec = Annotated[HardwareProbeSpec | SimulatedProbeSpec, Field(discriminator="type")]
"""One ``[[probes]]`` table: the union discriminated on ``type``."""


def build_probe(spec: ProbeSpec) -> Probe:
    """The probe a spec describes. Opens nothing; raises ``ValueError`` only for a bad spec."""
    match spec:
        case IppProbeSpec():
            return IppProbe(
                spec.name,
                spec.uri,
                kind=spec.kind,
                timeout_s=spec.timeout_s,
                max_response_bytes=spec.max_response_bytes,
            )
        case EscPosProbeSpec():
            return EscPosProbe(
                spec.name, spec.device, baud=spec.baud, timeout_s=spec.timeout_s, kind=spec.kind
            )
        case PcscProbeSpec():
            return PcscProbe(spec.name, spec.reader_name_contains, kind=spec.kind)
        case UsbProbeSpec():
            return UsbPresenceProbe(
                spec.name,
                spec.kind,
                spec.vendor_id,
                spec.product_id,
                serial=spec.serial,
                sysfs_root=spec.sysfs_root,
            )
        case SimulatedProbeSpec():
            return spec.build()
        case _:
            assert_never(spec)


def probe_device(spec: ProbeSpec) -> str:
    """Where the probe a spec describes looks for its device, as an installer reads it."""
    match spec:
        case IppProbeSpec():
            return spec.uri
        case EscPosProbeSpec():
            return spec.device
        case PcscProbeSpec():
            return f"PC/SC reader named *{spec.reader_name_contains}*"
        case UsbProbeSpec():
            serial = f" serial {spec.serial}" if spec.serial else ""
            return f"USB {spec.vendor_id}:{spec.product_id}{serial}"
        case SimulatedProbeSpec():
            return f"simulated {spec.scenario.value} scenario"
        case _:
            assert_never(spec)


def build_probes(specs: Sequence[ProbeSpec]) -> list[Probe]:
    """Probes for all specs, in order. Raises ``ValueError`` if two share a name."""
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"two probes are named {spec.name!r}")
        seen.add(spec.name)
    return [build_probe(spec) for spec in specs]
