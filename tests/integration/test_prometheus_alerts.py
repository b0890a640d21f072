"""The project's alert rules fire and resolve in a real Prometheus scraping a real server.

The chain is entirely real and on loopback: simulated terminals (the real
``Agent`` with scenario probes, in-process ``Simulation``) and one
``kioskfleet agent`` subprocess -> mosquitto with the project's config -> the
server (``server.main.Server`` on SQLite) -> ``/metrics`` -> Prometheus
(``kioskfleet.local_prometheus``) with the project's rules file, copied with
the ``for:`` of the alerts under test shortened to 2 s and scraping every
second. The test reads Prometheus' own ``/api/v1/alerts``.

Scenario probes run with a negligible ``fault_rate`` and start with at least
30 % paper, so the only incidents are the ones the test forces.

Skipped only when the ``prometheus`` binary is missing (Debian: ``apt-get
install prometheus``; CI installs it).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from agent.simulator import Simulation, SimulationOptions, SimulationTuning
from kioskfleet.local_broker import LocalBroker
from kioskfleet.local_prometheus import (
    LocalPrometheus,
    PrometheusApiError,
    PrometheusError,
    local_config,
    project_rules_file,
    prometheus_binary,
    shortened_rules,
)
from protocol.messages import PeripheralCondition
from server.access import Role
from server.device_ca import init_ca
from server.main import Server
from tests.integration.conftest import (
    ALERT_FOR,
    SHORTENED,
    ServerFactory,
    TerminalFactory,
    api,
    bearer,
    periph,
    token,
    unique,
    wait_until,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        prometheus_binary() is None,
        reason="the prometheus binary is not installed (apt-get install prometheus)",
    ),
]

KIOSKFLEET = str(Path(sys.executable).parent / "kioskfleet")
TERMINALS = 4
GONE = "PROM-GONE"  # the terminal that runs as a `kioskfleet agent` process and is killed
# Bounds for polling, not performance thresholds: the first scrape comes up to 5 s after
# Prometheus starts (its discovery updates are throttled), then 1 s scrapes + 1 s rule
# evaluations + 2 s `for:`.
FIRST_SCRAPE_TIMEOUT = 20.0
ALERT_TIMEOUT = 20.0


# --- helpers --------------------------------------------------------------------------------


def _agent_toml(path: Path, broker: LocalBroker) -> Path:
    path.write_text(
        "\n".join(
            [
                f'terminal_id = "{GONE}"',
                'hall = "hall-01"',
                'region = "region-1"',
                'model = "KF-200"',
                f'broker_url = "{broker.url}"',
                "report_interval_s = 5",
                "probe_interval_s = 0.5",
                "keepalive_s = 5",
                "reconnect_min_s = 0.1",
                "reconnect_max_s = 0.5",
                "[[probes]]",
                'type = "simulated"',
                'name = "receipt_printer"',
                'scenario = "receipt_printer"',
                "fault_rate = 0.000001",  # no spontaneous incidents: the test decides
                "[outbox]",
                f'path = "{path.with_suffix(".outbox.sqlite")}"',
            ]
        )
        + "\n"
    )
    return path


def _alerts(prom: LocalPrometheus, name: str | None = None) -> list[dict[str, Any]]:
    return [a for a in prom.alerts() if name is None or a["labels"]["alertname"] == name]


def _firing(prom: LocalPrometheus, name: str, terminal: str) -> dict[str, Any] | None:
    for alert in _alerts(prom, name):
        if alert["labels"].get("terminal") == terminal and alert["state"] == "firing":
            return alert
    return None


def _terminal_alerts(prom: LocalPrometheus) -> dict[str, list[str]]:
    """Active (pending or firing) alerts that name a terminal, by terminal."""
    found: dict[str, list[str]] = {}
    for alert in prom.alerts():
        terminal = alert["labels"].get("terminal")
        if terminal is not None:
            found.setdefault(terminal, []).append(alert["labels"]["alertname"])
    return found


def _value(prom: LocalPrometheus, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None


def _all_online(server: Server, ids: list[str]) -> bool:
    items = api(server, "/api/v1/terminals", limit=str(len(ids) + 10)).json()["items"]
    online = {t["id"] for t in items if t["state"] == "online"}
    return set(ids) <= online


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def agent_process(tmp_path: Path, private_broker: LocalBroker) -> Iterator[Callable[[], Any]]:
    """Start the ``kioskfleet agent`` subprocess for GONE; kill it at teardown if still alive."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        config = _agent_toml(tmp_path / "gone.toml", private_broker)
        with (tmp_path / "gone.log").open("wb") as log:
            proc = subprocess.Popen(
                [KIOSKFLEET, "agent", "--config", str(config)], stdout=log, stderr=log
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.fixture
def simulation(private_broker: LocalBroker) -> Iterator[Simulation]:
    """TERMINALS simulated terminals in 2 halls, reporting every 5 s, with no incidents of their own."""
    sim = Simulation(
        SimulationOptions(
            terminals=TERMINALS,
            broker_url=private_broker.url,
            halls=2,
            report_interval_s=5.0,
            fault_rate=1e-6,
            id_prefix="PROM",
        ),
        tuning=SimulationTuning(keepalive_s=5, reconnect_min_s=0.1, shutdown_timeout_s=5),
    )
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


# --- the scenario from the issue ------------------------------------------------------------


def test_paper_out_fires_and_resolves_and_a_killed_terminal_fires_terminal_offline_in_prometheus(
    private_server: ServerFactory,
    simulation: Simulation,
    agent_process: Callable[[], subprocess.Popen[bytes]],
    prometheus_for: Callable[[Server], LocalPrometheus],
) -> None:
    server = private_server(offline_check_interval_s=0.5)
    prom = prometheus_for(server)
    gone = agent_process()
    assert simulation.wait_connected(15), simulation.counters()
    everyone = [*simulation.terminal_ids, GONE]
    wait_until(lambda: _all_online(server, everyone), 15, "every terminal online in the API")

    # Prometheus scrapes the server, has the project's rules loaded, and sees the fleet.
    wait_until(
        lambda: _value(prom, 'up{job="kioskfleet"}') == 1,
        FIRST_SCRAPE_TIMEOUT,
        "Prometheus to scrape the server",
    )
    rules = prom.alerting_rules()
    assert rules["PrinterPaperOut"]["duration"] == 2
    assert rules["TerminalOffline"]["duration"] == 2
    assert rules["HallDegraded"]["duration"] == 300  # the rest as in the project's file
    wait_until(
        lambda: _value(prom, 'sum(kioskfleet_terminals{status="ok"})') == len(everyone),
        ALERT_TIMEOUT,
        "every terminal counted ok in Prometheus",
    )
    assert _terminal_alerts(prom) == {}

    # A receipt printer runs out of paper: PrinterPaperOut fires for that terminal only.
    target = simulation.terminal_ids[2]
    simulation.force(target, "receipt_printer", PeripheralCondition.PAPER_OUT)
    alert = wait_until(
        lambda: _firing(prom, "PrinterPaperOut", target), ALERT_TIMEOUT, "PrinterPaperOut firing"
    )
    profile = next(p for p in simulation.profiles if p.terminal_id == target)
    assert alert["labels"] == {
        "alertname": "PrinterPaperOut",
        "severity": "warning",
        "terminal": target,
        "hall": profile.hall,
        "region": profile.region,
        "peripheral": "receipt_printer",
        "family": "printer",
        "kind": "receipt_printer",
        "condition": "paper_out",
    }  # the exported `fault_code=""` is no label at all for Prometheus
    assert target in alert["annotations"]["summary"]
    assert profile.hall in alert["annotations"]["description"]
    assert alert["annotations"]["runbook_url"].endswith("/docs/runbooks/PrinterPaperOut.md")
    assert _terminal_alerts(prom) == {target: ["PrinterPaperOut"]}  # no false positives

    # Staff refill it: the problem series disappears and the alert resolves.
    simulation.release(target, "receipt_printer")
    simulation.refill(target)
    wait_until(
        lambda: not _alerts(prom, "PrinterPaperOut"), ALERT_TIMEOUT, "PrinterPaperOut to resolve"
    )
    assert _terminal_alerts(prom) == {}

    # A terminal vanishes (SIGKILL: the broker publishes its will): TerminalOffline fires.
    gone.send_signal(signal.SIGKILL)
    gone.wait(10)
    offline = wait_until(
        lambda: _firing(prom, "TerminalOffline", GONE), ALERT_TIMEOUT, "TerminalOffline firing"
    )
    assert (offline["labels"]["hall"], offline["labels"]["region"]) == ("hall-01", "region-1")
    assert offline["labels"]["severity"] == "warning"
    assert GONE in offline["annotations"]["summary"]
    assert offline["annotations"]["runbook_url"].endswith("/docs/runbooks/TerminalOffline.md")
    assert _terminal_alerts(prom) == {GONE: ["TerminalOffline"]}
    assert _value(prom, 'sum(kioskfleet_terminals{status="offline"})') == 1


# --- opening hours ----------------------------------------------------------------------------


def _hours_relative_to_now(zone: str, *, open_now: bool) -> dict[str, Any]:
    """Hours in ``zone`` that make a hall open now (today and tomorrow around the clock,
    so midnight during the test changes nothing) or closed now (it opens tomorrow)."""
    today = datetime.now(ZoneInfo(zone)).date()
    tomorrow = today + timedelta(days=1)
    if open_now:
        days = {
            d.strftime("%a").lower(): [{"start": "00:00", "end": "24:00"}]
            for d in (today, tomorrow)
        }
        return {"timezone": zone, "weekly": days}
    opening = [{"start": "08:00", "end": "18:00"}]
    return {
        "timezone": zone,
        "holidays": [{"date": today.isoformat()}, {"date": tomorrow.isoformat(), "hours": opening}],
    }


def test_a_closed_halls_offline_terminal_and_paper_out_fire_nothing_while_an_open_halls_do(
    private_server: ServerFactory,
    private_terminals: TerminalFactory,
    prometheus_for: Callable[[Server], LocalPrometheus],
) -> None:
    server = private_server()
    operator = bearer(token(server, Role.OPERATOR))
    for hall, open_now in (("Open-now", True), ("Closed-now", False)):
        hours = _hours_relative_to_now("Asia/Shanghai", open_now=open_now)
        url = f"{server.base_url}/api/v1/halls/{hall}/opening-hours"
        assert httpx.put(url, json=hours, headers=operator, timeout=5).status_code == 200
    prom = prometheus_for(server)
    ids: dict[str, str] = {}
    for hall in ("Open-now", "Closed-now"):
        lost = private_terminals(unique(f"LOST-{hall}"), hall=hall, with_will=True)
        lost.report([periph("printer", "receipt_printer")])
        lost.vanish()  # the broker publishes its will: offline, reason will
        paper = private_terminals(unique(f"PAPER-{hall}"), hall=hall)
        paper.report([periph("printer", "receipt_printer", "paper_out")])
        ids |= {f"lost {hall}": lost.id, f"paper {hall}": paper.id}

    expected = {
        ids["lost Open-now"]: ["TerminalOffline"],
        ids["paper Open-now"]: ["PrinterPaperOut"],
    }
    wait_until(
        lambda: (
            _firing(prom, "TerminalOffline", ids["lost Open-now"])
            and _firing(prom, "PrinterPaperOut", ids["paper Open-now"])
        ),
        FIRST_SCRAPE_TIMEOUT + ALERT_TIMEOUT,
        "the open hall's alerts firing",
    )
    assert _terminal_alerts(prom) == expected  # nothing, not even pending, for the closed hall
    # ... although Prometheus holds the closed hall's problem series and knows it is closed.
    closed = 'hall="Closed-now"'
    assert _value(prom, f"max(kioskfleet_hall_open{{{closed}}})") == 0
    assert _value(prom, 'max(kioskfleet_hall_open{hall="Open-now"})') == 1
    assert _value(prom, f"count(kioskfleet_terminal_offline{{{closed}}})") == 1
    assert _value(prom, f"count(kioskfleet_terminal_peripheral_problem{{{closed}}})") == 1


# --- maintenance --------------------------------------------------------------------------------


def test_a_terminal_put_in_maintenance_leaves_prometheus_alerts_and_comes_back_after(
    private_server: ServerFactory,
    private_terminals: TerminalFactory,
    prometheus_for: Callable[[Server], LocalPrometheus],
) -> None:
    server = private_server()
    prom = prometheus_for(server)
    kept = private_terminals(unique("MAINT"), hall="Hall M")
    kept.report([periph("printer", "receipt_printer", "paper_out")])
    other = private_terminals(unique("OTHER"), hall="Hall M")
    other.report([periph("printer", "receipt_printer", "paper_out")])
    both = {kept.id: ["PrinterPaperOut"], other.id: ["PrinterPaperOut"]}

    def both_firing() -> bool:
        return all(_firing(prom, "PrinterPaperOut", t) for t in both)

    wait_until(both_firing, FIRST_SCRAPE_TIMEOUT + ALERT_TIMEOUT, "both paper-out alerts firing")
    assert _terminal_alerts(prom) == both
    operator = bearer(token(server, Role.OPERATOR))
    url = f"{server.base_url}/api/v1/terminals/{kept.id}/maintenance"
    until = (datetime.now(ZoneInfo("UTC")) + timedelta(hours=1)).isoformat()
    body = {"reason": "printer swap", "until": until}

    assert httpx.put(url, json=body, headers=operator, timeout=5).status_code == 200

    wait_until(
        lambda: _terminal_alerts(prom) == {other.id: ["PrinterPaperOut"]},
        ALERT_TIMEOUT,
        "the terminal in maintenance to leave Prometheus's alerts",
    )
    assert _value(prom, f'max(kioskfleet_terminal_maintenance{{terminal="{kept.id}"}})') == 1
    assert httpx.delete(url, headers=operator, timeout=5).status_code == 200
    wait_until(both_firing, ALERT_TIMEOUT, "its alert to fire again")


# --- the runner's own contract --------------------------------------------------------------


def test_shortened_rules_change_only_the_named_for_durations() -> None:
    original = yaml.safe_load(project_rules_file().read_text())
    changed = yaml.safe_load(shortened_rules(project_rules_file().read_text(), SHORTENED))

    def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}

    before, after = by_name(original), by_name(changed)
    assert after["PrinterPaperOut"]["for"] == ALERT_FOR
    assert after["TerminalOffline"]["for"] == ALERT_FOR
    for name, rule in before.items():
        expected = dict(rule, **({"for": ALERT_FOR} if name in SHORTENED else {}))
        assert after[name] == expected
    with pytest.raises(ValueError, match="NoSuchAlert"):
        shortened_rules(project_rules_file().read_text(), {"NoSuchAlert": "1s"})


def test_generated_config_passes_promtool_and_points_every_job_at_loopback(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "viewer.token"
    token_file.write_text("kf_example\n")
    chain = init_ca(tmp_path / "ca").chain
    config = local_config(
        ["127.0.0.1:8080"],
        self_target="127.0.0.1:9999",
        rule_files=[project_rules_file()],
        scrape_interval="1s",
        evaluation_interval="1s",
        token_file=token_file,
        ca_file=chain,
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["kioskfleet"]["scheme"] == "https"  # a server with HTTPS, verified with the chain
    assert jobs["kioskfleet"]["tls_config"] == {"ca_file": str(chain.resolve())}
    assert jobs["kioskfleet"]["static_configs"] == [{"targets": ["127.0.0.1:8080"]}]
    assert jobs["kioskfleet"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": str(token_file.resolve()),
    }
    tokenless = local_config(["127.0.0.1:8080"], self_target="x:1", rule_files=[])
    assert "authorization" not in tokenless["scrape_configs"][0]  # not the base's relative path
    assert "tls_config" not in tokenless["scrape_configs"][0]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:9999"]}]
    assert "alerting" not in config  # no Alertmanager runs here: nothing is sent
    assert config["rule_files"] == [str(project_rules_file())]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    promtool = Path(str(prometheus_binary())).with_name("promtool")
    checked = subprocess.run(
        [str(promtool), "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {path} is valid prometheus config file syntax" in checked.stdout


def test_a_rule_file_prometheus_refuses_is_reported_with_its_log(tmp_path: Path) -> None:
    bad = tmp_path / "bad.rules.yml"
    bad.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: 'up ==('\n"
    )
    prom = LocalPrometheus(tmp_path / "prometheus", ["127.0.0.1:1"], rule_files=[bad])
    with pytest.raises(PrometheusError, match="exited") as caught:
        prom.start(timeout=20)
    assert "bad.rules.yml" in str(caught.value)
    assert prom.proc is None
    with pytest.raises(PrometheusApiError):
        prom.alerts()
