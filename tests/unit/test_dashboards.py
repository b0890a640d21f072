"""The Grafana dashboards query only metrics the server exports, in valid PromQL, through ${datasource}.

Every PromQL expression of every dashboard in ``monitoring/grafana/dashboards``
(panel targets, template variable queries, annotation queries) is collected
(``dashboard_queries``) and its metric names are extracted with a small PromQL
name extractor (``metric_names_in``, tested here). The expressions are also
parsed by ``promtool`` so a typo fails here and not on a wall screen in the
operations room.

Whether the dashboards query only names the server really exports, and show
every one of them, is checked against a LIVE server's /metrics in
``tests/integration/test_metrics_endpoint.py``, which also proves that those
names are exactly ``CONTRACT_METRIC_NAMES`` below. ``metric_names_in`` and the
name constants are imported by ``test_alert_rules.py`` to check the alert rules
against the same contract.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

ROOT: Final = Path(__file__).resolve().parents[2]
DASHBOARDS: Final = ROOT / "monitoring" / "grafana" / "dashboards"
PROVISIONING: Final = ROOT / "monitoring" / "grafana" / "provisioning"
PROMETHEUS_YML: Final = ROOT / "monitoring" / "prometheus" / "prometheus.yml"
DASHBOARD_FILES: Final = sorted(DASHBOARDS.glob("*.json"))

# ----------------------------------------------------------------- the contract
# The names /metrics exports (docs/monitoring.md). tests/integration/test_metrics_endpoint.py
# checks that a live server exports exactly these.
FLEET_METRIC_NAMES: Final = frozenset(
    {
        "kioskfleet_terminals",
        "kioskfleet_peripherals",
        "kioskfleet_software_terminals",
        "kioskfleet_terminal_offline",
        "kioskfleet_terminal_offline_since_timestamp_seconds",
        "kioskfleet_terminal_peripheral_problem",
        "kioskfleet_build_info",
        "kioskfleet_agent_dropped_reports",
        "kioskfleet_agent_seq_gaps",
        "kioskfleet_hall_open",
        "kioskfleet_hall_opens_in_seconds",
        "kioskfleet_hall_maintenance",
        "kioskfleet_terminal_maintenance",
        "kioskfleet_hall_unreachable",
        "kioskfleet_hall_peripheral_problems_withheld",
    }
)
HISTOGRAM_METRIC_NAMES: Final = frozenset(
    {
        "kioskfleet_ingest_delay_seconds",
        "kioskfleet_db_flush_seconds",
        "kioskfleet_fleet_lock_held_seconds",  # the fleet lock held per scrape
    }
)
INGEST_METRIC_NAMES: Final = frozenset(
    {
        "kioskfleet_ingest_messages_total",
        "kioskfleet_ingest_rejected_total",
        "kioskfleet_ingest_duplicates_total",
        "kioskfleet_ingest_seq_gaps_total",
        "kioskfleet_ingest_gap_fills_total",
        "kioskfleet_confirmations_sent_total",
        "kioskfleet_confirmations_coalesced_total",
        "kioskfleet_confirmations_waiting",
        "kioskfleet_ingest_not_owned_total",  # applied, left to the owner (partition)
        "kioskfleet_broker_connected",
        "kioskfleet_db_errors_total",
        "kioskfleet_db_dropped_transitions_total",
        "kioskfleet_db_rejected_rows_total",
        "kioskfleet_ingest_unacknowledged_messages",
        "kioskfleet_terminals_offline_detected_total",
        "kioskfleet_ingest_state_cleared_total",
        *HISTOGRAM_METRIC_NAMES,
    }
)
ACCESS_METRIC_NAMES: Final = frozenset(
    {
        "kioskfleet_audit_write_failures_total",
        "kioskfleet_audit_denied_suppressed_total",
        "kioskfleet_console_logins_total",  # server.console.web: login attempts by result
        "kioskfleet_hall_report_renders_total",  # server.report_gate: rendered, cached, refused
    }
)
# Signed releases (docs/updates.md): exported while updates_dir is set.
UPDATE_METRIC_NAMES: Final = frozenset(
    {"kioskfleet_tuf_metadata_expiry_seconds", "kioskfleet_update_uploads_rejected_total"}
)
# Update statuses from terminals (server.update_tally): always exported.
UPDATE_STATUS_METRIC_NAMES: Final = frozenset(
    {"kioskfleet_update_terminals", "kioskfleet_update_statuses_total"}
)
# Rollout progress (server.rollout_metrics): always exported, one set per shown rollout.
ROLLOUT_METRIC_NAMES: Final = frozenset(
    {
        "kioskfleet_rollout_terminals",
        "kioskfleet_rollout_status",
        "kioskfleet_rollout_phase",
        "kioskfleet_rollout_last_progress_timestamp_seconds",
    }
)
# Citizen transactions and the service catalogue (server.usage_metrics): always exported.
USAGE_METRIC_NAMES: Final = frozenset(
    {
        "kioskfleet_usage_transactions_total",
        "kioskfleet_usage_refused_total",
        "kioskfleet_hall_services_available",
    }
)
# Paper forecasts (server.paper_metrics): always exported, series only for printers that
# run out within a day.
PAPER_METRIC_NAMES: Final = frozenset(
    {
        "kioskfleet_terminal_paper_eta_seconds",
        "kioskfleet_terminal_paper_eta_upper_seconds",
        "kioskfleet_hall_closes_in_seconds",
    }
)
# The analytics by hall and service (server.analytics_metrics): always exported, a series
# per hall of the fleet (x catalogued service).
ANALYTICS_METRIC_NAMES: Final = frozenset(
    {
        "kioskfleet_hall_utilisation_ratio",
        "kioskfleet_hall_idle_terminals",
        "kioskfleet_hall_overloaded",
        "kioskfleet_hall_service_open_seconds",
        "kioskfleet_hall_service_available_seconds",
        "kioskfleet_hall_turned_away_estimated",
    }
)
JOB_LEASE_METRIC_NAMES: Final = frozenset(
    {  # server/job_lease.py: who runs the once-per-fleet jobs (docs/scale-out.md)
        "kioskfleet_job_lease_holder",
        "kioskfleet_job_lease_token",
        "kioskfleet_job_lease_takeovers_total",
        "kioskfleet_job_lease_errors_total",
        "kioskfleet_job_lease_fenced_writes_total",
        "kioskfleet_fleet_job_runs_total",
    }
)
PARTITION_METRIC_NAMES: Final = frozenset(
    {  # server/membership.py: exported with ingest_ownership = partition (docs/scale-out.md)
        "kioskfleet_ingest_members",
        "kioskfleet_ingest_owned_terminals",
        "kioskfleet_ingest_epochs_total",
        "kioskfleet_ingest_reloaded_terminals_total",
        "kioskfleet_ingest_heartbeat_errors_total",
    }
)
CONTRACT_METRIC_NAMES: Final = (
    FLEET_METRIC_NAMES
    | INGEST_METRIC_NAMES
    | JOB_LEASE_METRIC_NAMES
    | PARTITION_METRIC_NAMES
    | ACCESS_METRIC_NAMES
    | UPDATE_METRIC_NAMES
    | UPDATE_STATUS_METRIC_NAMES
    | ROLLOUT_METRIC_NAMES
    | USAGE_METRIC_NAMES
    | PAPER_METRIC_NAMES
    | ANALYTICS_METRIC_NAMES
)
# Series Prometheus itself creates: they are never on /metrics.
PROMETHEUS_METRIC_NAMES: Final = frozenset(
    {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS"}
)


def with_histogram_bases(names: frozenset[str]) -> frozenset[str]:
    """``names`` plus ``X`` for every ``X_bucket`` (names scraped from exposition lines)."""
    return names | {name.removesuffix("_bucket") for name in names if name.endswith("_bucket")}


# ------------------------------------------------------------ the name extractor
PROMQL_FUNCTIONS: Final = frozenset(
    [
        "abs",
        "absent",
        "absent_over_time",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "cos",
        "cosh",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "deg",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_stddev",
        "histogram_stdvar",
        "histogram_sum",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "pi",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rad",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sin",
        "sinh",
        "sort",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "tan",
        "tanh",
        "time",
        "timestamp",
        "vector",
        "year",
    ]
)
PROMQL_AGGREGATIONS: Final = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ]
)
PROMQL_KEYWORDS: Final = frozenset(
    [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
        "start",
        "end",
    ]
)
_NOT_METRICS: Final = PROMQL_FUNCTIONS | PROMQL_AGGREGATIONS | PROMQL_KEYWORDS

_GRAFANA_VARIABLE: Final = re.compile(r"\$(?:\{[^}]*\}|\w+)|\[\[\w+\]\]")
_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_COMMENT: Final = re.compile(r"#[^\n]*")
_MATCHERS: Final = re.compile(r"\{[^{}]*\}")
_GROUPING: Final = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENTIFIER: Final = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")
_GRAFANA_FUNCTION: Final = re.compile(
    r"^\s*(label_values|label_names|metrics|query_result)\s*\((.*)\)\s*$", re.DOTALL
)
_HISTOGRAM_SUFFIXES: Final = ("_bucket", "_sum", "_count")


def _last_top_level_comma(text: str) -> int:
    depth = 0
    found = -1
    for i, char in enumerate(text):
        if char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
        elif char == "," and depth == 0:
            found = i
    return found


def _strip_grafana_function(query: str) -> str:
    """The PromQL inside a Grafana variable query (``label_values(m{...}, label)`` -> ``m{...}``)."""
    match = _GRAFANA_FUNCTION.match(query)
    if match is None:
        return query
    function, inner = match.group(1), match.group(2)
    if function == "query_result":
        return inner
    if function == "label_values":
        blanked = _STRING.sub(lambda m: '"' + " " * (len(m.group(0)) - 2) + '"', inner)
        comma = _last_top_level_comma(blanked)
        return inner[:comma] if comma >= 0 else ""
    return ""  # label_names(), metrics(regex): no metric selector


def metric_names_in(expr: str, histograms: frozenset[str] = HISTOGRAM_METRIC_NAMES) -> set[str]:
    """Metric names a PromQL expression (or Grafana variable query) selects.

    Identifiers that are functions, aggregations, keywords, label names (inside
    ``{...}`` or a ``by/without/on/ignoring/group_left/group_right (...)`` list) or
    inside strings are not metric names. ``X_bucket``/``X_sum``/``X_count`` become
    ``X`` only when ``X`` is in ``histograms``.
    """
    text = _strip_grafana_function(expr)
    text = _STRING.sub('""', text)  # first: a string may hold "${" (a Grafana variable)
    text = _GRAFANA_VARIABLE.sub("1m", text)
    text = _COMMENT.sub("", text)
    text = _GROUPING.sub(" ", text)
    text = _MATCHERS.sub("{}", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(0)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or name.lower() in _NOT_METRICS:
            continue
        for suffix in _HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
                name = name.removesuffix(suffix)
                break
        names.add(name)
    return names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (status) (kioskfleet_terminals{region=~"$region"})', {"kioskfleet_terminals"}),
        ("up", {"up"}),
        ('up{job="kioskfleet"} == 0', {"up"}),
        (
            "histogram_quantile(0.99, sum by (le) (rate(kioskfleet_db_flush_seconds_bucket[$__rate_interval])))",
            {"kioskfleet_db_flush_seconds"},
        ),
        ("rate(some_histogram_count[5m])", {"some_histogram_count"}),
        ("sum(rate(x_total[5m])) by (instance)", {"x_total"}),
        ("a / on(region, hall) group_left(version) b", {"a", "b"}),
        ("a * on (region) group_left b", {"a", "b"}),
        ('label_replace(x, "dst", "$1", "src", "(.*)")', {"x"}),
        (
            'count(ALERTS{alertname="HallDegraded",alertstate="firing"}) or vector(0)',
            {"ALERTS"},
        ),
        ("x > 1e3 and y offset 5m unless z @ end()", {"x", "y", "z"}),
        ("time() - since_seconds", {"since_seconds"}),
        ("max_over_time(sum(a)[15m:1m]) > bool Inf", {"a"}),
        ("label_values(kioskfleet_terminals, region)", {"kioskfleet_terminals"}),
        ('label_values(kioskfleet_terminals{region="$region"}, hall)', {"kioskfleet_terminals"}),
        ("label_values(region)", set()),
        ("query_result(topk(5, foo))", {"foo"}),
        ("metrics(kioskfleet_.*)", set()),
        ("sum(a) # a comment naming not_a_metric", {"a"}),
        ('{__name__="via_matcher"}', set()),
    ],
)
def test_metric_name_extractor_finds_metric_names_and_nothing_else(
    expr: str, expected: set[str]
) -> None:
    assert metric_names_in(expr, frozenset({"kioskfleet_db_flush_seconds"})) == expected


_METRIC_NAME = st.from_regex(r"[a-z_][a-z0-9_]{0,30}", fullmatch=True).filter(
    lambda name: name.lower() not in _NOT_METRICS
)


@given(metric=_METRIC_NAME, label=_METRIC_NAME, value=st.text(max_size=20))
def test_metric_name_extractor_sees_through_matchers_grouping_and_strings(
    metric: str, label: str, value: str
) -> None:
    quoted = json.dumps(value)  # a valid PromQL double-quoted string
    expr = f"sum by ({label}) (rate({metric}{{{label}={quoted}}}[5m])) > 0"
    assert metric_names_in(expr, frozenset()) == {metric}


# ------------------------------------------------------------- dashboard model
def _load(path: Path) -> dict[str, Any]:
    loaded = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in container.get("panels", []):
        yield panel
        yield from _panels(panel)  # rows hold their collapsed panels


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    if isinstance(query, dict):
        query = query.get("query", "")
    assert isinstance(query, str)
    return query


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, query) for every PromQL expression and variable query in a dashboard."""
    found: list[tuple[str, str]] = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append(
                    (f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"])
                )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            found.append((f"variable {variable['name']}", _variable_query(variable)))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            found.append((f"annotation {annotation.get('name')!r}", annotation["expr"]))
    return found


@pytest.fixture(params=DASHBOARD_FILES, ids=lambda path: path.stem)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    path = request.param
    assert isinstance(path, Path)
    return _load(path)


def test_the_four_dashboards_exist() -> None:
    assert {path.stem for path in DASHBOARD_FILES} == {
        "fleet-overview",
        "hall-drilldown",
        "ingest-health",
        "rollouts",
    }


def test_dashboard_queries_only_contract_metric_names(dashboard: dict[str, Any]) -> None:
    # Fast feedback; the same check against a live server's /metrics is in
    # tests/integration/test_metrics_endpoint.py.
    known = CONTRACT_METRIC_NAMES | PROMETHEUS_METRIC_NAMES
    unknown = {
        (where, name)
        for where, query in dashboard_queries(dashboard)
        for name in metric_names_in(query)
        if name not in known
    }
    assert unknown == set()


def test_every_panel_has_queries_and_every_query_is_found(dashboard: dict[str, Any]) -> None:
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 5
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        targets = panel.get("targets", [])
        assert targets, panel["title"]
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(target.get("expr") for target in targets), panel["title"]
        assert all(metric_names_in(target["expr"]) for target in targets), panel["title"]


def test_dashboard_uses_a_prometheus_datasource_variable_everywhere(
    dashboard: dict[str, Any],
) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    for panel in _panels(dashboard):
        assert panel["datasource"] == wanted, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == wanted, panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == wanted, variable["name"]
    assert "kioskfleet-prometheus" not in json.dumps(dashboard)  # no pinned datasource uid


def test_dashboard_model_has_a_unique_uid_a_current_schema_and_a_sane_grid(
    dashboard: dict[str, Any],
) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert re.fullmatch(r"kioskfleet-[a-z-]+", dashboard["uid"])
    assert len(dashboard["uid"]) <= 40
    assert "kioskfleet" in dashboard["tags"]
    panels = [p for p in _panels(dashboard)]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["w"] > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0, panel["title"]
        boxes.append((panel["title"], grid["x"], grid["y"], grid["w"], grid["h"]))
    for i, (title, x, y, w, h) in enumerate(boxes):
        for other, ox, oy, ow, oh in boxes[i + 1 :]:
            overlap = x < ox + ow and ox < x + w and y < oy + oh and oy < y + h
            assert not overlap, (title, other)


def test_dashboard_uids_are_unique_across_files() -> None:
    uids = [_load(path)["uid"] for path in DASHBOARD_FILES]
    assert len(uids) == len(set(uids))


def test_links_between_dashboards_name_an_existing_dashboard_and_its_variables() -> None:
    by_uid = {d["uid"]: d for d in (_load(p) for p in DASHBOARD_FILES)}
    links = 0
    for source in by_uid.values():
        for match in re.finditer(r"/d/([\w-]+)[^\"]*", json.dumps(source)):
            links += 1
            target = by_uid.get(match.group(1))
            assert target is not None, match.group(0)
            names = {v["name"] for v in target["templating"]["list"]}
            assert set(re.findall(r"var-(\w+)=", match.group(0))) <= names
    assert links >= 1


def test_hall_drilldown_has_region_and_hall_variables_and_uses_them() -> None:
    drilldown = _load(DASHBOARDS / "hall-drilldown.json")
    names = [v["name"] for v in drilldown["templating"]["list"]]
    assert names == ["datasource", "region", "hall"]
    queries = [q for where, q in dashboard_queries(drilldown) if where.startswith("panel")]
    assert all('region="$region"' in q and 'hall="$hall"' in q for q in queries)
    per_terminal = {n for q in queries for n in metric_names_in(q)}
    assert {
        "kioskfleet_terminal_peripheral_problem",
        "kioskfleet_terminal_offline",
    } <= per_terminal


def test_rollouts_dashboard_shows_every_rollout_metric_filtered_by_rollout() -> None:
    rollouts = _load(DASHBOARDS / "rollouts.json")
    names = [v["name"] for v in rollouts["templating"]["list"]]
    assert names == ["datasource", "instance", "rollout"]
    queries = [q for where, q in dashboard_queries(rollouts) if where.startswith("panel")]
    shown = {n for q in queries for n in metric_names_in(q)}
    assert shown >= ROLLOUT_METRIC_NAMES
    per_rollout = [q for q in queries if metric_names_in(q) & ROLLOUT_METRIC_NAMES]
    assert per_rollout
    assert all('rollout=~"$rollout"' in q for q in per_rollout)


def test_ingest_health_shows_delay_percentiles_p50_p95_p99() -> None:
    ingest = _load(DASHBOARDS / "ingest-health.json")
    delay = [
        q for _, q in dashboard_queries(ingest) if "kioskfleet_ingest_delay_seconds_bucket" in q
    ]
    quantiles = {m for q in delay for m in re.findall(r"histogram_quantile\((0\.\d+)", q)}
    assert {"0.5", "0.95", "0.99"} <= quantiles


_RANGE_VARIABLES: Final = re.compile(r"\$(?:__rate_interval|__interval|__range)\b")


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package `prometheus`); CI installs it",
)
def test_every_dashboard_expression_parses_as_promql(tmp_path: Path) -> None:
    rules = []
    for path in DASHBOARD_FILES:
        for i, (_, query) in enumerate(dashboard_queries(_load(path))):
            expr = _RANGE_VARIABLES.sub("5m", _strip_grafana_function(query))
            if expr.strip():
                rules.append(
                    {"record": f"dashboard:{path.stem.replace('-', '_')}:{i}", "expr": expr}
                )
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# ------------------------------------------------------------------ provisioning
def test_datasource_provisioning_defines_the_prometheus_datasource() -> None:
    files = sorted((PROVISIONING / "datasources").glob("*.yml"))
    assert files
    config = yaml.safe_load(files[0].read_text())
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"].startswith("http")
    # $__rate_interval is only right when Grafana knows the scrape interval.
    prometheus = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert source["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]


def test_dashboard_provisioning_loads_the_dashboard_folder() -> None:
    files = sorted((PROVISIONING / "dashboards").glob("*.yml"))
    assert files
    config = yaml.safe_load(files[0].read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
    assert provider["folder"] == "kioskfleet"
