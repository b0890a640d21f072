"""Test helpers for device identity: a device CA in a folder, terminal keys and CSRs, and the
HTTPS certificate of a test server. Real cryptography throughout (nothing is stubbed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.enrollment import build_csr
from server.device_ca import (
    CaPaths,
    DeviceCa,
    generate_key,
    init_ca,
    public_key_pem,
    write_pem,
    write_private_key,
)

__all__ = ["FleetCa", "csr_for", "make_ca", "public_pem"]


@dataclass(frozen=True)
class FleetCa:
    """A device CA on disk, plus an HTTPS certificate for 127.0.0.1/localhost it issued."""

    paths: CaPaths
    ca: DeviceCa
    https_cert: Path
    https_key: Path

    @property
    def directory(self) -> Path:
        return self.paths.directory


def make_ca(directory: Path, name: str = "kioskfleet") -> FleetCa:
    paths = init_ca(directory, name=name)
    ca = DeviceCa.load(directory)
    key = generate_key()
    cert = ca.issue_service("127.0.0.1", key.public_key(), sans=["127.0.0.1", "localhost"])
    https_cert, https_key = directory / "https.pem", directory / "https.key"
    write_pem(https_cert, cert, ca.issuing)
    write_private_key(https_key, key)
    return FleetCa(paths, ca, https_cert, https_key)


def csr_for(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.CertificateSigningRequest:
    """The agent's own CSR (``agent.enrollment.build_csr``), parsed."""
    return x509.load_der_x509_csr(build_csr(key, common_name))


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return public_key_pem(key.public_key()).encode("ascii")
