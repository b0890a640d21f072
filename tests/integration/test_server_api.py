"""A running server over real mosquitto: reports in, fleet out through the HTTP API."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.integration.conftest import (
    ServerFactory,
    TerminalFactory,
    api,
    periph,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration

PRINTER_OK = periph("printer", "receipt_printer")
READER_OK = periph("idcard", "id_card_reader")


def test_report_shows_up_with_identity_peripherals_and_software(
    start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server()
    t = terminals(hall="Tax Hall 3", region="Haidian")
    t.report([PRINTER_OK, READER_OK])
    body = wait_until(
        lambda: (r := api(server, f"/api/v1/terminals/{t.id}")).status_code == 200 and r.json(),
        what="the terminal to appear",
    )
    assert (body["hall"], body["region"], body["model"]) == ("Tax Hall 3", "Haidian", "KX-200")
    assert (body["state"], body["health"]) == ("online", "ok")
    assert [p["name"] for p in body["peripherals"]] == ["idcard", "printer"]
    assert body["software"] == {"kiosk-app": "3.1"}
    assert body["delivery"]["boot_id"] == t.boot


def test_peripheral_fault_appears_in_the_terminal_history(
    start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server()
    t = terminals()
    t.report([PRINTER_OK, READER_OK])
    t.event(periph("printer", "receipt_printer", "paper_out", fault_code="E-PAPER"), "ok")

    def fault_recorded() -> dict[str, object] | None:
        body = api(server, f"/api/v1/terminals/{t.id}").json()
        transitions = body.get("transitions", [])  # 404 until the first message is in
        return body if any(tr["subject"] == "printer" for tr in transitions) else None

    body = wait_until(fault_recorded, what="the fault transition to be stored")
    newest = body["transitions"][0]
    assert (newest["subject"], newest["kind"], newest["from_state"], newest["to_state"]) == (
        "printer",
        "receipt_printer",
        "ok",
        "paper_out",
    )
    assert newest["fault_code"] == "E-PAPER"
    assert body["transitions"][-1]["subject"] == "connectivity"  # first contact, oldest
    assert body["health"] == "faulty"  # paper out blocks service
    assert "status" not in body  # one vocabulary: no folded "degraded"


def test_list_filters_and_cursor_pagination(
    start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server()
    region = unique("R")
    jam = periph("printer", "receipt_printer", "jam")
    made = []
    for i in range(5):
        t = terminals(f"{region}-{i}", hall="H1" if i < 3 else "H2", region=region)
        t.report([jam, READER_OK] if i in (1, 4) else [PRINTER_OK, READER_OK])
        made.append(t.id)
    wait_until(
        lambda: api(server, "/api/v1/terminals", region=region).json()["total"] == 5,
        what="all five terminals",
    )

    pages, cursor = [], None
    while True:
        params = {"region": region, "limit": 2, **({"cursor": cursor} if cursor else {})}
        body = api(server, "/api/v1/terminals", **params).json()
        assert body["total"] == 5
        pages.append([item["id"] for item in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == [made[0:2], made[2:4], made[4:5]]

    def ids(**params: object) -> list[str]:
        body = api(server, "/api/v1/terminals", region=region, **params).json()
        return [item["id"] for item in body["items"]]

    assert ids(hall="H2") == made[3:]
    assert ids(condition="jam") == [made[1], made[4]]
    assert ids(peripheral_kind="receipt_printer", condition="jam", hall="H1") == [made[1]]
    assert ids(state="online") == made
    assert ids(state="offline") == []


def test_halls_count_terminals_and_peripheral_problems(
    start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server()
    hall = unique("Hall")
    fault = periph("idcard", "id_card_reader", "fault", fault_code="SW6A82")
    terminals(hall=hall).report([PRINTER_OK, READER_OK])
    terminals(hall=hall).report([PRINTER_OK, fault])
    terminals(hall=hall).report([periph("printer", "receipt_printer", "paper_out"), fault])

    def our_hall() -> dict[str, object] | None:
        items = api(server, "/api/v1/halls").json()["items"]
        mine = [h for h in items if h["hall"] == hall]
        return mine[0] if mine and mine[0]["terminals"]["total"] == 3 else None

    h = wait_until(our_hall, what="the hall summary")
    assert h["region"] == "North"
    assert h["terminals"] == {
        "total": 3,
        "online": 3,
        "offline": 0,
        "ok": 1,
        "warning": 0,
        "faulty": 2,
    }
    assert h["terminals_with_problems"] == 2
    problems = {(p["kind"], p["condition"]): p["count"] for p in h["peripheral_problems"]}
    assert problems == {("id_card_reader", "fault"): 2, ("receipt_printer", "paper_out"): 1}


def test_terminals_show_health_the_health_filter_selects_by_it_and_halls_count_each_apart(
    start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server()
    hall = unique("Hall")
    ok, low, jam = terminals(hall=hall), terminals(hall=hall), terminals(hall=hall)
    ok.report([PRINTER_OK, READER_OK])
    low.report([periph("printer", "receipt_printer", "paper_low"), READER_OK])
    jam.report([periph("printer", "receipt_printer", "jam"), READER_OK])

    def our_hall() -> dict[str, object] | None:
        items = api(server, "/api/v1/halls").json()["items"]
        mine = [h for h in items if h["hall"] == hall]
        return mine[0] if mine and mine[0]["terminals"]["total"] == 3 else None

    counts = wait_until(our_hall, what="the hall summary")["terminals"]
    assert (counts["ok"], counts["warning"], counts["faulty"]) == (1, 1, 1)
    assert "degraded" not in counts
    shown = {
        item["id"]: item["health"]
        for item in api(server, "/api/v1/terminals", hall=hall).json()["items"]
    }
    assert shown == {ok.id: "ok", low.id: "warning", jam.id: "faulty"}
    assert api(server, f"/api/v1/terminals/{jam.id}").json()["health"] == "faulty"

    def ids(health: str | list[str]) -> set[str]:
        body = api(server, "/api/v1/terminals", hall=hall, health=health).json()
        return {item["id"] for item in body["items"]}

    assert ids("faulty") == {jam.id}
    assert ids("warning") == {low.id}
    assert ids("ok") == {ok.id}
    assert ids("offline") == set()
    assert ids("warning,faulty") == ids(["warning", "faulty"]) == {low.id, jam.id}

    refused = api(server, "/api/v1/terminals", health="degraded")
    assert refused.status_code == 422
    assert refused.json()["message"] == (
        "health: 'degraded' is not one of ok, warning, faulty, offline, closed"
    )
    # ``status`` was a response field that looked like a filter: now it is refused
    folded = api(server, "/api/v1/terminals", status="degraded")
    assert folded.status_code == 422
    assert "unknown query parameter 'status'" in folded.json()["message"]


def test_unknown_terminal_is_a_404_json_error(start_server: ServerFactory) -> None:
    server = start_server()
    r = api(server, "/api/v1/terminals/NOPE-1")
    assert r.status_code == 404
    assert r.json() == {"error": "not_found", "message": "unknown terminal 'NOPE-1'"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit"),
        ({"state": "sleeping"}, "state"),
        ({"condition": "on_fire"}, "condition"),
        ({"cursor": "!!!"}, "cursor"),
    ],
)
def test_invalid_query_is_a_422_naming_the_parameter(
    start_server: ServerFactory, params: dict[str, object], field: str
) -> None:
    server = start_server()
    r = api(server, "/api/v1/terminals", **params)
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid_request"
    assert field in body["message"]


def test_health_readiness_and_openapi(start_server: ServerFactory) -> None:
    server = start_server()
    assert api(server, "/healthz").json() == {"status": "alive"}
    ready = api(server, "/readyz")
    assert (ready.status_code, ready.json()) == (200, {"ready": True, "reasons": []})
    spec = api(server, "/openapi.json").json()
    assert {"/api/v1/terminals", "/api/v1/terminals/{terminal_id}", "/api/v1/halls"} <= set(
        spec["paths"]
    )
    assert api(server, "/docs").status_code == 200


def test_metrics_exposition_passes_promtool(
    start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server()
    terminals().report()
    r = api(server, "/metrics")
    assert r.status_code == 200
    text = r.text
    for name in (
        "kioskfleet_ingest_messages_total",
        'kioskfleet_ingest_rejected_total{reason="internal"}',
        "kioskfleet_ingest_duplicates_total",
        "kioskfleet_ingest_seq_gaps_total",
        "kioskfleet_ingest_delay_seconds_bucket",
        "kioskfleet_broker_connected 1.0",
        "kioskfleet_db_errors_total",
        "kioskfleet_db_flush_seconds_bucket",
        'kioskfleet_terminals_offline_detected_total{reason="timeout"}',
    ):
        assert name in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=r.content, capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
