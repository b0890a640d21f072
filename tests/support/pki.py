"""Certificates for tests: a fleet CA directory, the broker's files, terminals, and the odd
cases a broker must refuse (expired, another CA's, self-signed, revoked).

Small helpers over ``server.device_ca`` (the one CA of the project) and
``kioskfleet.broker_setup`` (what ``kioskfleet broker-config`` writes); the only
certificate built here by hand is the self-signed one, because no CA makes those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kioskfleet.broker_setup import BrokerSetup, write_broker_setup
from server.device_ca import (
    CaPaths,
    DeviceCa,
    PrivateKey,
    generate_key,
    init_ca,
    write_pem,
    write_private_key,
)
from tests.support.device_identity import csr_for

__all__ = ["ClientFiles", "TestPki"]


@dataclass(frozen=True, slots=True)
class ClientFiles:
    """What an MQTT client presents: its certificate and key, and the chain it trusts."""

    name: str
    cert_file: Path
    key_file: Path
    ca_file: Path
    serial: int


@dataclass
class TestPki:
    """A fleet CA in ``directory/ca`` and the files the tests hand to clients and brokers."""

    __test__ = False  # not a pytest class

    directory: Path
    ca: DeviceCa = field(init=False)
    revoked: list[tuple[int, datetime]] = field(default_factory=list)

    def __post_init__(self) -> None:
        init_ca(self.ca_dir)
        self.ca = DeviceCa.load(self.ca_dir)

    @property
    def ca_dir(self) -> Path:
        return self.directory / "ca"

    @property
    def chain_file(self) -> Path:
        return CaPaths(self.ca_dir).chain

    def broker_setup(
        self, port: int, server_identities: tuple[str, ...] = ("kioskfleet:server",)
    ) -> BrokerSetup:
        """What ``kioskfleet broker-config`` writes, into ``directory/broker``."""
        return write_broker_setup(
            self.directory / "broker", self.ca_dir, port=port, server_identities=server_identities
        )

    def _write(self, name: str, cert: x509.Certificate, key: PrivateKey) -> ClientFiles:
        out = self.directory / "clients"
        write_pem(out / f"{name}.pem", cert)
        write_private_key(out / f"{name}.key", key)
        return ClientFiles(
            name, out / f"{name}.pem", out / f"{name}.key", self.chain_file, cert.serial_number
        )

    def terminal(
        self, terminal_id: str, *, days: int = 30, now: datetime | None = None
    ) -> ClientFiles:
        """A terminal's certificate (CN = ``terminal_id``) as enrollment issues it."""
        key = generate_key()
        cert = self.ca.issue_terminal(csr_for(key, terminal_id), terminal_id, days=days, now=now)
        return self._write(f"{terminal_id}-{cert.serial_number:x}", cert, key)

    def expired_terminal(self, terminal_id: str) -> ClientFiles:
        """Issued by the fleet CA a year ago, valid for one day."""
        return self.terminal(terminal_id, days=1, now=datetime.now(UTC) - timedelta(days=365))

    def foreign_terminal(self, terminal_id: str) -> ClientFiles:
        """A well-formed terminal certificate from another CA (a second ``init_ca``)."""
        other_dir = self.directory / "other-ca"
        other = (
            DeviceCa.load(other_dir)
            if other_dir.exists()
            else DeviceCa.load(init_ca(other_dir).directory)
        )
        key = generate_key()
        cert = other.issue_terminal(csr_for(key, terminal_id), terminal_id)
        return self._write(f"{terminal_id}-foreign", cert, key)

    def self_signed_terminal(self, terminal_id: str) -> ClientFiles:
        """A certificate that names ``terminal_id`` and signs itself."""
        key = generate_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, terminal_id)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256())
        )
        return self._write(f"{terminal_id}-self", cert, key)

    def server_client(self, setup: BrokerSetup, identity: str = "kioskfleet:server") -> ClientFiles:
        """The server's MQTT client files that ``broker-config`` issued for ``identity``."""
        cert_file, key_file = setup.server_credentials[identity]
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        return ClientFiles(
            identity, cert_file, key_file, setup.identity.ca_file, cert.serial_number
        )

    def revoke(self, client: ClientFiles) -> None:
        """Add ``client`` to the CRL and rewrite the CA's ``crl.pem`` (as ``terminal revoke`` does);
        the broker sees it after ``reload()``."""
        self.revoked.append((client.serial, datetime.now(UTC)))
        write_pem(CaPaths(self.ca_dir).crl, self.ca.crl(self.revoked))
