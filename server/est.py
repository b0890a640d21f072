"""EST (RFC 7030) over HTTPS: ``/.well-known/est/cacerts``, ``simpleenroll``, ``simplereenroll``.

A FastAPI router over the terminal registry; it only translates between HTTP
and ``TerminalRegistry``: base64 DER PKCS#10 in (``application/pkcs10``; a PEM
CSR is accepted too), base64 DER PKCS#7 certs-only out
(``application/pkcs7-mime``), as RFC 7030 section 4 prescribes, so that
off-the-shelf clients (``curl`` plus ``openssl``, libest, ``estclient``) enroll.

Credentials: ``simpleenroll`` needs none beyond the CSR for a pre-authorised
key, or HTTP Basic with username = terminal id and password = the enrollment
token (RFC 7030 section 3.2.3). ``simplereenroll`` is authenticated by the
current certificate presented as TLS client certificate (``server.tls_client_cert``).
Refusals answer 400 (bad CSR), 401 (no or bad credentials; with
``WWW-Authenticate: Basic``) or 403 (a key, CN or certificate that is not the
terminal's), as ``{"error": reason, "message"}``; each is counted in
``kioskfleet_est_rejected_total{operation,reason}`` and logged (rate-limited).
The registry records every attempt in the audit log. Never logs a token.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter
from starlette.concurrency import run_in_threadpool

from server.access_api import SELF_AUDITED
from server.errors import EnrollmentRefusedError, StorageError
from server.log_throttle import ThrottledLog
from server.terminal_registry import REFUSAL_REASONS, TerminalRegistry, refusal
from server.tls_client_cert import client_certificate

__all__ = ["EST_OPERATIONS", "EstMetrics", "est_router"]

log = logging.getLogger(__name__)

EST_PREFIX: Final = "/.well-known/est"
EST_OPERATIONS: Final = ("simpleenroll", "simplereenroll")
_PKCS7: Final = "application/pkcs7-mime; smime-type=certs-only"
_MAX_CSR_BYTES: Final = 16 * 1024  # an EC P-256 CSR is ~0.5 kB
_STORAGE_REASON: Final = "storage"


class EstMetrics:
    """Enrollments done and refused, by operation (and bounded reason)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.enrolled = Counter(
            "kioskfleet_est_enrollments",
            "Certificates issued through EST, by operation.",
            ["operation"],
            registry=registry,
        )
        self.rejected = Counter(
            "kioskfleet_est_rejected",
            "EST requests refused, by operation and reason.",
            ["operation", "reason"],
            registry=registry,
        )
        for operation in EST_OPERATIONS:
            self.enrolled.labels(operation)
            for reason in (*sorted(REFUSAL_REASONS), _STORAGE_REASON):
                self.rejected.labels(operation, reason)


def est_router(
    registry: TerminalRegistry, metrics: EstMetrics, throttled_log: ThrottledLog
) -> APIRouter:
    """The EST routes over ``registry``."""
    router = APIRouter(prefix=EST_PREFIX, tags=["est"])

    def refused(
        operation: str, exc: EnrollmentRefusedError, source: str | None, *, audit: bool = False
    ) -> Response:
        """The refusal's answer, counted and logged; ``audit`` for a request refused before
        it reached the registry (which records its own refusals)."""
        if audit:
            registry.record_refusal(f"est.{operation}", exc, source=source)
        metrics.rejected.labels(operation, exc.reason).inc()
        throttled_log.warning(
            f"est.{operation}.{exc.reason}",
            "EST %s from %s refused (%s): %s",
            operation,
            source,
            exc.reason,
            exc.message,
        )
        headers = {"WWW-Authenticate": 'Basic realm="kioskfleet EST"'} if exc.status == 401 else {}
        return JSONResponse(
            {"error": exc.reason, "message": exc.message}, status_code=exc.status, headers=headers
        )

    def unavailable(operation: str, exc: StorageError) -> Response:
        metrics.rejected.labels(operation, _STORAGE_REASON).inc()
        log.error("EST %s: %s", operation, exc)
        return JSONResponse({"error": "database_unavailable", "message": str(exc)}, status_code=503)

    @router.get("/cacerts", summary="the fleet CA chain (RFC 7030 4.1)")
    def cacerts() -> Response:
        return _pkcs7_response(registry.ca.chain)

    async def answer(
        operation: str,
        request: Request,
        issue: Callable[[x509.CertificateSigningRequest, str | None], x509.Certificate],
    ) -> Response:
        source = _source(request)
        try:
            csr = _csr(await _bounded_body(request))
        except EnrollmentRefusedError as exc:
            return refused(operation, exc, source, audit=True)
        try:
            cert = await run_in_threadpool(issue, csr, source)
        except EnrollmentRefusedError as exc:
            return refused(operation, exc, source)
        except StorageError as exc:
            return unavailable(operation, exc)
        metrics.enrolled.labels(operation).inc()
        return _pkcs7_response([cert])

    @router.post(
        "/simpleenroll",
        summary="a first certificate (RFC 7030 4.2.1)",
        openapi_extra=SELF_AUDITED,
    )
    async def simpleenroll(request: Request) -> Response:
        try:
            username, token = _basic_credentials(request.headers.get("authorization"))
        except EnrollmentRefusedError as exc:
            return refused("simpleenroll", exc, _source(request), audit=True)

        def issue(csr: x509.CertificateSigningRequest, source: str | None) -> x509.Certificate:
            return registry.enroll(csr, username=username, token=token, source=source)

        return await answer("simpleenroll", request, issue)

    @router.post(
        "/simplereenroll",
        summary="renewal with the current certificate (4.2.2)",
        openapi_extra=SELF_AUDITED,
    )
    async def simplereenroll(request: Request) -> Response:
        current = client_certificate(request.scope)

        def issue(csr: x509.CertificateSigningRequest, source: str | None) -> x509.Certificate:
            return registry.reenroll(current, csr, source=source)

        return await answer("simplereenroll", request, issue)

    return router


def _source(request: Request) -> str | None:
    return request.client.host if request.client else None


def _pkcs7_response(certs: list[x509.Certificate]) -> Response:
    der = pkcs7.serialize_certificates(certs, serialization.Encoding.DER)
    return Response(
        content=base64.encodebytes(der),
        media_type=_PKCS7,
        headers={"Content-Transfer-Encoding": "base64"},
    )


async def _bounded_body(request: Request) -> bytes:
    """The body, read no further than ``_MAX_CSR_BYTES``. Raises EnrollmentRefusedError."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_CSR_BYTES:
            raise refusal("bad_csr", "the CSR is too large")
    return bytes(body)


def _csr(body: bytes) -> x509.CertificateSigningRequest:
    """The request's CSR: base64 DER (RFC 7030) or PEM. Raises EnrollmentRefusedError."""
    try:
        if body.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(body)
        return x509.load_der_x509_csr(base64.b64decode(b"".join(body.split()), validate=True))
    except (ValueError, binascii.Error):
        raise refusal("bad_csr", "the body is not a base64 DER PKCS#10 request") from None


def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    """(username, password) of an HTTP Basic header, (None, None) without one.

    Raises EnrollmentRefusedError (``bad_token``) for a header that is not Basic or is
    malformed: a credential was meant and cannot be read.
    """
    if header is None:
        return None, None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise refusal("bad_token", "only HTTP Basic is accepted")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, binascii.Error):
        raise refusal("bad_token", "malformed HTTP Basic header") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user or not password:
        raise refusal("bad_token", "malformed HTTP Basic header")
    return user, password
