"""The agent's enrollment against a real server over real HTTPS: it enrolls verifying the server
against the fleet CA, renews at 2/3 of the lifetime with its current certificate, refuses a server
whose certificate another CA issued, and (as ``kioskfleet agent``) connects to a mosquitto that
requires a fleet client certificate, showing up in its registry hall."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from agent.config import EnrollmentConfig
from agent.enrollment import (
    EnrollmentError,
    Terminal,
    ensure_certificate,
    load_or_create_key,
    public_key_pem,
)
from agent.simulator import Simulation, SimulationOptions, SimulationTuning
from kioskfleet.cli import main
from kioskfleet.local_broker import LocalBroker, free_port
from server.main import Server
from server.terminal_registry import TerminalRegistry
from tests.integration.conftest import ServerFactory, metric, unique, wait_until
from tests.support.device_identity import FleetCa, make_ca

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fleet_ca(tmp_path: Path) -> FleetCa:
    return make_ca(tmp_path / "ca")


def https_server(factory: ServerFactory, ca: FleetCa, *, serving: FleetCa | None = None) -> Server:
    """A server with ``ca`` as device CA, serving HTTPS with ``serving``'s certificate."""
    tls = serving or ca
    return factory(
        ca_dir=ca.directory, https_cert_file=tls.https_cert, https_key_file=tls.https_key
    )


def registry_of(server: Server) -> TerminalRegistry:
    assert server.terminal_registry is not None
    return server.terminal_registry


def preauthorized(server: Server, tmp_path: Path, tid: str) -> Terminal:
    terminal = Terminal(
        tid, tmp_path / "agent" / "terminal.key", tmp_path / "agent" / "terminal.pem"
    )
    key = load_or_create_key(terminal.key_file)
    registry_of(server).preauthorize(
        tid, "Hall A", "North", "KX-200", public_key_pem(key).encode(), actor="test"
    )
    return terminal


Enrolling = tuple[Server, Terminal, EnrollmentConfig]


@pytest.fixture
def enrolling(start_server: ServerFactory, fleet_ca: FleetCa, tmp_path: Path) -> Enrolling:
    """A server with HTTPS from the fleet CA, one pre-authorised terminal, its EST config."""
    server = https_server(start_server, fleet_ca)
    terminal = preauthorized(server, tmp_path, unique("T"))
    return server, terminal, EnrollmentConfig(url=server.base_url, ca_file=fleet_ca.paths.chain)


def test_the_agent_enrolls_over_https_once_and_keeps_its_certificate(enrolling: Enrolling) -> None:
    server, terminal, config = enrolling
    tid = terminal.terminal_id
    cert = ensure_certificate(terminal, config)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == tid
    assert x509.load_pem_x509_certificate(terminal.cert_file.read_bytes()) == cert
    assert stat.S_IMODE(terminal.key_file.stat().st_mode) == 0o600
    assert ensure_certificate(terminal, config) == cert  # not due: nothing asked
    assert metric(server, "kioskfleet_est_enrollments_total", operation="simpleenroll") == 1


def test_the_agent_renews_after_two_thirds_of_the_lifetime_with_its_current_certificate(
    enrolling: Enrolling,
) -> None:
    server, terminal, config = enrolling
    first = ensure_certificate(terminal, config)
    lifetime = first.not_valid_after_utc - first.not_valid_before_utc
    early = first.not_valid_before_utc + lifetime * 0.6
    assert ensure_certificate(terminal, config, now=lambda: early) == first
    late = first.not_valid_before_utc + lifetime * 0.7
    renewed = ensure_certificate(terminal, config, now=lambda: late)
    assert renewed.serial_number != first.serial_number
    assert x509.load_pem_x509_certificate(terminal.cert_file.read_bytes()) == renewed
    assert metric(server, "kioskfleet_est_enrollments_total", operation="simplereenroll") == 1


def test_a_failed_renewal_keeps_the_valid_certificate(enrolling: Enrolling) -> None:
    server, terminal, config = enrolling
    tid = terminal.terminal_id
    first = ensure_certificate(terminal, config)
    registry_of(server).revoke(tid, actor="test")
    late = datetime.now(UTC) + timedelta(days=300)
    assert ensure_certificate(terminal, config, now=lambda: late) == first
    assert (
        metric(
            server, "kioskfleet_est_rejected_total", operation="simplereenroll", reason="revoked"
        )
        == 1
    )


def test_the_agent_refuses_a_server_whose_certificate_another_ca_issued(
    start_server: ServerFactory, fleet_ca: FleetCa, tmp_path: Path
) -> None:
    impostor = make_ca(tmp_path / "impostor", name="impostor")
    server = https_server(start_server, fleet_ca, serving=impostor)
    tid = unique("T")
    terminal = preauthorized(server, tmp_path, tid)
    config = EnrollmentConfig(url=server.base_url, ca_file=fleet_ca.paths.chain)
    with pytest.raises(EnrollmentError, match="CERTIFICATE_VERIFY_FAILED") as refused:
        ensure_certificate(terminal, config)
    assert refused.value.status is None
    assert not terminal.cert_file.exists()
    assert metric(server, "kioskfleet_est_enrollments_total", operation="simpleenroll") == 0


def agent_toml(
    tmp_path: Path, server: Server, ca: FleetCa, terminal: Terminal, port: int, hall: str = "h"
) -> Path:
    """An agent.toml that enrolls ``terminal`` at ``server`` and reports to mqtts ``port``."""
    config = tmp_path / "agent.toml"
    config.write_text(
        f'terminal_id = "{terminal.terminal_id}"\nhall = "{hall}"\nregion = "r"\nmodel = "m"\n'
        f'broker_url = "mqtts://127.0.0.1:{port}"\ntls_ca_file = "{ca.paths.chain}"\n'
        f'tls_cert_file = "{terminal.cert_file}"\ntls_key_file = "{terminal.key_file}"\n'
        "report_interval_s = 0.5\n"
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\ndrain_jitter_s = 0.2\n'
        f'[enrollment]\nurl = "{server.base_url}"\nca_file = "{ca.paths.chain}"\n'
    )
    return config


def agent_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "kioskfleet.cli", "agent", "--config", str(config)]


def agent_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_AGENT_")}


@pytest.fixture
def mtls_broker(tmp_path: Path, fleet_ca: FleetCa) -> Iterator[tuple[LocalBroker, int]]:
    """A mosquitto with a plain listener (the server) and a TLS listener that requires a client
    certificate of the fleet CA and takes its CN as the username."""
    port = free_port()
    extra = (
        f"listener {port} 127.0.0.1\n"
        f"cafile {fleet_ca.paths.chain}\ncertfile {fleet_ca.https_cert}\n"
        f"keyfile {fleet_ca.https_key}\nrequire_certificate true\nuse_identity_as_username true\n"
    )
    broker = LocalBroker(tmp_path / "mosquitto", extra_conf=extra).start()
    try:
        yield broker, port
    finally:
        broker.stop()


def test_kioskfleet_agent_enrolls_then_reports_over_mqtt_with_its_certificate(
    mtls_broker: tuple[LocalBroker, int], fleet_ca: FleetCa, tmp_path: Path
) -> None:
    broker, tls_port = mtls_broker
    servers = ServerFactory(broker, f"sqlite:///{tmp_path}/kf.db")
    try:
        server = https_server(servers, fleet_ca)
        tid = unique("T")
        terminal = preauthorized(server, tmp_path, tid)
        config = agent_toml(tmp_path, server, fleet_ca, terminal, tls_port, hall="Claimed Hall")
        agent = subprocess.Popen(agent_command(config), cwd=REPO, env=agent_env())
        try:
            wait_until(
                lambda: (view := server.fleet.get(tid)) is not None and view.online,
                20,
                "the enrolled agent's report",
            )
            view = server.fleet.get(tid)
            assert view is not None
            assert (view.hall, view.region, view.model) == ("Hall A", "North", "KX-200")
            assert terminal.cert_file.exists()
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(20)
    finally:
        servers.stop_all()


def test_the_simulator_enrolls_its_preauthorized_terminals_through_the_agents_est_code(
    mtls_broker: tuple[LocalBroker, int],
    fleet_ca: FleetCa,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker, tls_port = mtls_broker
    database = f"sqlite:///{tmp_path}/kf.db"
    servers = ServerFactory(broker, database)
    try:
        server = https_server(servers, fleet_ca)
        identities = tmp_path / "identities"
        opts = SimulationOptions(
            terminals=12,
            halls=3,
            broker_url=f"mqtts://127.0.0.1:{tls_port}",
            report_interval_s=1.0,
            id_prefix=unique("SIM"),
            enroll_url=server.base_url,
            ca_file=fleet_ca.paths.chain,
            identity_dir=identities,
        )
        assert main(["simulate", "--terminals", "12", "--halls", "3", "--id-prefix",
                     opts.id_prefix, "--identity-dir", str(identities), "--keys-only"]) == 0  # fmt: skip
        monkeypatch.setenv("KIOSKFLEET_DATABASE_URL", database)
        monkeypatch.setenv("KIOSKFLEET_CA_DIR", str(fleet_ca.directory))
        csv = identities / "preauthorize.csv"
        assert main(["terminal", "preauthorize", "--from-file", str(csv)]) == 0
        registry_of(server).refresh()  # as the periodic refresh would
        sim = Simulation(opts, tuning=SimulationTuning(shutdown_timeout_s=5))
        sim.start()
        try:
            assert sim.wait_connected(30), sim.counters()
            wait_until(
                lambda: all(server.fleet.get(t) is not None for t in sim.terminal_ids),
                30,
                "a report of every simulated terminal",
            )
        finally:
            sim.stop()
            sim.close()
        assert all(registry_of(server).is_active(t) for t in sim.terminal_ids)
        assert metric(server, "kioskfleet_est_enrollments_total", operation="simpleenroll") == 12
    finally:
        servers.stop_all()


def test_kioskfleet_agent_that_may_not_enroll_exits_1_with_the_servers_reason(
    start_server: ServerFactory, fleet_ca: FleetCa, tmp_path: Path
) -> None:
    server = https_server(start_server, fleet_ca)
    terminal = Terminal(unique("T"), tmp_path / "t.key", tmp_path / "t.pem")  # not registered
    config = agent_toml(tmp_path, server, fleet_ca, terminal, free_port())
    result = subprocess.run(
        agent_command(config),
        cwd=REPO,
        env=agent_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot enroll" in result.stderr
    assert "not_authorized" in result.stderr
    assert not (tmp_path / "t.pem").exists()
