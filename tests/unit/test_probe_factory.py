"""Probe specs: the TOML in docs/probes.md parses, bad specs are refused, and probes are built."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from agent.probes.base import Probe
from agent.probes.escpos import EscPosProbe
from agent.probes.factory import (
    EscPosProbeSpec,
    HardwareProbeSpec,
    IppProbeSpec,
    PcscProbeSpec,
    ProbeSpec,
    ProbeSpecBase,
    UsbProbeSpec,
    build_probe,
    build_probes,
)
from agent.probes.ipp import IppProbe
from agent.probes.pcsc import PcscProbe
from agent.probes.usb import UsbPresenceProbe
from protocol.messages import PeripheralCondition, PeripheralKind

DOCS = Path(__file__).resolve().parents[2] / "docs" / "probes.md"
SPECS: TypeAdapter[list[ProbeSpec]] = TypeAdapter(list[ProbeSpec])


def _docs_toml() -> dict[str, Any]:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1
    return tomllib.loads(blocks[0])


def test_the_documented_toml_example_parses_into_one_spec_of_each_type() -> None:
    specs = SPECS.validate_python(_docs_toml()["probes"])
    assert [type(s) for s in specs] == [IppProbeSpec, EscPosProbeSpec, PcscProbeSpec, UsbProbeSpec]
    ipp, escpos, pcsc, usb = specs
    assert isinstance(ipp, IppProbeSpec)
    assert ipp.uri == "ipp://127.0.0.1:631/printers/HP_LaserJet"
    assert ipp.kind is PeripheralKind.A4_PRINTER
    assert isinstance(escpos, EscPosProbeSpec)
    assert (escpos.device, escpos.baud, escpos.kind) == (
        "/dev/ttyUSB0",
        9600,
        PeripheralKind.RECEIPT_PRINTER,
    )
    assert isinstance(pcsc, PcscProbeSpec)
    assert pcsc.kind is PeripheralKind.IC_CARD_READER
    assert isinstance(usb, UsbProbeSpec)
    assert (usb.vendor_id, usb.product_id, usb.serial) == ("0c2e", "0b61", None)
    assert usb.sysfs_root == Path("/sys/bus/usb/devices")


def test_the_documented_example_builds_one_probe_of_each_kind() -> None:
    probes = build_probes(SPECS.validate_python(_docs_toml()["probes"]))
    assert [type(p) for p in probes] == [IppProbe, EscPosProbe, PcscProbe, UsbPresenceProbe]
    assert all(isinstance(p, Probe) for p in probes)
    assert [(p.name, p.kind) for p in probes] == [
        ("a4_printer", PeripheralKind.A4_PRINTER),
        ("receipt_printer", PeripheralKind.RECEIPT_PRINTER),
        ("ic_card_reader", PeripheralKind.IC_CARD_READER),
        ("qr_scanner", PeripheralKind.QR_SCANNER),
    ]


def test_defaults_fill_in_what_the_brief_table_leaves_out() -> None:
    ipp = IppProbeSpec(name="a4", uri="ipp://localhost/printers/q")
    escpos = EscPosProbeSpec(name="receipt", device="/dev/usb/lp0")
    assert (ipp.kind, ipp.timeout_s, ipp.max_response_bytes) == (
        PeripheralKind.A4_PRINTER,
        3.0,
        262144,
    )
    assert (escpos.baud, escpos.timeout_s) == (9600, 1.0)


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "ipp", "name": "p", "uri": "ipp://h/printers/q", "colour": "red"},  # extra key
        {"type": "ipp", "name": "p", "uri": "http://h/printers/q"},
        {"type": "ipp", "name": "p", "uri": "ipp://h"},
        {"type": "ipp", "name": "p", "uri": "ipp://h:99999/printers/q"},
        {"type": "ipp", "name": "p", "uri": "ipp://h/printers/q", "kind": "qr_scanner"},
        {"type": "ipp", "name": "p", "uri": "ipp://h/printers/q", "timeout_s": 0},
        {"type": "ipp", "name": "Bad Name", "uri": "ipp://h/printers/q"},
        {"type": "escpos", "name": "r", "device": "/dev/ttyS0", "baud": 12345},
        {"type": "escpos", "name": "r", "device": "ttyS0"},
        {"type": "escpos", "name": "r", "device": "/dev/ttyS0", "kind": "a4_printer"},
        {"type": "pcsc", "name": "c", "reader_name_contains": "ACS"},  # kind is required
        {"type": "pcsc", "name": "c", "kind": "qr_scanner", "reader_name_contains": "ACS"},
        {"type": "pcsc", "name": "c", "kind": "ic_card_reader", "reader_name_contains": ""},
        {
            "type": "usb",
            "name": "u",
            "kind": "qr_scanner",
            "vendor_id": "c2e",
            "product_id": "0b61",
        },
        {
            "type": "usb",
            "name": "u",
            "kind": "a4_printer",
            "vendor_id": "0c2e",
            "product_id": "0b61",
        },
        {"type": "bluetooth", "name": "s"},  # no such probe type
        {"name": "x", "uri": "ipp://h/printers/q"},  # no type
    ],
)
def test_invalid_specs_are_refused_at_load_time(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SPECS.validate_python([raw])


def test_usb_ids_are_normalised_to_lowercase() -> None:
    (spec,) = SPECS.validate_python(
        [
            {
                "type": "usb",
                "name": "u",
                "kind": "id_card_reader",
                "vendor_id": "072F",
                "product_id": "B100",
            }
        ]
    )
    assert isinstance(spec, UsbProbeSpec)
    assert (spec.vendor_id, spec.product_id) == ("072f", "b100")


def test_specs_are_frozen() -> None:
    spec = IppProbeSpec(name="a4", uri="ipp://localhost/printers/q")
    with pytest.raises(ValidationError):
        spec.uri = "ipp://elsewhere/printers/q"  # type: ignore[misc]


def test_two_probes_with_one_name_are_refused() -> None:
    specs: list[ProbeSpec] = [
        UsbProbeSpec(
            name="scanner", kind=PeripheralKind.QR_SCANNER, vendor_id="0c2e", product_id="0b61"
        ),
        PcscProbeSpec(
            name="scanner", kind=PeripheralKind.IC_CARD_READER, reader_name_contains="ACS"
        ),
    ]
    with pytest.raises(ValueError, match="scanner"):
        build_probes(specs)


def test_built_probe_reads_the_configured_device(tmp_path: Path) -> None:
    device = tmp_path / "devices" / "1-4"
    device.mkdir(parents=True)
    (device / "idVendor").write_text("0c2e\n")
    (device / "idProduct").write_text("0b61\n")
    spec = UsbProbeSpec(
        name="qr_scanner",
        kind=PeripheralKind.QR_SCANNER,
        vendor_id="0C2E",
        product_id="0B61",
        sysfs_root=tmp_path / "devices",
    )
    assert build_probe(spec).read().condition is PeripheralCondition.OK


def test_union_can_be_widened_with_another_spec_type_as_documented() -> None:
    class ScenarioSpec(ProbeSpecBase):
        type: Literal["scenario"] = "scenario"
        scenario: str

    class Config(BaseModel):
        probes: list[Annotated[HardwareProbeSpec | ScenarioSpec, Field(discriminator="type")]]

    config = Config.model_validate(
        {
            "probes": [
                {"type": "scenario", "name": "sim", "scenario": "paper_out"},
                *_docs_toml()["probes"],
            ]
        }
    )
    assert [type(p).__name__ for p in config.probes] == [
        "ScenarioSpec",
        "IppProbeSpec",
        "EscPosProbeSpec",
        "PcscProbeSpec",
        "UsbProbeSpec",
    ]


def test_device_text_with_control_characters_is_put_on_one_printable_line() -> None:
    from agent.probes.base import status_from_verdict
    from protocol.messages import PeripheralCondition, PeripheralKind

    status = status_from_verdict(
        "a4_printer",
        PeripheralKind.A4_PRINTER,
        (PeripheralCondition.JAM, "E\x0012", "Paper jam\r\nin tray 2\x1b[0m"),
    )
    assert status.detail == "Paper jam in tray 2 [0m"
    assert status.fault_code == "E 12"
