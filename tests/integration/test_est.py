"""EST (RFC 7030) against a real server over real HTTPS: off-the-shelf clients (openssl + curl)
enroll, renewal is authenticated by the TLS client certificate (the ASGI TLS extension), refusals
are counted and audited, and with enrollment on the ingest admits only active terminals and
shows the registry's hall, region and model."""

from __future__ import annotations

import base64
import shutil
import ssl
import subprocess
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from agent.enrollment import EnrollmentError, EstClient, build_csr
from server.access_store import AuditFilter
from server.audit import AuditEntry, AuditResult, MemoryAudit
from server.device_ca import generate_key, write_pem, write_private_key
from server.main import Server
from server.terminal_registry import TerminalRegistry
from tests.integration.conftest import (
    ServerFactory,
    TerminalFactory,
    admin_token,
    bearer,
    metric,
    unique,
    wait_until,
)
from tests.support.device_identity import FleetCa, make_ca, public_pem

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet_ca(tmp_path: Path) -> FleetCa:
    return make_ca(tmp_path / "ca")


@pytest.fixture
def est_server(start_server: ServerFactory, fleet_ca: FleetCa) -> Server:
    return start_server(
        ca_dir=fleet_ca.directory,
        https_cert_file=fleet_ca.https_cert,
        https_key_file=fleet_ca.https_key,
    )


def registry_of(server: Server) -> TerminalRegistry:
    assert server.terminal_registry is not None
    return server.terminal_registry


def audit_of(server: Server) -> list[AuditEntry]:
    """The server's audit log as stored in its database, oldest first."""
    return list(reversed(server.access_store.audit(AuditFilter(), limit=1000).items))


def trusting(chain: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(chain))


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True, timeout=60)


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_cacerts_answers_the_fleet_chain_as_base64_pkcs7(
    est_server: Server, fleet_ca: FleetCa
) -> None:
    answer = httpx.get(
        est_server.base_url + "/.well-known/est/cacerts", verify=trusting(fleet_ca.paths.chain)
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/pkcs7-mime")
    certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(answer.content))
    assert set(certs) == set(fleet_ca.ca.chain)  # a PKCS#7 SET: DER sorts its members


def _curl_enroll(
    est_server: Server, fleet_ca: FleetCa, work: Path, terminal_id: str, *curl_args: str
) -> tuple[str, Path]:
    """``openssl req`` makes the CSR, ``curl`` posts it; returns (HTTP code, answer file)."""
    run("openssl", "req", "-new", "-key", "terminal.key", "-subj", f"/CN={terminal_id}",
        "-outform", "DER", "-out", "csr.der", cwd=work)  # fmt: skip
    (work / "csr.b64").write_bytes(base64.encodebytes((work / "csr.der").read_bytes()))
    code = run(
        "curl", "-sS", "--cacert", str(fleet_ca.paths.chain), "-o", "answer.b64",
        "-w", "%{http_code}", "-H", "Content-Type: application/pkcs10",
        "--data-binary", "@csr.b64", *curl_args,
        est_server.base_url + "/.well-known/est/simpleenroll", cwd=work,
    ).stdout  # fmt: skip
    return code, work / "answer.b64"


def _openssl_reads(work: Path, answer: Path) -> str:
    (work / "answer.der").write_bytes(base64.b64decode(answer.read_bytes()))
    return run(
        "openssl", "pkcs7", "-inform", "DER", "-in", "answer.der", "-print_certs", cwd=work
    ).stdout


def _openssl_terminal(tmp_path: Path) -> Path:
    """A folder with ``terminal.key``, an EC P-256 key ``openssl genpkey`` made."""
    need("openssl")
    need("curl")
    work = tmp_path / "terminal"
    work.mkdir()
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-out", "terminal.key", cwd=work)  # fmt: skip
    return work


def test_openssl_and_curl_enroll_a_preauthorized_key(
    est_server: Server, fleet_ca: FleetCa, tmp_path: Path
) -> None:
    work = _openssl_terminal(tmp_path)
    run("openssl", "pkey", "-in", "terminal.key", "-pubout", "-out", "terminal.pub", cwd=work)
    tid = unique("T")
    registry_of(est_server).preauthorize(
        tid, "Hall A", "North", "KX-200", (work / "terminal.pub").read_bytes(), actor="test"
    )
    code, answer = _curl_enroll(est_server, fleet_ca, work, tid)
    assert code == "200"
    printed = _openssl_reads(work, answer)
    assert f"CN = {tid}" in printed or f"CN={tid}" in printed
    assert registry_of(est_server).is_active(tid)
    assert metric(est_server, "kioskfleet_est_enrollments_total", operation="simpleenroll") == 1
    entry = audit_of(est_server)[-1]
    assert (entry.action, entry.result, entry.target, entry.source) == (
        "est.simpleenroll",
        AuditResult.OK,
        tid,
        "127.0.0.1",
    )


def test_curl_with_a_token_enrolls_once_then_gets_401(
    est_server: Server, fleet_ca: FleetCa, tmp_path: Path
) -> None:
    work = _openssl_terminal(tmp_path)
    tid = unique("T")
    token = registry_of(est_server).issue_token(
        tid, "Hall A", "North", "KX-200", timedelta(hours=1), actor="test"
    )
    code, answer = _curl_enroll(est_server, fleet_ca, work, tid, "--user", f"{tid}:{token}")
    assert code == "200"
    assert tid in _openssl_reads(work, answer)
    code, _ = _curl_enroll(est_server, fleet_ca, work, tid, "--user", f"{tid}:{token}")
    assert code == "401"
    assert (
        metric(
            est_server,
            "kioskfleet_est_rejected_total",
            operation="simpleenroll",
            reason="token_used",
        )
        == 1
    )


def _enrolled(server: Server, fleet_ca: FleetCa, work: Path, tid: str) -> EstClient:
    """Pre-authorise ``tid``, enroll it with the agent's client; key and cert in ``work``."""
    key = generate_key()
    write_private_key(work / "terminal.key", key)
    registry_of(server).preauthorize(tid, "Hall A", "North", "KX-200", public_pem(key), actor="t")
    client = EstClient(server.base_url, fleet_ca.paths.chain)
    cert = client.simpleenroll(build_csr(key, tid), terminal_id=tid)
    write_pem(work / "terminal.pem", cert)
    return client


def test_reenroll_with_the_current_certificate_works_and_with_a_revoked_one_fails(
    est_server: Server, fleet_ca: FleetCa, tmp_path: Path
) -> None:
    tid = unique("T")
    client = _enrolled(est_server, fleet_ca, tmp_path, tid)
    new_key = generate_key()
    renewed = client.simplereenroll(
        build_csr(new_key, tid),
        cert_file=tmp_path / "terminal.pem",
        key_file=tmp_path / "terminal.key",
    )
    assert cn(renewed) == tid
    assert renewed.public_key() == new_key.public_key()
    registry_of(est_server).revoke(tid, actor="test")
    with pytest.raises(EnrollmentError) as refused:
        client.simplereenroll(
            build_csr(new_key, tid),
            cert_file=tmp_path / "terminal.pem",
            key_file=tmp_path / "terminal.key",
        )
    assert (refused.value.status, refused.value.reason) == (403, "revoked")
    actions = [(e.action, e.result) for e in audit_of(est_server)]
    assert actions[-3:] == [
        ("est.simplereenroll", AuditResult.OK),
        ("terminal.revoke", AuditResult.OK),
        ("est.simplereenroll", AuditResult.DENIED),
    ]


def test_reenroll_for_another_terminal_with_ones_own_certificate_fails(
    est_server: Server, fleet_ca: FleetCa, tmp_path: Path
) -> None:
    tid, other = unique("T"), unique("T")
    client = _enrolled(est_server, fleet_ca, tmp_path, tid)
    with pytest.raises(EnrollmentError) as refused:
        client.simplereenroll(
            build_csr(generate_key(), other),
            cert_file=tmp_path / "terminal.pem",
            key_file=tmp_path / "terminal.key",
        )
    assert (refused.value.status, refused.value.reason) == (403, "cn_mismatch")
    assert not registry_of(est_server).is_active(other)


def test_reenroll_without_a_client_certificate_is_401(
    est_server: Server, fleet_ca: FleetCa
) -> None:
    csr = build_csr(generate_key(), "T-1")
    answer = httpx.post(
        est_server.base_url + "/.well-known/est/simplereenroll",
        content=base64.encodebytes(csr),
        headers={"Content-Type": "application/pkcs10"},
        verify=trusting(fleet_ca.paths.chain),
    )
    assert answer.status_code == 401
    assert answer.json()["error"] == "no_client_certificate"


def test_a_client_certificate_of_another_ca_fails_the_tls_handshake(
    est_server: Server, fleet_ca: FleetCa, tmp_path: Path
) -> None:
    other = make_ca(tmp_path / "other", name="other")
    key = generate_key()
    foreign = other.ca.issue_terminal(x509.load_der_x509_csr(build_csr(key, "T-1")), "T-1", days=1)
    write_pem(tmp_path / "foreign.pem", foreign)
    write_private_key(tmp_path / "foreign.key", key)
    client = EstClient(est_server.base_url, fleet_ca.paths.chain)
    with pytest.raises(EnrollmentError) as refused:
        client.simplereenroll(
            build_csr(key, "T-1"),
            cert_file=tmp_path / "foreign.pem",
            key_file=tmp_path / "foreign.key",
        )
    assert refused.value.status is None  # no HTTP answer: the handshake itself failed


def test_a_body_that_is_no_csr_is_400_and_counted(est_server: Server, fleet_ca: FleetCa) -> None:
    answer = httpx.post(
        est_server.base_url + "/.well-known/est/simpleenroll",
        content=b"not base64 at all!",
        verify=trusting(fleet_ca.paths.chain),
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == "bad_csr"
    entry = audit_of(est_server)[-1]
    assert (entry.actor, entry.action, entry.result, entry.detail["reason"]) == (
        "anonymous",
        "est.simpleenroll",
        AuditResult.FAILED,
        "bad_csr",
    )
    assert (
        metric(
            est_server, "kioskfleet_est_rejected_total", operation="simpleenroll", reason="bad_csr"
        )
        == 1
    )


def test_a_malformed_basic_header_is_401_counted_and_audited(
    est_server: Server, fleet_ca: FleetCa
) -> None:
    answer = httpx.post(
        est_server.base_url + "/.well-known/est/simpleenroll",
        content=base64.encodebytes(build_csr(generate_key(), unique("T"))),
        headers={"Authorization": "Bearer something"},
        verify=trusting(fleet_ca.paths.chain),
    )
    assert answer.status_code == 401
    assert answer.json()["error"] == "bad_token"
    assert (
        metric(
            est_server,
            "kioskfleet_est_rejected_total",
            operation="simpleenroll",
            reason="bad_token",
        )
        == 1
    )
    assert audit_of(est_server)[-1].result is AuditResult.DENIED


def test_an_unknown_id_is_401_with_a_basic_challenge(est_server: Server, fleet_ca: FleetCa) -> None:
    answer = httpx.post(
        est_server.base_url + "/.well-known/est/simpleenroll",
        content=base64.encodebytes(build_csr(generate_key(), unique("T"))),
        verify=trusting(fleet_ca.paths.chain),
    )
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic")
    assert audit_of(est_server)[-1].result is AuditResult.DENIED


def test_the_server_is_https_only_to_clients_trusting_the_fleet_ca(
    est_server: Server, tmp_path: Path
) -> None:
    other = make_ca(tmp_path / "other", name="other")
    with pytest.raises(httpx.ConnectError):
        httpx.get(est_server.base_url + "/healthz", verify=trusting(other.paths.chain))


def test_with_enrollment_on_only_active_terminals_are_admitted_at_their_registry_hall(
    est_server: Server, fleet_ca: FleetCa, terminals: TerminalFactory, tmp_path: Path
) -> None:
    tid = unique("T")
    _enrolled(est_server, fleet_ca, tmp_path, tid)  # registered in Hall A / North / KX-200
    liar = terminals(tid, hall="Hall Elsewhere", region="South")
    liar.report()
    stranger = terminals(unique("T"))
    stranger.report()

    def terminal_view() -> dict[str, object] | None:
        answer = httpx.get(
            f"{est_server.base_url}/api/v1/terminals/{tid}",
            headers=bearer(admin_token(est_server)),
            verify=trusting(fleet_ca.paths.chain),
        )
        return answer.json() if answer.status_code == 200 else None

    wait_until(lambda: terminal_view() is not None, 10, "the enrolled terminal's report")
    view = terminal_view()
    assert view is not None
    assert (view["hall"], view["region"], view["model"]) == ("Hall A", "North", "KX-200")
    wait_until(
        lambda: (
            metric(est_server, "kioskfleet_ingest_rejected_total", reason="unknown_terminal") >= 1
        ),
        10,
        "the stranger's report to be refused",
    )
    assert est_server.fleet.get(stranger.id) is None
    registry_of(est_server).revoke(tid, actor="test")
    before = metric(est_server, "kioskfleet_ingest_rejected_total", reason="unknown_terminal")
    liar.report()
    wait_until(
        lambda: (
            metric(est_server, "kioskfleet_ingest_rejected_total", reason="unknown_terminal")
            > before
        ),
        10,
        "the revoked terminal's report to be refused",
    )


def test_decommission_marks_the_registry_and_revokes_the_certificate(
    est_server: Server, fleet_ca: FleetCa, tmp_path: Path
) -> None:
    tid = unique("T")
    _enrolled(est_server, fleet_ca, tmp_path, tid)
    cert = x509.load_pem_x509_certificate((tmp_path / "terminal.pem").read_bytes())
    est_server.decommission(tid, actor="token:ops")
    row = registry_of(est_server).get(tid)
    assert row is not None
    assert row.status.value == "decommissioned"
    assert not registry_of(est_server).is_active(tid)
    crl = x509.load_pem_x509_crl(fleet_ca.paths.crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    entry = audit_of(est_server)[-1]
    assert (entry.actor, entry.action, entry.target) == ("token:ops", "terminal.decommission", tid)


def test_a_revocation_made_by_another_process_reaches_the_running_server(
    start_server: ServerFactory, fleet_ca: FleetCa, tmp_path: Path
) -> None:
    server = start_server(
        ca_dir=fleet_ca.directory,
        https_cert_file=fleet_ca.https_cert,
        https_key_file=fleet_ca.https_key,
        registry_refresh_interval_s=0.2,
    )
    tid = unique("T")
    _enrolled(server, fleet_ca, tmp_path, tid)
    assert registry_of(server).is_active(tid)
    other = TerminalRegistry(lambda: server.storage.engine, fleet_ca.directory, MemoryAudit())
    other.open()  # as `kioskfleet terminal revoke` does, in its own process
    other.revoke(tid, actor="cli:ops")
    wait_until(lambda: not registry_of(server).is_active(tid), 10, "the refresh")
    assert not registry_of(server).is_active(tid)
    row = registry_of(server).get(tid)
    assert row is not None
    assert row.status.value == "revoked"


def test_a_csr_larger_than_16_kib_is_refused_unread(est_server: Server, fleet_ca: FleetCa) -> None:
    answer = httpx.post(
        est_server.base_url + "/.well-known/est/simpleenroll",
        content=b"A" * (1024 * 1024),
        verify=trusting(fleet_ca.paths.chain),
    )
    assert answer.status_code == 400
    assert answer.json()["message"] == "the CSR is too large"


def test_without_https_the_server_offers_no_est(
    start_server: ServerFactory, fleet_ca: FleetCa
) -> None:
    server = start_server(ca_dir=fleet_ca.directory)  # the registry still gates the ingest
    assert server.base_url.startswith("http://")
    assert httpx.get(server.base_url + "/.well-known/est/cacerts").status_code == 404
    assert server.settings.enrollment_required
