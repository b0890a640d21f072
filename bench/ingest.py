"""Ingest throughput: simulated terminals -> mosquitto -> kioskfleet server.

Prints figures; never a pass/fail timing test. Every figure for the server is
printed beside the same figure for a bare paho subscriber (QoS 1, MQTT v5,
counting messages and nothing else) on the same broker in the same run.

Two measurements:

  live   The simulator (real agent code, ``kioskfleet simulate``) offers
         terminals/interval reports per second. First a bare subscriber, then
         the server, consume that stream for ``--window`` seconds. A ratio near
         1.0 means the server keeps up with everything the broker delivers
         (the server's count: every message it decided on, duplicates of the
         agents' re-sends included, as the bare subscriber counts them). On a
         2-core machine the simulator itself needs most of a core, so the
         offered rate is bounded by the generator, not the server.

  drain  The ceiling. Both consumers first register a persistent session
         and go away; the simulator runs alone for ``--backlog-seconds`` and
         the broker queues the stream for them; the simulator stops. Then each
         consumer in turn reconnects and drains the same backlog with the
         whole machine to itself. Rate = backlog / time to drain it.
         The simulator's agents drop a message at the broker's PUBACK here
         (``--no-commit-confirmation``): confirming agents, with no server to
         confirm, would fill the backlog with re-sends. The server's count is
         every message it decided on (accepted, duplicate, rejected); both
         consumers print their CPU us per message. ``--raw-backlog ROUNDS``
         builds the backlog without the simulator (one paho client publishing
         ROUNDS encoded reports per terminal): the same backlog every run,
         whatever else loads the machine.

    .venv/bin/python bench/ingest.py            # defaults as in docs/benchmarks.md
    .venv/bin/python bench/ingest.py --database postgresql   # the server on a throw-away PG
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kioskfleet.local_broker import LocalBroker, free_port  # noqa: E402 - after sys.path
from kioskfleet.scratch_database import default_admin_url, scratch_database  # noqa: E402

EXE = str(Path(sys.executable).parent / "kioskfleet")
_ACCEPTED = re.compile(
    r'^kioskfleet_ingest_messages_total\{channel="(report|event)"\} (\S+)$', re.M
)
_REJECTED = re.compile(r'^kioskfleet_ingest_rejected_total\{reason="(\w+)"\} (\S+)$', re.M)
_DUPLICATES = re.compile(r"^kioskfleet_ingest_duplicates_total (\S+)$", re.M)


@dataclass
class Figure:
    measurement: str
    consumer: str
    messages: float
    seconds: float
    consumer_cpu_percent: float
    broker_cpu_percent: float
    consumer_rss_mb: float
    consumer_cpu_s: float = 0.0  # drain: its CPU seconds from its reconnect to the end

    @property
    def cpu_us_per_message(self) -> float:
        return 1e6 * self.consumer_cpu_s / self.messages if self.messages else 0.0

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


class CpuMeter:
    """CPU seconds used by some processes (and their children) since construction."""

    def __init__(self, *pids: int, children: bool = True) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]
        self.children = children
        self.start = self._total()

    def _total(self) -> float:
        total = 0.0
        for proc in self.procs:
            try:
                family = [proc, *proc.children(recursive=True)] if self.children else [proc]
            except psutil.NoSuchProcess:
                continue
            for p in family:
                try:
                    t = p.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += t.user + t.system
        return total

    def seconds(self) -> float:
        return self._total() - self.start

    def percent(self, seconds: float) -> float:
        return 100.0 * (self._total() - self.start) / seconds if seconds else 0.0


class BareSubscriber:
    """The baseline: a paho subscriber with a persistent session that only counts."""

    CLIENT_ID = "bench-bare"

    def __init__(self, port: int) -> None:
        self.count = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.CLIENT_ID, protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho is untyped here
        props.SessionExpiryInterval = 3600
        connected = threading.Event()
        self.client.on_connect = lambda *_: connected.set()
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        if not connected.wait(10):
            raise SystemExit("bare subscriber could not connect")
        self.client.subscribe([("kf/v1/terminals/+/report", 1), ("kf/v1/terminals/+/event", 1)])

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.count += 1

    def read(self) -> float:
        with self.lock:
            return float(self.count)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback URL we built
        body: bytes = resp.read()
    return body.decode()


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server did not answer {url}")


class ServerProcess:
    """``kioskfleet server`` (SQLite unless ``database_url``) with a stable client id
    (persistent session)."""

    database_url: str | None = None

    def __init__(self, work: Path, broker: LocalBroker) -> None:
        self.work = work
        self.broker = broker
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: str = "/readyz") -> None:
        """Launch and wait until ``ready`` answers (``/metrics``: the HTTP side is up, the
        broker connection and with it the backlog not yet)."""
        env = dict(os.environ)
        env.update(
            {
                "KIOSKFLEET_DATABASE_URL": self.database_url or f"sqlite:///{self.work}/bench.db",
                "KIOSKFLEET_BROKER_URL": self.broker.url,
                "KIOSKFLEET_HTTP_PORT": str(self.port),
                "KIOSKFLEET_MQTT_CLIENT_ID": "kioskfleet-server-bench",
                # The bench reads its counters from /metrics on loopback: no token there.
                "KIOSKFLEET_METRICS_REQUIRE_TOKEN": "false",
            }
        )
        log = (self.work / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [EXE, "--log-level=WARNING", "server"], env=env, stdout=log, stderr=log
        )
        _wait_http(f"{self.base}{ready}", 60)

    def accepted(self) -> float:
        return sum(float(v) for _, v in _ACCEPTED.findall(_get(f"{self.base}/metrics")))

    def handled(self) -> float:
        """Reports and events accepted, plus duplicates and rejects: every message of the
        backlog the server took a decision on. A backlog holds the agents' re-sends (with
        no ``kf.committed`` from the stopped server, an agent re-sends its unconfirmed
        messages after ``confirm_timeout_s``), which the bare subscriber counts too."""
        text = _get(f"{self.base}/metrics")
        accepted = sum(float(v) for _, v in _ACCEPTED.findall(text))
        duplicates = sum(float(v) for v in _DUPLICATES.findall(text))
        return accepted + duplicates + sum(float(v) for _, v in _REJECTED.findall(text))

    def rejects(self) -> dict[str, float]:
        found = _REJECTED.findall(_get(f"{self.base}/metrics"))
        return {reason: float(v) for reason, v in found if float(v)}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextmanager
def simulator(
    work: Path, broker: LocalBroker, args: argparse.Namespace, *, confirmed: bool = True
) -> Iterator[int]:
    """``confirmed=False``: the agents drop a message at the broker's PUBACK instead of
    keeping it until ``kf.committed`` (the drain's backlog is built with no server running:
    confirming agents would fill it with re-sends of the same messages)."""
    log = (work / "sim.log").open("ab")
    proc = subprocess.Popen(
        [
            EXE,
            "--log-level=WARNING",
            "simulate",
            f"--terminals={args.terminals}",
            f"--broker={broker.url}",
            f"--report-interval={args.interval}",
            f"--processes={args.processes}",
            "--halls=50",
            "--regions=5",
            "--id-prefix=BENCH",
            *(() if confirmed else ("--no-commit-confirmation",)),
        ],
        stdout=log,
        stderr=log,
    )
    try:
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _window(read: Callable[[], float], seconds: float) -> tuple[float, float]:
    n0, t0 = read(), time.monotonic()
    time.sleep(seconds)
    return read() - n0, time.monotonic() - t0


def _drain(
    read: Callable[[], float], target: float, *, poll_s: float, idle_s: float = 5.0
) -> tuple[float, float]:
    """Messages and seconds from the first message until ``target`` (or ``idle_s`` of silence).

    ``poll_s`` matters for the server: each read is a /metrics scrape, which costs CPU.
    """
    start = time.monotonic()
    while read() == 0:
        if time.monotonic() - start > 60:
            return 0.0, 0.0
        time.sleep(poll_s)
    first = time.monotonic()
    last_n, last_change = read(), first
    while True:
        n = read()
        now = time.monotonic()
        if n != last_n:
            last_n, last_change = n, now
        if n >= target or now - last_change > idle_s:
            return n, last_change - first
        time.sleep(poll_s)


def live(work: Path, broker: LocalBroker, args: argparse.Namespace) -> list[Figure]:
    assert broker.proc is not None
    figures = []
    with simulator(work, broker, args):
        print(f"live: simulator connecting; warming up {args.warmup:.0f} s", flush=True)
        time.sleep(args.warmup)
        bare = BareSubscriber(broker.port)
        time.sleep(2)
        me, mb = CpuMeter(os.getpid()), CpuMeter(broker.proc.pid)
        n, s = _window(bare.read, args.window)
        figures.append(
            Figure(
                "live",
                "bare paho subscriber",
                n,
                s,
                me.percent(s),
                mb.percent(s),
                psutil.Process().memory_info().rss / 2**20,
            )
        )
        bare.close()
        server = ServerProcess(work, broker)
        server.start()
        try:
            time.sleep(5)
            assert server.proc is not None
            ms, mb = CpuMeter(server.proc.pid), CpuMeter(broker.proc.pid)
            # Every message decided on, as in the drain: the bare subscriber's window
            # counted the agents' re-sends (no server confirmed them then), and the server
            # receives those re-sends as duplicates.
            n, s = _window(server.handled, args.window)
            figures.append(
                Figure(
                    "live",
                    "kioskfleet server",
                    n,
                    s,
                    ms.percent(s),
                    mb.percent(s),
                    psutil.Process(server.proc.pid).memory_info().rss / 2**20,
                )
            )
            print(f"live: server rejects {server.rejects() or 'none'}", flush=True)
        finally:
            server.stop()
    return figures


def _publish_raw(broker: LocalBroker, terminals: int, rounds: int) -> None:
    """The backlog without the simulator: ``rounds`` reports of each terminal, encoded by
    the protocol's own encoder, published round-robin at QoS 1 by one paho client (the
    drain's shape, and the same backlog every run whatever else the machine does)."""
    from ingest_path import _payload  # bench/ is the script's directory: on sys.path

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-raw-filler", protocol=mqtt.MQTTv5
    )
    acked = threading.Semaphore(0)
    client.on_publish = lambda *_a: acked.release()
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    total = terminals * rounds
    print(f"drain: publishing {total} reports ({terminals} terminals x {rounds})", flush=True)
    for r in range(rounds):
        for i in range(terminals):
            client.publish(*_payload(f"BENCH-{i:05d}", r + 1), qos=1)
    for _ in range(total):
        if not acked.acquire(timeout=120):
            raise SystemExit("the broker did not acknowledge the raw backlog")
    client.disconnect()
    client.loop_stop()


def _py_spy(pid: int, out: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the server's every thread while it drains, in collapsed-stack form
    (one line per stack and its sample count: ``sort -t' ' -k2 -n`` or a flame graph tool
    reads it). py-spy is in the dev extra; it needs ptrace rights (root here)."""
    if out is None:
        return None
    exe = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [
            str(exe),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def drain(work: Path, broker: LocalBroker, args: argparse.Namespace) -> list[Figure]:
    assert broker.proc is not None
    # Register both persistent sessions, then leave: the broker queues for them.
    BareSubscriber(broker.port).close()
    server = ServerProcess(work / "drain", broker)
    (work / "drain").mkdir()
    server.start()
    server.stop()
    if args.raw_backlog:
        _publish_raw(broker, args.terminals, args.raw_backlog)
    else:
        with simulator(work, broker, args, confirmed=False):
            print(
                f"drain: simulator alone for {args.warmup + args.backlog_seconds:.0f} s",
                flush=True,
            )
            time.sleep(args.warmup + args.backlog_seconds)
    time.sleep(1)
    figures = []
    bare = BareSubscriber(broker.port)
    me, mb, t0 = CpuMeter(os.getpid()), CpuMeter(broker.proc.pid), time.monotonic()
    n, s = _drain(bare.read, float("inf"), poll_s=0.01)
    wall = time.monotonic() - t0
    figures.append(
        Figure(
            "drain",
            "bare paho subscriber",
            n,
            s,
            me.percent(wall),
            mb.percent(wall),
            psutil.Process().memory_info().rss / 2**20,
            me.seconds(),
        )
    )
    bare.close()
    backlog = n
    print(f"drain: backlog was {backlog:.0f} messages", flush=True)
    server.start(ready="/metrics")  # the meters start before the backlog arrives
    try:
        assert server.proc is not None
        ms, mb, t0 = CpuMeter(server.proc.pid), CpuMeter(broker.proc.pid), time.monotonic()
        alone = CpuMeter(server.proc.pid, children=False)  # its children apart
        spy = _py_spy(server.proc.pid, args.profile)
        n, s = _drain(server.handled, backlog, poll_s=1.0)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            print(f"drain: the server's profile (py-spy, all threads) is in {args.profile}")
        wall = time.monotonic() - t0
        if n:
            print(
                f"drain: the server's ingest process alone: {1e6 * alone.seconds() / n:.1f} us"
                f" CPU per message (its children: {1e6 * (ms.seconds() - alone.seconds()) / n:.1f})",
                flush=True,
            )
        figures.append(
            Figure(
                "drain",
                "kioskfleet server",
                n,
                s,
                ms.percent(wall),
                mb.percent(wall),
                psutil.Process(server.proc.pid).memory_info().rss / 2**20,
                ms.seconds(),
            )
        )
        text = _get(f"{server.base}/metrics")
        flushes = re.search(r"^kioskfleet_db_flush_seconds_count (\S+)$", text, re.M)
        flush_s = re.search(r"^kioskfleet_db_flush_seconds_sum (\S+)$", text, re.M)
        if flushes and flush_s and float(flushes.group(1)):
            count = float(flushes.group(1))
            print(
                f"drain: {count:.0f} database writes, {1e3 * float(flush_s.group(1)) / count:.1f}"
                " ms each on average (wall)",
                flush=True,
            )
        print(
            f"drain: server accepted {server.accepted():.0f} reports and events,"
            f" rejects {server.rejects() or 'none'}",
            flush=True,
        )
    finally:
        server.stop()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--terminals", type=int, default=5_000)
    parser.add_argument("--interval", type=float, default=2.0, help="report interval (s)")
    parser.add_argument("--processes", type=int, default=1, help="simulator processes")
    parser.add_argument("--warmup", type=float, default=40.0, help="seconds to connect, settle")
    parser.add_argument("--window", type=float, default=20.0, help="live measurement window (s)")
    parser.add_argument("--backlog-seconds", type=float, default=30.0, help="drain: backlog build")
    parser.add_argument("--only", choices=["live", "drain"], help="run one measurement")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="the server's: a new empty one per measurement (unless --database-url)",
    )
    parser.add_argument(
        "--postgres-admin-url",
        default=default_admin_url(),
        help="for --database postgresql: where it may CREATE DATABASE (made and dropped)",
    )
    parser.add_argument("--database-url", help="the server's database instead (an empty one)")
    parser.add_argument("--work", type=Path, help="keep the logs and data here (a new folder)")
    parser.add_argument(
        "--raw-backlog",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="drain: publish ROUNDS reports per terminal with one paho client, no simulator",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="drain: sample the server with py-spy while it drains, collapsed stacks to FILE",
    )
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.terminals + 4096)), hard))
    print(
        f"{args.terminals} terminals reporting every {args.interval} s: "
        f"{args.terminals / args.interval:.0f} reports/s offered",
        flush=True,
    )
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="kf-bench-") as tmp:
        work = Path(tmp) if args.work is None else args.work
        work.mkdir(parents=True, exist_ok=True)
        for name, measure in (("live", live), ("drain", drain)):
            if args.only not in (None, name):
                continue
            (work / name).mkdir()
            with (
                scratch_database(args.database, work / name / "db", args.postgres_admin_url) as url,
                LocalBroker(
                    work / name / "mosquitto", overrides={"max_queued_messages": "2000000"}
                ) as broker,
            ):
                ServerProcess.database_url = args.database_url or url
                figures += measure(work / name, broker, args)

    print()
    print(
        f"{'':6} {'consumer':<21} {'messages':>9} {'msg/s':>7} {'its CPU':>8} "
        f"{'broker CPU':>10} {'RSS MB':>7} {'CPU us/msg':>10}"
    )
    for f in figures:
        print(
            f"{f.measurement:6} {f.consumer:<21} {f.messages:>9.0f} {f.rate:>7.0f} "
            f"{f.consumer_cpu_percent:>7.0f}% {f.broker_cpu_percent:>9.0f}% {f.consumer_rss_mb:>7.0f}"
            f" {f.cpu_us_per_message or float('nan'):>10.1f}"
        )
    summary = {}
    for m in ("live", "drain"):
        pair = [f for f in figures if f.measurement == m]
        if len(pair) == 2 and pair[0].rate:
            bare, server = pair
            ratio = server.rate / bare.rate
            per_cpu = server.rate / (server.consumer_cpu_percent / 100)
            summary[m] = {"ratio": ratio, "server_reports_per_cpu_second": per_cpu}
            print(
                f"{m}: server / bare subscriber = {ratio:.2f}; "
                f"server ingests {per_cpu:.0f} msg per CPU-second"
            )
            if server.cpu_us_per_message:
                by_cpu = bare.cpu_us_per_message / server.cpu_us_per_message
                summary[m]["cpu_ratio"] = by_cpu
                print(f"{m}: by CPU per message, server / bare subscriber = {by_cpu:.2f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "database": args.database,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "figures": [asdict(f) | {"rate": f.rate} for f in figures],
                    "summary": summary,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
