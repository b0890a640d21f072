"""The terminal's side of EST (RFC 7030): its key, its CSR, its certificate and renewal.

On start (``ensure_certificate``): the key is made if missing (EC P-256,
written 0600 atomically; it never leaves the terminal), and without a usable
certificate the agent sends a CSR with CN = its terminal id to
``simpleenroll`` (HTTP Basic with the enrollment token if it has one, else
nothing: its key was pre-authorised) and stores the certificate it gets. Once
``renew_at`` (2/3 by default) of the certificate's lifetime has passed it asks
``simplereenroll``, presenting the current certificate as TLS client
certificate; a failed renewal keeps the current certificate while it is valid.
``RenewalThread`` repeats that check in a running agent; the MQTT connection
reads the files again at each reconnect.

The server is verified against the configured fleet CA chain with host-name
checking: there is no trust on first use, and no fallback to plain HTTP.
Only the standard library (``urllib``, ``ssl``) and ``cryptography`` are used.
Raises ``EnrollmentError``; never logs the token or the key.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import ssl
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from agent.config import EnrollmentConfig
from agent.errors import AgentError

__all__ = [
    "EnrollmentError",
    "EstClient",
    "RenewalThread",
    "Terminal",
    "build_csr",
    "enroll_many",
    "ensure_certificate",
    "keygen_command",
    "load_or_create_key",
    "public_key_pem",
    "renewal_due",
]

log = logging.getLogger(__name__)

_EST: Final = "/.well-known/est"
_MAX_ANSWER_BYTES: Final = 64 * 1024


class EnrollmentError(AgentError):
    """Enrollment or renewal failed: the server refused (``status``, its ``reason``), could
    not be reached or verified (``status`` None), or a key or certificate file is unusable."""

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Terminal:
    """Who enrolls and where its files are."""

    terminal_id: str
    key_file: Path
    cert_file: Path


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The terminal's private key from ``path``, made (EC P-256, mode 0600) if missing.

    Raises EnrollmentError for a file that is not an EC private key."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_atomic(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            mode=0o600,
        )
        log.info("made a new terminal key in %s", path)
        return key
    except OSError as exc:
        raise EnrollmentError(f"cannot read the key {path}: {exc.strerror}") from None
    try:
        loaded = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError):
        raise EnrollmentError(f"{path} is not a PEM private key") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise EnrollmentError(f"{path} is not an EC private key")
    return loaded


def public_key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def build_csr(key: ec.EllipticCurvePrivateKey, terminal_id: str) -> bytes:
    """A DER PKCS#10 request with subject CN = ``terminal_id``, signed by ``key``."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, terminal_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def renewal_due(cert: x509.Certificate, now: datetime, fraction: float) -> bool:
    """Whether ``fraction`` of ``cert``'s lifetime has passed at ``now``."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= start + (end - start) * fraction


class EstClient:
    """EST over HTTPS to ``base_url``, trusting only ``ca_file``."""

    def __init__(self, base_url: str, ca_file: Path, *, timeout_s: float = 30.0) -> None:
        """Raises EnrollmentError for a base URL that is not https:// or an unreadable CA."""
        if not base_url.startswith("https://"):
            raise EnrollmentError("the EST URL must be https://")
        self._base = base_url.rstrip("/") + _EST
        self._ca_file = ca_file
        self._timeout = timeout_s
        self._context = self._new_context()

    def cacerts(self) -> list[x509.Certificate]:
        """The server's CA chain (``/cacerts``)."""
        return _certificates(self._call("GET", "/cacerts", None, {}, self._context))

    def simpleenroll(
        self, csr_der: bytes, *, terminal_id: str, token: str | None = None
    ) -> x509.Certificate:
        """A first certificate. With ``token``: HTTP Basic ``terminal_id:token``."""
        headers = {}
        if token is not None:
            basic = base64.b64encode(f"{terminal_id}:{token}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {basic}"
        return _leaf(self._call("POST", "/simpleenroll", csr_der, headers, self._context))

    def simplereenroll(
        self, csr_der: bytes, *, cert_file: Path, key_file: Path
    ) -> x509.Certificate:
        """A renewed certificate, authenticated by the current one as TLS client certificate."""
        context = self._new_context()
        try:
            context.load_cert_chain(str(cert_file), str(key_file))
        except (OSError, ValueError) as exc:
            raise EnrollmentError(f"cannot use the current certificate: {exc}") from None
        return _leaf(self._call("POST", "/simplereenroll", csr_der, {}, context))

    def _new_context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=str(self._ca_file))
        except (OSError, ValueError) as exc:
            raise EnrollmentError(f"cannot load the fleet CA {self._ca_file}: {exc}") from None

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        context: ssl.SSLContext,
    ) -> bytes:
        data = None
        if body is not None:
            data = base64.encodebytes(body)
            headers = {**headers, "Content-Type": "application/pkcs10"}
        request = urllib.request.Request(  # noqa: S310  # https:// only, checked in __init__
            self._base + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(  # noqa: S310  # https:// only, checked in __init__
                request, timeout=self._timeout, context=context
            ) as answer:
                payload: bytes = answer.read(_MAX_ANSWER_BYTES)
                return payload
        except urllib.error.HTTPError as exc:
            reason = _error_reason(exc)
            raise EnrollmentError(
                f"EST {path} refused: HTTP {exc.code} {reason or ''}".rstrip(),
                status=exc.code,
                reason=reason,
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            cause = getattr(exc, "reason", exc)
            raise EnrollmentError(f"EST {path} failed: {cause}") from None


def ensure_certificate(
    terminal: Terminal,
    config: EnrollmentConfig,
    *,
    client: EstClient | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> x509.Certificate:
    """Make sure ``terminal.cert_file`` holds a valid certificate, enrolling or renewing as due.

    Returns the certificate in force. Raises EnrollmentError if there is none and none
    could be obtained (a failed renewal of a still valid certificate is only logged).
    """
    client = client or EstClient(config.url, config.ca_file, timeout_s=config.timeout_s)
    key = load_or_create_key(terminal.key_file)
    current = _current_certificate(terminal.cert_file, key)
    at = now()
    if current is not None and at < current.not_valid_after_utc:
        if not renewal_due(current, at, config.renew_at):
            return current
        try:
            cert = client.simplereenroll(
                build_csr(key, terminal.terminal_id),
                cert_file=terminal.cert_file,
                key_file=terminal.key_file,
            )
        except EnrollmentError as exc:
            log.warning("renewal failed, keeping the current certificate: %s", exc)
            return current
        _store(terminal.cert_file, cert)
        log.info(
            "renewed the certificate of %s until %s", terminal.terminal_id, cert.not_valid_after_utc
        )
        return cert
    cert = client.simpleenroll(
        build_csr(key, terminal.terminal_id), terminal_id=terminal.terminal_id, token=config.token
    )
    _store(terminal.cert_file, cert)
    log.info("enrolled %s, certificate until %s", terminal.terminal_id, cert.not_valid_after_utc)
    return cert


def enroll_many(
    terminals: Sequence[Terminal], config: EnrollmentConfig, *, concurrency: int = 8
) -> dict[str, EnrollmentError]:
    """``ensure_certificate`` for many terminals (the simulator's, a bench's) over one client,
    ``concurrency`` requests at a time. Returns the failures by terminal id (empty: all have
    a certificate)."""
    client = EstClient(config.url, config.ca_file, timeout_s=config.timeout_s)

    def one(terminal: Terminal) -> tuple[str, EnrollmentError | None]:
        try:
            ensure_certificate(terminal, config, client=client)
        except EnrollmentError as exc:
            return terminal.terminal_id, exc
        return terminal.terminal_id, None

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        results = list(pool.map(one, terminals))
    return {tid: exc for tid, exc in results if exc is not None}


class RenewalThread:
    """Runs ``ensure_certificate`` every ``check_interval_s`` until ``stop``."""

    def __init__(self, terminal: Terminal, config: EnrollmentConfig) -> None:
        self._terminal = terminal
        self._config = config
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kf-cert-renewal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self._config.timeout_s + 5)

    def _run(self) -> None:
        while not self._stop.wait(self._config.check_interval_s):
            try:
                ensure_certificate(self._terminal, self._config)
            except EnrollmentError as exc:
                log.error("certificate check failed: %s", exc)


def keygen_command(key_file: Path) -> int:
    """``kioskfleet agent keygen [--key-file PATH]``: prints the public key PEM for the
    operator's ``kioskfleet terminal preauthorize``. Returns the exit code."""
    try:
        key = load_or_create_key(key_file)
    except EnrollmentError as exc:
        print(f"kioskfleet agent keygen: {exc}", file=sys.stderr)
        return 1
    print(public_key_pem(key), end="")
    return 0


def _current_certificate(path: Path, key: ec.EllipticCurvePrivateKey) -> x509.Certificate | None:
    """The stored certificate if it is readable and for ``key``; None otherwise."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    if cert.public_key() != key.public_key():
        log.warning("%s is not for the terminal's key; enrolling again", path)
        return None
    return cert


def _store(path: Path, cert: x509.Certificate) -> None:
    _write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _certificates(answer: bytes) -> list[x509.Certificate]:
    try:
        return pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(answer.split())))
    except (ValueError, binascii.Error):
        raise EnrollmentError("the EST answer is not a base64 PKCS#7 certs-only") from None


def _leaf(answer: bytes) -> x509.Certificate:
    certs = _certificates(answer)
    if len(certs) != 1:
        raise EnrollmentError(f"the EST answer holds {len(certs)} certificates, not 1")
    return certs[0]


def _error_reason(exc: urllib.error.HTTPError) -> str | None:
    try:
        body = json.loads(exc.read(4096) or b"{}")
    except (ValueError, OSError):
        return None
    reason = body.get("error") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) and len(reason) <= 64 else None
