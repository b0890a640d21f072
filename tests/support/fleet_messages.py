"""Wire messages for fleet-state tests, built as terminals send them (JSON, then decoded).

Every message goes through ``protocol.codec.decode``, so a builder can never
make a message the wire would refuse. Times are offsets from ``T0``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from protocol.codec import decode
from protocol.messages import Message
from protocol.topics import Channel, topic

__all__ = [
    "BOOT",
    "PRINTER_OK",
    "READER_OK",
    "T0",
    "at",
    "boot_event",
    "periph",
    "peripheral_event",
    "report",
    "state",
    "update_status",
]

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
BOOT = "boot-aaaa"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _msg(channel: Channel, tid: str, schema: str, body: dict[str, Any], **env: Any) -> Message:
    raw = {
        "schema": schema,
        "version": 1,
        "terminal_id": tid,
        "boot_id": env.get("boot", BOOT),
        "seq": env.get("seq", 0),
        "sent_at": env.get("sent_at", T0).isoformat(),
        "body": body,
    }
    return decode(topic(tid, channel), json.dumps(raw).encode())


def periph(name: str, kind: str, condition: str = "ok", **extra: str) -> dict[str, str]:
    return {"name": name, "kind": kind, "condition": condition, **extra}


PRINTER_OK = periph("printer", "receipt_printer")
READER_OK = periph("idcard", "id_card_reader")


def report(
    tid: str = "T-1",
    seq: int = 0,
    *,
    boot: str = BOOT,
    sent_at: datetime = T0,
    peripherals: list[dict[str, str]] | None = None,
    hall: str = "Hall A",
    region: str = "North",
    interval: float = 10.0,
    software: dict[str, str] | None = None,
    dropped: int = 0,
) -> Message:
    body: dict[str, object] = {
        "hall": hall,
        "region": region,
        "model": "KX-200",
        "agent_version": "1.0.0",
        "uptime_s": 5.0,
        "report_interval_s": interval,
        "peripherals": [PRINTER_OK, READER_OK] if peripherals is None else peripherals,
        "software": software or {"kiosk-app": "3.1"},
    }
    if dropped:
        body["dropped_reports"] = dropped
    return _msg(Channel.REPORT, tid, "kf.report", body, seq=seq, boot=boot, sent_at=sent_at)


def peripheral_event(
    tid: str,
    seq: int,
    p: dict[str, str],
    previous: str | None,
    *,
    sent_at: datetime = T0,
    boot: str = BOOT,
) -> Message:
    body = {"type": "peripheral_changed", "peripheral": p, "previous": previous}
    return _msg(Channel.EVENT, tid, "kf.event", body, seq=seq, boot=boot, sent_at=sent_at)


def boot_event(tid: str, seq: int, *, boot: str, version: str = "1.1.0") -> Message:
    body = {"type": "boot", "uptime_s": 1.0, "agent_version": version}
    return _msg(Channel.EVENT, tid, "kf.event", body, seq=seq, boot=boot, sent_at=T0)


def state(
    tid: str,
    online: bool,
    *,
    reason: str | None = None,
    seq: int = 0,
    boot: str = BOOT,
    sent_at: datetime = T0,
    hall: str | None = None,
) -> Message:
    body: dict[str, Any] = {
        "state": "online" if online else "offline",
        "reason": reason or ("connect" if online else "connection_lost"),
    }
    if hall is not None:
        body["hall"] = hall
    return _msg(Channel.STATE, tid, "kf.state", body, seq=seq, boot=boot, sent_at=sent_at)


def update_status(
    tid: str, seq: int, state: str, *, sent_at: datetime = T0, boot: str = BOOT, **body: Any
) -> Message:
    """A ``kf.update`` for rollout R-1, directive 3 (``body`` adds reason, detail, ...)."""
    fields = {"rollout_id": "R-1", "directive_seq": 3, "state": state, **body}
    return _msg(Channel.UPDATE, tid, "kf.update", fields, seq=seq, boot=boot, sent_at=sent_at)


def usage(
    tid: str,
    seq: int,
    service: str,
    outcome: str = "completed",
    *,
    boot: str = BOOT,
    sent_at: datetime = T0,
    **body: Any,
) -> Message:
    """A ``kf.usage`` citizen transaction (``body`` adds cause, pages, duration_s)."""
    fields = {"service": service, "outcome": outcome, "duration_s": 30.0, **body}
    return _msg(Channel.USAGE, tid, "kf.usage", fields, seq=seq, boot=boot, sent_at=sent_at)
