"""The broker configuration kioskfleet generates, against a real mosquitto and real paho
clients: only a certificate from the fleet CA connects, a terminal speaks only for itself,
nobody takes the server's session, and a revocation reaches the running broker by reload.

Every claim of docs/security.md, "Broker identity and ACLs", names a test here.
"""

from __future__ import annotations

import grp
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from kioskfleet.broker_setup import BrokerSetup
from kioskfleet.local_broker import LocalBroker, free_port
from protocol.codec import encode
from protocol.topics import SHARE_GROUP, TOPIC_PREFIX, Channel, topic
from server.main import Server
from tests.integration.conftest import ServerFactory, TerminalFactory, api, periph, unique
from tests.support.fleet_messages import report, state
from tests.support.pki import ClientFiles, TestPki
from tests.support.tls_client import NOT_AUTHORIZED, Client
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SERVER = "kioskfleet:server"
REPLICA_B = "kioskfleet:server:b"
ALL_REPORTS = f"{TOPIC_PREFIX}/+/{Channel.REPORT.value}"  # what the server subscribes to
PROTOCOLS = pytest.mark.parametrize(
    "protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"]
)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return TestPki(tmp_path / "pki")


@pytest.fixture
def identity_broker(pki: TestPki, tmp_path: Path) -> Iterator[tuple[LocalBroker, BrokerSetup]]:
    """mosquitto with the generated TLS listener, CRL and ACL (two server identities)."""
    port = free_port()
    setup = pki.broker_setup(port, (SERVER, REPLICA_B))
    broker = LocalBroker(tmp_path / "mosquitto", port=port, identity=setup.identity).start()
    try:
        yield broker, setup
    finally:
        broker.stop()


@pytest.fixture
def broker(identity_broker: tuple[LocalBroker, BrokerSetup]) -> LocalBroker:
    """The identity broker, for this module's conftest fixtures too (start_server, terminals)."""
    return identity_broker[0]


@pytest.fixture
def setup(identity_broker: tuple[LocalBroker, BrokerSetup]) -> BrokerSetup:
    return identity_broker[1]


def identified_server(
    factory: ServerFactory, setup: BrokerSetup, identity: str = SERVER, **overrides: Any
) -> Server:
    """The real server, connected with the MQTT client certificate of ``identity``."""
    cert, key = setup.server_credentials[identity]
    return factory(
        broker_ca_file=setup.identity.ca_file,
        broker_cert_file=cert,
        broker_key_file=key,
        **overrides,
    )


# --- a raw client that records what the broker answered -------------------------------------


@pytest.fixture
def clients(setup: BrokerSetup, broker: LocalBroker) -> Iterator[Any]:
    made: list[Client] = []

    def make(files: ClientFiles | None, **kwargs: Any) -> Client:
        client = Client(broker, files, ca_file=setup.identity.ca_file, **kwargs)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for c in made:
            c.close()


def connects(make: Any, files: ClientFiles | None, **kwargs: Any) -> bool:
    client: Client = make(files, **kwargs)
    return client.connect()


# --- the CLI --------------------------------------------------------------------------------


def test_broker_config_cli_output_runs_mosquitto_that_passes_a_terminals_report_to_the_server(
    pki: TestPki, tmp_path: Path
) -> None:
    out, port = tmp_path / "generated", free_port()
    done = subprocess.run(
        [sys.executable, "-m", "kioskfleet.cli", "broker-config", "--out", str(out),
         "--ca-dir", str(pki.ca_dir), "--port", str(port), "--san", "localhost",
         "--server-identity", "kioskfleet:server:a", "--server-identity", REPLICA_B],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    conf = (out / "mosquitto.conf").read_text()
    for line in ("require_certificate true", "use_identity_as_username true",
                 "use_username_as_clientid true", "allow_anonymous false",
                 f"crlfile {pki.ca_dir.absolute() / 'crl.pem'}", f"acl_file {out / 'acl'}",
                 f"listener {port} 127.0.0.1"):  # fmt: skip
        assert line in conf.splitlines(), line
    assert "user kioskfleet:server:a" in (out / "acl").read_text()
    key_mode = (out / "broker.key").stat()
    assert key_mode.st_mode & 0o077 in (0, 0o040)  # never world-readable
    if os.geteuid() == 0 and _group_exists("mosquitto"):
        assert key_mode.st_gid == grp.getgrnam("mosquitto").gr_gid  # the broker's user reads it
    assert (out / "server-kioskfleet_server_a.key").stat().st_mode & 0o077 == 0
    # Run mosquitto with exactly that file, plus where a test keeps its database and log.
    run = tmp_path / "run"
    run.mkdir()
    (run / "mosquitto.conf").write_text(
        conf + f"persistence_location {run}/\n" + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(run / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        broker = LocalBroker(run, port=port)  # only for its port: the process is ours
        server_files = ClientFiles(
            "kioskfleet:server:a",
            out / "server-kioskfleet_server_a.pem",
            out / "server-kioskfleet_server_a.key",
            out / "chain.pem",
            0,
        )
        listener = Client(broker, server_files, ca_file=out / "chain.pem")
        wait_until(listener.connect, 10, "the generated broker to accept the server")
        assert listener.subscribe(ALL_REPORTS) == [1]
        terminal = Client(broker, pki.terminal("T-CLI"), ca_file=out / "chain.pem")
        assert terminal.connect()
        assert terminal.publish(topic("T-CLI", Channel.REPORT), b"{}") == 0
        wait_until(lambda: listener.messages() == [(topic("T-CLI", Channel.REPORT), b"{}")], 5)
        terminal.close()
        listener.close()
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stderr:
            proc.stderr.close()


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


# --- the server and terminals with their own certificates -----------------------------------


def test_a_terminals_report_reaches_the_server_over_the_identity_listener_and_shows_in_the_api(
    pki: TestPki, setup: BrokerSetup, start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = identified_server(start_server, setup, broker_url=start_server.broker.url)
    assert server.settings.broker.tls
    t = terminals("T-ENR1", tls=pki.terminal("T-ENR1"))
    t.report([periph("printer", "receipt_printer", "ok")])
    wait_until(lambda: api(server, "/api/v1/terminals/T-ENR1").status_code == 200, 10)
    body = api(server, "/api/v1/terminals/T-ENR1").json()
    assert body["delivery"]["boot_id"] == t.boot
    assert [p["name"] for p in body["peripherals"]] == ["printer"]


@PROTOCOLS
def test_a_terminal_cannot_publish_for_another_or_read_its_commands(
    protocol: MQTTProtocolVersion,
    pki: TestPki,
    setup: BrokerSetup,
    start_server: ServerFactory,
    terminals: TerminalFactory,
    clients: Any,
) -> None:
    server = identified_server(start_server, setup)
    b = terminals("T-B", tls=pki.terminal("T-B"))
    b.online()
    b.report([periph("printer", "receipt_printer", "ok")], interval=10.0)
    wait_until(lambda: api(server, "/api/v1/terminals/T-B").status_code == 200, 10)
    before = api(server, "/api/v1/terminals/T-B").json()

    a: Client = clients(pki.terminal("T-A"), protocol=protocol)
    assert a.connect()
    forged_report = report("T-B", 1, boot="boot-forged", sent_at=datetime.now(UTC),
                           peripherals=[periph("printer", "receipt_printer", "paper_out")],
                           interval=86400.0)  # fmt: skip
    forged_offline = state("T-B", False, seq=1, boot="boot-forged", sent_at=datetime.now(UTC))
    codes = [
        a.publish(topic("T-B", Channel.REPORT), encode(forged_report)),
        a.publish(topic("T-B", Channel.STATE), encode(forged_offline), retain=True),
    ]
    # MQTT 5 says so (PUBACK "Not authorized"); 3.1.1 has no way to: a normal PUBACK, dropped.
    assert codes == ([NOT_AUTHORIZED] * 2 if protocol == mqtt.MQTTv5 else [0, 0])
    a.subscribe(topic("T-B", Channel.CMD))
    b.client.subscribe(topic("T-B", Channel.CMD), qos=1)
    own_cmd: list[bytes] = []
    b.client.on_message = lambda _c, _u, msg: own_cmd.append(bytes(msg.payload))
    commander: Client = clients(pki.server_client(setup, REPLICA_B))
    assert commander.connect()
    wait_until(lambda: commander.publish(topic("T-B", Channel.CMD), b"ping") == 0 and own_cmd, 5,
               "B to receive its own cmd")  # fmt: skip

    b.report([periph("printer", "receipt_printer", "ok")], interval=10.0)  # B's next, real report
    wait_until(lambda: api(server, "/api/v1/terminals/T-B").json()["last_seen"]
               > before["last_seen"], 10)  # fmt: skip
    after = api(server, "/api/v1/terminals/T-B").json()
    assert (after["state"], after["delivery"]["boot_id"], after["report_interval_s"]) == (
        "online", b.boot, 10.0)  # fmt: skip
    assert [p["condition"] for p in after["peripherals"]] == ["ok"]
    assert a.messages() == []  # nothing of B's cmd reached A


def test_a_subscription_to_the_servers_topics_by_a_terminal_receives_nothing(
    pki: TestPki, setup: BrokerSetup, clients: Any
) -> None:
    spy: Client = clients(pki.terminal("T-SPY"))
    assert spy.connect()
    granted = spy.subscribe(ALL_REPORTS) + spy.subscribe(f"{TOPIC_PREFIX}/#")
    other: Client = clients(pki.terminal("T-OTHER"))
    assert other.connect()
    server: Client = clients(pki.server_client(setup))
    assert server.connect()
    server.subscribe(ALL_REPORTS)
    assert other.publish(topic("T-OTHER", Channel.REPORT), b"r1") == 0
    wait_until(lambda: server.messages() == [(topic("T-OTHER", Channel.REPORT), b"r1")], 5)
    assert spy.messages() == []
    # mosquitto 2.0 grants the subscription and filters each message by the read ACL.
    assert granted == [1, 1]


def test_a_terminal_in_the_servers_share_group_drops_messages_so_mosquitto_runs_unshared(
    pki: TestPki, setup: BrokerSetup, clients: Any
) -> None:
    """mosquitto 2.0 grants any subscription and filters at delivery: a terminal that joins
    ``$share/kioskfleet/...`` takes its turn in the round robin and its turn is then dropped.
    The server's default on mosquitto, unshared subscriptions, loses nothing to it."""
    shared = f"$share/{SHARE_GROUP}/{ALL_REPORTS}"
    unshared_server: Client = clients(pki.server_client(setup, REPLICA_B))
    assert unshared_server.connect()
    unshared_server.subscribe(ALL_REPORTS)
    shared_server: Client = clients(pki.server_client(setup))
    assert shared_server.connect()
    shared_server.subscribe(shared)
    intruder: Client = clients(pki.terminal("T-INTRUDER"))
    assert intruder.connect()
    assert intruder.subscribe(shared) == [1]
    sender: Client = clients(pki.terminal("T-SEND"))
    assert sender.connect()
    for n in range(10):
        assert sender.publish(topic("T-SEND", Channel.REPORT), str(n).encode()) == 0
    wait_until(lambda: len(unshared_server.messages()) == 10, 5, "all ten, unshared")
    assert intruder.messages() == []
    intruder.close()  # now the server is alone in the group: it gets the marker, after the rest
    assert sender.publish(topic("T-SEND", Channel.REPORT), b"end") == 0
    wait_until(lambda: (topic("T-SEND", Channel.REPORT), b"end") in shared_server.messages(), 5)
    assert len(shared_server.messages()) - 1 < 10  # the intruder's turns were lost


@PROTOCOLS
def test_a_terminal_using_the_servers_client_id_does_not_take_over_its_session(
    protocol: MQTTProtocolVersion,
    pki: TestPki,
    setup: BrokerSetup,
    start_server: ServerFactory,
    terminals: TerminalFactory,
    clients: Any,
) -> None:
    server = identified_server(start_server, setup, mqtt_session_expiry_s=600)
    since = server.mqtt.connected_since
    for client_id in (SERVER, server.settings.mqtt_client_id):
        thief: Client = clients(pki.terminal("T-THIEF"), protocol=protocol, client_id=client_id,
                                clean_start=False)  # fmt: skip
        assert thief.connect()
        thief.subscribe(ALL_REPORTS)
        victim = unique("T-VICTIM")
        t = terminals(victim, tls=pki.terminal(victim))
        t.report()
        wait_until(lambda: api(server, f"/api/v1/terminals/{victim}").status_code == 200, 10)  # noqa: B023 - called at once, in this iteration
        assert thief.messages() == []
        thief.close()
    assert server.mqtt.connected
    assert server.mqtt.connected_since == since
    assert "as T-THIEF " in broker_log(start_server.broker)  # the broker used the CN as client id


def test_the_server_identity_may_clear_a_decommissioned_terminals_retained_state(
    pki: TestPki, setup: BrokerSetup, start_server: ServerFactory, terminals: TerminalFactory,
    clients: Any,
) -> None:  # fmt: skip
    server = identified_server(start_server, setup)
    t = terminals("T-GONE", tls=pki.terminal("T-GONE"))
    t.online()
    wait_until(lambda: api(server, "/api/v1/terminals/T-GONE").status_code == 200, 10)
    t.client.disconnect()
    t.client.loop_stop()
    t.retained_topics.clear()  # the server clears it, or this test fails
    state_topic = topic("T-GONE", Channel.STATE)
    before: Client = clients(pki.server_client(setup, REPLICA_B), client_id="before")
    assert before.connect()
    before.subscribe(state_topic)
    wait_until(lambda: before.messages(), 5, "the retained state (the control)")
    before.close()

    assert server.decommission("T-GONE") is not None
    after: Client = clients(pki.server_client(setup, REPLICA_B), client_id="after")
    assert after.connect()
    after.subscribe(state_topic)
    after.subscribe(ALL_REPORTS)
    t2 = terminals("T-LATER", tls=pki.terminal("T-LATER"))
    t2.report()  # delivered after any retained message of the earlier subscription
    wait_until(lambda: any(name == topic("T-LATER", Channel.REPORT)
                           for name, _ in after.messages()), 5)  # fmt: skip
    assert [name for name, _ in after.messages()] == [topic("T-LATER", Channel.REPORT)]


# --- who cannot connect ---------------------------------------------------------------------


@PROTOCOLS
@pytest.mark.parametrize("case", ["no certificate", "self-signed", "another CA", "expired"])
def test_only_a_valid_certificate_of_the_fleet_ca_connects(
    case: str, protocol: MQTTProtocolVersion, pki: TestPki, clients: Any
) -> None:
    files = {
        "no certificate": None,
        "self-signed": pki.self_signed_terminal("T-X"),
        "another CA": pki.foreign_terminal("T-X"),
        "expired": pki.expired_terminal("T-X"),
    }[case]
    # The broker ends the TLS handshake (mosquitto logs "peer did not return a certificate" or
    # "certificate verify failed", not always): no CONNACK, the connection closed.
    assert not connects(clients, files, protocol=protocol)
    assert connects(clients, pki.terminal("T-X"), protocol=protocol)  # the control


def test_a_revoked_certificate_cannot_connect_once_the_broker_reloaded_the_crl(
    pki: TestPki, broker: LocalBroker, setup: BrokerSetup, clients: Any
) -> None:
    # One certificate per connection: a second connection with the same CN (= client id)
    # would close the first.
    revoked, revoked_open = pki.terminal("T-REV"), pki.terminal("T-REV-OPEN")
    valid = pki.terminal("T-OK")
    listener: Client = clients(pki.server_client(setup))
    assert listener.connect()
    listener.subscribe(ALL_REPORTS)
    still_open: Client = clients(revoked_open)
    assert still_open.connect()
    staying: Client = clients(valid)
    assert staying.connect()

    pki.revoke(revoked)
    pki.revoke(revoked_open)
    assert connects(clients, revoked)  # the CRL file changed, the running broker has not read it
    broker.reload()
    wait_until(lambda: not connects(clients, revoked), 10, "the reloaded broker to refuse it")
    assert connects(clients, pki.terminal("T-NEW"))

    # What mosquitto 2.0 does (docs/security.md): open connections survive the reload,
    # the revoked one's included, and its messages still pass the broker. The server
    # refuses them by terminal id; the broker cannot.
    assert listener.connected.is_set()
    assert staying.publish(topic("T-OK", Channel.REPORT), b"ok") == 0
    assert still_open.publish(topic("T-REV-OPEN", Channel.REPORT), b"after revocation") == 0
    wait_until(lambda: (topic("T-REV-OPEN", Channel.REPORT), b"after revocation")
               in listener.messages(), 5)  # fmt: skip
    assert not still_open.disconnected.is_set()


# --- the server's identities ----------------------------------------------------------------


def test_server_replicas_need_identities_of_their_own_and_the_broker_names_them_by_cn(
    pki: TestPki, setup: BrokerSetup, start_server: ServerFactory, terminals: TerminalFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    a = identified_server(start_server, setup, SERVER, mqtt_client_id="replica-a")
    b = identified_server(start_server, setup, REPLICA_B, mqtt_client_id="replica-b",
                          database_url=f"sqlite:///{tmp_path}/b.db")  # fmt: skip
    t = terminals("T-REP", tls=pki.terminal("T-REP"))
    t.report()
    for server in (a, b):
        wait_until(lambda: api(server, "/api/v1/terminals/T-REP").status_code == 200, 10)  # noqa: B023 - called at once
        assert server.mqtt.connected
    log = broker_log(start_server.broker)
    # use_username_as_clientid: the broker ignores the client id the server asked for.
    assert f"as {SERVER} " in log
    assert f"as {REPLICA_B} " in log
    assert "as replica-a " not in log


def test_two_connections_with_one_certificate_take_turns_so_replicas_must_not_share_one(
    pki: TestPki, setup: BrokerSetup, clients: Any
) -> None:
    first: Client = clients(pki.server_client(setup), client_id="one")
    assert first.connect()
    second: Client = clients(pki.server_client(setup), client_id="two")
    assert second.connect()
    wait_until(first.disconnected.is_set, 5, "the broker to drop the first connection")
    assert not second.disconnected.is_set()


def broker_log(broker: LocalBroker) -> str:
    return broker.log_path.read_text(errors="replace")
