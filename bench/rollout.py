"""One rollout to many simulated terminals, through the real server driver and a real mosquitto.

Prints figures; never a pass/fail timing test. In this process: a private mosquitto with
the project's config (plain listener, no client certificates: the TLS identity path is
measured by ``bench/enroll.py``), a TUF world (operator repository, vendor ``acme``, the
directive key pinned) and the kioskfleet server (SQLite) with signed releases on. In a
spawned responder process: one paho client (MQTT v5, QoS 1) that first sends one report
for each of ``--terminals`` terminal ids (the real ingest path registers them in the fleet
state; the time until the fleet holds them all is the **report ingest baseline**), then
subscribes to ``kf/v1/terminals/+/cmd`` and answers each directive on the terminal's
``update`` channel with what the agent reports: downloading, downloaded, installing,
health_check, succeeded. The responder does not verify signatures (the terminals' CPU,
not the server's).

The rollout: created by one operator, approved by another over HTTP, two phases (the first
``--first-percent`` of the terminals, then 100 %), success threshold 1.0, the server's
APScheduler tick every ``--tick`` seconds. Measured until the API says ``completed``:

- total time from the approval, and each phase's time;
- directives signed and sent per second of the driver, and ``sign_directive`` alone
  against a raw Ed25519 signature of a body of the same size (both in this run);
- status messages ingested per second, against the report ingest baseline;
- the server's CPU seconds (this process: the server's threads; the main thread only
  polls the API) and the broker's and the responder's;
- the driver's tick time, the planner's ``step`` time per tick and where the rest goes
  (directive seq in the database, signing, the audit log), by timing wrappers set on the
  server's own functions before it starts.

    .venv/bin/python bench/rollout.py                  # 10 000 terminals
    .venv/bin/python bench/rollout.py --quick          # 500 terminals, a smoke test
    .venv/bin/python bench/rollout.py --json out.json  # the figures as JSON too
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry
from securesystemslib.signer import SSlibKey

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kioskfleet.local_broker import LocalBroker  # noqa: E402 - after sys.path
from kioskfleet.update_client import UpdateClient  # noqa: E402 - after sys.path
from protocol import directives  # noqa: E402 - after sys.path
from protocol.directives import Directive, DirectiveTarget, sign_directive  # noqa: E402
from server import access_store, rollout_service, rollout_store  # noqa: E402 - after sys.path
from server.access import Role  # noqa: E402 - after sys.path
from server.access_store import AccessStore  # noqa: E402 - after sys.path
from server.config import Settings  # noqa: E402 - after sys.path
from server.main import Server  # noqa: E402 - after sys.path
from server.storage import Storage  # noqa: E402 - after sys.path
from server.tokens import Tokens  # noqa: E402 - after sys.path
from tests.support.tuf_world import TufWorld, release_manifest  # noqa: E402 - after sys.path

HALL = "Hall Bench"
ROLLOUT = "R-BENCH"
STATES = ("downloading", "downloaded", "installing", "health_check", "succeeded")
_CMD = "kf/v1/terminals/+/cmd"


# --- the responder (its own process) --------------------------------------------------------


def _responder(port: int, ids: list[str], boot: str, pipe: Connection) -> None:
    """Register ``ids`` by one report each, then answer every directive with STATES."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from protocol.codec import encode
    from protocol.topics import Channel, topic
    from tests.support.fleet_messages import report

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-responder", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    seqs = dict.fromkeys(ids, 1)
    directives_seen: list[int] = [0]
    subscribed = multiprocessing.Event()

    def answer(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        envelope = json.loads(msg.payload)
        if envelope.get("schema") == "kf.committed":  # the server's commit confirmations
            return
        body = json.loads(base64.b64decode(envelope["payload"]))
        tid = body["terminal_id"]
        directives_seen[0] += 1
        for state in STATES:
            seqs[tid] += 1
            raw = {
                "schema": "kf.update",
                "version": 1,
                "terminal_id": tid,
                "boot_id": boot,
                "seq": seqs[tid],
                "sent_at": datetime.now(UTC).isoformat(),
                "body": {
                    "rollout_id": body["rollout_id"],
                    "directive_seq": body["seq"],
                    "state": state,
                },
            }
            client.publish(f"kf/v1/terminals/{tid}/update", json.dumps(raw), qos=1)

    client.on_message = answer
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    client.subscribe(_CMD, qos=1)
    subscribed.wait(10)
    pipe.send("ready")
    pipe.recv()  # "go"
    now = datetime.now(UTC)
    for tid in ids:
        message = report(tid, 1, boot=boot, sent_at=now, hall=HALL, interval=600.0)
        client.publish(topic(tid, Channel.REPORT), encode(message), qos=1)
    pipe.send("registered")
    pipe.recv()  # "stop"
    cpu = psutil.Process().cpu_times()
    pipe.send({"directives": directives_seen[0], "cpu_s": cpu.user + cpu.system})
    client.disconnect()
    client.loop_stop()


# --- timing wrappers on the server's own functions ------------------------------------------


@dataclass
class Timer:
    """Calls of one function and the seconds spent in them (the last ``samples`` kept)."""

    calls: int = 0
    seconds: float = 0.0
    samples: list[float] = field(default_factory=list)

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                self.calls += 1
                self.seconds += spent
                self.samples.append(spent)

        return timed


def _profiled(fn: Callable[..., Any], profile: cProfile.Profile) -> Callable[..., Any]:
    """``fn`` under ``profile`` (cProfile follows the calling thread: the scheduler's)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        profile.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            profile.disable()

    return run


def _instrument(
    profile: cProfile.Profile | None,
) -> tuple[dict[str, Timer], Callable[[], None]]:
    """Timers around the driver's tick, the planner, signing, the seq row and the audit;
    with ``profile``, the whole tick under cProfile too."""
    svc, store = rollout_service.RolloutService, rollout_store.RolloutStore
    targets: list[tuple[Any, str]] = [
        (svc, "_tick_one"),
        (rollout_service, "step"),
        (rollout_service, "sign_directive"),
        (store, "next_directive_seqs"),
        (store, "save"),
        (svc, "_reports"),
        (access_store.DatabaseAudit, "record"),
    ]
    timers: dict[str, Timer] = {}
    originals = [(owner, name, getattr(owner, name)) for owner, name in targets]
    for owner, name, fn in originals:
        timers[name] = Timer()
        setattr(owner, name, timers[name].wrap(fn))
    if profile is not None:
        svc._tick_one = _profiled(svc._tick_one, profile)  # type: ignore[method-assign]  # instrumentation

    def restore() -> None:
        for owner, name, fn in originals:
            setattr(owner, name, fn)

    return timers, restore


# --- baselines in this process --------------------------------------------------------------


def _signing_baselines(key: Ed25519PrivateKey, n: int) -> tuple[float, float]:
    """Per second: ``sign_directive`` (canonical JSON, DSSE, Ed25519, envelope) and a raw
    Ed25519 signature of a body of the same size."""
    now = datetime.now(UTC)
    directive = Directive(
        terminal_id="T-00000",
        rollout_id=ROLLOUT,
        seq=1,
        target=DirectiveTarget(path="acme/kiosk-app-1.bin", length=4096, sha256="a" * 64),
        issued_at=now,
        expires_at=now + timedelta(hours=1),
        not_before=now,
        not_after=now + timedelta(hours=1),
    )
    body = directives.canonical_bytes(directive)
    started = time.perf_counter()
    for _ in range(n):
        key.sign(body)
    raw = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(n):
        sign_directive(directive, key)
    full = n / (time.perf_counter() - started)
    return raw, full


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- the run --------------------------------------------------------------------------------


def _admin_token(settings: Settings) -> str:
    storage = Storage(settings.database_url)
    storage.open()
    try:
        _record, secret = Tokens(AccessStore(storage)).create(
            name="bench-admin", role=Role.ADMIN, created_by="bench"
        )
    finally:
        storage.close()
    return secret


def _setup_world(folder: Path) -> tuple[TufWorld, Path]:
    key = Ed25519PrivateKey.generate()
    world = TufWorld.create(folder / "world", vendors={"acme": 1})
    world.operator.pin_directive_key(SSlibKey.from_crypto(key.public_key()))
    key_file = folder / "directive.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return world, key_file


def _publish_release(server: Server, world: TufWorld, admin: str) -> str:
    with UpdateClient(server.base_url, admin) as client:
        for root in world.roots():
            client.upload_metadata("root", root)
        client.upload_metadata("targets", world.targets_bytes())
    artifact = world.artifact("kiosk-app-1.bin")
    world.sign("acme", artifact, release_manifest(1))
    _r, vendor = server.tokens.create(
        name="acme", role=Role.VENDOR, vendor="acme", created_by="bench"
    )
    with UpdateClient(server.base_url, vendor) as acme:
        acme.upload_artifact("acme", artifact.name, artifact)
        acme.publish_role("acme", world.role_file("acme").read_bytes())
    return f"acme/{artifact.name}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    n: int = args.terminals
    ids = [f"T-{i:05d}" for i in range(n)]
    me = psutil.Process()
    profile = cProfile.Profile() if args.profile else None
    timers, restore = _instrument(profile)
    ctx = multiprocessing.get_context("spawn")
    try:
        with tempfile.TemporaryDirectory() as tmp, LocalBroker(Path(tmp) / "mqtt") as broker:
            folder = Path(tmp)
            world, key_file = _setup_world(folder)
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            assert isinstance(key, Ed25519PrivateKey)
            raw_rate, sign_rate = _signing_baselines(key, 5000)
            settings = Settings(
                database_url=f"sqlite:///{folder}/kf.db",
                broker_url=broker.url,
                http_port=0,
                mqtt_client_id="bench-rollout-server",
                updates_dir=folder / "repository",
                updates_snapshot_key_file=world.operator.online_dir / "snapshot.key",
                updates_timestamp_key_file=world.operator.online_dir / "timestamp.key",
                updates_max_artifact_bytes=1 << 20,
                updates_directive_key_file=key_file,
                rollout_tick_interval_s=args.tick,
            )
            admin = _admin_token(settings)  # before the start: no bootstrap token printed
            server = Server(settings, registry=CollectorRegistry())
            server.start()
            _wait(lambda: server.mqtt.connected, 10, "the server to subscribe")
            tokens = {
                who: server.tokens.create(name=who, role=role, created_by="bench")[1]
                for who, role in (("alice", Role.OPERATOR), ("bob", Role.OPERATOR))
            }
            tokens["admin"] = admin
            target = _publish_release(server, world, tokens["admin"])

            parent, child = ctx.Pipe()
            responder = ctx.Process(
                target=_responder, args=(broker.port, ids, "boot-bench01", child)
            )
            responder.start()
            broker_proc = psutil.Process(broker.pid)
            assert parent.poll(60)
            assert parent.recv() == "ready"
            parent.send("go")
            started = time.perf_counter()
            cpu0 = _cpu(me)
            assert parent.poll(600)
            assert parent.recv() == "registered"

            def registered() -> bool:
                return len(server.fleet) >= n

            _wait(registered, 600, "the fleet")
            register_s = time.perf_counter() - started
            register_cpu = _cpu(me) - cpu0

            def post(who: str, path: str, body: dict[str, Any] | None = None) -> Any:
                response = httpx.post(
                    server.base_url + path,
                    json=body,
                    headers={"Authorization": f"Bearer {tokens[who]}"},
                    timeout=60,
                )
                assert response.is_success, response.text
                return response.json()

            def status() -> dict[str, Any]:
                response = httpx.get(
                    f"{server.base_url}/api/v1/rollouts/{ROLLOUT}",
                    headers={"Authorization": f"Bearer {tokens['admin']}"},
                    timeout=60,
                )
                assert response.is_success, response.text
                body: dict[str, Any] = response.json()
                return body

            post(
                "alice",
                "/api/v1/rollouts",
                {
                    "rollout_id": ROLLOUT,
                    "target": target,
                    "selector": {"hall": HALL},
                    "phases": [{"size": args.first_percent}, {"size": 100}],
                    "success_threshold": 1.0,
                    "abort_failure_ratio": 0.1,
                    "abort_min_decided": 10,
                    "terminal_timeout_s": 3600,
                    "max_attempts": 1,
                },
            )
            for timer in timers.values():
                timer.calls, timer.seconds, timer.samples = 0, 0.0, []
            updates0 = _updates(server)
            cpu0, broker_cpu0 = _cpu(me), _cpu(broker_proc)
            started = time.perf_counter()
            post("bob", f"/api/v1/rollouts/{ROLLOUT}/approve")
            phase_two_at: float | None = None
            last = status()
            while last["status"] not in ("completed", "aborted", "paused", "canceled"):
                time.sleep(0.1)
                last = status()
                if phase_two_at is None and last["phase"] == 1:
                    phase_two_at = time.perf_counter() - started
                if time.perf_counter() - started > args.timeout:
                    print(f"rollout not done after {args.timeout} s", file=sys.stderr)
                    break
            total_s = time.perf_counter() - started
            server_cpu = _cpu(me) - cpu0
            broker_cpu = _cpu(broker_proc) - broker_cpu0
            statuses = _updates(server) - updates0
            anomalies = _anomalies(server)
            anomalies["server_disconnects"] = _server_disconnects(broker)
            parent.send("stop")
            answered = parent.recv()
            responder.join(30)
            server.stop()
    finally:
        restore()
    if profile is not None:
        profile.dump_stats(args.profile)
    ticks = timers["_tick_one"]
    steps = timers["step"]
    return {
        "terminals": n,
        "registered_s": register_s,
        "reports_per_s": n / register_s,
        "register_server_cpu_s": register_cpu,
        "status": last["status"],
        "counts": last["counts"],
        "succeeded": last["counts"].get("succeeded", 0),
        "directives_received": answered["directives"],
        "directives_signed": timers["sign_directive"].calls,
        "statuses_ingested": statuses,
        "anomalies": anomalies,
        "total_s": total_s,
        "phase_one_s": phase_two_at,
        "server_cpu_s": server_cpu,
        "broker_cpu_s": broker_cpu,
        "responder_cpu_s": answered["cpu_s"],
        "directives_per_s": timers["sign_directive"].calls / total_s,
        "statuses_per_s": statuses / total_s,
        "raw_ed25519_per_s": raw_rate,
        "sign_directive_per_s": sign_rate,
        "ticks": ticks.calls,
        "tick_s_max": max(ticks.samples, default=0.0),
        "tick_s_total": ticks.seconds,
        "step_s_median": sorted(steps.samples)[len(steps.samples) // 2] if steps.samples else 0.0,
        "step_s_max": max(steps.samples, default=0.0),
        "step_s_total": steps.seconds,
        "breakdown_s": {name: round(t.seconds, 3) for name, t in timers.items()},
        "breakdown_calls": {name: t.calls for name, t in timers.items()},
    }


def _updates(server: Server) -> int:
    value = server.registry.get_sample_value(
        "kioskfleet_ingest_messages_total", {"channel": "update"}
    )
    return int(value or 0)


def _anomalies(server: Server) -> dict[str, Any]:
    """What should be zero: rejected messages (by reason), duplicates, seq gaps."""
    found: dict[str, Any] = {}
    for family in server.registry.collect():
        for sample in family.samples:
            if sample.value and sample.name in (
                "kioskfleet_ingest_rejected_total",
                "kioskfleet_ingest_duplicates_total",
                "kioskfleet_ingest_seq_gaps_total",
            ):
                key = sample.name.removeprefix("kioskfleet_ingest_").removesuffix("_total")
                reason = sample.labels.get("reason")
                found[f"{key}:{reason}" if reason else key] = int(sample.value)
    return found


def _server_disconnects(broker: LocalBroker) -> list[str]:
    """mosquitto's log lines about the server's connection closing."""
    log = broker.log_path.read_text(errors="replace") if broker.log_path.exists() else ""
    return [
        line
        for line in log.splitlines()
        if "bench-rollout-server" in line
        and ("disconnect" in line.lower() or "closing" in line.lower() or "timeout" in line.lower())
    ][:10]


def _print(r: dict[str, Any]) -> None:
    n = r["terminals"]
    print(
        f"terminals {n}: registered by {n} reports in {r['registered_s']:.1f} s "
        f"({r['reports_per_s']:.0f} reports/s ingested, server CPU {r['register_server_cpu_s']:.1f} s)"
    )
    print(
        f"rollout {r['status']} in {r['total_s']:.1f} s (phase one {r['phase_one_s'] or 0:.1f} s); "
        f"counts {r['counts']}"
    )
    print(
        f"directives: {r['directives_signed']} signed, {r['directives_received']} received; "
        f"{r['directives_per_s']:.0f}/s over the rollout"
    )
    print(
        f"signing alone: sign_directive {r['sign_directive_per_s']:.0f}/s, "
        f"raw Ed25519 {r['raw_ed25519_per_s']:.0f}/s "
        f"({r['sign_directive_per_s'] / r['raw_ed25519_per_s']:.2f}x)"
    )
    print(
        f"statuses ingested: {r['statuses_ingested']} ({r['statuses_per_s']:.0f}/s over the rollout; "
        f"report baseline {r['reports_per_s']:.0f}/s)"
    )
    print(
        f"CPU seconds during the rollout: server {r['server_cpu_s']:.1f}, "
        f"broker {r['broker_cpu_s']:.1f}, responder {r['responder_cpu_s']:.1f} (its whole life)"
    )
    print(
        f"driver: {r['ticks']} ticks, {r['tick_s_total']:.1f} s in ticks (max {r['tick_s_max']:.2f} s); "
        f"planner step median {r['step_s_median'] * 1000:.1f} ms, max {r['step_s_max'] * 1000:.1f} ms"
    )
    print("time in (s):", r["breakdown_s"], "calls:", r["breakdown_calls"])
    print("anomalies (should be none):", r["anomalies"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terminals", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="500 terminals: a smoke test")
    parser.add_argument("--first-percent", type=int, default=10, help="size of phase one")
    parser.add_argument("--tick", type=float, default=1.0, help="rollout_tick_interval_s")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after (s)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--profile", type=Path, help="cProfile the driver's ticks into this file")
    args = parser.parse_args()
    if args.quick:
        args.terminals = 500
    result = run(args)
    _print(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
