"""A flooding terminal against the others: their report delay and the scrape, with and without
the ingest gate and the label budget, in one run.

Prints figures; never a pass/fail timing test. A real mosquitto and a real
server (SQLite) in this process; ``--quiet`` raw terminals report every
``--interval`` seconds for ``--seconds``; the delay of each of their reports is
the time from publish to the moment the server's fleet state holds it. Three
phases, each on a fresh server and broker:

  baseline  the quiet terminals alone;
  guarded   plus one terminal flooding crafted reports (32 peripherals in fault
            with fresh fault codes, 32 fresh packages each) as fast as one paho
            client publishes, against the default gate (30 messages/s, burst
            200 per terminal) and label budget;
  open      the same flood with the gate opened (budget 100 000/s, burst 10^6) and the label
            budget raised to 10^6 values: what the server did before both.

For each: the quiet terminals' report delay (median, p95, max), reports the
flooder got accepted and refused, and one scrape of /metrics (series, bytes,
seconds) at the end.

    .venv/bin/python bench/hostile.py
    .venv/bin/python bench/hostile.py --quiet 50 --seconds 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kioskfleet.local_broker import LocalBroker  # noqa: E402 - after sys.path
from protocol.codec import encode  # noqa: E402 - after sys.path
from protocol.topics import Channel, topic  # noqa: E402 - after sys.path
from server.config import Settings  # noqa: E402 - after sys.path
from server.main import Server  # noqa: E402 - after sys.path
from tests.support.fleet_messages import periph, report  # noqa: E402 - after sys.path

PHASES: dict[str, dict[str, Any] | None] = {
    "baseline": None,
    "guarded": {},
    "open": {
        "ingest_rate_per_terminal_s": 100_000,
        "ingest_burst_per_terminal": 1_000_000,
        "metrics_fault_codes_per_kind": 10_000,
        "metrics_versions_per_package": 10_000,
        "metrics_packages": 10_000,
    },
}


def _client(broker: LocalBroker, name: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def _flood(broker: LocalBroker, stop: threading.Event, sent: list[int]) -> None:
    client = _client(broker, "flooder")
    tid, n = "FLOOD-1", 0
    while not stop.is_set():
        n += 1
        peripherals = [
            periph(f"p{i:02d}", "id_card_reader", "fault", fault_code=f"X{n:06d}{i:02d}")
            for i in range(32)
        ]
        message = report(
            tid,
            n,
            sent_at=datetime.now(UTC),
            peripherals=peripherals,
            hall="Hall F",
            software={f"pkg-{n:06d}-{i:02d}": f"{n}.{i}" for i in range(32)},
        )
        client.publish(topic(tid, Channel.REPORT), encode(message), qos=1).wait_for_publish(5)
        sent[0] = n
    client.disconnect()
    client.loop_stop()


def phase(name: str, overrides: dict[str, Any] | None, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder, LocalBroker(Path(folder) / "mqtt") as broker:
        settings = Settings(
            database_url=f"sqlite:///{folder}/kf.db",
            broker_url=broker.url,
            http_port=0,
            mqtt_client_id=f"bench-{name}",
            metrics_require_token=False,  # the bench scrapes on loopback, without a token
            **(overrides or {}),
        )
        server = Server(settings, registry=CollectorRegistry())
        server.start()
        quiet = _client(broker, "quiet")
        stop, sent = threading.Event(), [0]
        flooder = threading.Thread(target=_flood, args=(broker, stop, sent), daemon=True)
        if overrides is not None:
            flooder.start()
        delays: list[float] = []
        seq = 0
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            seq += 1
            published: dict[str, float] = {}
            for i in range(args.quiet):
                tid = f"Q-{i:03d}"
                message = report(tid, seq, sent_at=datetime.now(UTC), hall="Hall Q")
                published[tid] = time.monotonic()
                quiet.publish(topic(tid, Channel.REPORT), encode(message), qos=1)
            waiting = dict(published)
            while waiting and time.monotonic() < deadline + 30:
                for tid in list(waiting):
                    view = server.fleet.get(tid)
                    if view is not None and view.last_seq == seq:
                        delays.append(time.monotonic() - waiting.pop(tid))
                time.sleep(0.002)
            time.sleep(max(0.0, args.interval - (time.monotonic() - min(published.values()))))
        stop.set()
        flooder.join(10) if flooder.is_alive() else None
        started = time.perf_counter()
        text = httpx.get(server.base_url + "/metrics", timeout=60).text
        scrape_s = time.perf_counter() - started
        series = sum(1 for line in text.splitlines() if line.startswith("kioskfleet_"))
        flood = server.fleet.get("FLOOD-1")
        accepted = flood.reports_received if flood is not None else 0
        limited = server.registry.get_sample_value(
            "kioskfleet_ingest_rejected_total", {"reason": "rate_limited"}
        )
        quiet.disconnect()
        quiet.loop_stop()
        server.stop()
    delays.sort()
    p95 = delays[int(len(delays) * 0.95) - 1] if delays else float("nan")
    print(
        f"{name:>9}: quiet report delay median {statistics.median(delays) * 1000:7.1f} ms,"
        f" p95 {p95 * 1000:7.1f} ms, max {delays[-1] * 1000:7.1f} ms ({len(delays)} reports);"
        f" flooder sent {sent[0]}, accepted {accepted}, rate-limited {limited or 0:.0f};"
        f" scrape {series} series, {len(text) / 1e6:.2f} MB, {scrape_s * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", type=int, default=20, help="quiet terminals")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--interval", type=float, default=0.5, help="quiet report interval")
    args = parser.parse_args()
    for name, overrides in PHASES.items():
        phase(name, overrides, args)


if __name__ == "__main__":
    main()
