"""The device CA: a root that signs only the issuing CA, terminals' certificates with their id as
CN, service certificates, a CRL, keys written 0600, never an overwrite."""

from __future__ import annotations

import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.device_ca import (
    DeviceCa,
    DeviceCaError,
    generate_key,
    init_ca,
    public_key_fingerprint,
    write_pem,
)


def _csr(cn: str, key: object | None = None) -> x509.CertificateSigningRequest:
    signer = key or generate_key()
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    )


@pytest.fixture
def ca(tmp_path: Path) -> DeviceCa:
    init_ca(tmp_path / "ca")
    return DeviceCa.load(tmp_path / "ca")


def test_init_writes_private_keys_owner_only_and_never_overwrites(tmp_path: Path) -> None:
    paths = init_ca(tmp_path / "ca")
    for key in (paths.root_key, paths.issuing_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.directory.stat().st_mode) == 0o700
    before = paths.issuing_key.read_bytes()
    with pytest.raises(DeviceCaError, match="already exists"):
        init_ca(tmp_path / "ca")
    assert paths.issuing_key.read_bytes() == before


def test_the_root_signs_the_issuing_ca_which_signs_terminals(ca: DeviceCa) -> None:
    key = generate_key()
    cert = ca.issue_terminal(_csr("ignored-cn", key), "T-0001")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "T-0001"
    assert public_key_fingerprint(cert.public_key()) == public_key_fingerprint(key.public_key())  # type: ignore[arg-type]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca.issuing)
    ca.issuing.verify_directly_issued_by(ca.root)
    assert ca.verify_issued(cert)
    assert not ca.verify_issued(cert, now=datetime.now(UTC) + timedelta(days=400))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_verifies_the_chain_for_client_auth(ca: DeviceCa, tmp_path: Path) -> None:
    leaf = ca.issue_terminal(_csr("x"), "T-0002")
    write_pem(tmp_path / "root.pem", ca.root)
    write_pem(tmp_path / "issuing.pem", ca.issuing)
    write_pem(tmp_path / "leaf.pem", leaf)
    out = subprocess.run(
        ["openssl", "verify", "-purpose", "sslclient", "-CAfile", "root.pem",
         "-untrusted", "issuing.pem", "leaf.pem"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "leaf.pem: OK" in out.stdout


def test_a_csr_with_another_key_type_is_refused(ca: DeviceCa) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(DeviceCaError, match="P-256"):
        ca.issue_terminal(_csr("T-0003", rsa_key), "T-0003")


def test_service_certificates_carry_their_names_and_usages(ca: DeviceCa) -> None:
    cert = ca.issue_service("broker", generate_key().public_key(), sans=["127.0.0.1", "localhost"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    client = ca.issue_service(
        "kioskfleet:server", generate_key().public_key(), server_auth=False, client_auth=True
    )
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(DeviceCaError):
        ca.issue_service("nothing", generate_key().public_key(), server_auth=False)


def test_the_crl_lists_what_was_revoked_and_is_signed_by_the_issuing_ca(
    ca: DeviceCa, tmp_path: Path
) -> None:
    cert = ca.issue_terminal(_csr("x"), "T-0004")
    crl = ca.crl([(cert.serial_number, datetime.now(UTC))])
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert crl.is_signature_valid(ca.issuing.public_key())  # type: ignore[arg-type]
    fresh = x509.load_pem_x509_crl(init_ca(tmp_path / "fresh").crl.read_bytes())
    assert len(fresh) == 0
    assert fresh.next_update_utc is not None
    assert fresh.next_update_utc > datetime.now(UTC)
