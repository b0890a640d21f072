"""The ASGI TLS extension for uvicorn: hand the peer's client certificate to the app.

uvicorn 0.55 verifies a client certificate (``ssl_cert_reqs``, ``ssl_ca_certs``)
but does not pass it on. ``TlsH11Protocol`` (given as ``uvicorn.Config(http=...)``)
reads it from the connection's ``ssl_object`` once per connection and puts it
into every request's ``scope["extensions"]["tls"]`` as the ASGI TLS extension
describes: ``client_cert_chain`` is a list of PEM strings (the peer's leaf
only: Python 3.11's ``ssl`` exposes no more), empty without a client
certificate. ``client_certificate(scope)`` reads it back for a handler. The TLS
layer has already verified the chain against ``ssl_ca_certs``; a handler still
decides what the certificate may do.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["TlsH11Protocol", "client_certificate"]


class TlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus the ASGI TLS extension (see the module docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if not isinstance(ssl_object, ssl.SSLObject):
            return
        der = ssl_object.getpeercert(binary_form=True)
        chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
        app = self.app

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            extensions = scope.setdefault("extensions", {}) or {}
            scope["extensions"] = extensions
            extensions["tls"] = {
                "server_cert": None,
                "client_cert_chain": list(chain),
                "client_cert_name": None,
                "client_cert_error": None,
                "tls_version": None,
                "cipher_suite": None,
            }
            await app(scope, receive, send)

        self.app = with_tls


def client_certificate(scope: Mapping[str, Any]) -> x509.Certificate | None:
    """The request's TLS client certificate, None without one (or without TLS)."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    try:
        return x509.load_pem_x509_certificate(str(chain[0]).encode("ascii"))
    except ValueError:
        return None
