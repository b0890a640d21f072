"""The Alertmanager example is valid, routes alerts where its README says, and inhibits as documented.

``amtool check-config`` validates the file and ``amtool config routes test``
resolves real routes. Inhibition is checked twice: a small evaluator of the
inhibit rules over alert label sets (fast, pure), and a real Alertmanager that
receives the same alerts and reports which ones it inhibits.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from kioskfleet.local_broker import free_port
from tests.support.waiting import wait_until

ROOT: Final = Path(__file__).resolve().parents[2]
CONFIG: Final = ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"
RULES_FILE: Final = ROOT / "monitoring" / "prometheus" / "rules" / "kioskfleet.rules.yml"
PROMETHEUS_YML: Final = ROOT / "monitoring" / "prometheus" / "prometheus.yml"
ALERTMANAGER_BINARIES: Final = ("alertmanager", "prometheus-alertmanager")

needs_amtool = pytest.mark.skipif(
    shutil.which("amtool") is None,
    reason="amtool is not installed (Debian package `prometheus-alertmanager`); CI installs it",
)


def _config() -> dict[str, Any]:
    loaded = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _alert_severities() -> dict[str, str]:
    document = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return {
        rule["alert"]: rule["labels"]["severity"]
        for group in document["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


SEVERITY: Final = _alert_severities()
FLEET: Final = yaml.safe_load(PROMETHEUS_YML.read_text())["global"]["external_labels"]["fleet"]


def alert(name: str, **labels: str) -> dict[str, str]:
    """An alert's labels as Prometheus sends them: rule labels, series labels, external labels."""
    return {"alertname": name, "severity": SEVERITY[name], "fleet": FLEET, **labels}


# ----------------------------------------------------------------------- amtool
def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["amtool", *args], capture_output=True, text=True, timeout=60, check=False
    )


@needs_amtool
def test_amtool_check_config_accepts_the_example() -> None:
    result = _amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_amtool
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (
            alert("PrinterPaperOut", region="north", hall="tax-north-1", terminal="KF-1"),
            "hall-tax-north-1-technicians",
        ),
        (
            alert("TerminalOffline", region="north", hall="tax-north-2", terminal="KF-2"),
            "region-north-ops",
        ),
        (alert("HallDegraded", region="north", hall="tax-north-1"), "region-north-duty-officer"),
        (alert("HallDegraded", region="south", hall="police-south-2"), "region-south-duty-officer"),
        (
            alert("CardReaderFault", region="south", hall="police-south-2", terminal="KF-3"),
            "region-south-ops",
        ),
        (
            alert("PrinterPaperLow", region="north", hall="tax-north-1", terminal="KF-4"),
            "fleet-tickets",
        ),
        (
            alert("KioskfleetServerDown", instance="server-a:8080", job="kioskfleet"),
            "platform-pager",
        ),
        (alert("FleetIngestStalled"), "platform-pager"),
        (alert("IngestRejectsHigh"), "platform-oncall"),
        (alert("RolloutAborted", rollout="R-7"), "platform-oncall"),
        (alert("RolloutStalled", rollout="R-7"), "platform-oncall"),
        (
            alert("TerminalOffline", region="east", hall="market-east-1", terminal="KF-5"),
            "fleet-ops",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else value["alertname"],
)
def test_amtool_routes_each_kind_of_alert_to_its_receiver(
    labels: dict[str, str], receiver: str
) -> None:
    result = _amtool(
        "config",
        "routes",
        "test",
        f"--config.file={CONFIG}",
        f"--verify.receivers={receiver}",
        *(f"{key}={value}" for key, value in labels.items()),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


# ------------------------------------------------------------------- structure
def test_root_route_groups_by_alertname_region_and_hall() -> None:
    route = _config()["route"]
    assert route["group_by"] == ["alertname", "region", "hall"]
    assert route["receiver"]


def test_every_receiver_is_a_documented_loopback_webhook_placeholder() -> None:
    readme = (CONFIG.parent / "README.md").read_text(encoding="utf-8")
    for receiver in _config()["receivers"]:
        (webhook,) = receiver["webhook_configs"]
        assert webhook["url"].startswith("http://127.0.0.1:"), receiver["name"]
        generic = re.sub(r"region-\w+-", "region-<r>-", receiver["name"])
        generic = re.sub(r"hall-[\w-]+-technicians", "hall-<h>-technicians", generic)
        assert f"`{generic}`" in readme, receiver["name"]


def test_inhibit_rules_name_only_alerts_that_exist() -> None:
    for rule in _config()["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            label, op, value = _parse_matcher(matcher)
            if label == "alertname":
                names = value.split("|") if "~" in op else [value]
                assert set(names) <= set(SEVERITY), matcher


def _inhibit_rules_between(source: dict[str, str], target: dict[str, str]) -> list[dict[str, Any]]:
    return [
        rule
        for rule in _config()["inhibit_rules"]
        if _matches_all(rule["source_matchers"], source)
        and _matches_all(rule["target_matchers"], target)
    ]


def test_terminal_offline_inhibits_every_peripheral_alert_of_the_same_terminal() -> None:
    document = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    peripheral_alerts = {
        rule["alert"]
        for group in document["groups"]
        for rule in group["rules"]
        if "kioskfleet_terminal_peripheral_problem" in rule.get("expr", "")
    }
    assert peripheral_alerts
    offline = alert("TerminalOffline", region="r", hall="h", terminal="KF-1")
    for name in peripheral_alerts:
        target = alert(name, region="r", hall="h", terminal="KF-1", peripheral="p")
        (rule,) = _inhibit_rules_between(offline, target)
        assert set(rule["equal"]) == {"fleet", "terminal"}


def test_hall_degraded_inhibits_warnings_in_the_same_region_and_hall() -> None:
    degraded = alert("HallDegraded", region="r", hall="h")
    for name, severity in SEVERITY.items():
        target = alert(name, region="r", hall="h", terminal="KF-1")
        rules = _inhibit_rules_between(degraded, target)
        if severity == "warning":
            (rule,) = rules
            assert set(rule["equal"]) == {"fleet", "region", "hall"}
        else:
            assert rules == [], name


def test_server_down_inhibits_ingest_stalled() -> None:
    down = alert("KioskfleetServerDown", instance="server-a:8080", job="kioskfleet")
    (rule,) = _inhibit_rules_between(down, alert("FleetIngestStalled"))
    assert rule["equal"] == ["fleet"]


# -------------------------------------------- inhibition, evaluated on label sets
_MATCHER: Final = re.compile(r'^\s*(\w+)\s*(=~|!~|!=|=)\s*"(.*)"\s*$')


def _parse_matcher(matcher: str) -> tuple[str, str, str]:
    match = _MATCHER.match(matcher)
    assert match is not None, matcher
    return match.group(1), match.group(2), match.group(3)


def _matches_all(matchers: list[str], labels: dict[str, str]) -> bool:
    for matcher in matchers:
        label, op, value = _parse_matcher(matcher)
        actual = labels.get(label, "")
        hit = re.fullmatch(value, actual) is not None if "~" in op else actual == value
        if hit != (op in ("=", "=~")):
            return False
    return True


def inhibited(firing: list[dict[str, str]], rules: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The alerts of ``firing`` that Alertmanager's inhibit ``rules`` silence."""
    muted = []
    for target in firing:
        for rule in rules:
            if not _matches_all(rule["target_matchers"], target):
                continue
            if any(
                source is not target
                and _matches_all(rule["source_matchers"], source)
                and all(source.get(k, "") == target.get(k, "") for k in rule.get("equal", []))
                for source in firing
            ):
                muted.append(target)
                break
    return muted


def _scenario() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(firing alerts, the ones the example config must inhibit)."""
    offline = alert("TerminalOffline", region="north", hall="h1", terminal="KF-1")
    paper_out_same = alert(
        "PrinterPaperOut",
        region="north",
        hall="h1",
        terminal="KF-1",
        peripheral="p0",
        kind="receipt_printer",
        condition="paper_out",
    )
    paper_out_other = alert(
        "PrinterPaperOut",
        region="north",
        hall="h1",
        terminal="KF-2",
        peripheral="p0",
        kind="receipt_printer",
        condition="paper_out",
    )
    degraded = alert("HallDegraded", region="north", hall="h2")
    reader_in_degraded = alert(
        "CardReaderFault",
        region="north",
        hall="h2",
        terminal="KF-3",
        peripheral="id",
        kind="id_card_reader",
        condition="fault",
    )
    paper_low_in_degraded = alert(
        "PrinterPaperLow",
        region="north",
        hall="h2",
        terminal="KF-4",
        peripheral="p0",
        kind="a4_printer",
        condition="paper_low",
    )
    unreachable = alert("HallUnreachable", region="north", hall="h3")
    degraded_unreachable = alert("HallDegraded", region="north", hall="h3")
    offline_same_hall_name_other_region = alert(
        "TerminalOffline", region="south", hall="h2", terminal="KF-5"
    )
    # Another fleet on the same Alertmanager: its server is down and its ingest stalled.
    other = "other-fleet"
    server_down = {
        **alert("KioskfleetServerDown", instance="server-a:8080", job="kioskfleet"),
        "fleet": other,
    }
    stalled = {**alert("FleetIngestStalled"), "fleet": other}
    offline_while_stalled = {
        **alert("TerminalOffline", region="west", hall="h9", terminal="KF-9"),
        "fleet": other,
    }
    firing = [
        offline,
        paper_out_same,
        paper_out_other,
        degraded,
        reader_in_degraded,
        paper_low_in_degraded,
        offline_same_hall_name_other_region,
        unreachable,
        degraded_unreachable,
        server_down,
        stalled,
        offline_while_stalled,
    ]
    return firing, [
        paper_out_same,
        reader_in_degraded,
        degraded_unreachable,
        stalled,
        offline_while_stalled,
    ]


def test_inhibit_rules_silence_exactly_the_consequences() -> None:
    firing, expected = _scenario()
    assert inhibited(firing, _config()["inhibit_rules"]) == expected


def test_broker_disconnected_silences_offline_terminals_and_degraded_halls_of_its_fleet() -> None:
    broker = alert("BrokerDisconnected", instance="server-a:8080", job="kioskfleet")
    offline = alert("TerminalOffline", region="north", hall="h1", terminal="KF-1")
    degraded = alert("HallDegraded", region="north", hall="h1")
    stalled = alert("FleetIngestStalled")
    elsewhere = {
        **alert("TerminalOffline", region="north", hall="h1", terminal="KF-2"),
        "fleet": "other",
    }
    muted = inhibited([broker, offline, degraded, stalled, elsewhere], _config()["inhibit_rules"])
    assert muted == [offline, degraded, stalled]


# ----------------------------------------------- inhibition, in a real Alertmanager
def _alertmanager_binary() -> str | None:
    for name in ALERTMANAGER_BINARIES:
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture
def alertmanager_url(tmp_path: Path) -> Iterator[str]:
    binary = _alertmanager_binary()
    if binary is None:
        pytest.skip("Alertmanager is not installed (Debian package `prometheus-alertmanager`)")
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={CONFIG}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"alertmanager exited: {(tmp_path / 'alertmanager.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_until(ready, 15, "alertmanager to be ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _post_alerts(url: str, alerts: list[dict[str, str]]) -> None:
    now = datetime.now(UTC)
    body = json.dumps(
        [
            {
                "labels": labels,
                "annotations": {"summary": labels["alertname"]},
                "startsAt": now.isoformat(),
                "endsAt": (now + timedelta(minutes=10)).isoformat(),
            }
            for labels in alerts
        ]
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - loopback URL of our own Alertmanager
        f"{url}/api/v2/alerts", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - same URL
        assert response.status == 200


def _inhibited_fingerprints(url: str) -> dict[tuple[tuple[str, str], ...], bool]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:  # noqa: S310 - loopback
        alerts = json.loads(response.read())
    return {tuple(sorted(a["labels"].items())): bool(a["status"]["inhibitedBy"]) for a in alerts}


@pytest.mark.integration
def test_real_alertmanager_inhibits_exactly_the_consequences(alertmanager_url: str) -> None:
    firing, expected = _scenario()
    _post_alerts(alertmanager_url, firing)
    want = {tuple(sorted(a.items())): a in expected for a in firing}
    got = wait_until(
        lambda: (state := _inhibited_fingerprints(alertmanager_url)) == want and state,
        10,
        "alertmanager to inhibit the expected alerts",
    )
    assert got == want
