"""``kioskfleet broker-config``: what it issues (SANs, usages, CNs, who may read the keys), the
ACL it writes for several server identities, and clear errors instead of a half-written setup."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kioskfleet.broker_config import acl_text
from kioskfleet.broker_setup import write_broker_setup
from kioskfleet.cli import main
from server.device_ca import DeviceCa, init_ca


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    return init_ca(tmp_path / "ca").directory


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_broker_certificate_is_for_server_auth_with_every_name_clients_dial(
    ca_dir: Path, tmp_path: Path
) -> None:
    setup = write_broker_setup(
        tmp_path / "out", ca_dir, host="10.0.0.5", sans=["mqtt.fleet.example", "10.0.0.5"],
        server_identities=["kioskfleet:server"],
    )  # fmt: skip
    cert = _cert(setup.identity.cert_file)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in sans] == ["10.0.0.5", "mqtt.fleet.example"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert DeviceCa.load(ca_dir).verify_issued(cert)
    assert setup.identity.crl_file == (ca_dir / "crl.pem").absolute()
    assert setup.identity.ca_file.read_bytes() == (ca_dir / "chain.pem").read_bytes()


def test_each_server_identity_gets_a_client_auth_certificate_with_its_name_as_cn(
    ca_dir: Path, tmp_path: Path
) -> None:
    names = ["kioskfleet:server:a", "kioskfleet:server:b"]
    setup = write_broker_setup(tmp_path / "out", ca_dir, server_identities=names)
    assert list(setup.server_credentials) == names
    for name, (cert_file, key_file) in setup.server_credentials.items():
        cert = _cert(cert_file)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert key_file.stat().st_mode & 0o777 == 0o600  # the broker never needs these
    assert setup.acl.read_text() == acl_text(names)


def test_the_cli_refuses_a_server_identity_a_terminal_could_have_and_issues_nothing(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["broker-config", "--out", str(out), "--ca-dir", str(ca_dir)]
    assert main([*argv, "--server-identity", "T-0001"]) == 2
    assert "must contain ':'" in capsys.readouterr().err
    assert not out.exists()


def test_the_cli_reports_a_missing_ca_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["broker-config", "--out", str(tmp_path / "out"), "--ca-dir", str(tmp_path / "none")]
    assert main(argv) == 2
    assert "cannot load the device CA" in capsys.readouterr().err


def test_listening_on_every_address_needs_a_name_for_the_certificate(
    ca_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="--san"):
        write_broker_setup(tmp_path / "a", ca_dir, host="0.0.0.0", server_identities=["k:s"])
    setup = write_broker_setup(
        tmp_path / "b", ca_dir, host="0.0.0.0", sans=["mqtt.fleet.example"],
        server_identities=["kioskfleet:server"],
    )  # fmt: skip
    sans = _cert(setup.identity.cert_file).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert [str(n.value) for n in sans.value] == ["mqtt.fleet.example"]
    assert "listener 8883 0.0.0.0" in setup.conf.read_text().splitlines()


def test_a_crl_the_broker_user_cannot_read_is_pointed_out(ca_dir: Path, tmp_path: Path) -> None:
    default = write_broker_setup(tmp_path / "a", ca_dir, server_identities=["kioskfleet:server"])
    assert ca_dir.stat().st_mode & 0o777 == 0o700  # the CA's own directory
    assert any("--crl-file" in note for note in default.notes)
    with tempfile.TemporaryDirectory(dir="/tmp") as name:  # a parent every user can enter
        shared = Path(name)
        shared.chmod(0o755)
        crl = shared / "crl.pem"
        crl.write_bytes((ca_dir / "crl.pem").read_bytes())
        crl.chmod(0o644)
        readable = write_broker_setup(
            tmp_path / "b", ca_dir, crl_file=crl, server_identities=["kioskfleet:server"]
        )
        assert readable.notes == ()
    missing = write_broker_setup(
        tmp_path / "c", ca_dir, crl_file=tmp_path / "none.pem", server_identities=["k:s"]
    )
    assert any("does not exist" in note for note in missing.notes)
