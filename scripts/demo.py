"""`make demo`: the whole system on one machine, stopped with Ctrl-C.

Starts (1) a mosquitto with the project's config unless one already answers
on 127.0.0.1:1883, (2) `kioskfleet server` on SQLite under var/demo/, and
(3) `kioskfleet simulate` with 50 terminals in 3 halls whose printers run out
of paper and whose card readers fail and recover. Prints where to look, then a
one-line fleet summary from the API every few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kioskfleet.local_broker import LocalBroker, free_port  # noqa: E402 - after sys.path

VAR = ROOT / "var" / "demo"
TERMINALS = int(os.environ.get("DEMO_TERMINALS", "50"))
HALLS = int(os.environ.get("DEMO_HALLS", "3"))


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL we built
        return json.loads(response.read())


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}; see {VAR}/server.log")
        try:
            _get_json(url)
            return
        except (urllib.error.URLError, OSError, ValueError):
            time.sleep(0.3)
    raise SystemExit(f"the server did not answer on {url}; see {VAR}/server.log")


def _summary(base: str) -> str:
    halls = _get_json(f"{base}/api/v1/halls")
    assert isinstance(halls, dict)
    parts = []
    for hall in halls.get("items", []):
        parts.append(
            f"{hall['hall']}: {hall['online']}/{hall['total']} online, "
            f"{hall['terminals_with_problems']} with problems"
        )
    return " | ".join(parts) or "waiting for the first reports"


def main() -> int:
    VAR.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    broker: LocalBroker | None = None
    if _port_open(1883):
        broker_url = "mqtt://127.0.0.1:1883"
        print(f"using the mosquitto already listening on {broker_url}")
    else:
        broker = LocalBroker(VAR / "mosquitto", port=1883).start()
        broker_url = broker.url
        print(f"started mosquitto on {broker_url} (log: {broker.log_path})")

    http_port = 8080 if not _port_open(8080) else free_port()
    base = f"http://127.0.0.1:{http_port}"
    env = dict(os.environ)
    env.update(
        {
            "KIOSKFLEET_DATABASE_URL": f"sqlite:///{VAR}/kioskfleet.db",
            "KIOSKFLEET_BROKER_URL": broker_url,
            "KIOSKFLEET_HTTP_HOST": "127.0.0.1",
            "KIOSKFLEET_HTTP_PORT": str(http_port),
            "KIOSKFLEET_MQTT_CLIENT_ID": "kioskfleet-server-demo",
        }
    )
    exe = str(Path(sys.executable).parent / "kioskfleet")
    try:
        with (VAR / "server.log").open("ab") as log:
            server = subprocess.Popen([exe, "server"], env=env, stdout=log, stderr=log)  # noqa: S603
        procs.append(("server", server))
        _wait_http(f"{base}/healthz", server)
        with (VAR / "simulator.log").open("ab") as log:
            procs.append(
                (
                    "simulator",
                    subprocess.Popen(  # noqa: S603 - our own console script
                        [
                            exe,
                            "simulate",
                            f"--terminals={TERMINALS}",
                            f"--halls={HALLS}",
                            f"--broker={broker_url}",
                            "--report-interval=10",
                            "--fault-rate=20",
                            "--id-prefix=DEMO",
                        ],
                        env=env,
                        stdout=log,
                        stderr=log,
                    ),
                )
            )
        print(
            f"""
kioskfleet demo is running ({TERMINALS} simulated terminals in {HALLS} halls).

  API docs     {base}/docs
  terminals    {base}/api/v1/terminals
  with faults  {base}/api/v1/terminals?condition=paper_out
  halls        {base}/api/v1/halls
  metrics      {base}/metrics
  broker       {broker_url}
  logs         {VAR}/server.log, {VAR}/simulator.log

Press Ctrl-C to stop everything.
""",
            flush=True,
        )
        while True:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", flush=True)
                    return 1
            time.sleep(5)
            try:
                print(time.strftime("%H:%M:%S"), _summary(base), flush=True)
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                print(f"(API not answering: {exc})", flush=True)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        for _, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    raise SystemExit(main())
