"""The Prometheus alert rules are valid, fully annotated, unit-tested and match the contract.

``promtool check rules`` and ``promtool test rules`` run on the real files; the
rest reads the YAML: every alert has a severity, a summary, a description and a
runbook that exists; every alert has a firing and a not-firing promtool case;
per-terminal alerts name the terminal and the hall; every peripheral problem
the peripheral taxonomy defines has exactly one alert, which selects families,
never kinds; every terminal and hall alert is quiet while its hall is closed by its
opening hours and has promtool cases for day, night, holiday and the minutes before
opening; the file survives the load/modify/dump an end-to-end test does to shorten
``for:``.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from protocol.taxonomy import KINDS, Family, PeripheralCondition, family_of, kinds_of
from tests.unit.test_dashboards import (
    CONTRACT_METRIC_NAMES,
    PROMETHEUS_METRIC_NAMES,
    metric_names_in,
)

ROOT: Final = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR: Final = ROOT / "monitoring" / "prometheus"
RULES_FILE: Final = PROMETHEUS_DIR / "rules" / "kioskfleet.rules.yml"
PROMTOOL_TESTS: Final = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
RUNBOOKS: Final = ROOT / "docs" / "runbooks"
RUNBOOK_URL_PREFIX: Final = "https://github.com/kioskfleet/kioskfleet/blob/main/"
SEVERITIES: Final = frozenset({"critical", "warning", "info"})
REQUIRED_ALERTS: Final = frozenset(
    {
        "TerminalOffline",
        "PrinterPaperLow",
        "PrinterPaperOut",
        "PrinterJamOrCoverOpen",
        "CardReaderFault",
        "HallDegraded",
        "FleetIngestStalled",
        "IngestRejectsHigh",
        "KioskfleetServerDown",
        "BrokerDisconnected",
        "DatabaseWriteErrors",
        "TufMetadataExpiringSoon",
        "TufOnlineMetadataExpiring",
        "UpdateRolledBack",
        "RolloutAborted",
        "RolloutStalled",
        "PaperOutBeforeOpening",
        "PaperRunsOutToday",
        "PaperRunsOutBeforeOpening",
    }
)

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package `prometheus`); CI installs it",
)


def _rules_document() -> dict[str, Any]:
    loaded = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in _rules_document()["groups"] for rule in group["rules"] if "alert" in rule
    ]


ALERT_RULES: Final = _alert_rules()
ALERT_NAMES: Final = sorted({rule["alert"] for rule in ALERT_RULES})


def _group_of(name: str) -> str:
    (group,) = {
        g["name"] for g in _rules_document()["groups"] for r in g["rules"] if r.get("alert") == name
    }
    return str(group)


HOURS_GROUPS: Final = ("kioskfleet.terminals", "kioskfleet.halls", "kioskfleet.paper")
"""The groups whose alerts follow the hall's opening hours."""
CLOSED_HALL_GATE: Final = re.compile(r"unless on \(region, hall\)\s+kioskfleet_hall_open == 0\s*$")
BEFORE_OPENING_GATE: Final = re.compile(
    r"and on \(region, hall\)\s+0 < kioskfleet_hall_opens_in_seconds <= \d+\s*$"
)


def _before_opening(rule: dict[str, Any]) -> bool:
    return BEFORE_OPENING_GATE.search(rule["expr"]) is not None


def _rule(name: str) -> dict[str, Any]:
    (rule,) = [r for r in ALERT_RULES if r["alert"] == name]
    return rule


@functools.cache
def _alert_tests() -> list[dict[str, Any]]:
    cases = []
    for path in PROMTOOL_TESTS:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in document["tests"]:
            for case in group.get("alert_rule_test", []):
                cases.append({**case, "group": group.get("name", path.name)})
    return cases


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, check=False
    )


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0.0
    for amount, unit in re.findall(r"(\d+)(ms|s|m|h|d)", duration):
        total += int(amount) * units[unit]
    return total


# ---------------------------------------------------------------------- promtool
@needs_promtool
def test_promtool_check_rules_accepts_the_rules_file() -> None:
    result = _promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_RULES)} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    assert PROMTOOL_TESTS
    result = _promtool("test", "rules", *map(str, PROMTOOL_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(PROMTOOL_TESTS)


@needs_promtool
def test_promtool_check_config_accepts_prometheus_yml_and_finds_the_rules() -> None:
    result = _promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kioskfleet.rules.yml" in result.stdout


def test_prometheus_yml_scrapes_job_kioskfleet_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["kioskfleet"].get("metrics_path", "/metrics") == "/metrics"
    assert any(RULES_FILE in (PROMETHEUS_DIR).glob(pattern) for pattern in config["rule_files"])
    assert config["alerting"]["alertmanagers"]
    # The inhibition rules match fleet-wide alerts on this label.
    assert config["global"]["external_labels"]["fleet"]


# ------------------------------------------------------------------ annotations
def test_the_required_alerts_exist() -> None:
    assert set(ALERT_NAMES) >= REQUIRED_ALERTS


@pytest.mark.parametrize("rule", ALERT_RULES, ids=lambda rule: rule["alert"])
def test_alert_has_severity_summary_description_and_runbook_url(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert len(annotations["description"]) > len(annotations["summary"])
    assert annotations["runbook_url"] == (f"{RUNBOOK_URL_PREFIX}docs/runbooks/{rule['alert']}.md")


@pytest.mark.parametrize("rule", ALERT_RULES, ids=lambda rule: rule["alert"])
def test_alert_runbook_url_points_at_an_existing_runbook(rule: dict[str, Any]) -> None:
    relative = rule["annotations"]["runbook_url"].removeprefix(RUNBOOK_URL_PREFIX)
    runbook = ROOT / relative
    assert runbook.parent == RUNBOOKS
    assert runbook.is_file()
    assert rule["alert"] in runbook.read_text(encoding="utf-8").splitlines()[0]


def test_every_runbook_belongs_to_an_alert() -> None:
    assert {path.stem for path in RUNBOOKS.glob("*.md")} == set(ALERT_NAMES)


def test_alerts_with_the_same_name_share_severity_and_runbook() -> None:
    for name in ALERT_NAMES:
        rules = [rule for rule in ALERT_RULES if rule["alert"] == name]
        assert len({rule["labels"]["severity"] for rule in rules}) == 1
        assert len({rule["annotations"]["runbook_url"] for rule in rules}) == 1


@pytest.mark.parametrize("rule", ALERT_RULES, ids=lambda rule: rule["alert"])
def test_per_terminal_and_hall_alerts_name_terminal_and_hall(rule: dict[str, Any]) -> None:
    expr = rule["expr"]
    text = rule["annotations"]["summary"] + rule["annotations"]["description"]
    if "kioskfleet_terminal_" in expr:
        assert "$labels.terminal" in rule["annotations"]["summary"]
        assert "$labels.terminal" in rule["annotations"]["description"]
        assert "$labels.hall" in rule["annotations"]["description"]
    if re.search(r"by \(region, hall", expr):
        assert "$labels.hall" in text
        assert "$labels.region" in text


def test_flap_avoiding_for_durations() -> None:
    by_name = {rule["alert"]: rule for rule in ALERT_RULES}
    assert _seconds(by_name["TerminalOffline"]["for"]) >= 120
    assert _seconds(by_name["PrinterPaperOut"]["for"]) >= 60
    assert _seconds(by_name["PrinterPaperLow"]["for"]) >= 600
    assert _seconds(by_name["HallDegraded"]["for"]) >= 300


# ------------------------------------------------------------ promtool coverage
@pytest.mark.parametrize("alertname", ALERT_NAMES)
def test_alert_has_a_firing_and_a_not_firing_promtool_case(alertname: str) -> None:
    cases = [case for case in _alert_tests() if case["alertname"] == alertname]
    firing = [case for case in cases if case.get("exp_alerts")]
    quiet = [case for case in cases if not case.get("exp_alerts")]
    assert firing, f"no promtool case where {alertname} fires"
    assert quiet, f"no promtool case where {alertname} stays quiet"


def test_firing_promtool_cases_check_labels_and_every_annotation() -> None:
    checked = 0
    for case in _alert_tests():
        for alert in case.get("exp_alerts") or []:
            assert alert["exp_labels"]["severity"] in SEVERITIES, case["group"]
            assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
            labels = alert["exp_labels"]
            for key in ("terminal", "hall"):
                if key in labels:
                    assert labels[key] in alert["exp_annotations"]["description"], case["group"]
            checked += 1
    assert checked >= len(ALERT_NAMES)


# --------------------------------------------------------------- contract checks
def test_rule_expressions_use_only_exported_metric_names() -> None:
    used = {name for rule in ALERT_RULES for name in metric_names_in(rule["expr"])}
    assert used - CONTRACT_METRIC_NAMES - PROMETHEUS_METRIC_NAMES == set()


def _matcher_values(expr: str, label: str) -> list[tuple[str, str]]:
    return re.findall(rf'\b{label}\s*(=~|!~|=|!=)\s*"([^"]*)"', expr)


def _matches(op: str, pattern: str, value: str) -> bool:
    hit = re.fullmatch(pattern, value) is not None if "~" in op else pattern == value
    return hit if op in ("=", "=~") else not hit


def _alerts_for(family: str, kind: str, condition: str) -> list[str]:
    """Alerts whose peripheral-problem selector matches this family, kind and condition."""
    labels = {"family": family, "kind": kind, "condition": condition}
    names = []
    for rule in ALERT_RULES:
        expr = rule["expr"]
        if "kioskfleet_terminal_peripheral_problem" not in expr or _before_opening(rule):
            continue  # a before-opening alert repeats a problem's alert while the hall is closed
        if all(
            _matches(op, pattern, value)
            for label, value in labels.items()
            for op, pattern in _matcher_values(expr, label)
        ):
            names.append(rule["alert"])
    return names


_PERIPHERAL_PROBLEMS: Final = sorted(
    (family_of(kind).family.value, kind.value, condition.value)
    for kind in KINDS
    for condition in family_of(kind).conditions
)


@pytest.mark.parametrize(("family", "kind", "condition"), _PERIPHERAL_PROBLEMS)
def test_every_peripheral_problem_of_the_taxonomy_has_exactly_one_alert(
    family: str, kind: str, condition: str
) -> None:
    alerts = _alerts_for(family, kind, condition)
    if condition == PeripheralCondition.OK.value:
        assert alerts == []
    else:
        assert len(alerts) == 1, (family, kind, condition, alerts)


@pytest.mark.parametrize("family", sorted(Family))
def test_every_family_has_kinds_and_a_blocking_alert(family: Family) -> None:
    assert kinds_of(family), f"family {family} has no kind"
    kind = sorted(kinds_of(family))[0]
    for condition in sorted(family_of(kind).blocking):
        (name,) = _alerts_for(family.value, kind.value, condition.value)
        assert _rule(name)["labels"]["severity"] in ("warning", "critical"), name


def _peripheral_rules() -> list[dict[str, Any]]:
    return [r for r in ALERT_RULES if "kioskfleet_terminal_peripheral_problem" in r["expr"]]


def test_peripheral_alerts_select_families_never_lists_of_kinds() -> None:
    assert _peripheral_rules()
    for rule in _peripheral_rules():
        assert _matcher_values(rule["expr"], "kind") == [], rule["alert"]
        families = [pattern for _, pattern in _matcher_values(rule["expr"], "family")]
        for pattern in families:
            assert set(pattern.split("|")) <= {f.value for f in Family}, rule["alert"]


def test_peripheral_alerts_keep_the_labels_that_inhibition_and_routing_need() -> None:
    for rule in _peripheral_rules():
        (by,) = re.findall(r"max by \(([^)]*)\)", rule["expr"])
        kept = {label.strip() for label in by.split(",")}
        assert {"terminal", "hall", "region", "peripheral", "family", "kind"} <= kept, rule


# --------------------------------------------------------------- opening hours
_HOURS_RULES: Final = [r for r in ALERT_RULES if _group_of(r["alert"]) in HOURS_GROUPS]


@pytest.mark.parametrize("rule", _HOURS_RULES, ids=lambda rule: rule["alert"])
def test_terminal_and_hall_alerts_are_quiet_while_the_hall_is_closed_or_want_it_about_to_open(
    rule: dict[str, Any],
) -> None:
    expr = rule["expr"]
    assert CLOSED_HALL_GATE.search(expr) or BEFORE_OPENING_GATE.search(expr), rule["alert"]


def test_the_before_opening_alerts_are_paper_out_and_the_paper_forecast() -> None:
    before = [r["alert"] for r in _HOURS_RULES if _before_opening(r)]
    assert before == ["PaperOutBeforeOpening", "PaperRunsOutBeforeOpening"]
    assert 'condition="paper_out"' in _rule("PaperOutBeforeOpening")["expr"]
    assert "kioskfleet_terminal_paper_eta_seconds" in _rule("PaperRunsOutBeforeOpening")["expr"]


HOURS_TEST_FILES: Final = ("opening_hours.test.yml", "paper.test.yml")


@functools.cache
def _hours_cases() -> dict[str, list[dict[str, Any]]]:
    """Per promtool test group name of the opening-hours test files, its alert cases."""
    cases = {}
    for name in HOURS_TEST_FILES:
        document = yaml.safe_load((PROMETHEUS_DIR / "tests" / name).read_text(encoding="utf-8"))
        cases.update({group["name"]: group["alert_rule_test"] for group in document["tests"]})
    return cases


@pytest.mark.parametrize(
    "rule", [r for r in _HOURS_RULES if not _before_opening(r)], ids=lambda rule: rule["alert"]
)
def test_every_hours_gated_alert_fires_by_day_and_is_quiet_at_night_on_holidays_and_before_opening(
    rule: dict[str, Any],
) -> None:
    name = rule["alert"]
    for situation, fires in (
        ("day", True),
        ("night", False),
        ("holiday", False),
        ("before opening", False),
    ):
        (group,) = [g for g in _hours_cases() if g.startswith(f"{name}, {situation}:")]
        cases = [c for c in _hours_cases()[group] if c["alertname"] == name]
        assert cases, group
        assert any(c.get("exp_alerts") for c in cases) is fires, group


# ------------------------------------------------- the e2e test's for: rewriting
def test_rules_file_is_plain_yaml_that_round_trips() -> None:
    document = _rules_document()
    assert yaml.safe_load(yaml.safe_dump(document)) == document
    events = list(yaml.parse(RULES_FILE.read_text(encoding="utf-8")))
    assert not any(isinstance(event, yaml.AliasEvent) for event in events)
    assert not any(getattr(event, "anchor", None) for event in events)
    assert not any(getattr(event, "tag", None) for event in events)


@needs_promtool
def test_rules_with_shortened_for_durations_still_pass_promtool(tmp_path: Path) -> None:
    document = _rules_document()
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in ("TerminalOffline", "PrinterPaperOut"):
                rule["for"] = "5s"
    variant = tmp_path / "kioskfleet.rules.yml"
    variant.write_text(yaml.safe_dump(document, sort_keys=False))
    result = _promtool("check", "rules", str(variant))
    assert result.returncode == 0, result.stdout + result.stderr
    reloaded = yaml.safe_load(variant.read_text())
    shortened = {
        rule["alert"]: rule["for"]
        for group in reloaded["groups"]
        for rule in group["rules"]
        if rule.get("alert") in ("TerminalOffline", "PrinterPaperOut")
    }
    assert shortened == {"TerminalOffline": "5s", "PrinterPaperOut": "5s"}
