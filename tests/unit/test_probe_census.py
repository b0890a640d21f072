"""At start the agent logs what each configured probe found, one line per probe, so an
installer on site sees a missing device at once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.main import AgentRuntime
from agent.outbox import Outbox
from agent.probe_census import ProbePlace, census
from protocol.messages import PeripheralCondition, PeripheralKind, PeripheralStatus


def _config(tmp_path: Path) -> AgentConfig:
    usb = tmp_path / "sys" / "bus" / "usb" / "devices"
    (usb / "1-4").mkdir(parents=True)
    (usb / "1-4" / "idVendor").write_text("0c2e\n")
    (usb / "1-4" / "idProduct").write_text("0b61\n")
    return AgentConfig.model_validate(
        {
            "terminal_id": "T-0042",
            "hall": "hall-01",
            "region": "north",
            "model": "KF-200",
            "broker_url": "mqtt://127.0.0.1:9",  # never reached: the census comes first
            "probes": [
                {"type": "escpos", "name": "receipt_printer", "device": str(tmp_path / "lp0")},
                {
                    "type": "usb",
                    "name": "qr_scanner",
                    "kind": "qr_scanner",
                    "vendor_id": "0c2e",
                    "product_id": "0b61",
                    "sysfs_root": str(usb),
                },
                {
                    "type": "usb",
                    "name": "fingerprint",
                    "kind": "fingerprint_reader",
                    "vendor_id": "1c7a",
                    "product_id": "0603",
                    "sysfs_root": str(usb),
                },
                {"type": "simulated", "name": "id_reader", "scenario": "id_card_reader"},
            ],
        }
    )


def test_the_agent_logs_one_line_per_probe_at_start_naming_kind_device_and_verdict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(tmp_path)
    runtime = AgentRuntime(config, outbox=Outbox.in_memory())
    caplog.set_level(logging.INFO, logger="agent.probe_census")
    try:
        runtime.run(duration_s=0.05)
    finally:
        runtime.close()
    records = [r for r in caplog.records if r.name == "agent.probe_census"]
    by_probe = {
        r.getMessage().split()[1]: r for r in records if r.getMessage().startswith("probe ")
    }
    assert sorted(by_probe) == ["fingerprint", "id_reader", "qr_scanner", "receipt_printer"]

    printer = by_probe["receipt_printer"]
    assert printer.levelno == logging.WARNING
    assert (
        f"(escpos, receipt_printer) at {tmp_path / 'lp0'}: MISSING (offline" in printer.getMessage()
    )
    assert "device not found" in printer.getMessage()

    reader = by_probe["fingerprint"]
    assert reader.levelno == logging.WARNING
    assert (
        "(usb, fingerprint_reader) at USB 1c7a:0603: MISSING (disconnected" in reader.getMessage()
    )

    scanner = by_probe["qr_scanner"]
    assert scanner.levelno == logging.INFO
    assert "(usb, qr_scanner) at USB 0c2e:0b61: found (ok" in scanner.getMessage()
    assert "simulated id_card_reader scenario: found" in by_probe["id_reader"].getMessage()

    summary = next(r for r in records if "configured device(s) found" in r.getMessage())
    assert summary.getMessage() == "terminal T-0042: 2 of 4 configured device(s) found"
    assert summary.levelno == logging.WARNING


def test_an_unknown_condition_or_a_raising_probe_is_unreadable_not_found() -> None:
    place = ProbePlace("p", PeripheralKind.RECEIPT_PRINTER, "ipp", "ipp://h/printers/q")
    other = ProbePlace("q", PeripheralKind.RECEIPT_PRINTER, "ipp", "ipp://h/printers/r")
    unknown = PeripheralStatus(
        name="p", kind=PeripheralKind.RECEIPT_PRINTER, condition=PeripheralCondition.UNKNOWN
    )
    lines = census([place, other], {"p": unknown, "q": OSError("refused")})
    assert [(line.verdict, line.condition) for line in lines] == [
        ("UNREADABLE", "unknown"),
        ("UNREADABLE", "error"),
    ]
    assert "OSError: refused" in lines[1].message()


def test_an_agent_without_probes_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _config(tmp_path).model_copy(update={"probes": []})
    runtime = AgentRuntime(config, outbox=Outbox.in_memory())
    caplog.set_level(logging.INFO, logger="agent.probe_census")
    try:
        runtime.run(duration_s=0.05)
    finally:
        runtime.close()
    assert "T-0042 has no probes configured" in caplog.text
