"""What the broker's queue for an absent server costs: memory per message, save and reload time.

Prints figures; never a pass/fail timing test. A private mosquitto with the
project's config (queue limits lifted, autosave off) keeps a persistent
session subscribed to the report channel while its client is away; a publisher
sends ``--messages`` QoS 1 reports of ``--size`` bytes into that queue. Then:
the broker's RSS growth per queued message (``/proc/<pid>/status``), the time
a SIGTERM takes (mosquitto writes its whole database on exit), the time a
start takes to load it, and whether every queued message is redelivered when
the session comes back. The figures size ``max_queued_bytes`` and
``autosave_interval`` in ``broker/mosquitto.conf`` (``docs/reliability.md``).

    .venv/bin/python bench/broker_queue.py                          # 100 000 x 500 bytes
    .venv/bin/python bench/broker_queue.py --messages 300000 --size 200
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from kioskfleet.local_broker import LocalBroker

_TOPIC = "kf/v1/terminals/+/report"


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _session(port: int, *, subscribe: bool) -> tuple[mqtt.Client, list[int]]:
    received = [0]
    lock = threading.Lock()

    def on_message(*_args: object) -> None:
        with lock:
            received[0] += 1

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-queue", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: unannotated
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    if subscribe:
        client.subscribe(_TOPIC, qos=1)
        time.sleep(0.3)
    return client, received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=500, help="payload bytes")
    args = parser.parse_args()
    n, size = args.messages, args.size

    with tempfile.TemporaryDirectory() as folder:
        broker = LocalBroker(
            Path(folder) / "mosquitto",
            overrides={
                "max_queued_messages": "0",
                "max_queued_bytes": "0",
                "autosave_interval": "3600",
            },
        ).start()
        try:
            sub, _ = _session(broker.port, subscribe=True)
            sub.disconnect()
            sub.loop_stop()
            time.sleep(0.3)
            pid = broker.pid
            assert pid is not None
            before = _rss_kb(pid)

            pub = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id="bench-pub",
                protocol=MQTTProtocolVersion.MQTTv5,
            )
            pub.max_inflight_messages_set(200)
            pub.connect("127.0.0.1", broker.port)
            pub.loop_start()
            payload = b"x" * size
            started = time.monotonic()
            batch: list[mqtt.MQTTMessageInfo] = []
            for i in range(n):
                batch.append(
                    pub.publish(f"kf/v1/terminals/T-{i % 1000:05d}/report", payload, qos=1)
                )
                if len(batch) >= 5000:
                    for info in batch:
                        info.wait_for_publish(60)
                    batch = []
            for info in batch:
                info.wait_for_publish(60)
            publish_s = time.monotonic() - started
            pub.disconnect()
            pub.loop_stop()
            time.sleep(0.5)
            after = _rss_kb(pid)

            started = time.monotonic()
            broker.terminate()
            save_s = time.monotonic() - started
            db_mb = broker.persistence_file.stat().st_size / 2**20
            started = time.monotonic()
            broker.start(timeout=120)
            load_s = time.monotonic() - started

            sub, received = _session(broker.port, subscribe=False)
            deadline = time.monotonic() + 120
            while received[0] < n and time.monotonic() < deadline:
                time.sleep(0.2)
            sub.disconnect()
            sub.loop_stop()
        finally:
            broker.stop()

    print(f"queued {n} messages of {size} bytes in {publish_s:.1f} s")
    print(
        f"broker RSS {before} kB -> {after} kB: {(after - before) * 1024 / n:.0f} bytes per message"
    )
    print(
        f"SIGTERM (save + exit) {save_s:.2f} s, database {db_mb:.0f} MB; start (load) {load_s:.2f} s"
    )
    print(f"redelivered after the restart: {received[0]} of {n}")


if __name__ == "__main__":
    main()
