"""The terminal registry on SQLite and PostgreSQL: who may enroll, once, with which key and CN;
renewal by the current certificate; revocation and its CRL; every step in the audit log."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from server.audit import AuditResult, MemoryAudit
from server.device_ca import generate_key, public_key_fingerprint
from server.errors import EnrollmentRefusedError
from server.identity_tables import RegistryStatus
from server.storage import Storage
from server.terminal_registry import REFUSAL_REASONS, Preauthorization, TerminalRegistry
from server.terminal_rules import Placement
from tests.support.clocks import T0, WallClock
from tests.support.device_identity import FleetCa, csr_for, make_ca, public_pem

pytestmark = pytest.mark.integration


@pytest.fixture
def ca(tmp_path: Path) -> FleetCa:
    return make_ca(tmp_path / "ca")


@pytest.fixture
def storage(database_url: str) -> Iterator[Storage]:
    s = Storage(database_url)
    s.open()
    yield s
    s.close()


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


@pytest.fixture
def audit() -> MemoryAudit:
    return MemoryAudit()


@pytest.fixture
def registry(
    storage: Storage, ca: FleetCa, audit: MemoryAudit, clock: WallClock
) -> TerminalRegistry:
    r = TerminalRegistry(lambda: storage.engine, ca.directory, audit, clock=clock)
    r.open()
    return r


def refusal(call: object) -> EnrollmentRefusedError:
    assert callable(call)
    with pytest.raises(EnrollmentRefusedError) as info:
        call()
    assert info.value.reason in REFUSAL_REASONS
    return info.value


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_a_token_enrolls_once_then_never(registry: TerminalRegistry, audit: MemoryAudit) -> None:
    token = registry.issue_token("T-1", "Hall A", "North", "KX-200", timedelta(hours=1), actor="op")
    key = generate_key()
    cert = registry.enroll(csr_for(key, "T-1"), username="T-1", token=token)
    assert cn(cert) == "T-1"
    assert registry.is_active("T-1")
    again = refusal(lambda: registry.enroll(csr_for(key, "T-1"), username="T-1", token=token))
    assert (again.reason, again.status) == ("token_used", 401)
    actions = [(e.action, e.result) for e in audit.entries]
    assert actions == [
        ("terminal.token", AuditResult.OK),
        ("est.simpleenroll", AuditResult.OK),
        ("est.simpleenroll", AuditResult.DENIED),
    ]
    assert token not in repr(audit.entries)  # the secret is never recorded


def test_an_expired_token_fails(registry: TerminalRegistry, clock: WallClock) -> None:
    token = registry.issue_token("T-1", "Hall A", "North", "KX-200", timedelta(hours=1), actor="op")
    clock.now = T0 + timedelta(hours=1, seconds=1)
    refused = refusal(
        lambda: registry.enroll(csr_for(generate_key(), "T-1"), username="T-1", token=token)
    )
    assert refused.reason == "token_expired"
    assert not registry.is_active("T-1")


def test_a_token_of_another_terminal_fails(registry: TerminalRegistry) -> None:
    token = registry.issue_token("T-1", "Hall A", "North", "KX-200", timedelta(hours=1), actor="op")
    registry.issue_token("T-2", "Hall A", "North", "KX-200", timedelta(hours=1), actor="op")
    refused = refusal(
        lambda: registry.enroll(csr_for(generate_key(), "T-2"), username="T-2", token=token)
    )
    assert refused.reason == "bad_token"
    assert not registry.is_active("T-1")
    assert not registry.is_active("T-2")


def test_a_csr_whose_cn_differs_from_the_tokens_id_fails_and_keeps_the_token(
    registry: TerminalRegistry,
) -> None:
    token = registry.issue_token("T-1", "Hall A", "North", "KX-200", timedelta(hours=1), actor="op")
    key = generate_key()
    refused = refusal(lambda: registry.enroll(csr_for(key, "T-9"), username="T-1", token=token))
    assert refused.reason == "cn_mismatch"
    assert cn(registry.enroll(csr_for(key, "T-1"), username="T-1", token=token)) == "T-1"


def test_an_id_neither_preauthorized_nor_with_a_token_never_enrolls(
    registry: TerminalRegistry, audit: MemoryAudit
) -> None:
    refused = refusal(lambda: registry.enroll(csr_for(generate_key(), "T-404")))
    assert (refused.reason, refused.status) == ("not_authorized", 401)
    assert not registry.is_active("T-404")
    [entry] = audit.entries
    assert (entry.actor, entry.action, entry.result, entry.target) == (
        "anonymous",
        "est.simpleenroll",
        AuditResult.DENIED,
        "T-404",
    )
    # knowing the id of a token terminal is not enough either
    registry.issue_token("T-5", "Hall A", "North", "KX-200", timedelta(hours=1), actor="op")
    assert refusal(lambda: registry.enroll(csr_for(generate_key(), "T-5"))).reason == (
        "not_authorized"
    )


def test_a_preauthorized_key_enrolls_with_the_registry_id_and_placement(
    registry: TerminalRegistry, audit: MemoryAudit
) -> None:
    key = generate_key()
    fingerprint = registry.preauthorize(
        "T-1", "Hall A", "North", "KX-200", public_pem(key), actor="op"
    )
    assert fingerprint == public_key_fingerprint(key.public_key())
    assert not registry.is_active("T-1")
    cert = registry.enroll(csr_for(key, "T-1"), source="10.0.0.7")
    assert cn(cert) == "T-1"
    assert registry.ca.verify_issued(cert)
    assert registry.is_active("T-1")
    assert registry.placement("T-1") == Placement("Hall A", "North", "KX-200")
    row = registry.get("T-1")
    assert row is not None
    assert row.status is RegistryStatus.ACTIVE
    entry = audit.entries[-1]
    assert (entry.actor, entry.action, entry.source) == (
        "terminal:T-1",
        "est.simpleenroll",
        "10.0.0.7",
    )
    assert entry.detail["via"] == "preauthorized_key"


def test_a_preauthorized_id_with_another_key_fails(registry: TerminalRegistry) -> None:
    registry.preauthorize(
        "T-1", "Hall A", "North", "KX-200", public_pem(generate_key()), actor="op"
    )
    refused = refusal(lambda: registry.enroll(csr_for(generate_key(), "T-1")))
    assert (refused.reason, refused.status) == ("key_mismatch", 403)
    assert not registry.is_active("T-1")


def test_a_csr_naming_another_id_than_the_preauthorized_one_fails(
    registry: TerminalRegistry,
) -> None:
    key = generate_key()
    registry.preauthorize("T-1", "Hall A", "North", "KX-200", public_pem(key), actor="op")
    refused = refusal(lambda: registry.enroll(csr_for(key, "T-2")))
    assert refused.reason == "not_authorized"
    assert not registry.is_active("T-2")
    assert not registry.is_active("T-1")


def test_a_csr_with_an_rsa_key_is_a_bad_csr_and_leaves_the_token_unused(
    registry: TerminalRegistry,
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "T-1")])
    )
    rsa_csr = builder.sign(rsa_key, hashes.SHA256())
    token = registry.issue_token("T-1", "Hall A", "North", "KX-200", timedelta(hours=1), actor="op")
    refused = refusal(lambda: registry.enroll(rsa_csr, username="T-1", token=token))
    assert (refused.reason, refused.status) == ("bad_csr", 400)
    # the refusal did not use up the token
    assert cn(registry.enroll(csr_for(generate_key(), "T-1"), username="T-1", token=token)) == "T-1"


def test_reenroll_with_the_current_certificate_works_and_with_a_revoked_one_fails(
    registry: TerminalRegistry, audit: MemoryAudit
) -> None:
    key = generate_key()
    registry.preauthorize("T-1", "Hall A", "North", "KX-200", public_pem(key), actor="op")
    first = registry.enroll(csr_for(key, "T-1"))
    new_key = generate_key()
    renewed = registry.reenroll(first, csr_for(new_key, "T-1"))
    assert cn(renewed) == "T-1"
    assert renewed.serial_number != first.serial_number
    assert renewed.public_key() == new_key.public_key()
    assert audit.entries[-1].detail["previous"] == f"{first.serial_number:x}"
    # another terminal's CN with this certificate is refused
    assert refusal(lambda: registry.reenroll(renewed, csr_for(new_key, "T-2"))).reason == (
        "cn_mismatch"
    )
    revoked = registry.revoke("T-1", actor="op")
    assert set(revoked) == {first.serial_number, renewed.serial_number}
    refused = refusal(lambda: registry.reenroll(renewed, csr_for(new_key, "T-1")))
    assert refused.reason == "revoked"
    assert not registry.is_active("T-1")
    # a revoked terminal's pre-authorised key no longer enrolls either
    assert refusal(lambda: registry.enroll(csr_for(new_key, "T-1"))).reason == "revoked"


def test_reenroll_with_a_certificate_of_another_ca_fails(
    registry: TerminalRegistry, tmp_path: Path
) -> None:
    other = make_ca(tmp_path / "other-ca", name="other")
    key = generate_key()
    foreign = other.ca.issue_terminal(csr_for(key, "T-1"), "T-1")
    registry.preauthorize("T-1", "Hall A", "North", "KX-200", public_pem(key), actor="op")
    refused = refusal(lambda: registry.reenroll(foreign, csr_for(key, "T-1")))
    assert refused.reason == "foreign_certificate"
    assert refusal(lambda: registry.reenroll(None, csr_for(key, "T-1"))).reason == (
        "no_client_certificate"
    )


def test_revoke_writes_a_crl_listing_the_serial(
    registry: TerminalRegistry, ca: FleetCa, audit: MemoryAudit
) -> None:
    key = generate_key()
    registry.preauthorize("T-1", "Hall A", "North", "KX-200", public_pem(key), actor="op")
    cert = registry.enroll(csr_for(key, "T-1"))
    crl = x509.load_pem_x509_crl(ca.paths.crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is None
    registry.revoke("T-1", actor="op", source="cli")
    crl = x509.load_pem_x509_crl(ca.paths.crl.read_bytes())
    assert crl.is_signature_valid(ca.ca.issuing.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    row = registry.get("T-1")
    assert row is not None
    assert row.status is RegistryStatus.REVOKED
    entry = audit.entries[-1]
    assert (entry.action, entry.result, entry.detail["serials"]) == (
        "terminal.revoke",
        AuditResult.OK,
        f"{cert.serial_number:x}",
    )
    assert refusal(lambda: registry.revoke("T-404", actor="op")).reason == "unknown_terminal"


def test_a_revoked_id_preauthorized_again_enrolls_with_its_new_key(
    registry: TerminalRegistry,
) -> None:
    old = generate_key()
    registry.preauthorize("T-1", "Hall A", "North", "KX-200", public_pem(old), actor="op")
    registry.enroll(csr_for(old, "T-1"))
    registry.decommission("T-1", actor="op")
    new = generate_key()
    registry.preauthorize("T-1", "Hall B", "North", "KX-300", public_pem(new), actor="op")
    assert refusal(lambda: registry.enroll(csr_for(old, "T-1"))).reason == "key_mismatch"
    registry.enroll(csr_for(new, "T-1"))
    assert registry.is_active("T-1")
    assert registry.placement("T-1") == Placement("Hall B", "North", "KX-300")


def test_bulk_preauthorization_is_all_or_nothing(registry: TerminalRegistry) -> None:
    keys = [generate_key() for _ in range(3)]
    items = [
        Preauthorization(f"T-{i}", "Hall A", "North", "KX-200", public_pem(k))
        for i, k in enumerate(keys)
    ]
    bad = [*items, Preauthorization("T-9", "Hall A", "North", "KX-200", b"not a key")]
    assert refusal(lambda: registry.preauthorize_many(bad, actor="op")).reason == "bad_key"
    assert registry.get("T-0") is None
    registry.preauthorize_many(items, actor="op")
    for i, key in enumerate(keys):
        assert cn(registry.enroll(csr_for(key, f"T-{i}"))) == f"T-{i}"


def test_an_invalid_id_or_placement_is_refused(registry: TerminalRegistry) -> None:
    pem = public_pem(generate_key())
    assert refusal(lambda: registry.preauthorize("a/b", "H", "R", "M", pem, actor="op")).reason == (
        "bad_request"
    )
    assert refusal(
        lambda: registry.preauthorize("T-1", "\x00hall", "R", "M", pem, actor="op")
    ).reason == ("bad_request")


def test_a_reopened_registry_knows_who_is_active(
    registry: TerminalRegistry, storage: Storage, ca: FleetCa
) -> None:
    for tid in ("T-1", "T-2"):
        key = generate_key()
        registry.preauthorize(tid, "Hall A", "North", "KX-200", public_pem(key), actor="op")
        registry.enroll(csr_for(key, tid))
    registry.revoke("T-2", actor="op")
    reopened = TerminalRegistry(lambda: storage.engine, ca.directory, MemoryAudit())
    reopened.open()
    assert reopened.is_active("T-1")
    assert not reopened.is_active("T-2")
    assert reopened.placement("T-2") == Placement("Hall A", "North", "KX-200")


def test_a_token_used_by_eight_requests_at_once_enrolls_exactly_one(
    registry: TerminalRegistry,
) -> None:
    token = registry.issue_token("T-1", "Hall A", "North", "KX-200", timedelta(hours=1), actor="op")
    csrs = [csr_for(generate_key(), "T-1") for _ in range(8)]
    start = threading.Barrier(len(csrs))

    def attempt(csr: x509.CertificateSigningRequest) -> str:
        start.wait()
        try:
            registry.enroll(csr, username="T-1", token=token)
        except EnrollmentRefusedError as exc:
            return exc.reason
        return "enrolled"

    with ThreadPoolExecutor(len(csrs)) as pool:
        outcomes = sorted(pool.map(attempt, csrs))
    assert outcomes == ["enrolled"] + ["token_used"] * 7


def test_spent_tokens_and_expired_certificates_are_pruned_after_their_retention(
    registry: TerminalRegistry, clock: WallClock
) -> None:
    used = registry.issue_token("T-1", "Hall A", "North", "KX-200", timedelta(hours=1), actor="op")
    registry.enroll(csr_for(generate_key(), "T-1"), username="T-1", token=used)
    registry.issue_token("T-2", "Hall A", "North", "KX-200", timedelta(hours=1), actor="op")
    registry.issue_token("T-3", "Hall A", "North", "KX-200", timedelta(days=30), actor="op")
    keep = timedelta(days=7)
    assert registry.prune_spent(older_than=keep, now=clock.now) == 0  # nothing spent long enough
    clock.now += timedelta(days=8)
    assert registry.prune_spent(older_than=keep, now=clock.now) == 2  # T-1's used, T-2's expired
    clock.now += timedelta(days=400)  # past the certificate's lifetime and the live token's
    assert registry.prune_spent(older_than=keep, now=clock.now) == 2  # T-1's cert, T-3's token
    assert registry.is_active("T-1")  # the registry row itself stays (history, decommission)


def test_a_decommissioned_tombstone_is_pruned_after_its_retention_and_the_id_stays_out(
    registry: TerminalRegistry, clock: WallClock, ca: FleetCa
) -> None:
    key = generate_key()
    for tid in ("T-OLD", "T-NEW", "T-LIVE"):
        registry.preauthorize(tid, "Hall A", "North", "KX-200", public_pem(key), actor="op")
    cert = registry.enroll(csr_for(key, "T-OLD"))
    registry.decommission("T-OLD", actor="op")
    clock.now += timedelta(days=20)
    registry.decommission("T-NEW", actor="op")
    keep = timedelta(days=10)
    clock.now += timedelta(days=5)  # T-OLD decommissioned 25 days ago, T-NEW 5

    assert registry.prune_decommissioned(older_than=keep, now=clock.now) == 1
    assert registry.get("T-OLD") is None
    assert registry.placement("T-OLD") is None
    new, live = registry.get("T-NEW"), registry.get("T-LIVE")
    assert new is not None
    assert new.status is RegistryStatus.DECOMMISSIONED
    assert live is not None
    assert live.status is RegistryStatus.PREAUTHORIZED  # only tombstones go
    # without its row the id does not enroll again, with its old key or any other
    assert refusal(lambda: registry.enroll(csr_for(key, "T-OLD"))).reason == "not_authorized"
    # and its revoked certificate is still on the CRL until it expires
    crl = x509.load_pem_x509_crl(ca.paths.crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert registry.prune_decommissioned(older_than=keep, now=clock.now) == 0
