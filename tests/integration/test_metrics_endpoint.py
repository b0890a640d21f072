"""/metrics of a live server fed over real mosquitto: the fleet series, promtool, the contract.

A ``server.main.Server`` (SQLite) receives protocol messages from raw MQTT
terminals through the project's mosquitto; the test reads ``GET /metrics`` over
HTTP exactly as Prometheus does. It checks:

- the fleet gauges by hall and the per-terminal series hold the expected values,
  and a healthy terminal has no series of its own;
- the exposition passes ``promtool check metrics`` (HELP on every family, valid
  names and types);
- the names the live server exports are exactly the contract
  (``tests/unit/test_dashboards.py``), and every dashboard and alert rule queries
  only names the live server really exports, while every kioskfleet family shows
  on a dashboard. The pure PromQL name extractor stays unit-tested there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kioskfleet import __version__
from kioskfleet.local_broker import LocalBroker
from kioskfleet.update_client import UpdateClient
from protocol.topics import Channel
from server.access import Role
from server.fleet_collector import FLEET_METRIC_NAMES
from server.main import Server
from server.rollout_metrics import ROLLOUT_METRIC_NAMES
from server.service_catalogue import Catalogue
from server.usage_metrics import USAGE_METRIC_NAMES as USAGE_FAMILIES
from tests.integration.conftest import (
    ServerFactory,
    TerminalFactory,
    api,
    bearer,
    periph,
    token,
    unique,
    wait_until,
)
from tests.support.fleet_messages import usage
from tests.support.tuf_world import TufWorld, release_manifest
from tests.unit.test_alert_rules import ALERT_RULES
from tests.unit.test_dashboards import (
    CONTRACT_METRIC_NAMES,
    DASHBOARD_FILES,
    PAPER_METRIC_NAMES,
    PROMETHEUS_METRIC_NAMES,
    dashboard_queries,
    metric_names_in,
    with_histogram_bases,
)

pytestmark = pytest.mark.integration

PRINTER_OK = periph("printer", "receipt_printer")
READER_OK = periph("idcard", "id_card_reader")
PAPER_OUT = periph("printer", "receipt_printer", "paper_out", fault_code="E-PAPER")
PAPER_LOW = periph("printer", "receipt_printer", "paper_low")
PER_TERMINAL = (
    "kioskfleet_terminal_offline",
    "kioskfleet_terminal_offline_since_timestamp_seconds",
    "kioskfleet_terminal_peripheral_problem",
)

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(server: Server) -> str:
    response = api(server, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def parse(text: str) -> Series:
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = sample.value
    return out


def only(series: Series, *names: str) -> Series:
    return {k: v for k, v in series.items() if k[0] in names}


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def statuses(series: Series, region: str, hall: str) -> dict[str, float]:
    return {
        status: series.get(key("kioskfleet_terminals", region=region, hall=hall, status=status))
        or 0.0
        for status in ("ok", "warning", "faulty", "offline")
    }


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package `prometheus`); CI installs it",
)


# --- the fleet series over the wire ---------------------------------------------------------


def _feed_a_small_fleet(terminals: TerminalFactory, region: str) -> tuple[dict[str, str], float]:
    """Five terminals in two halls: ok, warning, faulty, a will (offline), ok in hall 2.

    Returns their ids by role and the Unix time just before the will's connection dropped.
    """
    ids = {}
    for name, hall, peripherals in [
        ("ok", "Hall 1", [PRINTER_OK, READER_OK]),
        ("low", "Hall 1", [PAPER_LOW, READER_OK]),
        ("out", "Hall 1", [PAPER_OUT, READER_OK]),
        ("ok2", "Hall 2", [PRINTER_OK]),
    ]:
        t = terminals(f"{region}-{name}", hall=hall, region=region)
        t.report(peripherals)  # a first report brings a terminal online (no retained state)
        ids[name] = t.id
    gone = terminals(f"{region}-gone", hall="Hall 2", region=region, with_will=True)
    gone.report([PRINTER_OK])
    ids["gone"] = gone.id
    vanished_after = time.time()
    gone.vanish()  # no DISCONNECT: mosquitto publishes the will
    return ids, vanished_after


def test_metrics_show_the_fleet_by_hall_and_series_only_for_problem_terminals(
    private_server: ServerFactory, private_terminals: TerminalFactory
) -> None:
    server = private_server()  # its own mosquitto: the fleet is exactly what this test sends
    region = unique("R")
    ids, vanished_after = _feed_a_small_fleet(private_terminals, region)

    def settled() -> Series | None:
        series = parse(scrape_text(server))
        hall1 = statuses(series, region, "Hall 1")
        hall2 = statuses(series, region, "Hall 2")
        wanted = (
            {"ok": 1, "warning": 1, "faulty": 1, "offline": 0},
            {"ok": 1, "warning": 0, "faulty": 0, "offline": 1},
        )
        return series if (hall1, hall2) == wanted else None

    series = wait_until(settled, 10, "the fleet gauges to show all five terminals")

    def where(name: str, hall: str) -> dict[str, str]:
        return {"terminal": ids[name], "hall": hall, "region": region}

    per_terminal = only(series, *PER_TERMINAL)
    since = key("kioskfleet_terminal_offline_since_timestamp_seconds", **where("gone", "Hall 2"))
    assert per_terminal.keys() == {
        key("kioskfleet_terminal_offline", **where("gone", "Hall 2")),
        since,
        key(
            "kioskfleet_terminal_peripheral_problem",
            **where("low", "Hall 1"),
            peripheral="printer",
            family="printer",
            kind="receipt_printer",
            condition="paper_low",
            fault_code="",
        ),
        key(
            "kioskfleet_terminal_peripheral_problem",
            **where("out", "Hall 1"),
            peripheral="printer",
            family="printer",
            kind="receipt_printer",
            condition="paper_out",
            fault_code="E-PAPER",
        ),
    }
    assert all(v == 1 for k, v in per_terminal.items() if k != since)
    # The will's time is when the server received it: after the connection dropped.
    assert vanished_after - 1 <= per_terminal[since] <= time.time()
    healthy = {ids["ok"], ids["ok2"]}
    assert not any(dict(labels).get("terminal") in healthy for _, labels in series)

    hall1 = {"region": region, "hall": "Hall 1"}
    printers = {
        dict(labels)["condition"]: value
        for (name, labels), value in series.items()
        if name == "kioskfleet_peripherals"
        and labels
        >= {
            ("hall", "Hall 1"),
            ("region", region),
            ("family", "printer"),
            ("kind", "receipt_printer"),
        }
    }
    assert printers == {"ok": 1, "paper_low": 1, "paper_out": 1}
    readers = series[
        key(
            "kioskfleet_peripherals",
            **hall1,
            family="identity_reader",
            kind="id_card_reader",
            condition="ok",
        )
    ]
    assert readers == 3
    assert series[key("kioskfleet_software_terminals", package="kiosk-app", version="3.1")] == 5
    assert series[key("kioskfleet_build_info", version=__version__)] == 1

    # The fault is fixed: its series disappears and the counts move back.
    fixed = next(t for t in private_terminals.made if t.id == ids["out"])
    fixed.event(PRINTER_OK, "paper_out")
    series = wait_until(
        lambda: (
            (s := parse(scrape_text(server)))
            and statuses(s, region, "Hall 1") == {"ok": 2, "warning": 1, "faulty": 0, "offline": 0}
            and s
        ),
        10,
        "the fixed printer to count as ok",
    )
    assert not any(dict(labels).get("terminal") == ids["out"] for _, labels in series)


@needs_promtool
def test_metrics_exposition_passes_promtool_check_metrics(
    private_server: ServerFactory, private_terminals: TerminalFactory
) -> None:
    server = private_server()
    _feed_a_small_fleet(private_terminals, unique("R"))
    text = wait_until(
        lambda: (t := scrape_text(server)) and all(f"\n{n}{{" in t for n in PER_TERMINAL) and t,
        10,
        "every per-terminal family to have a series",
    )
    result = promtool_check_metrics(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""  # no lint findings either


@needs_promtool
def test_promtool_check_metrics_does_catch_a_family_without_help() -> None:
    result = promtool_check_metrics("# TYPE x gauge\nx 1\n")
    assert result.returncode != 0
    assert "no help text" in result.stdout + result.stderr


# --- the contract, from names the live server really exports -------------------------------


@pytest.fixture(scope="module")
def exported_metric_names(
    broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[frozenset[str]]:
    """Sample names on a live server's /metrics, with an offline and a faulty terminal in it.

    Every family then has samples (per-terminal ones exist only while there is a
    problem). Histograms appear as ``_bucket``/``_sum``/``_count``, counters as
    ``_total``/``_created``, exactly as Prometheus stores them.
    """
    factory = ServerFactory(broker, f"sqlite:///{tmp_path_factory.mktemp('names')}/kf.db")
    terminals = TerminalFactory(broker)
    # signed releases on (their metrics), and a release to roll out (the rollout gauges)
    world = TufWorld.create(tmp_path_factory.mktemp("tuf"), vendors={"acme": 1})
    try:
        server = factory(
            updates_dir=tmp_path_factory.mktemp("repository"),
            updates_snapshot_key_file=world.operator.online_dir / "snapshot.key",
            updates_timestamp_key_file=world.operator.online_dir / "timestamp.key",
            rollout_tick_interval_s=0.2,
            paper_forecast_interval_s=0.2,
            # Hall 1's three problem terminals keep their series; Hall 3's four do not
            metrics_peripheral_problem_terminals_per_hall=3,
        )
        assert server.updates is not None
        server.updates.repository.upload_root(world.roots()[0])
        server.updates.repository.upload_targets(world.targets_bytes())
        _a_rollout_awaiting_approval(server, world)
        region = unique("R")
        faulty = terminals(hall="Hall 1", region=region)
        faulty.report([PAPER_OUT, READER_OK])
        # a catalogued transaction and a refused one (the usage counters)
        server.services.put(
            Catalogue.model_validate({"services": [{"code": "tax.invoice.print"}]}),
            actor="test",
            now=datetime.now(UTC),
        )
        faulty.publish(usage(faulty.id, faulty.next_seq(), "tax.invoice.print", boot=faulty.boot))
        faulty.publish_raw(faulty.topic(Channel.USAGE), b'{"schema": "kf.usage"}')
        # a printer that runs out within a day (the paper forecast gauges): 30 pages in the
        # last two hours, then paper_low with 60 pages left
        low = terminals(hall="Hall 1", region=region)
        low.report([PRINTER_OK, READER_OK])
        two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
        low.publish(
            usage(
                low.id,
                low.next_seq(),
                "tax.invoice.print",
                boot=low.boot,
                sent_at=two_hours_ago,
                pages=30,
            )
        )
        low.report([PAPER_LOW, READER_OK])
        gone = terminals(hall="Hall 1", region=region, with_will=True)
        gone.report()
        gone.vanish()
        kept = terminals(hall="Hall 1", region=region)  # in maintenance: its own gauge
        kept.report([PAPER_OUT])
        wait_until(lambda: server.fleet.get(kept.id) is not None, 10, "the kept terminal")
        started = httpx.put(
            f"{server.base_url}/api/v1/terminals/{kept.id}/maintenance",
            json={"reason": "names", "until": "2999-01-01T00:00:00Z"},
            headers=bearer(token(server, Role.OPERATOR)),
            timeout=5,
        )
        assert started.status_code == 422  # beyond maintenance_max_days
        started = httpx.put(
            f"{server.base_url}/api/v1/terminals/{kept.id}/maintenance",
            json={"reason": "names", "until": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
            headers=bearer(token(server, Role.OPERATOR)),
            timeout=5,
        )
        assert started.status_code == 200, started.text
        for _ in range(4):  # a mass outage of Hall 3's printers: the hall's withheld series
            terminals(hall="Hall 3", region=region).report([PAPER_OUT, READER_OK])
        wanted = (
            *PER_TERMINAL,
            *ROLLOUT_METRIC_NAMES,
            "kioskfleet_terminal_maintenance",
            "kioskfleet_hall_peripheral_problems_withheld",
            *USAGE_FAMILIES,
            *PAPER_METRIC_NAMES,
        )
        seen: dict[str, list[str]] = {}

        def every_family_has_a_series() -> str | None:
            t = scrape_text(server)
            seen["missing"] = [n for n in wanted if f"\n{n}{{" not in t]
            return t if t and not seen["missing"] else None

        deadline = time.monotonic() + 60  # a bound, not a target
        while (text := every_family_has_a_series()) is None:
            if time.monotonic() > deadline:
                pytest.fail(f"no series after 60 s for {seen['missing']}")
            time.sleep(0.05)
        # The partition's series come from a second server, partitioned (a lone member):
        # in the first, every terminal above would have been new to its partition, and a
        # terminal's first messages are applied for good only once its agent re-sends them
        # (docs/scale-out.md), which these raw publishers never do.
        partitioned = factory(
            database_url=f"sqlite:///{tmp_path_factory.mktemp('partitioned')}/kf.db",
            ingest_ownership="partition",
        )

        def with_membership() -> str | None:
            t = scrape_text(partitioned)
            return t if "\nkioskfleet_ingest_members " in t else None

        both = text + wait_until(with_membership, 60, "the partitioned server's membership series")
        yield frozenset(
            sample.name
            for family in text_string_to_metric_families(both)
            for sample in family.samples
        )
    finally:
        for t in terminals.made:
            t.close(broker)
        factory.stop_all()


def _a_rollout_awaiting_approval(server: Server, world: TufWorld) -> None:
    """acme publishes a release; an operator creates a rollout of it (its terminals are
    selected while it awaits approval, so every rollout family has samples)."""
    artifact = world.artifact("kiosk-app-1.bin")
    world.sign("acme", artifact, release_manifest(1))
    with UpdateClient(server.base_url, token(server, Role.VENDOR, vendor="acme")) as acme:
        acme.upload_artifact("acme", artifact.name, artifact)
        acme.publish_role("acme", world.role_file("acme").read_bytes())
    body = {
        "rollout_id": "R-NAMES",
        "target": "acme/kiosk-app-1.bin",
        "phases": [{"size": 100, "unit": "percent"}],
        "success_threshold": 1.0,
        "abort_failure_ratio": 0.5,
        "abort_min_decided": 1,
        "terminal_timeout_s": 3600,
    }
    created = httpx.post(
        f"{server.base_url}/api/v1/rollouts",
        json=body,
        headers=bearer(token(server, Role.OPERATOR)),
        timeout=5,
    )
    assert created.status_code == 201, created.text


DELIVERY_METRIC_NAMES = frozenset(
    {  # issue 4 (nothing lost); tests/unit/test_dashboards.py's contract is to list them too
        "kioskfleet_agent_dropped_reports",
        "kioskfleet_agent_seq_gaps",
        "kioskfleet_db_rejected_rows_total",
        "kioskfleet_ingest_unacknowledged_messages",
    }
)


def _contract_names(exported: frozenset[str]) -> frozenset[str]:
    """Exported kioskfleet names as the contract spells them (histograms by base, no _created)."""
    bases = with_histogram_bases(exported)
    histograms = {name.removesuffix("_bucket") for name in exported if name.endswith("_bucket")}
    return frozenset(
        name
        for name in bases
        if name.startswith("kioskfleet_")
        and not name.endswith("_created")
        and not (
            name.endswith(("_bucket", "_sum", "_count")) and name.rsplit("_", 1)[0] in histograms
        )
    )


def test_live_server_exports_exactly_the_contract_names(
    exported_metric_names: frozenset[str],
) -> None:
    assert set(FLEET_METRIC_NAMES) <= exported_metric_names
    assert _contract_names(exported_metric_names) == CONTRACT_METRIC_NAMES | DELIVERY_METRIC_NAMES


def test_alert_rules_query_only_metrics_the_live_server_exports(
    exported_metric_names: frozenset[str],
) -> None:
    known = with_histogram_bases(exported_metric_names) | PROMETHEUS_METRIC_NAMES
    used = {name for rule in ALERT_RULES for name in metric_names_in(rule["expr"])}
    assert used - known == set()


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.stem)
def test_dashboard_queries_only_metrics_the_live_server_exports(
    path: Path, exported_metric_names: frozenset[str]
) -> None:
    known = with_histogram_bases(exported_metric_names) | PROMETHEUS_METRIC_NAMES
    unknown = {
        (where, name)
        for where, query in dashboard_queries(json.loads(path.read_text(encoding="utf-8")))
        for name in metric_names_in(query)
        if name not in known
    }
    assert unknown == set()


def test_dashboards_together_show_every_metric_the_live_server_exports(
    exported_metric_names: frozenset[str],
) -> None:
    shown = {
        name
        for path in DASHBOARD_FILES
        for _, query in dashboard_queries(json.loads(path.read_text(encoding="utf-8")))
        for name in metric_names_in(query)
    }
    # Only kioskfleet's own families: not process_*/python_* or counters' *_created.
    ours = {
        name
        for name in with_histogram_bases(exported_metric_names)
        if name.startswith("kioskfleet_")
        and not name.endswith(("_created", "_bucket", "_sum", "_count"))
    }
    assert ours - shown == set()
