"""What kf.committed confirmations cost: one per terminal per commit, for N terminals.

Starts a private mosquitto, a subscriber on ``kf/v1/terminals/+/cmd`` standing in for the
terminals, and publishes, as the server's confirmation mailbox does after a commit, one
``kf.committed`` per terminal (QoS 0 as the server sends it, then QoS 1 for comparison;
encoded by ``protocol.committed``) for ``--terminals`` ids, ``--rounds`` times. In the same run it publishes the same number of typical
``kf.report`` payloads (``--report-bytes``) the same way: the traffic the confirmations
ride beside. Prints, for each: messages/s, bytes per message on the wire (payload, topic,
MQTT header), the publisher's main-thread CPU per message (encode + paho's queueing; paho's
network thread is not in it), the broker's CPU per
message (utime+stime from /proc), all for the same broker and client settings.

    PYTHONPATH=$PWD .venv/bin/python bench/confirm.py --terminals 100000 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from kioskfleet.local_broker import LocalBroker
from protocol.committed import encode_committed

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _client(name: str, port: int) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=name, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.max_inflight_messages_set(200)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _run(
    pub: mqtt.Client,
    broker_pid: int,
    received: list[int],
    count: int,
    message: Callable[[int], tuple[str, bytes]],
    qos: int = 1,
) -> dict[str, float]:
    start_received = received[0]
    cpu0, bcpu0, wall0 = time.thread_time(), _cpu_s(broker_pid), time.monotonic()
    wire = 0
    batch: list[mqtt.MQTTMessageInfo] = []
    for i in range(count):
        topic, payload = message(i)
        # topic length, packet id (QoS 1 only), properties, fixed header
        wire += len(payload) + len(topic) + 2 + (2 if qos else 0) + 1 + 3
        batch.append(pub.publish(topic, payload, qos=qos))
        if len(batch) >= 5000:
            for info in batch:
                info.wait_for_publish(60)
            batch = []
    for info in batch:
        info.wait_for_publish(60)
    deadline = time.monotonic() + 60
    while received[0] - start_received < count and time.monotonic() < deadline:
        time.sleep(0.01)
    wall = time.monotonic() - wall0
    return {
        "msg_per_s": count / wall,
        "bytes_per_msg": wire / count,
        "publisher_cpu_us": (time.thread_time() - cpu0) / count * 1e6,
        "broker_cpu_us": (_cpu_s(broker_pid) - bcpu0) / count * 1e6,
        "delivered": received[0] - start_received,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--report-bytes", type=int, default=500)
    args = parser.parse_args()
    n = args.terminals * args.rounds
    boot = "9f0c2a1e-4b7d-4c1e-8e55-0123456789ab"
    report = b"x" * args.report_bytes

    with tempfile.TemporaryDirectory() as folder:
        broker = LocalBroker(Path(folder) / "mosquitto").start()
        try:
            pid = broker.pid
            received = [0]
            lock = threading.Lock()

            def on_message(*_args: object) -> None:
                with lock:
                    received[0] += 1

            sub = _client("bench-terminals", broker.port)
            sub.on_message = on_message
            sub.subscribe([("kf/v1/terminals/+/cmd", 1), ("kf/v1/terminals/+/report", 1)])
            time.sleep(0.5)
            pub = _client("bench-server", broker.port)

            def committed(i: int) -> tuple[str, bytes]:
                return (
                    f"kf/v1/terminals/T-{i % args.terminals:06d}/cmd",
                    encode_committed(boot, 1000 + i // args.terminals),
                )

            results = {  # the server sends kf.committed at QoS 0 (server/confirmations.py)
                "kf.committed (QoS 0)": _run(pub, pid, received, n, committed, qos=0),
                "kf.committed (QoS 1)": _run(pub, pid, received, n, committed, qos=1),
                f"kf.report ({args.report_bytes} B)": _run(
                    pub,
                    pid,
                    received,
                    n,
                    lambda i: (f"kf/v1/terminals/T-{i % args.terminals:06d}/report", report),
                ),
            }
            pub.disconnect()
            pub.loop_stop()
            sub.disconnect()
            sub.loop_stop()
        finally:
            broker.stop()
    print(f"{n} messages each ({args.terminals} terminals x {args.rounds} rounds)")
    for name, r in results.items():
        print(
            f"{name:22s} {r['msg_per_s']:8.0f} msg/s  {r['bytes_per_msg']:6.0f} B/msg"
            f"  publisher {r['publisher_cpu_us']:5.1f} us/msg  broker {r['broker_cpu_us']:5.1f}"
            f" us/msg  delivered {r['delivered']:.0f}"
        )


if __name__ == "__main__":
    main()
