"""The fleet's device CA: a root that can stay offline and an issuing CA that signs terminals.

``kioskfleet ca init DIR`` makes both (``init_ca``). The root signs only the
issuing CA; the issuing CA signs the terminals' client certificates (subject CN
= terminal id, ``clientAuth``), the certificates of the fleet's own services
(the broker's and the HTTPS server's ``serverAuth`` certificates, the server's
MQTT client certificate) and the CRL. After ``init`` the root key can be moved
off the machine: nothing here needs it again until the issuing CA is renewed.

Keys are EC P-256 (small, fast to sign; every TLS stack that mosquitto, EMQX,
curl and paho use accepts them). Private key files are written with mode 0600
and are never logged. Files in the CA directory:

- ``root.pem``, ``root.key``: the root (``root.key`` to be kept offline);
- ``issuing.pem``, ``issuing.key``: the issuing CA;
- ``chain.pem``: issuing then root, what the broker and clients trust;
- ``crl.pem``: the issuing CA's CRL, rewritten at each revocation.

Pure apart from the file reads and writes in ``init_ca``, ``DeviceCa.load``
and ``write_private_key``/``write_pem``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.errors import DeviceCaError

__all__ = [
    "CaPaths",
    "DeviceCa",
    "DeviceCaError",
    "PrivateKey",
    "certificate_fingerprint",
    "generate_key",
    "init_ca",
    "load_certificates",
    "public_key_fingerprint",
    "public_key_pem",
    "write_pem",
    "write_private_key",
]

PrivateKey = ec.EllipticCurvePrivateKey

ROOT_DAYS: Final = 20 * 365
ISSUING_DAYS: Final = 10 * 365
TERMINAL_DAYS: Final = 365
SERVICE_DAYS: Final = 2 * 365
CRL_DAYS: Final = 30
_BACKDATE: Final = timedelta(minutes=5)  # clocks of a terminal and the server may differ a little


@dataclass(frozen=True, slots=True)
class CaPaths:
    """Where the CA's files are in its directory."""

    directory: Path

    @property
    def root_cert(self) -> Path:
        return self.directory / "root.pem"

    @property
    def root_key(self) -> Path:
        return self.directory / "root.key"

    @property
    def issuing_cert(self) -> Path:
        return self.directory / "issuing.pem"

    @property
    def issuing_key(self) -> Path:
        return self.directory / "issuing.key"

    @property
    def chain(self) -> Path:
        return self.directory / "chain.pem"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"


def generate_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_key_pem(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def public_key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, lower-case hex: how a pre-authorised key is
    stored and compared."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lower-case hex (what ``openssl x509 -fingerprint
    -sha256`` prints, without colons)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle. Raises DeviceCaError if there is none or one is bad."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise DeviceCaError(f"not a PEM certificate bundle: {exc}") from None
    return certs


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, created with mode 0600, replaced atomically."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, data, mode=0o600)


def write_pem(path: Path, *objects: x509.Certificate | x509.CertificateRevocationList) -> None:
    """Write certificates or a CRL as PEM (mode 0644), replaced atomically."""
    data = b"".join(o.public_bytes(serialization.Encoding.PEM) for o in objects)
    _write_atomic(path, data, mode=0o644)


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; never widened past ``mode``
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _name(common_name: str, organisation: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    return x509.Name(attrs)


def _ca_certificate(
    subject: x509.Name,
    key: PrivateKey,
    issuer: x509.Name,
    signer: PrivateKey,
    *,
    days: int,
    path_length: int,
    now: datetime,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(signer, hashes.SHA256())
    )


def init_ca(directory: Path, *, name: str = "kioskfleet", now: datetime | None = None) -> CaPaths:
    """Create the root and issuing CA in ``directory`` (created if missing; 0700).

    Raises DeviceCaError if a CA is already there: an existing CA is never overwritten.
    """
    paths = CaPaths(directory)
    if any(p.exists() for p in (paths.root_cert, paths.root_key, paths.issuing_key)):
        raise DeviceCaError(f"a device CA already exists in {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    now = now or datetime.now(UTC)
    root_key = generate_key()
    root_name = _name(f"{name} device root CA", name)
    root = _ca_certificate(
        root_name, root_key, root_name, root_key, days=ROOT_DAYS, path_length=1, now=now
    )
    issuing_key = generate_key()
    issuing = _ca_certificate(
        _name(f"{name} device issuing CA", name),
        issuing_key,
        root_name,
        root_key,
        days=ISSUING_DAYS,
        path_length=0,
        now=now,
    )
    write_private_key(paths.root_key, root_key)
    write_private_key(paths.issuing_key, issuing_key)
    write_pem(paths.root_cert, root)
    write_pem(paths.issuing_cert, issuing)
    write_pem(paths.chain, issuing, root)
    ca = DeviceCa(root=root, issuing=issuing, issuing_key=issuing_key)
    write_pem(paths.crl, ca.crl((), now=now))
    return paths


class DeviceCa:
    """The issuing CA, loaded: signs terminals, the fleet's services and the CRL."""

    def __init__(
        self, *, root: x509.Certificate, issuing: x509.Certificate, issuing_key: PrivateKey
    ) -> None:
        self.root = root
        self.issuing = issuing
        self._key = issuing_key

    @classmethod
    def load(cls, directory: Path) -> DeviceCa:
        """Load the issuing CA (the root key need not be there). Raises DeviceCaError."""
        paths = CaPaths(directory)
        try:
            root = x509.load_pem_x509_certificate(paths.root_cert.read_bytes())
            issuing = x509.load_pem_x509_certificate(paths.issuing_cert.read_bytes())
            key = serialization.load_pem_private_key(paths.issuing_key.read_bytes(), None)
        except (OSError, ValueError) as exc:
            raise DeviceCaError(
                f"cannot load the device CA from {directory}: {type(exc).__name__}"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise DeviceCaError(f"{paths.issuing_key} is not an EC private key")
        return cls(root=root, issuing=issuing, issuing_key=key)

    @property
    def chain(self) -> list[x509.Certificate]:
        """Issuing then root: what a client or the broker is given to trust."""
        return [self.issuing, self.root]

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def issue_terminal(
        self,
        csr: x509.CertificateSigningRequest,
        terminal_id: str,
        *,
        days: int = TERMINAL_DAYS,
        now: datetime | None = None,
    ) -> x509.Certificate:
        """A client certificate for ``terminal_id`` (its CN) over the CSR's key.

        The caller has decided that this key may be this terminal (token, pre-authorised
        key or current certificate). Raises DeviceCaError if the CSR's signature does not
        verify (proof of possession) or its key is not EC P-256.
        """
        if not csr.is_signature_valid:
            raise DeviceCaError("the CSR's signature does not verify")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise DeviceCaError("a terminal key must be EC P-256")
        return self._leaf(
            _name(terminal_id),
            key,
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
            sans=(),
            days=days,
            now=now,
        )

    def issue_service(
        self,
        common_name: str,
        key: ec.EllipticCurvePublicKey,
        *,
        sans: Sequence[str] = (),
        server_auth: bool = True,
        client_auth: bool = False,
        days: int = SERVICE_DAYS,
        now: datetime | None = None,
    ) -> x509.Certificate:
        """A certificate for one of the fleet's own services: the broker or HTTPS server
        (``server_auth``, with ``sans``: host names or IP addresses) or the server's MQTT
        client identity (``client_auth``)."""
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server_auth else []
        if client_auth:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if not usages:
            raise DeviceCaError("a service certificate needs server_auth or client_auth")
        return self._leaf(_name(common_name), key, usages=usages, sans=sans, days=days, now=now)

    def crl(
        self,
        revoked: Iterable[tuple[int, datetime]],
        *,
        now: datetime | None = None,
        days: int = CRL_DAYS,
    ) -> x509.CertificateRevocationList:
        """The issuing CA's CRL listing ``(serial, revoked_at)``; valid ``days`` (re-issue
        it before: the server rewrites it at each revocation and daily)."""
        now = now or datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.issuing.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + timedelta(days=days))
        )
        for serial, at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build()
            )
        return builder.sign(self._key, hashes.SHA256())

    def verify_issued(self, cert: x509.Certificate, *, now: datetime | None = None) -> bool:
        """True if ``cert`` was signed by this issuing CA and is within its validity."""
        now = now or datetime.now(UTC)
        if cert.issuer != self.issuing.subject:
            return False
        try:
            cert.verify_directly_issued_by(self.issuing)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc

    def _leaf(
        self,
        subject: x509.Name,
        key: ec.EllipticCurvePublicKey,
        *,
        usages: list[x509.ObjectIdentifier],
        sans: Sequence[str],
        days: int,
        now: datetime | None,
    ) -> x509.Certificate:
        now = now or datetime.now(UTC)
        not_after = min(now + timedelta(days=days), self.issuing.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.issuing.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(s) for s in sans]), critical=False
            )
        return builder.sign(self._key, hashes.SHA256())


def _general_name(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)
