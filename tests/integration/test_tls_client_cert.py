"""The ASGI TLS extension added to uvicorn by ``TlsH11Protocol``: a real uvicorn serving HTTPS
with optional client certificates hands the peer's certificate to the app, and nothing when the
client presents none."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509

from server.device_ca import generate_key, write_pem, write_private_key
from server.tls_client_cert import TlsH11Protocol, client_certificate
from tests.support.device_identity import FleetCa, csr_for, make_ca

pytestmark = pytest.mark.integration


async def echo_tls(scope: Any, receive: Any, send: Any) -> None:
    """Answers the request's TLS extension and the client certificate's CN as JSON."""
    cert = client_certificate(scope)
    body = json.dumps(
        {
            "chain": (scope.get("extensions") or {}).get("tls", {}).get("client_cert_chain"),
            "cn": None if cert is None else cert.subject.rfc4514_string(),
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, FleetCa]]:
    ca = make_ca(tmp_path / "ca")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        echo_tls,
        log_level="warning",
        lifespan="off",
        http=TlsH11Protocol,
        ssl_certfile=str(ca.https_cert),
        ssl_keyfile=str(ca.https_key),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        ssl_ca_certs=str(ca.paths.chain),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: server.run(sockets=[sock]), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"https://127.0.0.1:{sock.getsockname()[1]}/", ca
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_client_certificate_reaches_the_app_as_pem(
    served: tuple[str, FleetCa], tmp_path: Path
) -> None:
    url, ca = served
    key = generate_key()
    cert = ca.ca.issue_terminal(csr_for(key, "T-7"), "T-7")
    write_pem(tmp_path / "t.pem", cert)
    write_private_key(tmp_path / "t.key", key)
    context = ssl.create_default_context(cafile=str(ca.paths.chain))
    context.load_cert_chain(str(tmp_path / "t.pem"), str(tmp_path / "t.key"))
    answer = httpx.get(url, verify=context).json()
    [pem] = answer["chain"]
    assert x509.load_pem_x509_certificate(pem.encode()) == cert
    assert answer["cn"] == "CN=T-7"


def test_without_a_client_certificate_the_chain_is_empty(served: tuple[str, FleetCa]) -> None:
    url, ca = served
    answer = httpx.get(url, verify=ssl.create_default_context(cafile=str(ca.paths.chain))).json()
    assert answer == {"chain": [], "cn": None}
