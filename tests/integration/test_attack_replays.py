"""Issue 9's attacks, replayed as an attacker with loopback access against the full setup.

One mosquitto with the generated TLS listener and ACL, one server with the device CA
(enrollment required), HTTPS, EST and API tokens, and terminals that really enrolled
over EST. Each test replays one attack from the top of issue 9, asserts that it fails,
and then that the victim's real state is intact: its next real reports are applied
and the API shows its true state. docs/security.md, "Threat model", cites these tests.

The broker and the server are shared by the module (counters are compared as deltas);
every wait is a ``wait_until`` on what the server or the broker will make true.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from agent.enrollment import EnrollmentError, EstClient, build_csr
from kioskfleet.broker_setup import BrokerSetup
from kioskfleet.local_broker import LocalBroker, free_port
from protocol.codec import encode
from protocol.topics import TOPIC_PREFIX, Channel, topic
from server.access_api import OPEN_PATHS, declared_role
from server.console.web import CONSOLE_PREFIX
from server.device_ca import generate_key, write_pem, write_private_key
from server.main import Server
from tests.integration.conftest import (
    RawTerminal,
    ServerFactory,
    admin_token,
    bearer,
    metric,
    periph,
)
from tests.support.device_identity import public_pem
from tests.support.fleet_messages import report, state
from tests.support.pki import ClientFiles, TestPki
from tests.support.tls_client import NOT_AUTHORIZED, Client
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SERVER = "kioskfleet:server"
PEEK = "kioskfleet:server:peek"  # a second server identity: reads what the broker retains
NO_SUBSCRIBERS = 0x10
ALL_REPORTS = f"{TOPIC_PREFIX}/+/{Channel.REPORT.value}"
INSTALLER = "cli:installer"
PLACES = {  # the registry's placement of each enrolled terminal (what the server trusts)
    "T-B": ("Hall B", "North"),
    "T-A": ("Hall A", "North"),
    "T-FLOOD": ("Hall F", "East"),
    "T-GONE": ("Hall G", "East"),
    "T-STOLEN": ("Hall S", "South"),
    "T-CLONED": ("Hall C", "South"),
}
PRINTER_OK = periph("printer", "receipt_printer")
PAPER_OUT = periph("printer", "receipt_printer", "paper_out")


@dataclass
class Fleet:
    """The running setup and the attacker's view of it."""

    pki: TestPki
    setup: BrokerSetup
    broker: LocalBroker
    server: Server
    files: dict[str, ClientFiles]  # what enrollment issued, per terminal id
    tls: ssl.SSLContext  # trusts the fleet CA (the API is HTTPS)
    admin: str

    def get(self, path: str, secret: str | None = None, **params: Any) -> httpx.Response:
        headers = bearer(secret if secret is not None else self.admin)
        return httpx.get(
            self.server.base_url + path, params=params, headers=headers, verify=self.tls, timeout=5
        )

    def call(
        self, method: str, path: str, secret: str | None = None, json_body: Any = None
    ) -> httpx.Response:
        headers = bearer(secret) if secret is not None else {}
        return httpx.request(method, self.server.base_url + path, headers=headers,
                             json=json_body, verify=self.tls, timeout=5)  # fmt: skip

    def client(self, files: ClientFiles | None, **kwargs: Any) -> Client:
        return Client(self.broker, files, ca_file=self.setup.identity.ca_file, **kwargs)

    def rejected(self, reason: str) -> float:
        return metric(self.server, "kioskfleet_ingest_rejected_total", reason=reason)


def _enroll(
    server: Server, pki: TestPki, out: Path, terminal_id: str, *, with_token: bool
) -> ClientFiles:
    """Pre-authorise (key) or issue a token for ``terminal_id`` as an operator would, then
    enroll over EST (HTTPS) with the agent's own client; the terminal's files on disk."""
    registry = server.terminal_registry
    assert registry is not None
    hall, region = PLACES[terminal_id]
    key = generate_key()
    secret = None
    if with_token:
        secret = registry.issue_token(
            terminal_id, hall, region, "KX-200", timedelta(hours=1), actor=INSTALLER
        )
    else:
        registry.preauthorize(terminal_id, hall, region, "KX-200", public_pem(key),
                              actor=INSTALLER)  # fmt: skip
    est = EstClient(server.base_url, pki.chain_file)
    cert = est.simpleenroll(build_csr(key, terminal_id), terminal_id=terminal_id, token=secret)
    write_pem(out / f"{terminal_id}.pem", cert)
    write_private_key(out / f"{terminal_id}.key", key)
    return ClientFiles(terminal_id, out / f"{terminal_id}.pem", out / f"{terminal_id}.key",
                       pki.chain_file, cert.serial_number)  # fmt: skip


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("attacks")
    pki = TestPki(base / "pki")
    port = free_port()
    setup = pki.broker_setup(port, (SERVER, PEEK))
    https_key = generate_key()
    https_cert = pki.ca.issue_service("127.0.0.1", https_key.public_key(),
                                      sans=["127.0.0.1", "localhost"])  # fmt: skip
    write_pem(base / "https.pem", https_cert, pki.ca.issuing)
    write_private_key(base / "https.key", https_key)
    broker = LocalBroker(base / "mosquitto", port=port, identity=setup.identity).start()
    factory = ServerFactory(broker, f"sqlite:///{base}/kioskfleet.db")
    cert, key = setup.server_credentials[SERVER]
    try:
        server = factory(
            ca_dir=pki.ca_dir,
            require_enrollment=True,
            https_cert_file=base / "https.pem",
            https_key_file=base / "https.key",
            broker_ca_file=setup.identity.ca_file,
            broker_cert_file=cert,
            broker_key_file=key,
            mqtt_session_expiry_s=600,  # a persistent session: what the thief tried to take
        )
        assert server.settings.enrollment_required
        assert server.base_url.startswith("https://")
        out = base / "terminals"
        out.mkdir()
        files = {
            tid: _enroll(server, pki, out, tid, with_token=(tid == "T-GONE")) for tid in PLACES
        }
        tls = ssl.create_default_context(cafile=str(pki.chain_file))
        yield Fleet(pki, setup, broker, server, files, tls, admin_token(server))
    finally:
        factory.stop_all()
        broker.stop()


@pytest.fixture(scope="module")
def victim(fleet: Fleet) -> Iterator[RawTerminal]:
    """Terminal B, really enrolled, online, reporting every 10 s with its printer ok."""
    b = RawTerminal(fleet.broker, "T-B", tls=fleet.files["T-B"], hall="Hall B", region="North")
    b.online()
    b.report([PRINTER_OK])
    wait_until(lambda: fleet.get("/api/v1/terminals/T-B").status_code == 200, 10, "B shown")
    try:
        yield b
    finally:
        b.close(fleet.broker)


def b_reports_paper_out_and_the_api_shows_its_true_state(fleet: Fleet, b: RawTerminal) -> None:
    """B's next real reports are applied: the API (admin) shows B online, its own boot and
    interval, its printer out of paper, then ok again; nothing of a forger's."""
    for peripheral, condition in ((PAPER_OUT, "paper_out"), (PRINTER_OK, "ok")):
        b.report([peripheral], interval=10.0)
        body = wait_until(_shown_with_seq(fleet, b.seq), 10, f"B's report {b.seq} applied")
        assert body["state"] == "online"
        assert body["delivery"]["boot_id"] == b.boot
        assert body["report_interval_s"] == 10.0
        assert (body["hall"], body["region"]) == PLACES["T-B"]
        assert [p["condition"] for p in body["peripherals"]] == [condition]


def _shown_with_seq(fleet: Fleet, seq: int) -> Any:
    """A predicate: B's detail (admin) once its last seq is ``seq``, else None."""

    def shown() -> dict[str, Any] | None:
        body: dict[str, Any] = fleet.get("/api/v1/terminals/T-B").json()
        return body if body["delivery"]["last_seq"] == seq else None

    return shown


def _forged_report(boot: str = "boot-forged", seq: int = 1) -> bytes:
    return encode(report("T-B", seq, boot=boot, sent_at=datetime.now(UTC),
                         peripherals=[PRINTER_OK], interval=86400.0))  # fmt: skip


def _no_tls_client_connects(broker: LocalBroker) -> bool:
    """A plain MQTT client (no TLS at all) against the TLS listener: CONNACK or not."""
    connected, closed = threading.Event(), threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         reconnect_on_failure=False)  # fmt: skip
    client.on_connect = lambda *_a: connected.set()
    client.on_disconnect = lambda *_a: closed.set()
    try:
        client.connect("127.0.0.1", broker.port, keepalive=5)
    except OSError:
        return False
    client.loop_start()
    try:
        wait_until(lambda: connected.is_set() or closed.is_set(), 10, "CONNACK or closed")
        return connected.is_set()
    finally:
        client.disconnect()
        client.loop_stop()


# --- 1. a forged report for B -----------------------------------------------------------


def test_a_forged_report_for_b_is_refused_without_or_with_another_terminals_certificate(
    fleet: Fleet, victim: RawTerminal
) -> None:
    # Anonymous: no TLS, or TLS without a client certificate: no connection at all.
    assert not _no_tls_client_connects(fleet.broker)
    anonymous = fleet.client(None)
    try:
        assert not anonymous.connect()
    finally:
        anonymous.close()
    # Knowing B's id is not enough to become B: EST refuses a CSR for B with another key.
    intruder = EstClient(fleet.server.base_url, fleet.pki.chain_file)
    with pytest.raises(EnrollmentError) as refused:
        intruder.simpleenroll(build_csr(generate_key(), "T-B"), terminal_id="T-B")
    assert (refused.value.status, refused.value.reason) == (403, "key_mismatch")
    # Terminal A's valid certificate: the broker refuses the publish (MQTT 5 says so).
    a = fleet.client(fleet.files["T-A"])
    try:
        assert a.connect()
        assert a.publish(topic("T-B", Channel.REPORT), _forged_report()) == NOT_AUTHORIZED
    finally:
        a.close()

    b_reports_paper_out_and_the_api_shows_its_true_state(fleet, victim)
    assert fleet.server.fleet.get("T-A") is None  # A itself never spoke: nothing was applied


# --- 2. a forged retained offline -------------------------------------------------------


def _retained_state(fleet: Fleet, terminal_id: str) -> dict[str, Any] | None:
    """What the broker retains on the terminal's ``state`` (read with a server identity)."""
    peek = fleet.client(fleet.pki.server_client(fleet.setup, PEEK))
    try:
        assert peek.connect()
        peek.subscribe(topic(terminal_id, Channel.STATE))
        # retained messages come right after the SUBACK; a QoS 1 round trip orders them
        # (0x10: accepted, nobody subscribed)
        assert peek.publish(topic("T-PEEK-FLUSH", Channel.CMD), b"") in (0, NO_SUBSCRIBERS)
        got = [payload for name, payload in peek.messages() if name.endswith("/state")]
    finally:
        peek.close()
    return json.loads(got[-1]) if got else None


def test_a_forged_retained_offline_is_refused_and_b_stays_online(
    fleet: Fleet, victim: RawTerminal
) -> None:
    forged = encode(state("T-B", False, seq=1, boot="boot-forged", sent_at=datetime.now(UTC)))
    a = fleet.client(fleet.files["T-A"])
    try:
        assert a.connect()
        assert a.publish(topic("T-B", Channel.STATE), forged, retain=True) == NOT_AUTHORIZED
    finally:
        a.close()

    retained = _retained_state(fleet, "T-B")
    assert retained is not None
    assert (retained["body"]["state"], retained["boot_id"]) == ("online", victim.boot)
    assert fleet.get("/api/v1/terminals/T-B").json()["state"] == "online"
    b_reports_paper_out_and_the_api_shows_its_true_state(fleet, victim)


# --- 3. seq = 2**53 ---------------------------------------------------------------------


def test_a_seq_of_2_to_the_53_is_dropped_for_another_and_refused_as_seq_jump_from_bs_own_identity(
    fleet: Fleet, victim: RawTerminal
) -> None:
    jumps = fleet.rejected("seq_jump")
    a = fleet.client(fleet.files["T-A"])
    try:
        assert a.connect()
        huge = _forged_report(boot=victim.boot, seq=2**53)
        assert a.publish(topic("T-B", Channel.REPORT), huge) == NOT_AUTHORIZED
    finally:
        a.close()
    # B's own key and certificate, stolen: the broker lets it through, the server refuses it.
    victim.report([PRINTER_OK], seq=2**53)
    wait_until(lambda: fleet.rejected("seq_jump") == jumps + 1, 10, "the seq jump refused")

    b_reports_paper_out_and_the_api_shows_its_true_state(fleet, victim)
    view = fleet.server.fleet.get("T-B")
    assert view is not None
    assert (view.last_seq, view.seq_gaps) == (victim.seq, 0)
    hall, region = PLACES["T-B"]
    gaps = metric(fleet.server, "kioskfleet_agent_seq_gaps", hall=hall, region=region)
    assert (
        fleet.server.registry.get_sample_value(
            "kioskfleet_agent_seq_gaps", {"hall": hall, "region": region}
        )
        is not None
    )  # the series exists ...
    assert gaps == 0  # ... and is not 9e15


# --- 4. the server's client id ----------------------------------------------------------


def _received_reports(server: Server, count: float) -> Any:
    return lambda: metric(server, "kioskfleet_ingest_messages_total", channel="report") >= count


def test_a_thief_with_the_servers_client_id_and_clean_start_false_takes_no_session(
    fleet: Fleet, victim: RawTerminal
) -> None:
    server = fleet.server
    since = server.mqtt.connected_since
    received = metric(server, "kioskfleet_ingest_messages_total", channel="report")
    for client_id in (SERVER, server.settings.mqtt_client_id):
        thief = fleet.client(fleet.files["T-A"], client_id=client_id, clean_start=False)
        try:
            assert thief.connect()
            thief.subscribe(ALL_REPORTS)
            victim.report([PRINTER_OK])
            received += 1
            wait_until(_received_reports(server, received), 10, "the server to keep receiving")
            assert thief.messages() == []
        finally:
            thief.close()
    assert server.mqtt.connected
    assert server.mqtt.connected_since == since  # never kicked off, never reconnected
    assert "as T-A " in fleet.broker.log_path.read_text(errors="replace")  # named by its CN
    b_reports_paper_out_and_the_api_shows_its_true_state(fleet, victim)


# --- 5. invented ids and label flooding -------------------------------------------------

INVENTED = 5000


def _publish_all(client: Client, messages: list[tuple[str, bytes]]) -> list[int]:
    """Publish every message at QoS 1 without waiting in between; the PUBACK codes."""
    mids = [client.client.publish(name, payload, qos=1).mid for name, payload in messages]
    wait_until(lambda: all(m in client.acks for m in mids), 60, "every PUBACK")
    return [client.acks[m] for m in mids]


def _buckets(server: Server) -> int:
    """How many terminals the ingest gate keeps a message budget for (memory per id)."""
    gate = server.ingest._gate  # the ingest has no public accessor for its gate
    assert gate is not None
    return len(gate)


def _stored_terminals(server: Server) -> set[str]:
    return {v.id for v in server.storage.load_fleet()}


def test_five_thousand_invented_ids_leave_memory_and_rows_flat(
    fleet: Fleet, victim: RawTerminal
) -> None:
    server = fleet.server
    known, stored, buckets = len(server.fleet), _stored_terminals(server), _buckets(server)
    unknown = fleet.rejected("unknown_terminal")
    invented = [f"T-FAKE-{n:05d}" for n in range(INVENTED)]

    # Over one connection with a valid terminal certificate: the ACL drops every one.
    a = fleet.client(fleet.files["T-A"])
    try:
        assert a.connect()
        forged = [(topic(tid, Channel.REPORT), _forged_report()) for tid in invented]
        codes = _publish_all(a, forged)
    finally:
        a.close()
    assert set(codes) == {NOT_AUTHORIZED}
    # Straight into the ingest, through a server identity (the only one the ACL lets write
    # any terminal's state): the gate refuses each id before anything is kept.
    insider = fleet.client(fleet.pki.server_client(fleet.setup, PEEK))
    try:
        assert insider.connect()
        now = datetime.now(UTC)
        states = [(topic(tid, Channel.STATE), encode(state(tid, True, sent_at=now)))
                  for tid in invented]  # fmt: skip
        assert set(_publish_all(insider, states)) == {0}
    finally:
        insider.close()
    wait_until(lambda: fleet.rejected("unknown_terminal") == unknown + INVENTED, 30,
               "every invented id refused")  # fmt: skip

    assert len(server.fleet) == known
    assert _buckets(server) == buckets
    b_reports_paper_out_and_the_api_shows_its_true_state(fleet, victim)  # a flush happened since
    assert _stored_terminals(server) == stored
    assert fleet.get("/api/v1/terminals/T-FAKE-00000").status_code == 404
    assert fleet.get("/api/v1/terminals").json()["total"] == known


def _series(fleet: Fleet) -> list[tuple[str, dict[str, str]]]:
    text = fleet.get("/metrics").text
    return [(s.name, dict(s.labels)) for f in text_string_to_metric_families(text)
            for s in f.samples if s.name.startswith("kioskfleet_")]  # fmt: skip


def _reachable_by_flood(series: list[tuple[str, dict[str, str]]]) -> int:
    hall, _region = PLACES["T-FLOOD"]
    return sum(
        1
        for name, labels in series
        if labels.get("terminal") == "T-FLOOD"
        or labels.get("hall") == hall
        or name.startswith("kioskfleet_software_")
    )


def _crafted_reports(flooder: RawTerminal, first: int, count: int) -> None:
    """``count`` reports, each with a hall, a region, 24 fault codes (more than one kind's
    budget of 20) and 4 packages no other report has; all within the terminal's budget."""
    for n in range(first, first + count):
        flooder.publish(
            report(
                flooder.id,
                flooder.next_seq(),
                boot=flooder.boot,
                sent_at=datetime.now(UTC),
                hall=f"Hall {n:05d}",
                region=f"Region {n:05d}",
                peripherals=[
                    periph(f"p{i}", "id_card_reader", "fault", fault_code=f"E{n:05d}{i:02d}")
                    for i in range(24)
                ],
                software={f"pkg-{n:05d}-{i}": f"{n}.{i}" for i in range(4)},
            )
        )


def test_crafted_halls_regions_and_fault_codes_from_an_enrolled_terminal_keep_metrics_small(
    fleet: Fleet,
) -> None:
    server = fleet.server
    flooder = RawTerminal(fleet.broker, "T-FLOOD", tls=fleet.files["T-FLOOD"])
    try:
        rounds = []
        for first in (0, 60):  # two rounds of 60: the second finds every budget full
            _crafted_reports(flooder, first, 60)
            seq = flooder.seq
            wait_until(lambda: (v := server.fleet.get("T-FLOOD")) is not None
                       and v.last_seq == seq, 10, "the flood applied")  # noqa: B023  # fmt: skip
            rounds.append(_series(fleet))
    finally:
        flooder.close(fleet.broker)

    assert fleet.rejected("rate_limited") == 0  # every crafted report was applied
    view = server.fleet.get("T-FLOOD")
    assert view is not None
    assert (view.hall, view.region) == PLACES["T-FLOOD"]  # the registry's, not the report's
    body = fleet.get("/api/v1/terminals/T-FLOOD").json()
    assert (body["hall"], body["region"]) == PLACES["T-FLOOD"]
    crafted = re.compile(r"^(Hall|Region) \d{5}$")
    last = rounds[-1]
    assert not [labels for _name, labels in last if any(crafted.match(v) for v in labels.values())]
    codes = {labels["fault_code"] for name, labels in last
             if name == "kioskfleet_terminal_peripheral_problem"
             and labels.get("terminal") == "T-FLOOD"}  # fmt: skip
    assert len(codes) == server.settings.metrics_fault_codes_per_kind + 1  # 20 kept, "other"
    assert "other" in codes
    packages = {labels.get("package") for name, labels in last
                if name == "kioskfleet_software_terminals"}  # fmt: skip
    assert len(packages) <= server.settings.metrics_packages + 1
    # Nothing accumulates: after 60 more reports of fresh values the series the flood can
    # reach (the flooder's own, its hall's, the software families) are as many as before.
    first, second = (_reachable_by_flood(r) for r in rounds)
    assert first > 0
    assert second == first


# --- 6. the API -------------------------------------------------------------------------


def test_every_api_route_refuses_an_anonymous_caller_and_delivery_data_needs_an_operator(
    fleet: Fleet, victim: RawTerminal
) -> None:
    server = fleet.server
    checked = 0
    for route in server.app.routes:
        if not isinstance(route, Route) or route.path in OPEN_PATHS:
            continue
        if route.path.startswith("/.well-known/est/"):
            continue  # EST authenticates by its own means (test 1, test_est.py)
        if route.path.startswith(CONSOLE_PREFIX):
            continue  # sessions, not tokens: test_console.py walks every console route
        assert declared_role(route) is not None, route.path
        path = re.sub(r"\{[^}]+\}", "T-B", route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            body: dict[str, Any] | None = {} if method in ("POST", "PUT", "PATCH") else None
            answer = fleet.call(method, path, json_body=body)
            assert answer.status_code == 401, (method, path, answer.text)
            checked += 1
    assert checked >= 10  # fleet reads, decommission, /metrics, tokens (3), audit
    assert server.fleet.get("T-B") is not None  # the anonymous decommission did nothing

    operator = fleet.call("POST", "/api/v1/tokens", fleet.admin,
                          {"name": "attack-operator", "role": "operator"}).json()["secret"]  # fmt: skip
    viewer = fleet.call("POST", "/api/v1/tokens", fleet.admin,
                        {"name": "attack-viewer", "role": "viewer"}).json()["secret"]  # fmt: skip
    seen = fleet.get("/api/v1/terminals/T-B", viewer).json()
    assert seen["delivery"] is None  # no last seq, no counters
    assert fleet.call("POST", "/api/v1/terminals/T-B/decommission", viewer).status_code == 403
    delivery = fleet.get("/api/v1/terminals/T-B", operator).json()["delivery"]
    assert (delivery["boot_id"], delivery["last_seq"]) == (victim.boot, victim.seq)


def test_a_viewer_reads_no_boot_id_nor_seq_anywhere(fleet: Fleet, victim: RawTerminal) -> None:
    viewer = fleet.call("POST", "/api/v1/tokens", fleet.admin,
                        {"name": "attack-viewer-2", "role": "viewer"}).json()["secret"]  # fmt: skip
    victim.event(PAPER_OUT, "ok")
    wait_until(lambda: fleet.get("/api/v1/terminals/T-B/events").json()["items"], 10, "an event")
    victim.event(PRINTER_OK, "paper_out")
    detail = fleet.get("/api/v1/terminals/T-B", viewer)
    listed = fleet.get("/api/v1/terminals", viewer)
    events = fleet.get("/api/v1/terminals/T-B/events", viewer)
    history = fleet.get("/api/v1/terminals/T-B/history", viewer)
    exports = (
        fleet.get("/api/v1/terminals.csv", viewer),
        fleet.get("/api/v1/terminals/T-B/history.csv", viewer),
    )
    assert victim.boot in fleet.get("/api/v1/terminals/T-B").text  # the control (admin)
    assert victim.boot in fleet.get("/api/v1/terminals/T-B/events").text  # admin sees streams
    for answer in (detail, listed, events, history, *exports):
        assert answer.status_code == 200
        assert victim.boot not in answer.text
        assert "last_seq" not in answer.text
    items = events.json()["items"]
    assert items
    assert {(e["boot_id"], e["seq"]) for e in items} == {(None, None)}


# --- a stolen terminal, a stolen operator or vendor token -------------------------------


def test_a_stolen_terminal_once_revoked_is_refused_by_the_server_at_once_and_by_the_broker_after_reload(
    fleet: Fleet,
) -> None:
    server, registry = fleet.server, fleet.server.terminal_registry
    assert registry is not None
    stolen = _reporting(fleet, "T-STOLEN", fleet.files["T-STOLEN"])
    try:
        # What the thief can do meanwhile: speak for this one terminal only (tests 1-3).
        unknown = fleet.rejected("unknown_terminal")
        assert registry.revoke("T-STOLEN", actor="cli:ops") == [fleet.files["T-STOLEN"].serial]
        stolen.report([PAPER_OUT])  # the open connection survives the revocation ...
        wait_until(lambda: fleet.rejected("unknown_terminal") == unknown + 1, 10, "refused")
        view = server.fleet.get("T-STOLEN")
        assert view is not None
        assert [p.condition.value for p in view.peripherals] == ["ok"]  # ... its lie is not applied
    finally:
        stolen.close(fleet.broker)
    fleet.broker.reload()
    wait_until(lambda: not _connects(fleet, fleet.files["T-STOLEN"]), 10, "the broker refusing it")
    assert _connects(fleet, fleet.files["T-A"])  # the control: others still connect
    audit = fleet.get("/api/v1/audit", target="T-STOLEN", action="terminal.revoke").json()
    assert [(e["actor"], e["result"]) for e in audit["items"]] == [("cli:ops", "ok")]


def _reporting(fleet: Fleet, terminal_id: str, files: ClientFiles) -> RawTerminal:
    """The terminal connected with ``files``, its first report (printer ok) applied."""
    terminal = RawTerminal(fleet.broker, terminal_id, tls=files)
    terminal.report([PRINTER_OK])
    wait_until(lambda: fleet.server.fleet.get(terminal_id) is not None, 10, "its first report")
    return terminal


def _connects(fleet: Fleet, files: ClientFiles) -> bool:
    client = fleet.client(files)
    try:
        return client.connect()
    finally:
        client.close()


def test_a_stolen_operator_or_vendor_token_cannot_mint_tokens_read_the_audit_or_outlive_revocation(
    fleet: Fleet, victim: RawTerminal
) -> None:
    made: dict[str, str] = {}
    for role in ("operator", "vendor"):
        body = {"name": f"stolen-{role}", "role": role}
        if role == "vendor":
            body["vendor"] = "acme"
        made[role] = fleet.call("POST", "/api/v1/tokens", fleet.admin, body).json()["secret"]
    mint = {"name": "backdoor", "role": "admin"}
    for role, secret in made.items():
        assert fleet.call("POST", "/api/v1/tokens", secret, mint).status_code == 403
        assert fleet.get("/api/v1/audit", secret).status_code == 403
        assert fleet.get("/api/v1/tokens", secret).status_code == 403
        assert fleet.call("DELETE", f"/api/v1/tokens/stolen-{role}", secret).status_code == 403
    vendor = made["vendor"]
    for path in ("/api/v1/terminals", "/api/v1/terminals/T-B", "/api/v1/halls", "/metrics"):
        assert fleet.get(path, vendor).status_code == 403, path  # a vendor reads nothing
    assert fleet.call("POST", "/api/v1/terminals/T-B/decommission", vendor).status_code == 403
    operator = made["operator"]
    assert fleet.get("/api/v1/terminals/T-B", operator).status_code == 200
    assert fleet.call("DELETE", "/api/v1/tokens/stolen-operator", fleet.admin).status_code == 200
    assert fleet.get("/api/v1/terminals/T-B", operator).status_code == 401
    assert fleet.call("POST", "/api/v1/terminals/T-B/decommission", operator).status_code == 401
    assert server_knows(fleet, "T-B")
    denied = fleet.get("/api/v1/audit", action="token.create", result="denied").json()["items"]
    assert {e["actor"] for e in denied} >= {"token:stolen-operator", "token:stolen-vendor"}
    b_reports_paper_out_and_the_api_shows_its_true_state(fleet, victim)


def test_a_stolen_identity_speaks_as_its_terminal_until_decommissioned_and_enrolled_anew(
    fleet: Fleet, tmp_path: Path
) -> None:
    """What a stolen key and certificate can do (docs/security.md, Threat model): the thief
    *is* the terminal for the server. A report with a new boot_id and a one-day interval
    makes the real agent's stream the replaced one, so its reports are dropped as stale and
    the API shows the thief's word. The remedy is decommission (the terminal's state is
    forgotten, its certificate revoked), a new key pre-authorised and enrolled: then the
    real agent's reports, same boot_id, are applied again."""
    server = fleet.server
    real = _reporting(fleet, "T-CLONED", fleet.files["T-CLONED"])
    try:
        lie = report("T-CLONED", 1, boot="boot-thief", sent_at=datetime.now(UTC),
                     peripherals=[PRINTER_OK], interval=86400.0)  # fmt: skip
        real.publish(lie)  # the thief's message: the same credentials, so the same connection
        wait_until(lambda: _boot_of(server, "T-CLONED") == "boot-thief", 10, "the lie applied")
        duplicates = metric(server, "kioskfleet_ingest_duplicates_total")
        real.report([PAPER_OUT])
        wait_until(lambda: metric(server, "kioskfleet_ingest_duplicates_total") > duplicates, 10,
                   "the real report dropped as stale")  # fmt: skip
        view = server.fleet.get("T-CLONED")
        assert view is not None
        assert (view.report_interval_s, [p.condition.value for p in view.peripherals]) == (
            86400.0, ["ok"])  # fmt: skip
    finally:
        real.close(fleet.broker)

    ops = fleet.call("POST", "/api/v1/tokens", fleet.admin,
                     {"name": "clone-ops", "role": "operator"}).json()["secret"]  # fmt: skip
    assert fleet.call("POST", "/api/v1/terminals/T-CLONED/decommission", ops).status_code == 200
    fleet.broker.reload()  # the stolen certificate cannot connect any more (SIGHUP: soon)
    wait_until(lambda: not _connects(fleet, fleet.files["T-CLONED"]), 10, "the broker refusing it")
    renewed = _enroll(server, fleet.pki, tmp_path, "T-CLONED", with_token=False)
    again = RawTerminal(fleet.broker, "T-CLONED", tls=renewed)
    again.boot, again.seq = real.boot, real.seq  # the real agent's outbox stream goes on
    try:
        again.report([PAPER_OUT])
        wait_until(lambda: _boot_of(server, "T-CLONED") == real.boot, 10, "the real stream back")
        view = server.fleet.get("T-CLONED")
        assert view is not None
        assert (view.report_interval_s, [p.condition.value for p in view.peripherals]) == (
            10.0, ["paper_out"])  # fmt: skip
    finally:
        again.close(fleet.broker)


def _boot_of(server: Server, terminal_id: str) -> str | None:
    view = server.fleet.get(terminal_id)
    return None if view is None else view.boot_id


def server_knows(fleet: Fleet, terminal_id: str) -> bool:
    return fleet.server.fleet.get(terminal_id) is not None


# --- the audit log ----------------------------------------------------------------------


def test_the_audit_log_has_an_entry_for_each_state_change_of_this_module(fleet: Fleet) -> None:
    created = fleet.call("POST", "/api/v1/tokens", fleet.admin,
                         {"name": "attack-ops", "role": "operator"})  # fmt: skip
    assert created.status_code == 201
    ops = created.json()["secret"]
    assert fleet.call("POST", "/api/v1/terminals/T-GONE/decommission", ops).status_code == 200
    assert fleet.call("DELETE", "/api/v1/tokens/attack-ops", fleet.admin).status_code == 200
    assert fleet.call("POST", "/api/v1/terminals/T-B/decommission").status_code == 401

    def entries(**params: str) -> list[tuple[str, str, str]]:
        items = fleet.get("/api/v1/audit", limit="1000", **params).json()["items"]
        return [(e["action"], e["target"], e["result"]) for e in items]

    for tid in ("T-B", "T-A", "T-FLOOD"):
        # once, by the installer; any other entry is an anonymous attempt at the registry
        # route that the walk of every route made (denied)
        preauthorized = entries(target=tid, action="terminal.preauthorize")
        assert preauthorized.count(("terminal.preauthorize", tid, "ok")) == 1
        assert {result for _a, _t, result in preauthorized} <= {"ok", "denied"}
    assert entries(target="T-GONE", action="terminal.token") == [("terminal.token", "T-GONE", "ok")]
    for tid in PLACES:
        assert ("est.simpleenroll", tid, "ok") in entries(target=tid, action="est.simpleenroll")
    with pytest.raises(EnrollmentError):  # an intruder's CSR for A, with its own key
        EstClient(fleet.server.base_url, fleet.pki.chain_file).simpleenroll(
            build_csr(generate_key(), "T-A"), terminal_id="T-A"
        )
    enrolled_a = fleet.get("/api/v1/audit", target="T-A", action="est.simpleenroll").json()
    assert [(e["actor"], e["result"], e["detail"].get("reason")) for e in enrolled_a["items"]] == [
        ("anonymous", "denied", "key_mismatch"),
        ("terminal:T-A", "ok", None),
    ]
    assert ("token.create", "attack-ops", "ok") in entries(action="token.create")
    assert ("token.revoke", "attack-ops", "ok") in entries(action="token.revoke")
    gone = entries(target="T-GONE", action="terminal.decommission")
    assert gone
    assert {result for _a, _t, result in gone} == {"ok"}
    assert ("terminal.decommission", "T-B", "denied") in entries(
        target="T-B", action="terminal.decommission"
    )
    assert fleet.server.fleet.get("T-GONE") is None
