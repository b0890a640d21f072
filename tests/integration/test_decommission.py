"""Decommissioning a terminal through a real mosquitto: its retained presence is gone too."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from kioskfleet.cli import main as cli_main
from kioskfleet.local_broker import LocalBroker
from protocol.topics import Channel, topic
from server.access import Role
from server.access_store import AuditFilter
from server.audit import AuditResult
from server.device_ca import generate_key
from server.identity_tables import RegistryStatus
from server.main import Server
from tests.integration.conftest import (
    RawTerminal,
    ServerFactory,
    TerminalFactory,
    admin_token,
    api,
    bearer,
    metric,
    token,
    unique,
)
from tests.support.device_identity import csr_for, make_ca, public_pem
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def retained_state(broker: LocalBroker, terminal_id: str) -> bytes | None:
    """What a new subscriber to the terminal's ``state`` gets at once (None: nothing retained)."""
    got: list[bytes] = []
    subscribed = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=unique("peek"), protocol=mqtt.MQTTv5
    )
    client.on_message = lambda _c, _u, msg: got.append(bytes(msg.payload))
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_connect = lambda c, *_a: c.subscribe(topic(terminal_id, Channel.STATE), qos=1)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert subscribed.wait(5), "no SUBACK"
        # mosquitto sends retained messages right after the SUBACK; a round trip on the
        # same connection (a PINGREQ would do; a QoS 1 publish is observable) orders them.
        client.publish(unique("kf-test/flush"), b"", qos=1).wait_for_publish(5)
        return got[0] if got else None
    finally:
        client.disconnect()
        client.loop_stop()


def known_terminal(server: Server, terminals: TerminalFactory) -> RawTerminal:
    """A terminal that is online with one report, and that the server's API shows."""
    terminal = terminals(unique("DECOM"))
    terminal.online()
    terminal.report()
    wait_until(lambda: api(server, f"/api/v1/terminals/{terminal.id}").status_code == 200, 10)
    return terminal


def test_decommission_clears_the_retained_state_and_a_restarted_server_does_not_bring_it_back(
    broker: LocalBroker, start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server()
    terminal = known_terminal(server, terminals)
    assert retained_state(broker, terminal.id) is not None

    server.decommission(terminal.id)

    wait_until(lambda: metric(server, "kioskfleet_ingest_state_cleared_total") >= 1, 10, "echo")
    assert retained_state(broker, terminal.id) is None
    assert api(server, f"/api/v1/terminals/{terminal.id}").status_code == 404
    assert metric(server, "kioskfleet_ingest_rejected_total", reason="bad_json") == 0
    database = server.settings.database_url
    server.stop()
    again = start_server(database_url=database)
    assert api(again, f"/api/v1/terminals/{terminal.id}").status_code == 404


def test_decommission_through_the_api(
    broker: LocalBroker, start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server()
    terminal = known_terminal(server, terminals)
    url = f"{server.base_url}/api/v1/terminals/{terminal.id}/decommission"

    operator = bearer(token(server, Role.OPERATOR))
    viewer = bearer(token(server, Role.VIEWER))

    assert httpx.post(url, headers=viewer, timeout=5).status_code == 403
    answer = httpx.post(url, headers=operator, timeout=5)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["known"] is True
    assert body["last_state"]["id"] == terminal.id
    assert api(server, f"/api/v1/terminals/{terminal.id}").status_code == 404
    wait_until(lambda: metric(server, "kioskfleet_ingest_state_cleared_total") >= 1, 10, "echo")
    assert retained_state(broker, terminal.id) is None
    again = httpx.post(url, headers=operator, timeout=5).json()
    assert again["known"] is False
    assert again["last_state"] is None
    bad = httpx.post(
        f"{server.base_url}/api/v1/terminals/a%20b/decommission", headers=operator, timeout=5
    )
    assert bad.status_code == 422
    audit = api(server, "/api/v1/audit", action="terminal.decommission").json()["items"]
    assert [(e["target"], e["result"]) for e in audit if e["target"] == terminal.id] == [
        (terminal.id, "ok"),
        (terminal.id, "ok"),
        (terminal.id, "denied"),
    ]


def test_decommission_is_refused_with_503_while_the_broker_is_away(
    broker: LocalBroker, start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server()
    terminal = known_terminal(server, terminals)
    broker.terminate()
    try:
        wait_until(lambda: not server.mqtt.connected, 30, "server notices the broker is gone")
        answer = httpx.post(
            f"{server.base_url}/api/v1/terminals/{terminal.id}/decommission",
            headers=bearer(admin_token(server)),
            timeout=5,
        )
    finally:
        broker.start()
    assert answer.status_code == 503
    assert answer.json()["error"] == "broker_unavailable"
    assert api(server, f"/api/v1/terminals/{terminal.id}").status_code == 200


def test_the_cli_decommissions_an_enrolled_terminal_through_the_api_revoking_it_audited_once(
    start_server: ServerFactory, terminals: TerminalFactory, tmp_path: Path
) -> None:
    """``kioskfleet terminal decommission`` over HTTPS with an operator token: the terminal is
    out of the fleet, its certificate is on the CRL, the registry says decommissioned, its next
    report is refused by id, and the audit log records the call once, naming the token."""
    fleet_ca = make_ca(tmp_path / "ca")
    server = start_server(
        ca_dir=fleet_ca.directory,
        https_cert_file=fleet_ca.https_cert,
        https_key_file=fleet_ca.https_key,
    )
    registry = server.terminal_registry
    assert registry is not None
    key = generate_key()
    registry.preauthorize("T-RETIRED", "Hall A", "North", "KX-200", public_pem(key), actor="t")
    cert = registry.enroll(csr_for(key, "T-RETIRED"))
    terminal = terminals("T-RETIRED")
    terminal.online()
    terminal.report()
    wait_until(lambda: server.fleet.get("T-RETIRED") is not None, 10, "the enrolled report")
    token_file = tmp_path / "operator.token"
    token_file.write_text(token(server, Role.OPERATOR, name="ops-1") + "\n", encoding="utf-8")
    viewer_file = tmp_path / "viewer.token"
    viewer_file.write_text(token(server, Role.VIEWER), encoding="utf-8")
    args = ["terminal", "decommission", "T-RETIRED", "--server", server.base_url,
            "--ca-file", str(fleet_ca.paths.chain), "--token-file"]  # fmt: skip

    assert cli_main([*args, str(viewer_file)]) == 1  # a viewer may not
    assert server.fleet.get("T-RETIRED") is not None
    assert cli_main([*args, str(token_file)]) == 0

    assert server.fleet.get("T-RETIRED") is None
    registered = registry.get("T-RETIRED")
    assert registered is not None
    assert registered.status is RegistryStatus.DECOMMISSIONED
    crl = x509.load_pem_x509_crl(fleet_ca.paths.crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    refused = metric(server, "kioskfleet_ingest_rejected_total", reason="unknown_terminal")
    terminal.report()
    wait_until(
        lambda: (
            metric(server, "kioskfleet_ingest_rejected_total", reason="unknown_terminal") > refused
        ),
        10,
        "the decommissioned terminal's report to be refused",
    )
    assert server.fleet.get("T-RETIRED") is None
    entries = server.access_store.audit(AuditFilter(target="T-RETIRED"), limit=20).items
    # One record per call, the API's (who, from where, the answer's status): the registry,
    # which revoked the certificate, does not record the same decommission a second time.
    decommissions = [e for e in entries if e.action == "terminal.decommission"]
    assert [(e.actor, e.result) for e in decommissions] == [
        ("token:ops-1", AuditResult.OK),
        (decommissions[1].actor, AuditResult.DENIED),
    ]
    assert decommissions[0].detail["status"] == "200"
    assert decommissions[1].role == "viewer"
