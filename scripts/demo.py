"""`make demo`: the whole system on one machine, stopped with Ctrl-C.

Each run starts afresh under var/demo/ (removed first): (1) a device CA
(`kioskfleet ca init`) and the HTTPS certificate of the server; (2) a mosquitto
with the configuration `kioskfleet broker-config` generates (TLS on
127.0.0.1:8883 or a free port, client certificates of that CA only, the CRL,
the per-terminal ACL; docs/security.md); (3) `kioskfleet server` on SQLite,
serving the API and EST over HTTPS and connected to the broker with its own
certificate; (4) 50 simulated terminals in 3 halls: their keys are made
(`simulate --keys-only`), pre-authorised (`terminal preauthorize --from-file`),
and each enrolls over EST with the agent's own code before it connects with
its certificate (`simulate --enroll-url`); their printers run out of paper and
their card readers fail and recover; and (5) when the `prometheus` binary is
installed, a Prometheus on 127.0.0.1:9090 (or a free port) scraping the server
over HTTPS with the project's real alert rules (no Alertmanager, so alerts are
only shown, never sent); (6) a whole rollout (kioskfleet/demo_rollout.py): at setup
the operator's TUF ceremony (`repo init`, `repo add-vendor acme`, `repo
pin-directive-key`, throw-away keys under var/demo/updates), then the vendor acme
signs and publishes a real tar bundle (`vendor sign`, `vendor publish`), the
terminals take updates through the real agent update path (`simulate
--updates-server`, slots under var/demo/simulator) with 30 % planted health-check
failures, and once the fleet is online operator alice creates a two-phase
rollout (`rollout create`) that operator bob approves (`rollout approve`); its
first phase falls below the success threshold and the rollout pauses. Prints where to look, then a one-line fleet summary
from the API every few seconds.

Planted faults (kioskfleet/demo_faults.py) on the last three terminals make
PrinterPaperOut, CardReaderFault and TerminalOffline fire within 3 minutes under the
real rules; Prometheus scrapes every 5 s and its pages are printed as it serves them
(Debian's: /classic/...). Nothing stays behind: every file under var/demo/ (TMPDIR
var/demo/tmp/, removed at the end), no MQTT session (expiry 0 for the terminals and
the server), and after Ctrl-C the retained messages of the DEMO-* terminals are
cleared (kioskfleet/broker_sweep.py) before the broker stops. The console line
(``_console_lines``) appears once the server serves /console. The API's certificate is issued by the demo's
CA: trust var/demo/ca/chain.pem (curl --cacert) or accept it in the browser.

The API and /metrics need tokens: before the server starts, each run creates
(`kioskfleet token create`, audited) an admin token for you, printed and kept
in var/demo/admin.token, and a viewer token for Prometheus in
var/demo/prometheus.token (both mode 0600, both expiring after a day).
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kioskfleet.broker_config import DEFAULT_SERVER_IDENTITY  # noqa: E402 - after sys.path
from kioskfleet.broker_setup import BrokerSetup, write_broker_setup  # noqa: E402
from kioskfleet.broker_sweep import BrokerLogin, BrokerSweepError, sweep_retained  # noqa: E402
from kioskfleet.demo_faults import (  # noqa: E402 - after sys.path
    FIRING_WITHIN_S,
    SCRAPE_INTERVAL_S,
    demo_fault_plan,
    simulate_args,
)
from kioskfleet.demo_rollout import (  # noqa: E402 - after sys.path
    FAILURE_FRACTION,
    ROLLOUT_ID,
    VENDOR,
    Commands,
    DemoRelease,
    rollout_line,
)
from kioskfleet.local_broker import LocalBroker, free_port  # noqa: E402 - after sys.path
from kioskfleet.local_prometheus import (  # noqa: E402 - after sys.path
    LocalPrometheus,
    PrometheusError,
    prometheus_binary,
)
from server.device_ca import (  # noqa: E402 - after sys.path
    CaPaths,
    DeviceCa,
    generate_key,
    init_ca,
    write_pem,
    write_private_key,
)
from server.tokens import write_secret_file  # noqa: E402 - after sys.path

VAR = ROOT / "var" / "demo"  # everything the demo writes; removed at each start
TMP = VAR / "tmp"  # TMPDIR of every process the demo starts; removed at the end
CA_DIR = VAR / "ca"
IDENTITIES = VAR / "terminals"
TERMINALS = int(os.environ.get("DEMO_TERMINALS", "50"))
HALLS = int(os.environ.get("DEMO_HALLS", "3"))


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def _get_json(url: str, token: str | None = None) -> object:
    """GET over HTTPS, trusting only the demo's CA."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback URL we built
    context = ssl.create_default_context(cafile=str(CaPaths(CA_DIR).chain))
    with urllib.request.urlopen(request, timeout=2, context=context) as response:  # noqa: S310
        return json.loads(response.read())


def _create_token(
    exe: str, env: dict[str, str], role: str, path: Path, *extra: str, name: str | None = None
) -> str:
    """A new token of ``role`` made with ``kioskfleet token create``, kept in ``path`` (0600)."""
    name = name or f"demo-{role}-{time.strftime('%Y%m%d-%H%M%S')}"
    created = subprocess.run(  # noqa: S603 - our own console script
        [exe, "token", "create", "--role", role, "--name", name, "--expires", "1d", *extra],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if created.returncode != 0:
        raise SystemExit(f"cannot create the demo's {role} token: {created.stderr.strip()}")
    secret = created.stdout.strip()
    write_secret_file(path, secret)
    return secret


CONSOLE_USER = "demo"
CONSOLE_PASSWORD_FILE = VAR / "console.password"


def _create_console_user(exe: str, env: dict[str, str]) -> None:
    """The console login the demo prints: user ``demo`` (operator) with a random password
    made with ``kioskfleet user create`` (audited), kept in CONSOLE_PASSWORD_FILE (0600)."""
    password = secrets.token_urlsafe(12)
    created = subprocess.run(  # noqa: S603 - our own console script
        [exe, "user", "create", CONSOLE_USER, "--role", "operator", "--password-stdin"],
        env=env,
        input=password + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if created.returncode != 0:
        raise SystemExit(f"cannot create the demo's console user: {created.stderr.strip()}")
    write_secret_file(CONSOLE_PASSWORD_FILE, password)


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


def _summary(base: str, token: str) -> str:
    halls = _get_json(f"{base}/api/v1/halls", token)
    assert isinstance(halls, dict)
    parts = []
    for hall in halls.get("items", []):
        terminals = hall["terminals"]  # by health: ok, warning, faulty, offline
        parts.append(
            f"{hall['hall']}: {terminals['online']}/{terminals['total']} online, "
            f"{terminals['faulty']} faulty, {terminals['warning']} warning"
        )
    return " | ".join(parts) or "waiting for the first reports"


def _identity(broker_port: int) -> tuple[BrokerSetup, Path, Path]:
    """The demo's device CA, the broker's generated configuration, and the server's HTTPS
    certificate (chain) and key. The terminals get theirs by enrolling."""
    init_ca(CA_DIR, name="kioskfleet demo")
    setup = write_broker_setup(
        VAR / "broker", CA_DIR, port=broker_port, server_identities=[DEFAULT_SERVER_IDENTITY]
    )
    ca = DeviceCa.load(CA_DIR)
    key = generate_key()
    https_cert, https_key = VAR / "https.pem", VAR / "https.key"
    cert = ca.issue_service("127.0.0.1", key.public_key(), sans=["127.0.0.1", "localhost"])
    write_pem(https_cert, cert, ca.issuing)
    write_private_key(https_key, key)
    return setup, https_cert, https_key


def _online(base: str, token: str) -> int:
    halls = _get_json(f"{base}/api/v1/halls", token)
    assert isinstance(halls, dict)
    return sum(int(hall["terminals"]["online"]) for hall in halls.get("items", []))


def _start_prometheus(server_target: str, token_file: Path) -> tuple[LocalPrometheus | None, str]:
    """Prometheus with the project's rules scraping the demo server, and what to print about it."""
    if prometheus_binary() is None:
        return None, "  prometheus   not installed (apt-get install prometheus), skipped"
    port = 9090 if not _port_open(9090) else free_port()
    interval = f"{SCRAPE_INTERVAL_S:g}s"  # kioskfleet/demo_faults.py counts on it
    prometheus = LocalPrometheus(
        VAR / "prometheus",
        [server_target],
        port=port,
        token_file=token_file,
        ca_file=CaPaths(CA_DIR).chain,
        scrape_interval=interval,
        evaluation_interval=interval,
    )
    # A fresh TSDB each run: series of the previous run would otherwise stay visible for
    # Prometheus' 5-minute lookback and show alerts for problems that no longer exist.
    shutil.rmtree(prometheus.data_path, ignore_errors=True)
    try:
        prometheus.start()
    except PrometheusError as exc:
        return None, f"  prometheus   did not start ({exc}); see {prometheus.log_path}"
    return prometheus, _prometheus_lines(prometheus, server_target)


def _prometheus_lines(prometheus: LocalPrometheus, server_target: str) -> str:
    """The Prometheus pages as this Prometheus serves them (Debian's: only /classic/...)."""
    try:
        alerts, targets = prometheus.alerts_page, prometheus.targets_page
        graph = prometheus.ui_page("graph")
    except PrometheusError as exc:
        return f"  prometheus   {prometheus.url}  (its web UI did not answer: {exc})"
    plan = demo_fault_plan(TERMINALS)
    planted = (
        f"planted: {', '.join(f'{p.alert} ({p.terminal_id})' for p in plan)}\n"
        f"               fire within {FIRING_WITHIN_S / 60:g} minutes"
        if plan
        else "no faults planted in a fleet this small"
    )
    return (
        f"  prometheus   {graph}  (scrapes {server_target} every {SCRAPE_INTERVAL_S:g} s, "
        f"the project's alert rules)\n"
        f"  alerts       {alerts}  (pending at once, firing after each rule's `for:`;\n"
        f"               {planted})\n"
        f"  targets      {targets}"
    )


def _expected_online() -> int:
    """The terminals that stay online: all but the planted outages."""
    return TERMINALS - sum(p.outage is not None for p in demo_fault_plan(TERMINALS))


def _console_lines(base: str) -> str:
    """The console's address and a login, once the server has a console (server/console/).

    Asks the running server: without a ``/console`` route (404) there is nothing to print.
    The login is the demo user made before the server started (``_create_console_user``).
    """
    try:
        status = _http_status(f"{base}/console")
    except OSError:
        return ""
    if status == 404:
        return ""
    password = CONSOLE_PASSWORD_FILE.read_text(encoding="utf-8").strip()
    return (
        f"  console      {base}/console\n"
        f"               login {CONSOLE_USER} / {password} (operator; {CONSOLE_PASSWORD_FILE})\n"
    )


def _http_status(url: str) -> int:
    """The status of a GET on ``url`` (no redirect followed), trusting only the demo's CA.
    Raises OSError if nothing answers."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    context = ssl.create_default_context(cafile=str(CaPaths(CA_DIR).chain))
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect)
    try:
        with opener.open(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _leave_nothing_behind(broker_url: str, setup: BrokerSetup) -> None:
    """After Ctrl-C: clear the retained messages of the demo's terminals on the broker
    (their last ``offline`` states), as the server identity, and remove ``TMP``.

    The demo's clients have no persistent session (session expiry 0), so this is all
    that would outlive them on a shared broker (tests/integration/test_demo_leaves_nothing.py).
    """
    cert, key = setup.server_credentials[DEFAULT_SERVER_IDENTITY]
    login = BrokerLogin(broker_url, setup.identity.ca_file, cert, key)
    try:
        cleared = sweep_retained(login, "DEMO-")
        print(f"cleared {len(cleared)} retained message(s) of the demo's terminals", flush=True)
    except BrokerSweepError as exc:
        print(f"could not clear the demo's retained messages: {exc}", flush=True)
    shutil.rmtree(TMP, ignore_errors=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (e.g. `timeout 60 make demo`) stops like Ctrl-C.

    Only the first one: `timeout` signals make and then the whole process group, so a
    second SIGTERM arrives while we are stopping the children.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    shutil.rmtree(VAR, ignore_errors=True)  # a fresh CA, database and tokens each run
    TMP.mkdir(parents=True)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    broker: LocalBroker | None = None
    prometheus: LocalPrometheus | None = None
    broker_port = 8883 if not _port_open(8883) else free_port()
    setup, https_cert, https_key = _identity(broker_port)
    broker = LocalBroker(
        VAR / "mosquitto", port=broker_port, identity=setup.identity, own_process_group=True
    ).start()
    atexit.register(broker.stop)  # out of Ctrl-C's reach: stopped even if setup fails
    broker_url = broker.url
    server_cert, server_key = setup.server_credentials[DEFAULT_SERVER_IDENTITY]
    print(f"started mosquitto on {broker_url}, TLS + ACL (log: {broker.log_path})")

    http_port = 8080 if not _port_open(8080) else free_port()
    base = f"https://127.0.0.1:{http_port}"
    chain = CaPaths(CA_DIR).chain
    env = dict(os.environ)
    env.update(
        {
            "KIOSKFLEET_DATABASE_URL": f"sqlite:///{VAR}/kioskfleet.db",
            "KIOSKFLEET_BROKER_URL": broker_url,
            "KIOSKFLEET_BROKER_CA_FILE": str(setup.identity.ca_file),
            "KIOSKFLEET_BROKER_CERT_FILE": str(server_cert),
            "KIOSKFLEET_BROKER_KEY_FILE": str(server_key),
            "KIOSKFLEET_CA_DIR": str(CA_DIR),
            "KIOSKFLEET_HTTPS_CERT_FILE": str(https_cert),
            "KIOSKFLEET_HTTPS_KEY_FILE": str(https_key),
            "KIOSKFLEET_HTTP_HOST": "127.0.0.1",
            "KIOSKFLEET_HTTP_PORT": str(http_port),
            "KIOSKFLEET_MQTT_CLIENT_ID": "kioskfleet-server-demo",
            "KIOSKFLEET_MQTT_SESSION_EXPIRY_S": "0",  # no session outlives the demo
            "TMPDIR": str(TMP),  # every temporary file under var/demo
        }
    )
    exe = str(Path(sys.executable).parent / "kioskfleet")
    sim_args = [f"--terminals={TERMINALS}", f"--halls={HALLS}", "--id-prefix=DEMO"]
    sim_args.append(f"--identity-dir={IDENTITIES}")
    # The installer's part: each terminal's key is made on it, the operator pre-authorises
    # the public keys (an id alone never enrolls).
    run = Commands(exe, env)
    csv = run("simulate", *sim_args, "--keys-only").strip()
    run("terminal", "preauthorize", "--from-file", csv)
    admin = _create_token(exe, env, "admin", VAR / "admin.token")
    _create_token(exe, env, "viewer", VAR / "prometheus.token")
    _create_console_user(exe, env)
    # Signed releases: the operator's ceremony at setup, a vendor and two operators' tokens.
    release = DemoRelease(VAR / "updates", run)
    release.ceremony()
    env.update(release.server_env())
    tokens = {
        "vendor": VAR / "vendor.token",
        "alice": VAR / "alice.token",
        "bob": VAR / "bob.token",
    }
    _create_token(exe, env, "vendor", tokens["vendor"], "--vendor", VENDOR, name="demo-acme")
    for operator in ("alice", "bob"):
        _create_token(exe, env, "operator", tokens[operator], name=operator)
    try:
        with (VAR / "server.log").open("ab") as log:
            server = subprocess.Popen([exe, "server"], env=env, stdout=log, stderr=log)  # noqa: S603
        procs.append(("server", server))
        _wait_http(f"{base}/healthz", server)
        release.upload_operator_metadata(base, VAR / "admin.token", chain)
        target = release.publish_release(base, tokens["vendor"], chain)
        print(f"vendor {VENDOR} published {target} (signed with its key, verified by the server)")
        # python-tuf's HTTPS client trusts the system's CAs: point it at the demo's
        sim_env = {**env, "SSL_CERT_FILE": str(chain)}
        with (VAR / "simulator.log").open("ab") as log:
            procs.append(
                (
                    "simulator",
                    subprocess.Popen(  # noqa: S603 - our own console script
                        [
                            exe,
                            "simulate",
                            *sim_args,
                            f"--broker={broker_url}",
                            f"--enroll-url={base}",
                            f"--ca-file={chain}",
                            "--report-interval=10",
                            "--fault-rate=150",
                            f"--updates-server={base}",
                            f"--trusted-root={release.trusted_root}",
                            f"--update-failure-fraction={FAILURE_FRACTION}",
                            f"--work-dir={VAR / 'simulator'}",
                            f"--outbox={VAR / 'simulator-outbox.sqlite'}",
                            "--session-expiry=0",
                            *simulate_args(demo_fault_plan(TERMINALS)),
                        ],
                        env=sim_env,
                        stdout=log,
                        stderr=log,
                    ),
                )
            )
        prometheus, prometheus_lines = _start_prometheus(
            f"127.0.0.1:{http_port}", VAR / "prometheus.token"
        )
        logs = [VAR / "server.log", VAR / "simulator.log"]
        if prometheus is not None:
            logs.append(prometheus.log_path)
        log_list = ", ".join(str(path) for path in logs)
        status_command = (
            f"kioskfleet rollout status {ROLLOUT_ID} --server {base} "
            f"--token-file {VAR / 'admin.token'} --ca-file {chain}"
        )
        console_lines = _console_lines(base)
        began, rollout_started = time.monotonic(), False
        print(
            f"""
kioskfleet demo is running ({TERMINALS} simulated terminals in {HALLS} halls).

  admin token  {admin}
               (also in {VAR / "admin.token"}; send it as `Authorization: Bearer ...`, e.g.
               curl --cacert {chain} -H "Authorization: Bearer $(cat {VAR / "admin.token"})" {base}/api/v1/halls)
  fleet CA     {chain}  (the API's HTTPS certificate is the demo CA's: trust it or accept it)
  API docs     {base}/docs  (Authorize with the admin token)
  terminals    {base}/api/v1/terminals
  with faults  {base}/api/v1/terminals?health=faulty  (or ?condition=paper_out)
  as CSV       {base}/api/v1/terminals.csv?health=warning,faulty
  halls        {base}/api/v1/halls
  metrics      {base}/metrics  (needs a viewer token)
{prometheus_lines}
{console_lines}  broker       {broker_url}  (client certificates of var/demo/ca only; config {setup.conf})
  enrollment   {base}/.well-known/est/cacerts  (EST; the {TERMINALS} terminals enrolled there)
  rollout      {base}/api/v1/rollouts/{ROLLOUT_ID}  (starts once the fleet is online: created
               by alice, approved by bob; {FAILURE_FRACTION:.0%} of terminals fail their health check)
               {status_command}
               (then `rollout resume|pause|cancel {ROLLOUT_ID}` with --token-file {tokens["bob"]})
               in the console: {base}/console/rollouts/{ROLLOUT_ID}  (releases: {base}/console/releases)
  rolled back  {base}/api/v1/terminals/DEMO-00004/updates  (a planted failure's timeline)
  slots        {VAR / "simulator"}/DEMO-00001/slots  (each terminal's A/B slots and `current`)
  repository   {base}/tuf/metadata/timestamp.json  (TUF; the vendor's files in {release.root})
  logs         {log_list}

Press Ctrl-C to stop everything.
""",
            flush=True,
        )
        while True:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", flush=True)
                    return 1
            if prometheus is not None and not prometheus.running:
                print(f"prometheus exited; see {prometheus.log_path}", flush=True)
                prometheus.stop()
                prometheus = None
            time.sleep(5)
            try:
                print(time.strftime("%H:%M:%S"), _summary(base, admin), flush=True)
                if not rollout_started and (
                    _online(base, admin) >= _expected_online() or time.monotonic() - began > 90
                ):
                    release.start_rollout(base, tokens["alice"], tokens["bob"], chain)
                    rollout_started = True
                    print(f"alice created {ROLLOUT_ID}, bob approved it", flush=True)
                if rollout_started:
                    body = _get_json(f"{base}/api/v1/rollouts/{ROLLOUT_ID}", admin)
                    assert isinstance(body, dict)
                    print(time.strftime("%H:%M:%S"), rollout_line(body), flush=True)
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                print(f"(API not answering: {exc})", flush=True)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        if prometheus is not None:
            prometheus.stop()
        for _, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if broker is not None:
            _leave_nothing_behind(broker_url, setup)
            broker.stop()


if __name__ == "__main__":
    raise SystemExit(main())
